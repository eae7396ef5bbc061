defmodule Pgflow.Supervisor do
  @moduledoc """
  pgflow in an application's supervision tree, configured the way the seeds configure it:

      # config/config.exs
      config :singularity, :pgflow_queues,
        database_url: "postgresql://app:secret@localhost/singularity",
        create_queues: false,
        # Handlers as the seeds write them read the payload (message.proposal_id); without
        # this they get the %Pgflow.Message{}. ExPgflow.Consumer sets it by default.
        deliver: :payload,
        producers: [
          {:proposals, %{queue_name: "proposals_for_consensus_queue", max_retries: 3, retry_delay_ms: 1000}}
        ],
        consumers: [
          {:rollback_triggers,
           %{queue_name: "rollback_triggers_queue", workers: 1, priority: :high,
             handler: Singularity.Evolution.PgflowConsumers, handler_method: :handle_rollback_trigger,
             max_retries: 3, retry_delay_ms: 1000}}
        ]

      # lib/singularity/application.ex
      children = [
        {Pgflow.Supervisor, Application.fetch_env!(:singularity, :pgflow_queues)},
        ...
      ]

  It starts, one for one:
    * a `Pgflow.Connection` registered as `name` (default `Pgflow.Conn`; `name: nil` starts
      none), which `Pgflow.send/4`, `Pgflow.publish_topic/4` and the admin calls
      (`Pgflow.list_queues/0`, ...) use when given that name or no connection;
    * one `Pgflow.Consumer` per entry of `consumers`, with the entry's options (the seeds' map
      or a keyword list) and the entry's server or `database_url`; its name is the entry's
      key.

  Every shape of the seeds is read (`Pgflow.Config`: seed 000's `{name, url, [workers: n]}`
  entries, seed 003's maps, seed 004's consumer keys at the top as defaults for every
  consumer); a key or an entry it cannot use is refused at start with an `ArgumentError` that
  names it.

  With `create_queues: true`, the queues of `producers` and `consumers` that do not exist are
  created first (`pgflow.create_queue(..., if_not_exists => true)`) with the entries'
  `max_retries`, `retry_delay_ms` and `priority` as `max_retries`, `retry_delay` and
  `default_priority`; that needs the right to create queues (`pgflow_admin`). Otherwise those
  keys are only checked against the queues (a mismatch is logged), and a consumer whose queue
  is missing starts anyway: a warning names the queue and its workers retry until it exists
  (`missing_queue: :wait`; `missing_queue: :fail` makes it stop the start with 42704).
  Producers' `workers` have no meaning here: a send is one call on the shared connection.

  Why one connection per consumer worker and no pool: a worker holds its connection through a
  long-poll read and for as long as its handler runs (the lease's session, its heartbeats, its
  archive), so a pool would need one connection per worker anyway and would add a checkout to
  every round trip. Sends and admin calls are short and share the one named connection.
  """
  use Supervisor

  @priorities %{high: 10, normal: 0, low: -10}

  def start_link(opts) do
    {sup, config} = opts |> Enum.to_list() |> Keyword.pop(:supervisor_name)
    Supervisor.start_link(__MODULE__, config, if(sup, do: [name: sup], else: []))
  end

  @impl true
  def init(opts) do
    cfg = opts |> Keyword.put_new(:missing_queue, :wait) |> Pgflow.Config.parse()

    if cfg.create_queues do
      case create_queues(cfg.producers, cfg.consumers) do
        :ok -> :ok
        {:error, error} -> raise error
      end
    end

    connection =
      cond do
        cfg.name == nil ->
          []

        cfg.connect == nil ->
          raise ArgumentError,
                "Pgflow.Supervisor needs :database_url (its entries name no single server " <>
                  "for the shared connection)"

        true ->
          [{Pgflow.Connection, connect: cfg.connect, name: cfg.name}]
      end

    children =
      connection ++
        for {key, entry} <- cfg.consumers do
          Supervisor.child_spec({Pgflow.Consumer, entry}, id: {Pgflow.Consumer, key})
        end

    Supervisor.init(children, strategy: :one_for_one)
  end

  # Each queue on its entry's server.
  defp create_queues(producers, consumers) do
    entries =
      for(p <- producers, do: {p.connect, p.queue, p.opts}) ++
        for {_key, c} <- consumers, do: {c[:connect], c[:queue_name] || c[:queue], c}

    entries
    |> Enum.group_by(&elem(&1, 0))
    |> Enum.reduce_while(:ok, fn {url, group}, :ok ->
      case create_queues_on(url, group) do
        :ok -> {:cont, :ok}
        error -> {:halt, error}
      end
    end)
  end

  defp create_queues_on(url, entries) do
    with {:ok, conn} <- Pgflow.connect(url) do
      try do
        Enum.reduce_while(entries, :ok, fn {_url, q, e}, :ok ->
          priority = Map.get(@priorities, e[:priority], e[:priority])

          case Pgflow.query(
                 conn,
                 ~S"""
                 SELECT pgflow.create_queue($1, if_not_exists => true,
                          max_retries => coalesce($2::int, 3),
                          retry_delay => coalesce($3::bigint, 1000) * interval '1 ms',
                          default_priority => coalesce($4::int, 0))::text
                 """,
                 [q, e[:max_retries], e[:retry_delay_ms], priority]
               ) do
            {:ok, _} -> {:cont, :ok}
            {:error, error} -> {:halt, {:error, error}}
          end
        end)
      after
        Pgflow.close(conn)
      end
    end
  end
end
