defmodule Pgflow.Consumer.Worker do
  @moduledoc false
  # One worker of a consumer: read, handle, archive or nack, until stopped. It runs either under
  # `Pgflow.Consumer`'s supervisor (started by `start_link/1`, it opens its own connections and
  # reconnects with backoff) or under the coordinator of `Pgflow.Consumer.start/1` (`run/3`,
  # with connections opened for it). Either way it traps exits: its parent's exit (a
  # supervisor's shutdown) or a `:stop` message makes it finish the message in hand, archive
  # what it handled, close its connections and end.

  require Logger
  alias Pgflow.{Message, Telemetry}

  @max_backoff 5_000

  # Errors that mean the connection is lost, not that the call was wrong: the connection
  # failures of class 08 (08006 also stands for a dead driver process) and a session ended by
  # the server (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now).
  @lost ~w(08000 08003 08006 08001 08004 57P01 57P02 57P03)

  @doc false
  def child_spec(cfg) do
    %{
      id: {__MODULE__, cfg.slot},
      start: {__MODULE__, :start_link, [cfg]},
      restart: :permanent,
      # The message in hand may take its whole timeout to finish.
      shutdown: cfg.timeout + 5_000,
      type: :worker
    }
  end

  @doc false
  def start_link(cfg) do
    parent = self()
    {:ok, :proc_lib.spawn_link(fn -> supervised(parent, cfg) end)}
  end

  defp supervised(parent, cfg) do
    Process.flag(:trap_exit, true)
    # A restarted worker waits before it reconnects: 100 ms after its first crash, doubling
    # per crash up to 5 s. The count survives the restart (the consumer's supervisor holds
    # it) and is reset by the first read that succeeds.
    crashes = :counters.get(cfg.restarts, cfg.slot)
    :counters.add(cfg.restarts, cfg.slot, 1)

    if crashes > 0 and
         wait_or_stop(parent, min(100 * Integer.pow(2, crashes - 1), @max_backoff)) == :stop,
       do: exit(:shutdown)

    case connect(parent, cfg, 100) do
      {:ok, conns} -> loop(%{cfg: cfg, parent: parent, conns: conns, done: [], fresh: true})
      :stop -> exit(:shutdown)
    end
  end

  @doc false
  # Under the coordinator of `Pgflow.Consumer.start/1`: `conns` are open and linked already.
  def run(parent, cfg, conns) do
    Process.flag(:trap_exit, true)
    Enum.each(conns, &Process.link/1)
    loop(%{cfg: cfg, parent: parent, conns: conns, done: [], fresh: false})
  end

  # Opens the connections (two when the handler takes one), retrying with backoff; each is
  # linked to this worker, so a worker killed outright closes them and its session ends (on a
  # queue with session leases the server gives its lease back within a tick).
  defp connect(parent, cfg, backoff) do
    n = if cfg.handler_conn, do: 2, else: 1
    opened = for _ <- 1..n, do: Pgflow.connect(cfg.connect)

    case Enum.find(opened, &match?({:error, _}, &1)) do
      nil ->
        conns = for {:ok, c} <- opened, do: c
        Enum.each(conns, &Process.link/1)
        {:ok, conns}

      {:error, error} ->
        for {:ok, c} <- opened, do: Pgflow.close(c)

        Logger.warning(
          "pgflow consumer #{cfg.queue}: cannot connect (#{Exception.message(error)}); retrying in #{backoff} ms"
        )

        case wait_or_stop(parent, backoff) do
          :stop -> :stop
          :go -> connect(parent, cfg, min(backoff * 2, @max_backoff))
        end
    end
  end

  # Sleeps `ms` unless told to stop meanwhile.
  defp wait_or_stop(parent, ms) do
    receive do
      :stop -> :stop
      {:EXIT, ^parent, _} -> :stop
    after
      ms -> :go
    end
  end

  defp stop?(%{parent: parent}) do
    receive do
      :stop -> true
      {:EXIT, ^parent, _} -> true
    after
      0 -> false
    end
  end

  defp loop(%{cfg: cfg, conns: [conn | _]} = st) do
    if stop?(st) do
      # Archive what was handled, then close: nothing is left leased.
      Enum.each(st.done, fn {id, receipt} ->
        case Pgflow.archive(conn, cfg.queue, id, receipt: receipt) do
          {:ok, _} ->
            cfg.report.(:archived)

          {:error, e} ->
            Logger.warning(
              "pgflow consumer #{cfg.queue}: final archive failed: #{Exception.message(e)}"
            )
        end
      end)

      close(st)
    else
      case next(conn, cfg, st.done) do
        {:ok, msgs} ->
          Enum.each(st.done, fn _ -> cfg.report.(:archived) end)
          if st.fresh, do: :counters.put(cfg.restarts, cfg.slot, 1)
          # Idle means a long-poll read came back empty: an archive_read does not wait, so
          # its empty answer may only mean a retry is not due yet.
          idle = msgs == [] and st.done == []
          st = %{st | done: [], fresh: false}

          case msgs do
            [m] ->
              case handle(st, m) do
                {:done, id} ->
                  loop(%{st | done: [id]})

                outcome ->
                  cfg.report.(outcome)
                  loop(st)
              end

            [] ->
              if cfg.stop_when_idle and idle, do: close(st), else: loop(st)
          end

        {:error, %Pgflow.Error{code: code} = e}
        when is_map_key(cfg, :restarts) and code in @lost ->
          # The connection or its session is gone. What was handled but not archived comes
          # back when its lease runs out (at least once); reconnect with backoff in place.
          Logger.warning("pgflow consumer #{cfg.queue}: #{Exception.message(e)}; reconnecting")
          close(st)

          case connect(st.parent, cfg, 100) do
            {:ok, conns} -> loop(%{st | conns: conns, done: []})
            :stop -> :ok
          end

        {:error, error} ->
          # Anything else (the queue was dropped, a privilege revoked): crash, so the
          # supervisor restarts this worker with backoff.
          close(st)
          exit({:read_failed, error})
      end
    end
  end

  defp close(%{conns: conns}) do
    Enum.each(conns, fn c ->
      Process.unlink(c)
      Pgflow.close(c)
    end)

    # Forget the closed connections' exits.
    Enum.each(conns, fn c ->
      receive do
        {:EXIT, ^c, _} -> :ok
      after
        0 -> :ok
      end
    end)
  end

  defp next(conn, cfg, []),
    do: Pgflow.read(conn, cfg.queue, vt: cfg.lease, qty: 1, wait: cfg.wait)

  defp next(conn, cfg, done),
    do: Pgflow.archive_read(conn, cfg.queue, done, vt: cfg.lease, qty: 1)

  # Runs the handler in a process of its own (linked: it dies with this worker), renews the
  # lease while it works, and turns the result into an archive (by the next round trip) or a
  # nack.
  defp handle(%{cfg: cfg, conns: [conn | handler_conn]}, %Message{} = m) do
    meta = %{queue: cfg.queue, consumer: cfg.name, msg_id: m.id, read_ct: m.read_ct}

    Telemetry.execute(
      [:pgflow, :consume, :start],
      %{system_time: System.system_time(), monotonic_time: System.monotonic_time()},
      meta
    )

    started = System.monotonic_time()
    args = [m | handler_conn]
    pid = spawn_link(fn -> exit(run_handler(cfg.handler, args)) end)

    verdict =
      case supervise(conn, m, cfg, pid, System.monotonic_time(:millisecond)) do
        {:handled, :ok} -> :archive
        {:handled, {:ok, _}} -> :archive
        {:handled, {:retry, ms}} when is_integer(ms) and ms >= 0 -> {:nack, "retry requested", ms}
        {:handled, {:error, reason}} -> {:nack, inspect(reason), nil}
        {:handled, other} -> {:nack, "unexpected result #{inspect(other)}", nil}
        :timeout -> {:exception, :exit, :timeout, [], "timeout after #{cfg.timeout} ms"}
        {:raised, kind, reason, stack, why} -> {:exception, kind, reason, stack, why}
        {:crashed, reason} -> {:exception, :exit, reason, [], "crashed: #{inspect(reason)}"}
      end

    # A handler that failed may have left a transaction open on its connection; end it, so
    # its writes are undone and the next message does not run inside it.
    if verdict != :archive, do: Enum.each(handler_conn, &Pgflow.rollback/1)

    outcome = finish(conn, m, cfg, verdict)
    duration = System.monotonic_time() - started

    case verdict do
      {:exception, kind, reason, stack, _} ->
        Telemetry.execute(
          [:pgflow, :consume, :exception],
          %{duration: duration},
          Map.merge(meta, %{
            kind: kind,
            reason: reason,
            stacktrace: stack,
            outcome: outcome_name(outcome)
          })
        )

      _ ->
        Telemetry.execute(
          [:pgflow, :consume, :stop],
          %{duration: duration},
          Map.put(meta, :outcome, outcome_name(outcome))
        )
    end

    outcome
  end

  defp outcome_name({:done, _}), do: :archive
  defp outcome_name(:nacked), do: :retry
  defp outcome_name(other), do: other

  defp run_handler({mod, fun}, args), do: run_handler(fn_of(mod, fun, length(args)), args)

  defp run_handler(handler, args) do
    {:handled, apply(handler, args)}
  rescue
    e -> {:raised, :error, e, __STACKTRACE__, "raised: " <> Exception.message(e)}
  catch
    kind, reason -> {:raised, kind, reason, __STACKTRACE__, "#{kind}: #{inspect(reason)}"}
  end

  defp fn_of(mod, fun, 1), do: &apply(mod, fun, [&1])
  defp fn_of(mod, fun, 2), do: &apply(mod, fun, [&1, &2])

  # Waits for the handler, renewing the lease every heartbeat, until it ends or times out.
  defp supervise(conn, m, cfg, pid, started) do
    left = started + cfg.timeout - System.monotonic_time(:millisecond)

    receive do
      {:EXIT, ^pid, {:handled, result}} -> {:handled, result}
      {:EXIT, ^pid, {:raised, kind, reason, stack, why}} -> {:raised, kind, reason, stack, why}
      {:EXIT, ^pid, reason} -> {:crashed, reason}
    after
      max(min(cfg.heartbeat, left), 0) ->
        if left <= cfg.heartbeat do
          Process.unlink(pid)
          Process.exit(pid, :kill)

          receive do
            {:EXIT, ^pid, _} -> :ok
          after
            0 -> :ok
          end

          :timeout
        else
          # A failed renewal (the lease was lost, or the connection) shows at the archive or
          # nack; the handler keeps going meanwhile.
          _ = Pgflow.set_vt(conn, cfg.queue, m.id, cfg.lease, receipt: m.receipt)
          supervise(conn, m, cfg, pid, started)
        end
    end
  end

  # Archived by the worker's next round trip (see loop/1).
  defp finish(_conn, m, _cfg, :archive), do: {:done, {m.id, m.receipt}}
  defp finish(conn, m, cfg, {:nack, why, retry_ms}), do: nack(conn, m, cfg, why, retry_ms)
  defp finish(conn, m, cfg, {:exception, _, _, _, why}), do: nack(conn, m, cfg, why, nil)

  defp nack(conn, m, cfg, why, retry_ms) do
    case Pgflow.nack(conn, cfg.queue, m.id, error: why, receipt: m.receipt, retry_after: retry_ms) do
      {:ok, :dead} -> :dead
      {:ok, _} -> :nacked
      {:error, %Pgflow.Error{code: "55000"}} -> :lost
      # The connection failed: the lease runs out (or, with session leases, ends with the
      # session) and the retry policy applies then.
      {:error, _} -> :lost
    end
  end
end
