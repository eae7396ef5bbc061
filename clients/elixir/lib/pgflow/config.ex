defmodule Pgflow.Config do
  @moduledoc """
  The configuration shapes of the seeds, read in one place (`Pgflow.Supervisor`,
  `ExPgflow.Consumer` and `ExPgflow.publish/3` use it). A configuration is a keyword list or
  a map:

    * `database_url` (or `connect`, anything `Pgflow.connect/1` takes; or `repo`, below): the
      server, for every entry that names none of its own;
    * `producers` and `consumers`: lists of entries, each either
      `{name, %{queue_name: ..., ...}}` (a map or keyword list: seed 003) or
      `{name, url, [workers: n, ...]}` (seed 000: the entry's own server). A producer entry
      without `queue_name` sends to the queue `"<name>_queue"`, as all of seed 000's do. A
      consumer entry takes `Pgflow.Consumer`'s options; a seed 000 consumer entry names no
      queue and no handler, so it is refused until its options add `queue_name`, `handler` and
      `handler_method`;
    * `create_queues` (false), `name` (the shared connection's name, `Pgflow.Conn`);
    * any other `Pgflow.Consumer` option, such as seed 004's `batch_size`,
      `max_parallel_workers`, `poll_interval_ms`, `timeout_ms`, `enabled`: a default for every
      consumer entry.

  `repo: MyApp.Repo` (seed 004) means the server of that Ecto repo, read from the application
  environment that configures it (`config :my_app, MyApp.Repo, url: ...` or `hostname`,
  `port`, `database`, `username`, `password`); pgflow opens its own connections and does not
  use Ecto.

  A key no one reads, or an entry of an unknown shape, is refused with an `ArgumentError` that
  names it: a setting is never accepted and ignored.
  """

  # Keys of the configuration itself; every other top-level key must be a consumer option.
  @own [:database_url, :connect, :repo, :create_queues, :name, :producers, :consumers]
  @producer_keys [
    :queue_name,
    :queue,
    :workers,
    :max_retries,
    :retry_delay_ms,
    :priority,
    :database_url,
    :connect
  ]

  @type entry :: %{key: term(), queue: String.t(), connect: term(), opts: map()}
  @type t :: %{
          connect: term(),
          create_queues: boolean(),
          name: term(),
          producers: [entry()],
          consumers: [{term(), map()}]
        }

  @doc """
  Reads a configuration. Each consumer entry is checked as `Pgflow.Consumer` checks its
  options (a handler of the wrong shape is refused here); the consumers come back as
  `{name, options}`, ready for `Pgflow.Consumer`.
  """
  @spec parse(keyword() | map()) :: t()
  def parse(config) do
    config = to_map(config, "the pgflow configuration")
    consumer_keys = Pgflow.Consumer.option_keys()

    for {k, _} <- config, k not in @own and k not in consumer_keys do
      raise ArgumentError,
            "unknown key #{inspect(k)} in the pgflow configuration (known: " <>
              "#{Enum.map_join(@own, ", ", &inspect/1)}, and the consumer options " <>
              "#{Enum.map_join(consumer_keys, ", ", &inspect/1)})"
    end

    top = top_connect(config)
    # The configuration's own keys (name: the shared connection's) are not consumer defaults.
    shared = Map.take(config, consumer_keys -- @own)
    producers = for e <- list(config, :producers), do: producer(e, top)

    consumers =
      for e <- list(config, :consumers) do
        {key, opts} = consumer(e, top, shared)

        try do
          Pgflow.Consumer.options(opts)
        rescue
          e in ArgumentError ->
            reraise ArgumentError,
                    "pgflow consumer #{inspect(key)}: #{Exception.message(e)}#{hint(e, opts)}",
                    __STACKTRACE__
        end

        {key, opts}
      end

    urls = for(p <- producers, do: p.connect) ++ for({_, o} <- consumers, do: o[:connect])

    urls = urls |> Enum.reject(&is_nil/1) |> Enum.uniq()

    %{
      connect: top || single(urls),
      create_queues: config[:create_queues] == true,
      name: Map.get(config, :name, Pgflow.Conn),
      producers: producers,
      consumers: consumers
    }
  end

  @doc """
  The server for sending to `queue` under `config` (for `ExPgflow.publish/3`), or nil: the
  entry (producer or consumer) of that queue that names its own server, else the
  configuration's `database_url` (`connect`, `repo`), else the one server all entries name.
  With `queue` nil: the configuration's server. Reads only what it needs, so a consumer entry
  that could not start does not stop a send.
  """
  @spec connect_for(keyword() | map(), String.t() | nil) :: term() | nil
  def connect_for(config, queue) do
    config = to_map(config, "the pgflow configuration")

    entries =
      for {role, e} <-
            Enum.map(list(config, :producers), &{:producer, &1}) ++
              Enum.map(list(config, :consumers), &{:consumer, &1}) do
        {key, url, opts} = shape(e, role)
        {queue_of(key, opts, role), url || opts[:database_url] || opts[:connect]}
      end

    own = Enum.find_value(entries, fn {q, url} -> q == queue and queue != nil and url end)
    own || top_connect(config) || single(for {_, url} <- entries, url, uniq: true, do: url)
  end

  @doc """
  The server of an Ecto repo, from the application environment that configures it (the first
  loaded application with a `config :app, repo, ...`), as `Pgflow.connect/1` takes it.
  """
  @spec repo_connect(module()) :: String.t() | keyword()
  def repo_connect(repo) do
    found =
      Enum.find_value(Application.loaded_applications(), &Application.get_env(elem(&1, 0), repo))

    case found do
      nil ->
        raise ArgumentError,
              "repo: #{inspect(repo)}: no loaded application configures it " <>
                "(config :my_app, #{inspect(repo)}, url: ...); pgflow connects with the repo's " <>
                "url, or hostname, port, database, username and password"

      cfg ->
        case cfg[:url] do
          # Ecto also writes its URLs as ecto://.
          "ecto://" <> rest ->
            "postgresql://" <> rest

          nil ->
            Enum.reject(
              [
                host: cfg[:hostname] || "localhost",
                port: cfg[:port] || 5432,
                database: cfg[:database],
                user: cfg[:username],
                password: cfg[:password]
              ],
              fn {_, v} -> is_nil(v) end
            )

          url ->
            url
        end
    end
  end

  # ---- entries ----

  defp producer(e, top) do
    {key, url, opts} = shape(e, :producer)

    for {k, _} <- opts, k not in @producer_keys do
      raise ArgumentError,
            "pgflow producer #{inspect(key)}: unknown key #{inspect(k)} (known: " <>
              "#{Enum.map_join(@producer_keys, ", ", &inspect/1)}; a producer's workers " <>
              "have no effect: a send is one call)"
    end

    %{
      key: key,
      queue: queue_of(key, opts, :producer),
      connect: url || opts[:database_url] || opts[:connect] || top,
      opts: opts
    }
  end

  defp consumer(e, top, shared) do
    {key, url, opts} = shape(e, :consumer)

    opts =
      shared
      |> Map.merge(opts)
      |> Map.put_new(:name, key)

    # An entry's own server first (a repo of its own is read by the consumer).
    connect = url || opts[:connect] || opts[:database_url] || if(opts[:repo], do: nil, else: top)
    {key, opts |> Map.delete(:database_url) |> put_connect(connect)}
  end

  defp put_connect(opts, nil), do: opts
  defp put_connect(opts, connect), do: Map.put(opts, :connect, connect)

  # An entry as {key, own url or nil, options as a map}.
  defp shape({key, url, opts}, role) when is_binary(url) and is_list(opts),
    do: {key, url, to_map(opts, "pgflow #{role} #{inspect(key)}")}

  defp shape({key, opts}, role) when is_map(opts) or is_list(opts),
    do: {key, nil, to_map(opts, "pgflow #{role} #{inspect(key)}")}

  defp shape(other, role) do
    raise ArgumentError,
          "pgflow #{role} entry #{inspect(other)}: expected {name, %{queue_name: ...}} " <>
            "or {name, url, [options]}"
  end

  defp queue_of(key, opts, :producer), do: opts[:queue_name] || opts[:queue] || "#{key}_queue"
  defp queue_of(_key, opts, :consumer), do: opts[:queue_name] || opts[:queue]

  # Seed 000's consumer entries name neither a queue nor a handler.
  defp hint(%ArgumentError{message: m}, opts) do
    if m =~ "needs :queue" or (m =~ "needs :handler" and not Map.has_key?(opts, :handler)),
      do:
        " (an entry {name, url, [workers: n]} as in seed 000 must add queue_name:, handler: " <>
          "and handler_method: to its options)",
      else: ""
  end

  defp top_connect(config) do
    config[:database_url] || config[:connect] || (config[:repo] && repo_connect(config[:repo]))
  end

  defp single([one]), do: one
  defp single(_), do: nil

  defp list(config, key) do
    case Map.get(config, key, []) do
      l when is_list(l) ->
        l

      other ->
        raise ArgumentError, "pgflow #{key}: expected a list of entries, got #{inspect(other)}"
    end
  end

  defp to_map(m, _what) when is_map(m), do: m

  defp to_map(l, what) when is_list(l) do
    if Keyword.keyword?(l),
      do: Map.new(l),
      else: raise(ArgumentError, "#{what}: expected a keyword list or a map, got #{inspect(l)}")
  end

  defp to_map(other, what),
    do: raise(ArgumentError, "#{what}: expected a keyword list or a map, got #{inspect(other)}")
end
