defmodule Pgflow.Consumer.Worker do
  @moduledoc false
  # One worker of a consumer: read, handle, archive or nack, until stopped. It runs either under
  # `Pgflow.Consumer`'s supervisor (started by `start_link/1`, it opens its own connections and
  # reconnects with backoff) or under the coordinator of `Pgflow.Consumer.start/1` (`run/3`,
  # with connections opened for it). Either way it traps exits: its parent's exit (a
  # supervisor's shutdown) or a `:stop` message makes it finish the handlers in hand, give back
  # the messages of its batch that had not started, archive what it handled, close its
  # connections and end.

  require Logger
  alias Pgflow.Telemetry

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
      {:ok, conns} -> loop(state(cfg, parent, conns, true))
      :stop -> exit(:shutdown)
    end
  end

  @doc false
  # Under the coordinator of `Pgflow.Consumer.start/1`: `conns` are open and linked already.
  def run(parent, cfg, conns) do
    Process.flag(:trap_exit, true)
    Enum.each(conns, &Process.link/1)
    loop(state(cfg, parent, conns, false))
  end

  # `done`: what was handled, to archive with the next round trip; `fresh`: no read has
  # succeeded since this worker (re)started; `missing`: the backoff while the queue is missing;
  # `stopping`: a stop arrived while a batch was in hand.
  defp state(cfg, parent, conns, fresh),
    do: %{
      cfg: cfg,
      parent: parent,
      conns: conns,
      done: [],
      fresh: fresh,
      missing: nil,
      stopping: false
    }

  # Opens the connections (the reader's, and one per handler that may run at once when the
  # handler takes one), retrying with backoff; each is
  # linked to this worker, so a worker killed outright closes them and its session ends (on a
  # queue with session leases the server gives its lease back within a tick).
  defp connect(parent, cfg, backoff) do
    n = if cfg.handler_conn, do: 1 + cfg.parallel, else: 1
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

  defp stop?(%{stopping: true}), do: true

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

          if st.missing,
            do: Logger.info("pgflow consumer #{cfg.queue}: the queue exists now; consuming")

          # Idle means a long-poll read came back empty: an archive_read does not wait, so
          # its empty answer may only mean a retry is not due yet.
          idle = msgs == [] and st.done == []
          st = %{st | done: [], fresh: false, missing: nil}

          cond do
            msgs != [] ->
              {st, done} = handle_batch(st, msgs)
              loop(%{st | done: done})

            cfg.stop_when_idle and idle ->
              close(st)

            true ->
              loop(st)
          end

        {:error, %Pgflow.Error{code: "42704"} = e} when cfg.missing_queue == :wait ->
          # The queue is missing (not created yet, or dropped): wait for it in place. What
          # was handled cannot be archived anywhere.
          backoff = if st.missing, do: min(st.missing * 2, @max_backoff), else: 100

          if !st.missing do
            Logger.warning(
              "pgflow consumer #{cfg.queue}: #{Exception.message(e)}; retrying until the " <>
                "queue is created"
            )
          end

          case wait_or_stop(st.parent, backoff) do
            :stop -> close(st)
            :go -> loop(%{st | done: [], missing: backoff})
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
    do: Pgflow.read(conn, cfg.queue, vt: cfg.lease, qty: cfg.batch, wait: cfg.wait)

  defp next(conn, cfg, done),
    do: Pgflow.archive_read(conn, cfg.queue, done, vt: cfg.lease, qty: cfg.batch)

  # ---- a batch: its handlers, at most cfg.parallel at a time ----
  #
  # Each handler runs in a process of its own (linked: it dies with this worker). Until the
  # batch is done, every lease the worker holds (messages in hand and messages waiting their
  # turn) is renewed each heartbeat, and a handler past its timeout is killed. A stop (or the
  # parent's exit) lets the running handlers finish and hands the waiting messages back
  # unread. Returns the {id, receipt} of the successes, for the next round trip to archive.

  defp handle_batch(%{cfg: cfg, conns: [_ | handler_conns]} = st, msgs) do
    batch = %{
      waiting: msgs,
      running: %{},
      free: handler_conns,
      done: [],
      beat: now() + cfg.heartbeat
    }

    run_batch(st, batch)
  end

  defp run_batch(st, b) do
    b = if st.stopping, do: b, else: start_handlers(st, b)

    cond do
      b.running == %{} ->
        # Done, or stopping: then what did not start goes back to the queue at once.
        give_back(st, b.waiting)
        {st, Enum.reverse(b.done)}

      true ->
        await_handlers(st, b)
    end
  end

  defp start_handlers(%{cfg: cfg} = st, %{waiting: [m | rest]} = b)
       when map_size(b.running) < cfg.parallel do
    {handler_conn, free} = if cfg.handler_conn, do: {hd(b.free), tl(b.free)}, else: {[], b.free}
    meta = meta(cfg, m)

    Telemetry.execute(
      [:pgflow, :consume, :start],
      %{system_time: System.system_time(), monotonic_time: System.monotonic_time()},
      meta
    )

    {deliver, handler, conns} = {cfg.deliver, cfg.handler, List.wrap(handler_conn)}
    started = System.monotonic_time()
    # The payload is converted in the handler's process, not the worker's.
    pid = spawn_link(fn -> exit(run_handler(handler, [arg(deliver, m) | conns])) end)

    h = %{
      m: m,
      meta: meta,
      conn: handler_conn,
      started: started,
      deadline: now() + cfg.timeout
    }

    start_handlers(st, %{b | waiting: rest, free: free, running: Map.put(b.running, pid, h)})
  end

  defp start_handlers(_st, b), do: b

  defp arg(:message, m), do: m
  defp arg(:payload, m), do: Pgflow.Payload.both_keys(m.payload)

  defp await_handlers(%{cfg: cfg, parent: parent, conns: [conn | _]} = st, b) do
    next_deadline = b.running |> Map.values() |> Enum.map(& &1.deadline) |> Enum.min()
    running = b.running

    receive do
      {:EXIT, pid, result} when is_map_key(running, pid) ->
        {h, running} = Map.pop(running, pid)
        run_batch(st, finished(st, %{b | running: running}, h, verdict(result)))

      :stop ->
        run_batch(%{st | stopping: true}, b)

      {:EXIT, ^parent, _} ->
        run_batch(%{st | stopping: true}, b)
    after
      max(min(b.beat, next_deadline) - now(), 0) ->
        t = now()
        late = Enum.filter(running, fn {_, h} -> h.deadline <= t end)

        b =
          Enum.reduce(late, b, fn {pid, h}, b ->
            Process.unlink(pid)
            Process.exit(pid, :kill)

            receive do
              {:EXIT, ^pid, _} -> :ok
            after
              0 -> :ok
            end

            finished(
              st,
              %{b | running: Map.delete(b.running, pid)},
              h,
              {:exception, :exit, :timeout, [], "timeout after #{cfg.timeout} ms"}
            )
          end)

        b =
          if t >= b.beat do
            # A failed renewal (the lease was lost, or the connection) shows at the archive
            # or nack; the handlers keep going meanwhile.
            for m <- held(b),
                do: _ = Pgflow.set_vt(conn, cfg.queue, m.id, cfg.lease, receipt: m.receipt)

            %{b | beat: t + cfg.heartbeat}
          else
            b
          end

        run_batch(st, b)
    end
  end

  defp held(b), do: b.waiting ++ Enum.map(Map.values(b.running), & &1.m)

  defp give_back(_st, []), do: :ok

  defp give_back(%{cfg: cfg, conns: [conn | _]}, msgs) do
    Enum.each(msgs, &Pgflow.set_vt(conn, cfg.queue, &1.id, 0, receipt: &1.receipt))
  end

  defp now, do: System.monotonic_time(:millisecond)

  defp meta(cfg, m) do
    %{
      queue: cfg.queue,
      consumer: cfg.name,
      msg_id: m.id,
      read_ct: m.read_ct,
      payload: m.payload
    }
  end

  defp verdict({:handled, :ok}), do: :archive
  defp verdict({:handled, {:ok, _}}), do: :archive

  defp verdict({:handled, {:retry, ms}}) when is_integer(ms) and ms >= 0,
    do: {:nack, "retry requested in #{ms} ms", ms}

  defp verdict({:handled, {:error, reason}}), do: {:nack, error_text(reason), nil}
  defp verdict({:handled, other}), do: {:nack, "unexpected result #{inspect(other)}", nil}
  defp verdict({:raised, kind, reason, stack, why}), do: {:exception, kind, reason, stack, why}
  defp verdict(reason), do: {:exception, :exit, reason, [], "crashed: #{inspect(reason)}"}

  defp error_text(reason) when is_binary(reason), do: reason
  defp error_text(reason), do: inspect(reason)

  # One handler's end: archive (by the next round trip) or nack, then the events and, for a
  # failure, the log line.
  defp finished(%{cfg: cfg, conns: [conn | _]} = st, b, h, verdict) do
    # A handler that failed may have left a transaction open on its connection; end it, so
    # its writes are undone and the next message does not run inside it.
    if verdict != :archive, do: Enum.each(List.wrap(h.conn), &Pgflow.rollback/1)

    b = if cfg.handler_conn, do: %{b | free: [h.conn | b.free]}, else: b
    m = h.m
    duration = System.monotonic_time() - h.started

    case verdict do
      :archive ->
        Telemetry.execute(
          [:pgflow, :consume, :stop],
          %{duration: duration},
          Map.put(h.meta, :outcome, :archive)
        )

        %{b | done: [{m.id, m.receipt} | b.done]}

      {:nack, why, retry_ms} ->
        outcome = nack(conn, m, cfg, why, retry_ms)

        Telemetry.execute(
          [:pgflow, :consume, :stop],
          %{duration: duration},
          Map.put(h.meta, :outcome, outcome_name(outcome))
        )

        failed(st, h.meta, outcome, why)
        b

      {:exception, kind, reason, stack, why} ->
        outcome = nack(conn, m, cfg, why, nil)

        Telemetry.execute(
          [:pgflow, :consume, :exception],
          %{duration: duration},
          Map.merge(h.meta, %{
            kind: kind,
            reason: reason,
            stacktrace: stack,
            outcome: outcome_name(outcome)
          })
        )

        failed(st, h.meta, outcome, why)
        b
    end
  end

  defp outcome_name(:nacked), do: :retry
  defp outcome_name(other), do: other

  # Every failed delivery is reported, whatever becomes of it.
  defp failed(%{cfg: cfg}, meta, outcome, why) do
    cfg.report.(outcome)

    {level, event, next} =
      case outcome do
        :nacked ->
          {:warning, :retry, "it will be retried (the queue's retry policy)"}

        :dead ->
          {:error, :dead,
           "dead-lettered after #{meta.read_ct} deliver#{if meta.read_ct == 1, do: "y", else: "ies"}"}

        :lost ->
          {:warning, :lost,
           "not nacked: its lease was lost or the connection failed; it comes back when the " <>
             "lease runs out"}
      end

    Logger.log(
      level,
      "pgflow consumer #{inspect(cfg.name)}: message #{meta.msg_id} of queue " <>
        "#{inspect(cfg.queue)} (delivery #{meta.read_ct}) failed: #{why}; #{next}",
      queue: cfg.queue,
      msg_id: meta.msg_id,
      read_ct: meta.read_ct
    )

    Telemetry.execute(
      [:pgflow, :consume, event],
      %{count: 1},
      meta |> Map.delete(:payload) |> Map.put(:reason, why)
    )
  end

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
