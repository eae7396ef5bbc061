defmodule PgflowTest do
  use ExUnit.Case, async: false
  import Pgflow.TestHelper
  require Logger

  setup do
    conn = conn!()
    on_exit(fn -> Process.alive?(conn) && Pgflow.close(conn) end)
    {:ok, conn: conn}
  end

  test "send, read, archive and metrics round-trip a payload, headers and UTF-8", %{conn: c} do
    q = fresh_queue!(c, "ex_basic")
    payload = %{"text" => "héllo → wörld ✓", "n" => 42, "list" => [1, 2.5, nil, true]}
    assert {:ok, id} = Pgflow.send(c, q, payload, headers: %{"trace" => "t-1"})
    assert {:ok, [m]} = Pgflow.read(c, q, vt: 30_000)
    assert m.id == id
    assert m.read_ct == 1
    assert m.payload == payload
    assert m.headers == %{"trace" => "t-1"}
    assert {:ok, %{"in_flight" => 1, "queue_length" => 1}} = Pgflow.metrics(c, q)
    # Leased: nobody else sees it.
    assert {:ok, []} = Pgflow.read(c, q)
    assert {:ok, true} = Pgflow.archive(c, q, id)
    assert {:ok, false} = Pgflow.archive(c, q, id)
    assert {:ok, %{"queue_length" => 0, "total_archived" => 1}} = Pgflow.metrics(c, q)
  end

  test "archive_read archives what is done and leases the next in one call", %{conn: c} do
    q = fresh_queue!(c, "ex_archive_read")
    {:ok, a} = Pgflow.send(c, q, %{"n" => 1})
    {:ok, b} = Pgflow.send(c, q, %{"n" => 2})
    assert {:ok, [%{id: ^a}]} = Pgflow.read(c, q, vt: 30_000)
    # A bad argument changes nothing: a stays leased.
    assert {:error, %Pgflow.Error{code: "22023"}} = Pgflow.archive_read(c, q, [a], qty: 0)
    assert {:ok, %{"in_flight" => 1, "total_archived" => 0}} = Pgflow.metrics(c, q)
    assert {:ok, [%{id: ^b}]} = Pgflow.archive_read(c, q, [a], vt: 30_000, qty: 10)
    assert {:ok, []} = Pgflow.archive_read(c, q, [b])
    assert {:ok, %{"queue_length" => 0, "total_archived" => 2}} = Pgflow.metrics(c, q)
  end

  test "priority and delay are honoured", %{conn: c} do
    q = fresh_queue!(c, "ex_order")
    {:ok, low} = Pgflow.send(c, q, %{"p" => "low"})
    {:ok, _later} = Pgflow.send(c, q, %{"p" => "later"}, delay: 60_000, priority: 100)
    {:ok, high} = Pgflow.send(c, q, %{"p" => "high"}, priority: 10)
    assert {:ok, [a, b]} = Pgflow.read(c, q, qty: 10)
    assert [a.id, b.id] == [high, low]
    assert {:ok, %{"delayed" => 1}} = Pgflow.metrics(c, q)
  end

  test "errors carry their SQLSTATE and the connection stays usable", %{conn: c} do
    q = fresh_queue!(c, "ex_errors")
    assert {:error, %Pgflow.Error{code: "42704", message: msg}} = Pgflow.send(c, "ex_nope", %{})
    assert msg =~ "ex_nope"
    assert {:error, %Pgflow.Error{code: "22023"}} = Pgflow.read(c, q, qty: 0)
    assert {:error, %Pgflow.Error{code: "22023"}} = Pgflow.send(c, q, %{}, priority: 40_000)
    assert {:error, %Pgflow.Error{code: "42601"}} = Pgflow.query(c, "SELEC 1")
    # Still a working connection, and nothing was stored by the failed calls.
    assert {:ok, _} = Pgflow.send(c, q, %{"ok" => true})
    assert {:ok, %{"queue_length" => 1}} = Pgflow.metrics(c, q)
    assert_raise ArgumentError, ~r/at most 4000 ms/, fn -> Pgflow.read(c, q, wait: 10_000) end
  end

  test "a transaction commits together or not at all", %{conn: c} do
    q = fresh_queue!(c, "ex_tx")

    assert {:error, %Pgflow.Error{code: "42704"}} =
             Pgflow.transaction(c, fn ->
               {:ok, _} = Pgflow.send(c, q, %{"n" => 1})
               Pgflow.send(c, "ex_nope", %{"n" => 2})
             end)

    assert_raise RuntimeError, fn ->
      Pgflow.transaction(c, fn ->
        {:ok, _} = Pgflow.send(c, q, %{"n" => 3})
        raise "handler bug"
      end)
    end

    assert {:ok, %{"queue_length" => 0}} = Pgflow.metrics(c, q)

    assert {:ok, [_, _]} =
             Pgflow.transaction(c, fn ->
               {:ok, a} = Pgflow.send(c, q, %{"n" => 4})
               {:ok, b} = Pgflow.send(c, q, %{"n" => 5})
               {:ok, [a, b]}
             end)

    assert {:ok, %{"queue_length" => 2}} = Pgflow.metrics(c, q)
  end

  test "nack retries with backoff, refuses a stale read_ct, then dead-letters", %{conn: c} do
    q = fresh_queue!(c, "ex_nack", ", max_retries => 1, retry_delay => '1 hour'")
    {:ok, id} = Pgflow.send(c, q, %{"job" => 1})
    {:ok, [m1]} = Pgflow.read(c, q)
    assert {:ok, :retry} = Pgflow.nack(c, q, id, error: "boom", read_ct: m1.read_ct)
    # The backoff holds it: not visible now; retry_after 0 on a second nack is refused
    # because the lease this read_ct belonged to is gone.
    assert {:ok, []} = Pgflow.read(c, q)
    assert {:error, %Pgflow.Error{code: "55000"}} = Pgflow.nack(c, q, id, read_ct: m1.read_ct)
    # Make it due now, read it again (read_ct 2 > max_retries 1): the next nack kills it.
    assert {:ok, true} = Pgflow.set_vt(c, q, id, 0)
    {:ok, [m2]} = Pgflow.read(c, q)
    assert m2.read_ct == 2
    assert {:ok, :dead} = Pgflow.nack(c, q, id, error: "boom again", read_ct: 2)
    assert {:ok, :gone} = Pgflow.nack(c, q, id)
    assert {:ok, %{"queue_length" => 0, "dlq_length" => 1}} = Pgflow.metrics(c, q)

    assert one!(c, "SELECT last_error FROM pgflow.dlq_list($1)", [q]) == "boom again"
  end

  test "receipts name the delivery: stale ones archive, extend and nack nothing", %{conn: c} do
    q = fresh_queue!(c, "ex_receipts")
    {:ok, id} = Pgflow.send(c, q, %{"job" => 1})
    {:ok, [m1]} = Pgflow.read(c, q)
    # Handed back and read again: the second delivery has a receipt of its own.
    assert {:ok, true} = Pgflow.set_vt(c, q, id, 0, receipt: m1.receipt)
    {:ok, [m2]} = Pgflow.read(c, q)
    assert m2.read_ct == 2 and m2.receipt != m1.receipt
    assert {:ok, false} = Pgflow.archive(c, q, id, receipt: m1.receipt)
    assert {:ok, []} = Pgflow.archive_read(c, q, [{id, m1.receipt}])

    assert {:error, %Pgflow.Error{code: "55000"}} =
             Pgflow.set_vt(c, q, id, 60_000, receipt: m1.receipt)

    assert {:error, %Pgflow.Error{code: "55000"}} = Pgflow.nack(c, q, id, receipt: m1.receipt)
    assert {:ok, %{"queue_length" => 1}} = Pgflow.metrics(c, q)
    assert {:ok, []} = Pgflow.archive_read(c, q, [{id, m2.receipt}])
    assert {:ok, %{"queue_length" => 0}} = Pgflow.metrics(c, q)
  end

  # Longer than the probe's bounds, so that a failure still runs the `after` that resets the
  # setting (a timed-out test is killed, and every later commit would wait).
  @tag timeout: 180_000
  test "a cancelled wait for the synchronous standby is an unknown outcome, not a success",
       %{conn: c} do
    q = fresh_queue!(c, "ex_syncrep")
    {:ok, admin} = Pgflow.connect(System.fetch_env!("PGFLOW_TEST_DSN"))
    {:ok, producer} = Pgflow.connect(dsn())
    pid = one!(producer, "SELECT pg_backend_pid()::text")

    # A synchronous standby that never connects: every commit waits for it (the tests run one
    # after another, so no other test is held up).
    set = fn value ->
      :ok = simple_sql(admin, "ALTER SYSTEM SET synchronous_standby_names = '#{value}'")
      {:ok, _} = Pgflow.query(admin, "SELECT pg_reload_conf()::text", [])
    end

    try do
      set.("nobody")
      wait_setting(producer, "nobody")
      commits_wait_for_the_standby(admin)
      parent = self()

      # The driver's crash report for the stopped connection is logged with its state, which
      # holds the password: pgflow's logger filter redacts it.
      down = Process.monitor(producer)

      log =
        ExUnit.CaptureLog.capture_log(fn ->
          spawn(fn ->
            send(parent, {:sent, Pgflow.send(producer, q, %{"n" => 1}, dedup_key: "order-1")})
          end)

          wait_sync_rep(admin, pid)
          {:ok, _} = Pgflow.query(admin, "SELECT pg_cancel_backend($1::int)::text", [pid])

          assert_receive {:sent, {:error, %Pgflow.Error{unknown_outcome: true, code: "08006"}}},
                         30_000

          # The report is logged as the driver's process ends, after its reply.
          assert_receive {:DOWN, ^down, :process, _, _}, 30_000
          Logger.flush()
        end)

      assert log =~ "redacted by pgflow"
      refute log =~ "password:"
    after
      :ok = simple_sql(admin, "ALTER SYSTEM RESET synchronous_standby_names")
      {:ok, _} = Pgflow.query(admin, "SELECT pg_reload_conf()::text", [])
      wait_setting(admin, "")
    end

    # The producer's retry with the same key: the message is there once.
    {:ok, again} = Pgflow.send(c, q, %{"n" => 1}, dedup_key: "order-1")
    assert {:ok, [%{id: ^again}]} = Pgflow.read(c, q, qty: 10)
    Pgflow.close(admin)
  end

  defp simple_sql(conn, sql) do
    case :pgsql.squery(conn, to_charlist(sql)) do
      {:ok, _} -> :ok
      other -> other
    end
  end

  defp wait_setting(conn, value, n \\ 0) do
    case Pgflow.query(conn, "SELECT current_setting('synchronous_standby_names')", []) do
      {:ok, [[^value]]} ->
        :ok

      _ when n < 10_000 ->
        Process.sleep(10)
        wait_setting(conn, value, n + 1)
    end
  end

  # Waits until commits really wait for the synchronous standby. A session sees a reloaded
  # synchronous_standby_names before commits wait on it: they skip the wait until the
  # checkpointer has processed the reload as well (WalSndCtl->sync_standbys_defined). A probe
  # commit either finishes at once (too early: try again) or waits, shown by its own wait event,
  # and is cancelled. A commit waits only if its transaction has an xid and wrote WAL: a
  # transactional logical message does both, and touches no table. The probe runs in the simple
  # protocol, where the warning is not looked for.
  defp commits_wait_for_the_standby(admin) do
    {:ok, probe} = Pgflow.connect(System.fetch_env!("PGFLOW_TEST_DSN"))
    pid = one!(probe, "SELECT pg_backend_pid()::text")

    waited =
      Enum.find(1..3_000, fn _ ->
        parent = self()
        sql = "SELECT pg_logical_emit_message(true, 'pgflow-test', 'probe')"
        spawn(fn -> send(parent, {:probed, simple_sql(probe, sql)}) end)
        waited = probe_waits(admin, pid)

        if waited,
          do: {:ok, _} = Pgflow.query(admin, "SELECT pg_cancel_backend($1::int)::text", [pid])

        assert_receive {:probed, :ok}, 30_000
        waited
      end)

    Pgflow.close(probe)
    assert waited, "commits never waited for the synchronous standby"
  end

  # True once the probe waits for the standby; false if its commit ended first (its reply is
  # left in the mailbox).
  defp probe_waits(admin, pid, n \\ 0) do
    sql =
      "SELECT coalesce(wait_event = 'SyncRep', false)::text FROM pg_stat_activity WHERE pid = $1::int"

    case Pgflow.query(admin, sql, [pid]) do
      {:ok, [["true"]]} ->
        true

      _ ->
        receive do
          {:probed, _} = done ->
            send(self(), done)
            false
        after
          10 -> n < 3_000 and probe_waits(admin, pid, n + 1)
        end
    end
  end

  defp wait_sync_rep(admin, pid, n \\ 0) do
    case Pgflow.query(
           admin,
           "SELECT coalesce(wait_event = 'SyncRep', false)::text FROM pg_stat_activity WHERE pid = $1::int",
           [pid]
         ) do
      {:ok, [["true"]]} ->
        :ok

      _ when n < 10_000 ->
        Process.sleep(10)
        wait_sync_rep(admin, pid, n + 1)
    end
  end

  test "a long-poll read sleeps in the server and wakes on the sender's commit", %{conn: c} do
    q = fresh_queue!(c, "ex_wait")
    parent = self()

    spawn_link(fn ->
      rc = conn!()
      pid = one!(rc, "SELECT pg_backend_pid()::text")
      send(parent, {:pid, pid})
      send(parent, {:read, Pgflow.read(rc, q, wait: 4_000)})
      Pgflow.close(rc)
    end)

    assert_receive {:pid, pid}, 5_000
    # Wait (bounded) until the reader is asleep on its latch, then send in a transaction.
    deadline = System.monotonic_time(:millisecond) + 30_000

    asleep? = fn asleep?, _ ->
      ev = one!(c, "SELECT pg_stat_clear_snapshot()::text || coalesce(wait_event, '')
                    FROM pg_stat_activity WHERE pid = $1::int", [pid])

      cond do
        ev == "Extension" -> true
        System.monotonic_time(:millisecond) > deadline -> false
        true -> Process.sleep(5) && asleep?.(asleep?, nil)
      end
    end

    assert asleep?.(asleep?, nil)

    {:ok, [id]} =
      Pgflow.transaction(c, fn ->
        {:ok, id} = Pgflow.send(c, q, %{"wake" => true})
        # Not committed yet: the reader must still be waiting.
        refute_received {:read, _}
        {:ok, [id]}
      end)

    assert_receive {:read, {:ok, [m]}}, 5_000
    assert m.id == id
  end

  test "password login with SCRAM-SHA-256, and a wrong password is refused" do
    assert {:ok, c} = Pgflow.connect(dsn())
    assert one!(c, "SELECT current_user::text") == "pgflow_elixir"

    assert one!(c, "SELECT left(rolpassword, 13) FROM pg_authid WHERE rolname = current_user") ==
             "SCRAM-SHA-256"

    Pgflow.close(c)
    bad = String.replace(dsn(), ~r/password=\S+/, "password=wrong")
    assert {:error, %Pgflow.Error{code: "08001"}} = Pgflow.connect(bad)
  end
end
