defmodule Pgflow.PoolingTest do
  # Through PgBouncer in transaction mode (tests/cluster/pooling.sh sets PGFLOW_POOLED_DSN, the
  # pooler in front of the test database, and runs `mix test --only pooling`): a connection
  # opened with `pooled=true` prepares nothing, and each call runs in a transaction of its own.
  # The consumer's long-poll reads, heartbeats, nacks and archives go through the pooler; a
  # queue with session leases is refused.
  use ExUnit.Case, async: false
  import Pgflow.TestHelper
  alias Pgflow.Consumer

  @moduletag :pooling
  @moduletag timeout: 180_000

  defp pooled, do: System.fetch_env!("PGFLOW_POOLED_DSN") <> " pooled=true"

  setup do
    conn = conn!()
    on_exit(fn -> Process.alive?(conn) && Pgflow.close(conn) end)
    {:ok, conn: conn}
  end

  test "calls through the pooler, errors included, leave nothing prepared or open", %{conn: c} do
    q = fresh_queue!(c, "ex_pooled_calls")
    {:ok, p} = Pgflow.connect(pooled())
    assert Pgflow.pooled?(p)

    for n <- 1..20 do
      {:ok, id} = Pgflow.send(p, q, %{"n" => n})
      {:ok, [m]} = Pgflow.read(p, q)
      assert m.id == id
      assert {:ok, true} = Pgflow.archive(p, q, id, receipt: m.receipt)
      # An error comes back with its SQLSTATE, and the next call works.
      assert {:error, %Pgflow.Error{code: "42704"}} = Pgflow.send(p, "ex_no_such_queue", %{})
    end

    # Inside a transaction of the caller's, the calls join it.
    assert {:error, :rolled_back} =
             Pgflow.transaction(p, fn ->
               {:ok, _} = Pgflow.send(p, q, %{"n" => "rolled back"})
               {:error, :rolled_back}
             end)

    assert {:ok, %{"queue_length" => 0}} = Pgflow.metrics(p, q)
    Pgflow.close(p)
  end

  test "the consumer's reads, heartbeats, nacks and archives through the pooler", %{conn: c} do
    q = fresh_queue!(c, "ex_pooled", ", retry_delay => '0', retry_jitter => 0")
    parent = self()

    handler = fn m ->
      i = m.payload["i"]

      cond do
        i in [3, 7] and m.read_ct == 1 ->
          {:error, :first_delivery_fails}

        i == 5 ->
          # Longer than two whole 2 s leases by the server's clock (read directly, not through
          # the pooler): the heartbeats through the pooler keep the message ours.
          wait = fn wait ->
            Process.sleep(200)

            case Pgflow.query(
                   c,
                   "SELECT (clock_timestamp() > $1::timestamptz + interval '4 s')::text",
                   [m.vt]
                 ) do
              {:ok, [["true"]]} -> :ok
              _ -> wait.(wait)
            end
          end

          wait.(wait)
          send(parent, :slow_done)
          :ok

        true ->
          :ok
      end
    end

    {:ok, consumer} =
      Consumer.start(
        connect: pooled(),
        queue: q,
        handler: handler,
        concurrency: 3,
        lease: 2_000,
        heartbeat: 200,
        timeout: 60_000,
        wait: 1_000
      )

    # The long-polls wait in the server before anything is sent: the sends wake them.
    wait_for = fn wait_for ->
      case Pgflow.query(
             c,
             "SELECT count(*)::text FROM pg_stat_activity WHERE state = 'active'
                AND pid <> pg_backend_pid() AND query LIKE '%pgflow.read(%'",
             []
           ) do
        {:ok, [["0"]]} ->
          Process.sleep(50)
          wait_for.(wait_for)

        _ ->
          :ok
      end
    end

    wait_for.(wait_for)
    {:ok, p} = Pgflow.connect(pooled())
    ids = for i <- 1..12, do: elem(Pgflow.send(p, q, %{"i" => i}), 1)
    Pgflow.close(p)
    assert_receive :slow_done, 120_000

    drained = fn drained ->
      if map_size(archived_counts(c, q)) < 12 do
        Process.sleep(50)
        drained.(drained)
      end
    end

    drained.(drained)
    stats = Consumer.stop(consumer)
    assert %{archived: 12, nacked: 2, dead: 0, lost: 0} = stats
    assert archived_counts(c, q) == Map.new(ids, &{&1, 1})

    {:ok, rows} =
      Pgflow.query(
        c,
        "SELECT (message->>'i')::text, read_ct::text FROM pgflow.archive a
           JOIN pgflow.queue USING (queue_id) WHERE queue_name = $1",
        [q]
      )

    read_cts = Map.new(rows, fn [i, n] -> {String.to_integer(i), String.to_integer(n)} end)
    assert {read_cts[3], read_cts[7], read_cts[5]} == {2, 2, 1}
  end

  test "a queue with session leases is refused under pooling", %{conn: c} do
    q = fresh_queue!(c, "ex_pooled_session", ", session_leases => true")

    assert {:error, %Pgflow.Error{code: "0A000", message: message}} =
             Consumer.start(connect: pooled(), queue: q, handler: fn _ -> :ok end)

    assert message =~ "session_leases"
  end
end
