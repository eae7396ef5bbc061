defmodule Pgflow.Consumer do
  @moduledoc """
  N parallel handlers on one queue, each on its own connection.

  Each worker long-polls `pgflow.read` for one message with a lease, runs the handler in a
  separate process and, while it works, renews the lease every `heartbeat` ms (one third of
  the lease by default) until the per-message `timeout`. Then:

    * the handler returned `:ok` or `{:ok, _}`: the message is archived;
    * it returned `{:error, reason}`, raised, exited or ran past `timeout` (it is killed): the
      message is nacked with the `read_ct` it was received with, so the server retries it
      with backoff or dead-letters it. A 55000 (the lease was lost, someone else holds the
      message now) is counted as `lost` and otherwise ignored.

  An arity-2 handler's connection is rolled back after a failure (an open transaction's
  writes are undone); on success the handler must leave no transaction open.

  `stop/1` is graceful: each worker finishes the message in hand (archive or nack), then
  closes its connection; nothing is left leased and nothing is handled twice. With
  `stop_when_idle: true` the workers stop by themselves once a read comes back empty (for
  batch jobs and tests); `await/2` waits for them.

  Options: `connect` (as `Pgflow.connect/1`), `queue`, `handler` (fn `%Pgflow.Message{}` ->
  result, or fn message, conn -> result to get a connection of the handler's own: each
  worker then opens two), `concurrency` (4), `lease` (30_000 ms), `timeout` (= lease), `heartbeat`
  (lease / 3), `wait` (1_000 ms per long-poll read), `stop_when_idle` (false), `on_progress`
  (fn stats -> any, called after each message by the coordinator).
  """

  alias Pgflow.Message

  defstruct [:pid, :ref]

  @type stats :: %{
          archived: non_neg_integer(),
          nacked: non_neg_integer(),
          dead: non_neg_integer(),
          lost: non_neg_integer()
        }

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

  # ---- the coordinator: starts the workers, sums their reports, stops them on request ----

  defp coordinate(owner, ref, opts) do
    n = Keyword.get(opts, :concurrency, 4)
    me = self()
    # An arity-2 handler gets a connection of its own (the worker's is busy renewing leases).
    per_worker = if is_function(opts[:handler], 2), do: 2, else: 1
    conns = for _ <- 1..(n * per_worker), do: Pgflow.connect(opts[:connect])

    case Enum.find(conns, &match?({:error, _}, &1)) do
      {:error, error} ->
        for {:ok, conn} <- conns, do: Pgflow.close(conn)
        send(owner, {ref, {:error, error}})

      nil ->
        workers =
          for {group, i} <-
                conns
                |> Enum.map(&elem(&1, 1))
                |> Enum.chunk_every(per_worker)
                |> Enum.with_index(1) do
            spawn_link(fn -> work(me, group, i, config(opts)) end)
          end

        Process.flag(:trap_exit, true)
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

  defp config(opts) do
    lease = Keyword.get(opts, :lease, 30_000)

    %{
      queue: Keyword.fetch!(opts, :queue),
      handler: Keyword.fetch!(opts, :handler),
      lease: lease,
      timeout: Keyword.get(opts, :timeout, lease),
      heartbeat: Keyword.get(opts, :heartbeat, div(lease, 3)),
      wait: Keyword.get(opts, :wait, 1_000),
      stop_when_idle: Keyword.get(opts, :stop_when_idle, false)
    }
  end

  # ---- a worker: read, handle, archive or nack, until stopped ----

  # `done`: the message this worker handled successfully, archived by the next round trip
  # (archive_read archives it and leases the next in one statement and one commit). It never
  # long-polls with an archive pending, so a handled message is archived at once either way.
  defp work(coordinator, [conn | _] = conns, i, cfg, done \\ []) do
    receive do
      :stop ->
        Enum.each(done, fn id ->
          {:ok, _} = Pgflow.archive(conn, cfg.queue, id)
          send(coordinator, {:outcome, :archived})
        end)

        Enum.each(conns, &Pgflow.close/1)
    after
      0 ->
        case next(conn, cfg, done) do
          {:ok, msgs} ->
            Enum.each(done, fn _ -> send(coordinator, {:outcome, :archived}) end)
            continue(coordinator, conns, i, cfg, msgs, done)

          {:error, error} ->
            Enum.each(conns, &Pgflow.close/1)
            exit({:read_failed, error})
        end
    end
  end

  defp next(conn, cfg, []), do: Pgflow.read(conn, cfg.queue, vt: cfg.lease, qty: 1, wait: cfg.wait)
  defp next(conn, cfg, done), do: Pgflow.archive_read(conn, cfg.queue, done, vt: cfg.lease, qty: 1)

  defp continue(coordinator, conns, i, cfg, [m], _done) do
    case handle(conns, m, cfg) do
      {:done, id} ->
        work(coordinator, conns, i, cfg, [id])

      outcome ->
        send(coordinator, {:outcome, outcome})
        work(coordinator, conns, i, cfg)
    end
  end

  defp continue(_coordinator, conns, _i, %{stop_when_idle: true}, [], []) do
    Enum.each(conns, &Pgflow.close/1)
  end

  defp continue(coordinator, conns, i, cfg, [], _done), do: work(coordinator, conns, i, cfg)

  defp handle([conn | handler_conn], %Message{} = m, cfg) do
    started = System.monotonic_time(:millisecond)
    args = [m | handler_conn]
    {pid, mon} = spawn_monitor(fn -> exit(run_handler(cfg.handler, args)) end)

    verdict =
      case supervise(conn, m, cfg, pid, mon, started) do
        {:handled, :ok} -> :archive
        {:handled, {:ok, _}} -> :archive
        {:handled, {:error, reason}} -> {:nack, inspect(reason)}
        {:handled, other} -> {:nack, "unexpected result #{inspect(other)}"}
        :timeout -> {:nack, "timeout after #{cfg.timeout} ms"}
        {:raised, why} -> {:nack, why}
        {:crashed, reason} -> {:nack, "crashed: #{inspect(reason)}"}
      end

    # A handler that failed may have left a transaction open on its connection; end it, so
    # its writes are undone and the next message does not run inside it.
    with {:nack, _} <- verdict, [hconn] <- handler_conn, do: Pgflow.rollback(hconn)
    finish(conn, m, cfg, verdict)
  end

  defp run_handler(handler, args) do
    {:handled, apply(handler, args)}
  rescue
    e -> {:raised, "raised: " <> Exception.message(e)}
  catch
    kind, reason -> {:raised, "#{kind}: #{inspect(reason)}"}
  end

  # Waits for the handler, renewing the lease every heartbeat, until it ends or times out.
  defp supervise(conn, m, cfg, pid, mon, started) do
    left = started + cfg.timeout - System.monotonic_time(:millisecond)

    receive do
      {:DOWN, ^mon, :process, ^pid, {:handled, result}} -> {:handled, result}
      {:DOWN, ^mon, :process, ^pid, {:raised, why}} -> {:raised, why}
      {:DOWN, ^mon, :process, ^pid, reason} -> {:crashed, reason}
    after
      max(min(cfg.heartbeat, left), 0) ->
        if left <= cfg.heartbeat do
          Process.demonitor(mon, [:flush])
          Process.exit(pid, :kill)
          :timeout
        else
          {:ok, _} = Pgflow.set_vt(conn, cfg.queue, m.id, cfg.lease)
          supervise(conn, m, cfg, pid, mon, started)
        end
    end
  end

  # Archived by the worker's next round trip (see work/5).
  defp finish(_conn, m, _cfg, :archive), do: {:done, m.id}

  defp finish(conn, m, cfg, {:nack, why}) do
    case Pgflow.nack(conn, cfg.queue, m.id, error: why, read_ct: m.read_ct) do
      {:ok, :dead} -> :dead
      {:ok, _} -> :nacked
      {:error, %Pgflow.Error{code: "55000"}} -> :lost
    end
  end
end
