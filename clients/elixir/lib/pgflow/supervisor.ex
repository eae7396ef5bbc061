defmodule Pgflow.Supervisor do
  @moduledoc """
  pgflow in an application's supervision tree, configured the way the seeds configure it:

      # config/config.exs
      config :singularity, :pgflow_queues,
        database_url: "postgresql://app:secret@localhost/singularity",
        create_queues: false,
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
    * a `Pgflow.Connection` registered as `name` (default `Pgflow.Conn`), which `Pgflow.send/4`,
      `Pgflow.publish/4` and the admin calls (`Pgflow.list_queues/0`, ...) use when given that
      name or no connection;
    * one `Pgflow.Consumer` per entry of `consumers`, with the entry's options (the seeds' map
      or a keyword list) and `connect: database_url`; its name is the entry's key.

  With `create_queues: true`, the queues of `producers` and `consumers` that do not exist are
  created first (`pgflow.create_queue(..., if_not_exists => true)`) with the entries'
  `max_retries`, `retry_delay_ms` and `priority` as `max_retries`, `retry_delay` and
  `default_priority`; that needs the right to create queues (`pgflow_admin`). Otherwise those
  keys are only checked against the queues (a mismatch is logged), and a consumer's queue must
  exist (42704 stops the start). Producers' `workers` have no meaning here: a send is one call
  on the shared connection.

  Why one connection per consumer worker and no pool: a worker holds its connection through a
  long-poll read and for as long as its handler runs (the lease's session, its heartbeats, its
  archive), so a pool would need one connection per worker anyway and would add a checkout to
  every round trip. Sends and admin calls are short and share the one named connection.
  """
  use Supervisor

  @priorities %{high: 10, normal: 0, low: -10}

  def start_link(opts) do
    Supervisor.start_link(__MODULE__, opts, Keyword.take(opts, [:supervisor_name]) |> rename())
  end

  defp rename(supervisor_name: n), do: [name: n]
  defp rename([]), do: []

  @impl true
  def init(opts) do
    url =
      opts[:database_url] || opts[:connect] ||
        raise ArgumentError, "Pgflow.Supervisor needs :database_url"

    name = Keyword.get(opts, :name, Pgflow.Conn)
    consumers = Keyword.get(opts, :consumers, [])

    if opts[:create_queues] do
      case create_queues(url, Keyword.get(opts, :producers, []) ++ consumers) do
        :ok -> :ok
        {:error, error} -> raise error
      end
    end

    children =
      [{Pgflow.Connection, connect: url, name: name}] ++
        for {key, entry} <- consumers do
          entry = entry |> Map.new() |> Map.put(:connect, url) |> Map.put_new(:name, key)
          Supervisor.child_spec({Pgflow.Consumer, entry}, id: {Pgflow.Consumer, key})
        end

    Supervisor.init(children, strategy: :one_for_one)
  end

  defp create_queues(url, entries) do
    with {:ok, conn} <- Pgflow.connect(url) do
      try do
        Enum.reduce_while(entries, :ok, fn {_key, entry}, :ok ->
          e = Map.new(entry)
          q = e[:queue_name] || e[:queue]
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
