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

  Each worker long-polls `pgflow.read` for one message with a lease, runs the handler in a
  process of its own (linked to the worker) and, while it works, renews the lease every
  `heartbeat` ms (one third of the lease by default) until the per-message `timeout`. Then:

    * `:ok` or `{:ok, _}`: the message is archived, together with leasing the next in one
      `Pgflow.archive_read/4` round trip (the worker never long-polls with an archive
      pending);
    * `{:retry, ms}`: nacked with `retry_after` = `ms` (a failed delivery, so the retry limit
      applies);
    * `{:error, reason}`, another value, a raise, an exit, or running past `timeout` (the
      handler is killed): nacked with the reason and the `read_ct` it was received with, so
      the server retries it with the queue's backoff or dead-letters it. A 55000 (the lease
      was lost: someone else holds the message now) is counted as `lost`.

  A handler of arity 2 gets a connection of its own as its second argument (each worker then
  opens two); it is rolled back after a failure. On success it must leave no transaction open.

  **Stopping.** `stop/1`, or the supervisor's shutdown, is graceful: each worker finishes the
  message in hand (archive or nack), then closes its connections; nothing is left leased and
  nothing is handled twice. A worker killed outright (`:kill`, a node crash) cannot nack: its
  connections are linked to it and close, and the message comes back when its lease runs out,
  or within a tick of the server's worker on a queue created with `session_leases => true`.

  **Events** (`Pgflow.Telemetry`): `[:pgflow, :consume, :start]`, then `[:pgflow, :consume,
  :stop]` (the handler returned) or `[:pgflow, :consume, :exception]` (it raised, exited or
  timed out), with the queue, consumer name, `msg_id`, `read_ct` and the `outcome` (`:archive`,
  `:retry`, `:dead` or `:lost`).

  Options (a keyword list or a map): `connect` (as `Pgflow.connect/1`; or `database_url`),
  `queue` (or `queue_name`), `handler` (fn message -> result, fn message, conn -> result, or a
  module with `handler_method`), `workers` (or `concurrency`; 4), `lease` (30_000 ms),
  `timeout` (= lease), `heartbeat` (lease / 3), `wait` (1_000 ms per long-poll read), `name`
  (the queue), `stop_when_idle` (`start/1` only; false: with true, the workers stop once a read comes back
  empty), `on_progress` (fn stats -> any, `start/1` only), and the seeds' `max_retries`,
  `retry_delay_ms` and `priority` (`:high` 10, `:normal` 0, `:low` -10, or an integer), which
  are checked against the queue's settings at a supervised start (a mismatch is logged; the
  queue's policy applies).
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

    case check_queue(cfg) do
      :ok -> Supervisor.start_link(__MODULE__, cfg)
      {:error, error} -> {:error, error}
    end
  end

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

  @doc false
  def options(opts) do
    opts = Map.new(opts_list(opts))
    queue = opts[:queue] || opts[:queue_name] || raise ArgumentError, "a consumer needs :queue"
    handler = handler(opts)
    lease = Map.get(opts, :lease, 30_000)

    %{
      name: Map.get(opts, :name, queue),
      connect:
        opts[:connect] || opts[:database_url] || raise(ArgumentError, "a consumer needs :connect"),
      queue: queue,
      handler: handler,
      handler_conn: handler_arity(handler) == 2,
      workers: opts[:workers] || opts[:concurrency] || 4,
      lease: lease,
      timeout: Map.get(opts, :timeout, lease),
      heartbeat: Map.get(opts, :heartbeat, div(lease, 3)),
      wait: Map.get(opts, :wait, 1_000),
      stop_when_idle: Map.get(opts, :stop_when_idle, false),
      max_retries: opts[:max_retries],
      retry_delay_ms: opts[:retry_delay_ms],
      priority: opts[:priority],
      report: fn _ -> :ok end
    }
  end

  defp handler(%{handler: mod, handler_method: fun}) when is_atom(mod) and is_atom(fun),
    do: {mod, fun}

  defp handler(%{handler: f}) when is_function(f, 1) or is_function(f, 2), do: f
  defp handler(%{handler: {mod, fun}}) when is_atom(mod) and is_atom(fun), do: {mod, fun}

  defp handler(_),
    do:
      raise(
        ArgumentError,
        "a consumer needs :handler: a fn of arity 1 or 2, or a module with :handler_method"
      )

  defp handler_arity(f) when is_function(f), do: :erlang.fun_info(f)[:arity]

  defp handler_arity({mod, fun}) do
    Code.ensure_loaded(mod)

    cond do
      function_exported?(mod, fun, 2) -> 2
      function_exported?(mod, fun, 1) -> 1
      true -> raise ArgumentError, "#{inspect(mod)}.#{fun}/1 or /2 is not defined"
    end
  end

  # ---- the coordinator: starts the workers, sums their reports, stops them on request ----

  defp coordinate(owner, ref, opts) do
    me = self()
    cfg = %{options(opts) | report: fn outcome -> send(me, {:outcome, outcome}) end}
    per_worker = if cfg.handler_conn, do: 2, else: 1
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
