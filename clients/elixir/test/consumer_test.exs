defmodule Pgflow.ConsumerTest do
  use ExUnit.Case, async: false
  import Pgflow.TestHelper
  alias Pgflow.Consumer

  setup do
    conn = conn!()
    on_exit(fn -> Process.alive?(conn) && Pgflow.close(conn) end)
    {:ok, conn: conn}
  end

  defp send_n(c, q, n) do
    for i <- 1..n do
      {:ok, id} = Pgflow.send(c, q, %{"i" => i})
      id
    end
  end

  test "4 handlers drain 100 messages; failures are retried; each is archived exactly once",
       %{conn: c} do
    q = fresh_queue!(c, "ex_drain", ", retry_delay => '10 ms', retry_jitter => 0")
    ids = send_n(c, q, 100)

    # Every tenth message fails on its first delivery.
    handler = fn m ->
      if rem(m.payload["i"], 10) == 0 and m.read_ct == 1, do: {:error, :flaky}, else: :ok
    end

    {:ok, consumer} =
      Consumer.start(
        connect: dsn(),
        queue: q,
        handler: handler,
        concurrency: 4,
        wait: 500,
        stop_when_idle: true
      )

    stats = Consumer.await(consumer)
    assert stats == %{archived: 100, nacked: 10, dead: 0, lost: 0}
    assert archived_counts(c, q) == Map.new(ids, &{&1, 1})
    assert {:ok, %{"queue_length" => 0, "dlq_length" => 0}} = Pgflow.metrics(c, q)
  end

  test "a slow handler keeps its lease through heartbeats", %{conn: c} do
    q = fresh_queue!(c, "ex_slow")
    [id] = send_n(c, q, 1)
    parent = self()

    # The handler outlives at least two whole leases, measured by the server's clock from the
    # end of the first lease (m.vt); while it works, another reader must see nothing. A 2 s
    # lease renewed every 200 ms leaves 1.8 s for a late heartbeat, so only a broken renewal
    # lets the lease run out.
    handler = fn m ->
      peek = fn peek, n ->
        Process.sleep(300)
        send(parent, {:peek, Pgflow.read(c, q)})

        case Pgflow.query(
               c,
               "SELECT (clock_timestamp() > $1::timestamptz + interval '4 s')::text",
               [m.vt]
             ) do
          {:ok, [["true"]]} when n >= 3 -> n
          _ -> peek.(peek, n + 1)
        end
      end

      send(parent, {:peeks, peek.(peek, 1)})
      :ok
    end

    {:ok, consumer} =
      Consumer.start(
        connect: dsn(),
        queue: q,
        handler: handler,
        concurrency: 1,
        lease: 2_000,
        heartbeat: 200,
        timeout: 30_000,
        wait: 200,
        stop_when_idle: true
      )

    assert Consumer.await(consumer) == %{archived: 1, nacked: 0, dead: 0, lost: 0}
    assert_received {:peeks, peeks}
    for _ <- 1..peeks, do: assert_received({:peek, {:ok, []}})

    assert one!(c, "SELECT read_ct::text FROM pgflow.archive WHERE msg_id = $1
                     AND queue_id = (SELECT queue_id FROM pgflow.queue WHERE queue_name = $2)", [
             id,
             q
           ]) == "1"
  end

  test "a handler past its timeout is killed and nacked; the retry succeeds", %{conn: c} do
    q = fresh_queue!(c, "ex_timeout", ", retry_delay => '10 ms', retry_jitter => 0")
    [id] = send_n(c, q, 1)
    parent = self()

    handler = fn m ->
      if m.read_ct == 1 do
        send(parent, {:stuck, self()})
        # Blocks until killed by the consumer.
        receive do: (:never -> :ok)
      else
        :ok
      end
    end

    {:ok, consumer} =
      Consumer.start(
        connect: dsn(),
        queue: q,
        handler: handler,
        concurrency: 1,
        lease: 5_000,
        timeout: 200,
        wait: 500,
        stop_when_idle: true
      )

    assert_receive {:stuck, stuck}, 5_000
    ref = Process.monitor(stuck)
    # The handler can only end by being killed; if that happened before the monitor was set
    # (this process ran late), the reason is :noproc.
    assert_receive {:DOWN, ^ref, :process, ^stuck, reason} when reason in [:killed, :noproc],
                   5_000

    assert Consumer.await(consumer) == %{archived: 1, nacked: 1, dead: 0, lost: 0}
    assert archived_counts(c, q) == %{id => 1}
  end

  test "a crashing handler is nacked until the message is dead-lettered", %{conn: c} do
    q =
      fresh_queue!(c, "ex_crash", ", max_retries => 2, retry_delay => '10 ms', retry_jitter => 0")

    [_id] = send_n(c, q, 1)

    {:ok, consumer} =
      Consumer.start(
        connect: dsn(),
        queue: q,
        handler: fn _ -> raise "bad input" end,
        concurrency: 2,
        wait: 500,
        stop_when_idle: true
      )

    assert Consumer.await(consumer) == %{archived: 0, nacked: 2, dead: 1, lost: 0}
    assert one!(c, "SELECT read_ct::text FROM pgflow.dlq_list($1)", [q]) == "3"
    assert one!(c, "SELECT last_error FROM pgflow.dlq_list($1)", [q]) =~ "bad input"
  end

  test "a failed handler's open transaction is rolled back, not carried into the next message",
       %{conn: c} do
    q = fresh_queue!(c, "ex_handler_tx", ", retry_delay => '10 ms', retry_jitter => 0")
    out = fresh_queue!(c, "ex_handler_out")
    [_id] = send_n(c, q, 1)

    # The first delivery opens a transaction, writes, and fails; the retry, on the same worker
    # and handler connection, writes and succeeds.
    handler = fn m, conn ->
      {:ok, []} = Pgflow.query(conn, "BEGIN")
      {:ok, _} = Pgflow.send(conn, out, %{"attempt" => m.read_ct})

      if m.read_ct == 1 do
        raise "failed after writing"
      else
        {:ok, []} = Pgflow.query(conn, "COMMIT")
        :ok
      end
    end

    {:ok, consumer} =
      Consumer.start(
        connect: dsn(),
        queue: q,
        handler: handler,
        concurrency: 1,
        wait: 500,
        stop_when_idle: true
      )

    assert Consumer.await(consumer) == %{archived: 1, nacked: 1, dead: 0, lost: 0}
    assert {:ok, [m]} = Pgflow.read(c, out, qty: 10)
    assert m.payload == %{"attempt" => 2}
  end

  test "a batch: one read leases batch_size, max_parallel_workers run at once; a stop gives " <>
         "back what had not started",
       %{conn: c} do
    q = fresh_queue!(c, "ex_batch")
    ids = send_n(c, q, 6)
    parent = self()

    # Each handler waits until the test lets it go.
    handler = fn m ->
      send(parent, {:started, m.payload["i"], self()})

      receive do
        :go -> :ok
      end
    end

    {:ok, consumer} =
      Consumer.start(
        connect: dsn(),
        queue: q,
        handler: handler,
        batch_size: 4,
        max_parallel_workers: 2,
        wait: 200
      )

    # One worker leased four and runs two of them.
    assert_receive {:started, 1, h1}, 5_000
    assert_receive {:started, 2, h2}, 5_000
    assert one!(c, "SELECT in_flight::text FROM pgflow.metrics($1)", [q]) == "4"

    # The first done lets the third in; then a stop: the running two finish, the fourth goes
    # back unread, nothing stays leased.
    send(h1, :go)
    assert_receive {:started, 3, h3}, 5_000
    # The worker (the handlers' one link) must have the stop before the handlers end.
    {:links, [worker]} = Process.info(h2, :links)
    :erlang.trace(worker, true, [:receive])
    send(consumer.pid, :stop)
    assert_receive {:trace, ^worker, :receive, :stop}, 5_000
    :erlang.trace(worker, false, [:receive])
    send(h2, :go)
    send(h3, :go)
    assert Consumer.await(consumer) == %{archived: 3, nacked: 0, dead: 0, lost: 0}

    assert archived_counts(c, q) == Map.new(Enum.take(ids, 3), &{&1, 1})
    assert {:ok, %{"in_flight" => 0, "visible" => 3}} = Pgflow.metrics(c, q)
  end

  test "stop finishes the messages in hand: none lost, none leased, none twice", %{conn: c} do
    q = fresh_queue!(c, "ex_stop")
    ids = send_n(c, q, 40)
    parent = self()

    # 200 ms a message: draining all 40 takes 2 s, so a stop sent after 6 have started
    # arrives well before the end even when this process runs late.
    handler = fn m ->
      send(parent, {:started, m.id})
      Process.sleep(200)
      :ok
    end

    {:ok, consumer} =
      Consumer.start(connect: dsn(), queue: q, handler: handler, concurrency: 4, wait: 200)

    # Stop while handlers are busy.
    for _ <- 1..6, do: assert_receive({:started, _}, 5_000)
    stats = Consumer.stop(consumer)
    assert stats.nacked == 0 and stats.lost == 0
    assert stats.archived >= 6 and stats.archived < 40

    archived = archived_counts(c, q)
    assert map_size(archived) == stats.archived
    assert Enum.all?(Map.values(archived), &(&1 == 1))

    assert {:ok, %{"in_flight" => 0, "visible" => visible}} = Pgflow.metrics(c, q)
    assert visible + stats.archived == length(ids)
  end
end
