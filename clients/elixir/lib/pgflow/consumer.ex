defmodule Pgflow.Consumer do
  @moduledoc """
  N parallel handlers on one queue, each worker on its own connection.

  Two ways to run one:

    * **supervised**, as a child of the application's tree:
      `{Pgflow.Consumer, connect: dsn, queue: "jobs", handler: {MyApp.Jobs, :handle}, workers: 4}`
      or, through `Pgflow.Supervisor`, the seeds' consumer list from application env. The
      consumer is a supervisor of `workers` worker processes. A worker that crashes is
      restarted, after 100 ms doubling per crash up to 5 s; a worker that loses its connection
      reconnects in place with the same backoff. Shutting the tree down stops each worker
      gracefully (below);
    * **unsupervised**, with `start/1`, `stop/2` and `await/2` (scripts, batch jobs, tests),
      which also returns the totals.

  Each worker long-polls `pgflow.read` for up to `batch_size` messages with a lease (1 by
  default), runs the handler on each in a process of its own (linked to the worker), at most
  `max_parallel_workers` at a time (1 by default), and, while they work or wait their turn,
  renews every lease it holds each `heartbeat` ms (one third of the lease by default). A
  handler may run until the per-message `timeout`. When the whole batch is done, the worker
  archives its successes and leases the next batch in one round trip. Each message then:

    * `:ok` or `{:ok, _}`: the message is archived, together with leasing the next batch in
      one `Pgflow.archive_read/4` round trip (the worker never long-polls with an archive
      pending);
    * `{:retry, ms}`: nacked with `retry_after` = `ms` (a failed delivery, so the retry limit
      applies);
    * `{:error, reason}`, another value, a raise, an exit, or running past `timeout` (the
      handler is killed): nacked with the reason and the `read_ct` it was received with, so
      the server retries it with the queue's backoff or dead-letters it. A 55000 (the lease
      was lost: someone else holds the message now) is counted as `lost`.

  **Handlers.** A handler gets the `%Pgflow.Message{}` (`deliver: :message`, the default) or,
  with `deliver: :payload` (the default of `ExPgflow.Consumer`), the payload alone as the seeds'
  handlers read it: `Pgflow.Payload.both_keys/1`, so `message.proposal_id`,
  `message["votes"]` and `%{"status" => "approved"} = message` all work. A handler of arity 2
  gets a connection of its own as its second argument (one per handler a worker may run at a
  time); it is rolled back after a failure. On success it must leave no transaction open. A
  handler of another shape (another arity, an undefined function, a module without
  `handler_method`, anything but a function or a module) is refused when the consumer starts,
  with an `ArgumentError` that says why.

  **Failures are never silent.** Each nacked delivery is logged (a warning when it will be
  retried or its lease was lost, an error when it is dead-lettered) with the consumer, the
  queue, `msg_id`, `read_ct` and the reason, and emits `[:pgflow, :consume, :retry]`,
  `[:pgflow, :consume, :dead]` or `[:pgflow, :consume, :lost]` (`Pgflow.Telemetry`).

  **A queue that does not exist** stops a consumer's start (42704), unless `missing_queue:
  :wait` (the default under `Pgflow.Supervisor` and `ExPgflow.Consumer`): then the start logs
  a warning that names the queue, and each worker retries its read with backoff (100 ms
  doubling up to 5 s), logging once when the queue is missing and once when it appears.

  **Stopping.** `stop/1`, or the supervisor's shutdown, is graceful: each worker finishes the
  handlers in hand (archive or nack), hands the messages of its batch that had not started
  back to the queue, then closes its connections; nothing is left leased and nothing is
  handled twice. A worker killed outright (`:kill`, a node crash) cannot nack: its
  connections are linked to it and close, and the message comes back when its lease runs out,
  or within a tick of the server's worker on a queue created with `session_leases => true`.

  **Events** (`Pgflow.Telemetry`): `[:pgflow, :consume, :start]`, then `[:pgflow, :consume,
  :stop]` (the handler returned) or `[:pgflow, :consume, :exception]` (it raised, exited or
  timed out), with the queue, consumer name, `msg_id`, `read_ct`, `payload` and the `outcome`
  (`:archive`, `:retry`, `:dead` or `:lost`).

  Options (a keyword list or a map; an unknown key is refused):

    * `connect` (as `Pgflow.connect/1`; or `database_url`, or `repo`: see `Pgflow.Config`);
    * `queue` (or `queue_name`), `handler` (a fn of arity 1 or 2, `{module, function}`, or a
      module with `handler_method`), `deliver` (`:message` or `:payload`), `name` (the queue);
    * `workers` (or `concurrency`): worker processes, each with its own connection (4; 1 when
      `max_parallel_workers` is given, which is then the consumer's concurrency, as seed 004
      means it);
    * seed 004's `batch_size` (messages per read; default `max_parallel_workers`),
      `max_parallel_workers` (handlers a worker runs at once; 1),
      `enable_parallel_processing` (false: one at a time whatever `max_parallel_workers`
      says), `poll_interval_ms` (how long an empty read waits in the server: a long poll that
      a sent message ends at once, so no message waits for the interval; at most 4_000 ms,
      the driver's limit, and a longer one is capped), `timeout_ms` (= `timeout`), `enabled`
      (false: the consumer is not started, its `start_link/1` returns `:ignore`);
    * `lease` (30_000 ms), `timeout` (= lease), `heartbeat` (lease / 3), `wait` (1_000 ms per
      long-poll read; `poll_interval_ms` sets it too), `missing_queue` (`:fail` or `:wait`);
    * `stop_when_idle` (`start/1` only; false: with true, the workers stop once a read comes
      back empty), `on_progress` (fn stats -> any, `start/1` only);
    * the seeds' `max_retries`, `retry_delay_ms` and `priority` (`:high` 10, `:normal` 0,
      `:low` -10, or an integer), which are checked against the queue's settings at a
      supervised start (a mismatch is logged; the queue's policy applies).
  """
  use Supervisor

  require Logger
  alias Pgflow.Consumer.Worker

  defstruct [:pid, :ref]

  @type stats :: %{
          archived: non_neg_integer(),
          nacked: non_neg_integer(),
          dead: non_neg_integer(),
          lost: non_neg_integer()
        }

  # ---- supervised: a child of the application's tree ----

  @doc """
  A child spec, so a consumer sits in a supervision tree:
  `{Pgflow.Consumer, connect: dsn, queue: "jobs", handler: {MyApp.Jobs, :handle}, workers: 4}`
  (or the seeds' map, `%{queue_name: ..., workers: ..., handler: Mod, handler_method: :fun}`,
  with `connect:` or `database_url:`). The id is `{Pgflow.Consumer, name}` (`name` defaults to
  the queue), so several consumers can sit under one supervisor.
  """
  def child_spec(opts) do
    cfg = options(opts)

    %{
      id: {__MODULE__, cfg.name},
      start: {__MODULE__, :start_link, [opts]},
      type: :supervisor
    }
  end

  @doc """
  Starts the consumer as a supervisor with `workers` worker processes, each on its own
  connection. Before it starts them it checks, when the server is reachable, that the queue
  exists (42704 stops the start) and logs a warning when `max_retries`, `retry_delay_ms` or
  `priority` differ from the queue's settings (the server's policy is what applies).
  """
  def start_link(opts) do
    cfg = options(opts)

    cond do
      not cfg.enabled ->
        Logger.info("pgflow consumer #{inspect(cfg.name)}: enabled: false, not started")
        :ignore

      true ->
        load_handler_app(cfg)

        case check_queue(cfg) do
          :ok -> Supervisor.start_link(__MODULE__, cfg)
          {:error, error} -> {:error, error}
        end
    end
  end

  # With deliver: :payload a handler finds the atom keys whose atoms exist
  # (Pgflow.Payload.both_keys/1). A release loads every module at boot; elsewhere a module is
  # loaded at its first call, so the atoms of the code a handler calls may not exist when its
  # first payload arrives. Loading the modules of the handler's application now makes them
  # exist, as in a release (and creates no atom that its code does not hold).
  defp load_handler_app(%{deliver: :payload, handler: handler}) do
    mod =
      case handler do
        {mod, _fun} -> mod
        f -> f |> :erlang.fun_info(:module) |> elem(1)
      end

    with {:ok, app} <- :application.get_application(mod),
         {:ok, modules} <- :application.get_key(app, :modules),
         do: :code.ensure_modules_loaded(modules)
  end

  defp load_handler_app(_cfg), do: :ok

  @impl true
  def init(cfg) do
    # A supervised worker runs until its supervisor stops it (a worker that ended when idle
    # would only be restarted).
    cfg = %{cfg | stop_when_idle: false}
    restarts = :counters.new(cfg.workers, [])

    children =
      for slot <- 1..cfg.workers,
          do: Worker.child_spec(Map.merge(cfg, %{slot: slot, restarts: restarts}))

    # A worker that keeps failing is restarted with backoff (see Worker), so it rarely reaches
    # the restart intensity; past it, this supervisor ends and its parent decides.
    Supervisor.init(children, strategy: :one_for_one, max_restarts: 20, max_seconds: 60)
  end

  defp opts_list(opts) when is_map(opts), do: Map.to_list(opts)
  defp opts_list(opts), do: opts

  @priorities %{high: 10, normal: 0, low: -10}

  defp check_queue(cfg) do
    case Pgflow.connect(cfg.connect) do
      {:ok, conn} ->
        pooled = Pgflow.pooled?(conn)

        try do
          case Pgflow.query(
                 conn,
                 ~S"""
                 SELECT max_retries::text, (extract(epoch FROM retry_delay) * 1000)::bigint::text,
                        default_priority::text, session_leases::text
                   FROM pgflow.list_queues() WHERE queue_name = $1
                 """,
                 [cfg.queue]
               ) do
            {:ok, [[_, _, _, "true"]]} when pooled ->
              {:error,
               %Pgflow.Error{
                 code: "0A000",
                 message:
                   "queue \"#{cfg.queue}\" has session_leases, which need a stable backend: " <>
                     "a transaction-mode pooler lends each transaction a server connection of " <>
                     "its own (consume it through session pooling or a direct connection)"
               }}

            {:ok, [[retries, delay, priority, _]]} ->
              warn_if(cfg, :max_retries, cfg.max_retries, String.to_integer(retries))
              warn_if(cfg, :retry_delay_ms, cfg.retry_delay_ms, String.to_integer(delay))

              warn_if(
                cfg,
                :priority,
                Map.get(@priorities, cfg.priority, cfg.priority),
                String.to_integer(priority)
              )

              :ok

            {:ok, []} when cfg.missing_queue == :wait ->
              Logger.warning(
                "pgflow consumer #{inspect(cfg.name)}: queue #{inspect(cfg.queue)} does not " <>
                  "exist; the consumer starts and its workers retry until it is created " <>
                  "(pgflow.create_queue, or create_queues: true)"
              )

              :ok

            {:ok, []} ->
              {:error,
               %Pgflow.Error{code: "42704", message: "queue \"#{cfg.queue}\" does not exist"}}

            {:error, error} ->
              {:error, error}
          end
        after
          Pgflow.close(conn)
        end

      # The server is not reachable now: the workers connect with backoff.
      {:error, _} ->
        :ok
    end
  end

  defp warn_if(_cfg, _key, nil, _actual), do: :ok
  defp warn_if(_cfg, _key, same, same), do: :ok

  defp warn_if(cfg, key, wanted, actual) do
    Logger.warning(
      "pgflow consumer #{cfg.name}: #{key} is #{inspect(wanted)} in the configuration but " <>
        "#{actual} on queue #{inspect(cfg.queue)}; the queue's setting applies " <>
        "(pgflow.alter_queue changes it)"
    )
  end

  # ---- unsupervised: start/stop/await, for scripts, batch jobs and tests ----

  @doc "Starts the workers; returns a handle for `stop/1` and `await/2`."
  def start(opts) do
    owner = self()
    ref = make_ref()
    pid = spawn(fn -> coordinate(owner, ref, opts) end)

    receive do
      {^ref, :started} -> {:ok, %__MODULE__{pid: pid, ref: ref}}
      {^ref, {:error, error}} -> {:error, error}
    end
  end

  @doc "Stops gracefully (in-flight messages are finished) and returns the totals."
  @spec stop(%__MODULE__{}, timeout()) :: stats()
  def stop(%__MODULE__{pid: pid} = c, timeout \\ 60_000) do
    send(pid, :stop)
    await(c, timeout)
  end

  @doc "Waits until every worker has stopped (`stop_when_idle`, or after `stop/1`)."
  @spec await(%__MODULE__{}, timeout()) :: stats()
  def await(%__MODULE__{ref: ref}, timeout \\ 60_000) do
    receive do
      {^ref, :done, stats} -> stats
    after
      timeout -> exit({:timeout, {__MODULE__, :await}})
    end
  end

  # ---- options: a keyword list, or the seeds' map ----

  @option_keys [
    :connect,
    :database_url,
    :repo,
    :queue,
    :queue_name,
    :handler,
    :handler_method,
    :deliver,
    :name,
    :workers,
    :concurrency,
    :batch_size,
    :max_parallel_workers,
    :enable_parallel_processing,
    :poll_interval_ms,
    :timeout_ms,
    :enabled,
    :lease,
    :timeout,
    :heartbeat,
    :wait,
    :missing_queue,
    :stop_when_idle,
    :on_progress,
    :max_retries,
    :retry_delay_ms,
    :priority
  ]

  # The longest long-poll wait one read may ask for (Pgflow.read/3).
  @max_wait 4_000

  @doc false
  def option_keys, do: @option_keys

  @doc false
  def options(opts) do
    opts = Map.new(opts_list(opts))

    for {k, _} <- opts, k not in @option_keys do
      raise ArgumentError,
            "unknown consumer option #{inspect(k)} (known: " <>
              "#{Enum.map_join(@option_keys, ", ", &inspect/1)})"
    end

    queue = opts[:queue] || opts[:queue_name] || raise ArgumentError, "a consumer needs :queue"
    handler = handler(opts)
    lease = positive(opts, :lease, 30_000)

    parallel =
      if opts[:enable_parallel_processing] == false,
        do: 1,
        else: positive(opts, :max_parallel_workers, 1)

    default_workers = if Map.has_key?(opts, :max_parallel_workers), do: 1, else: 4

    %{
      name: Map.get(opts, :name, queue),
      connect: connect(opts),
      queue: queue,
      handler: handler,
      handler_conn: handler_arity(handler) == 2,
      deliver: one_of(opts, :deliver, [:message, :payload]),
      workers: positive(opts, :workers, opts[:concurrency] || default_workers),
      batch: positive(opts, :batch_size, parallel),
      parallel: parallel,
      lease: lease,
      timeout: positive(opts, :timeout, opts[:timeout_ms] || lease),
      heartbeat: positive(opts, :heartbeat, div(lease, 3)),
      wait: Map.get(opts, :wait, min(positive(opts, :poll_interval_ms, 1_000), @max_wait)),
      missing_queue: one_of(opts, :missing_queue, [:fail, :wait]),
      enabled: Map.get(opts, :enabled, true) != false,
      stop_when_idle: Map.get(opts, :stop_when_idle, false),
      max_retries: opts[:max_retries],
      retry_delay_ms: opts[:retry_delay_ms],
      priority: opts[:priority],
      report: fn _ -> :ok end
    }
  end

  defp connect(opts) do
    cond do
      c = opts[:connect] || opts[:database_url] -> c
      opts[:repo] -> Pgflow.Config.repo_connect(opts[:repo])
      true -> raise ArgumentError, "a consumer needs :connect (or database_url:, or repo:)"
    end
  end

  defp positive(opts, key, default) do
    case Map.get(opts, key, default) do
      n when is_integer(n) and n > 0 ->
        n

      other ->
        raise ArgumentError, "#{inspect(key)} must be a positive integer, got #{inspect(other)}"
    end
  end

  # The first of `allowed` is the default.
  defp one_of(opts, key, [default | _] = allowed) do
    value = Map.get(opts, key, default)

    if value in allowed,
      do: value,
      else:
        raise(
          ArgumentError,
          "#{inspect(key)} must be one of #{Enum.map_join(allowed, ", ", &inspect/1)}, " <>
            "got #{inspect(value)}"
        )
  end

  defp handler(%{handler: mod, handler_method: fun}) when is_atom(mod) and is_atom(fun),
    do: {mod, fun}

  defp handler(%{handler: f}) when is_function(f, 1) or is_function(f, 2), do: f

  defp handler(%{handler: f}) when is_function(f) do
    raise ArgumentError,
          "handler: a fn of arity #{:erlang.fun_info(f)[:arity]}; a handler takes the " <>
            "message (arity 1), or the message and a connection (arity 2)"
  end

  defp handler(%{handler: {mod, fun}}) when is_atom(mod) and is_atom(fun), do: {mod, fun}

  defp handler(%{handler: mod}) when is_atom(mod) and not is_nil(mod) do
    raise ArgumentError,
          "handler: #{inspect(mod)} needs handler_method: (the name of its function of " <>
            "arity 1 or 2 to call with each message)"
  end

  defp handler(%{handler: other}) when not is_nil(other) do
    raise ArgumentError,
          "handler: #{inspect(other)} is not a function, a {module, function} or a module " <>
            "with handler_method:"
  end

  defp handler(_),
    do:
      raise(
        ArgumentError,
        "a consumer needs :handler: a fn of arity 1 or 2, or a module with :handler_method"
      )

  defp handler_arity(f) when is_function(f), do: :erlang.fun_info(f)[:arity]

  # Loading the module also brings the atoms its code uses into existence, which is what lets
  # Pgflow.Payload.both_keys/1 give a payload the atom keys the handler reads.
  defp handler_arity({mod, fun}) do
    loaded = Code.ensure_loaded(mod)

    cond do
      function_exported?(mod, fun, 2) ->
        2

      function_exported?(mod, fun, 1) ->
        1

      match?({:error, _}, loaded) ->
        raise ArgumentError,
              "#{inspect(mod)}.#{fun}/1 or /2 is not defined: module #{inspect(mod)} " <>
                "cannot be loaded (#{inspect(elem(loaded, 1))})"

      true ->
        raise ArgumentError, "#{inspect(mod)}.#{fun}/1 or /2 is not defined"
    end
  end

  # ---- the coordinator: starts the workers, sums their reports, stops them on request ----

  defp coordinate(owner, ref, opts) do
    me = self()
    cfg = %{options(opts) | report: fn outcome -> send(me, {:outcome, outcome}) end}
    load_handler_app(cfg)
    per_worker = if cfg.handler_conn, do: 1 + cfg.parallel, else: 1
    conns = for _ <- 1..(cfg.workers * per_worker), do: Pgflow.connect(cfg.connect)

    # Through a pooler, the queue is checked first: one with session leases is refused.
    refused =
      case conns do
        [{:ok, conn} | _] -> if Pgflow.pooled?(conn), do: check_queue(cfg), else: :ok
        _ -> :ok
      end

    case Enum.find([refused | conns], &match?({:error, _}, &1)) do
      {:error, error} ->
        for {:ok, conn} <- conns, do: Pgflow.close(conn)
        send(owner, {ref, {:error, error}})

      nil ->
        Process.flag(:trap_exit, true)

        workers =
          for group <- conns |> Enum.map(&elem(&1, 1)) |> Enum.chunk_every(per_worker) do
            spawn_link(fn -> Worker.run(me, cfg, group) end)
          end

        send(owner, {ref, :started})
        stats = collect(workers, %{archived: 0, nacked: 0, dead: 0, lost: 0}, opts)
        send(owner, {ref, :done, stats})
    end
  end

  defp collect([], stats, _opts), do: stats

  defp collect(workers, stats, opts) do
    receive do
      :stop ->
        Enum.each(workers, &send(&1, :stop))
        collect(workers, stats, opts)

      {:outcome, outcome} ->
        stats = Map.update!(stats, outcome, &(&1 + 1))
        if f = opts[:on_progress], do: f.(stats)
        collect(workers, stats, opts)

      {:EXIT, pid, _reason} ->
        collect(List.delete(workers, pid), stats, opts)
    end
  end
end
