defmodule Pgflow.SupervisorTest.Handlers do
  # Handlers named as the seeds name them (a module and a function). They report to the test
  # process registered as :pgflow_sup_test.
  def handle_blocking(m) do
    send(:pgflow_sup_test, {:delivery, self(), m.id, m.read_ct})

    case m.payload do
      # The first delivery blocks until its worker is killed; a redelivery succeeds.
      %{"proposal_id" => 1} when m.read_ct == 1 -> receive(do: (:never -> :ok))
      # In hand for a while, so that a shutdown finds it running.
      %{"proposal_id" => 2} -> Process.sleep(500)
      _ -> :ok
    end

    {:ok, "processed"}
  end

  def handle_outcomes(m) do
    send(:pgflow_sup_test, {:delivery, self(), m.id, m.read_ct})

    case m.payload["do"] do
      "ok" -> {:ok, "processed"}
      "retry" -> {:retry, 60_000}
      "error" -> {:error, "proposal not found"}
      "raise" -> raise ArgumentError, "invalid message"
      "odd" -> :what
    end
  end

  def handle_with_conn(m, conn) do
    {:ok, _} = Pgflow.send(conn, "ex_sup_out", %{"from" => m.id})
    :ok
  end
end

defmodule Pgflow.SupervisorTest do
  use ExUnit.Case, async: false
  import Pgflow.TestHelper
  alias Pgflow.SupervisorTest.Handlers

  setup do
    Process.register(self(), :pgflow_sup_test)
    conn = conn!()
    on_exit(fn -> Process.alive?(conn) && Pgflow.close(conn) end)
    {:ok, conn: conn}
  end

  defp consumer_pid(sup, key) do
    {_, pid, _, _} =
      Enum.find(Supervisor.which_children(sup), &match?({{Pgflow.Consumer, ^key}, _, _, _}, &1))

    pid
  end

  defp workers(consumer),
    do: for({_, pid, _, _} <- Supervisor.which_children(consumer), is_pid(pid), do: pid)

  test "the seeds' configuration: a killed worker is restarted and its lease given back, the " <>
         "message processed once; shutdown leaves nothing leased",
       %{conn: c} do
    q =
      fresh_queue!(
        c,
        "ex_sup_kill",
        ", session_leases => true, retry_delay => '10 ms', retry_jitter => 0"
      )

    {:ok, id} = Pgflow.send(c, q, %{"proposal_id" => 1})

    config = [
      database_url: dsn(),
      consumers: [
        {:kill_test,
         %{
           queue_name: q,
           workers: 2,
           handler: Handlers,
           handler_method: :handle_blocking,
           max_retries: 3,
           retry_delay_ms: 10,
           # Only the session's end can bring the message back within this test.
           lease: 600_000,
           wait: 200
         }}
      ]
    ]

    sup = start_supervised!({Pgflow.Supervisor, config})
    consumer = consumer_pid(sup, :kill_test)
    assert length(workers(consumer)) == 2

    assert_receive {:delivery, handler, ^id, 1}, 10_000
    # The handler runs linked to its worker; kill that worker outright (no chance to nack).
    {:links, links} = Process.info(handler, :links)
    [worker] = Enum.filter(links, &(&1 in workers(consumer)))
    ref = Process.monitor(handler)
    Process.exit(worker, :kill)
    assert_receive {:DOWN, ^ref, :process, ^handler, _}, 5_000

    # The supervisor restarts the worker; the server's worker sees the killed worker's session
    # gone and gives the lease back as a failed delivery; it is redelivered and succeeds.
    assert_receive {:delivery, _, ^id, 2}, 60_000
    new_workers = workers(consumer)
    assert length(new_workers) == 2 and worker not in new_workers

    wait_until(fn -> archived_counts(c, q) == %{id => 1} end)
    assert one!(c, "SELECT read_ct::text FROM pgflow.archive a JOIN pgflow.queue USING (queue_id)
                     WHERE queue_name = $1 AND msg_id = $2", [q, id]) == "2"

    # A graceful shutdown of the tree while a handler works: it finishes, its message is
    # archived, nothing stays leased.
    {:ok, id2} = Pgflow.send(c, q, %{"proposal_id" => 2})
    assert_receive {:delivery, _, ^id2, 1}, 10_000
    :ok = stop_supervised(Pgflow.Supervisor)
    refute Process.alive?(sup)
    assert archived_counts(c, q) == %{id => 1, id2 => 1}
    assert {:ok, %{"in_flight" => 0, "queue_length" => 0}} = Pgflow.metrics(c, q)
  end

  test "handler outcomes: ok archives, {:retry, ms} delays, errors, raises and odd results nack",
       %{conn: c} do
    # Failures dead-letter at once on this queue (max_retries 0), so each keeps its reason;
    # {:retry, ms} is tried on a queue with the default policy.
    q = fresh_queue!(c, "ex_sup_outcomes", ", max_retries => 0")
    rq = fresh_queue!(c, "ex_sup_retry")
    parent = self()

    Pgflow.Telemetry.attach_many(
      "outcomes",
      Pgflow.Telemetry.events(),
      fn e, m, md, _ ->
        send(parent, {:event, e, m, md})
      end,
      nil
    )

    on_exit(fn -> Pgflow.Telemetry.detach("outcomes") end)

    ids =
      for what <- ~w(ok error raise odd), into: %{} do
        {:ok, id} = Pgflow.send(c, q, %{"do" => what})
        {what, id}
      end

    {:ok, retry_id} = Pgflow.send(c, rq, %{"do" => "retry"})

    for queue <- [q, rq] do
      start_supervised!(
        {Pgflow.Consumer,
         connect: dsn(),
         queue: queue,
         workers: 1,
         handler: {Handlers, :handle_outcomes},
         wait: 200}
      )
    end

    for id <- [retry_id | Map.values(ids)], do: assert_receive({:delivery, _, ^id, 1}, 10_000)

    for queue <- [q, rq] do
      wait_until(fn -> match?({:ok, %{"in_flight" => 0}}, Pgflow.metrics(c, queue)) end)
      :ok = stop_supervised({Pgflow.Consumer, queue})
    end

    # ok: archived once.
    assert archived_counts(c, q) == %{ids["ok"] => 1}
    # {:retry, 60_000}: back in the queue, due in about a minute by the server's clock.
    assert one!(c, "SELECT (vt > now() + interval '50 s')::text FROM pgflow.list_pending($1)
                     WHERE msg_id = $2 AND state = 'delayed'", [rq, retry_id]) == "true"
    # The three failures are dead letters with their reasons.
    {:ok, dead} = Pgflow.query(c, "SELECT msg_id::text, last_error FROM pgflow.dlq_list($1)", [q])
    errors = Map.new(dead, fn [id, e] -> {String.to_integer(id), e} end)
    assert errors[ids["error"]] =~ "proposal not found"
    assert errors[ids["raise"]] =~ "invalid message"
    assert errors[ids["odd"]] =~ "unexpected result :what"

    # Events: a start and then a stop or an exception per delivery, with the outcome.
    outcomes =
      for _ <- 1..5, into: %{} do
        assert_received {:event, [:pgflow, :consume, :start], %{system_time: _},
                         %{msg_id: id, queue: queue}}

        assert_received {:event, [:pgflow, :consume, kind], %{duration: d},
                         %{msg_id: ^id, queue: ^queue} = md}
                        when kind in [:stop, :exception] and is_integer(d)

        {{queue, id}, {kind, md.outcome}}
      end

    assert outcomes[{q, ids["ok"]}] == {:stop, :archive}
    assert outcomes[{rq, retry_id}] == {:stop, :retry}
    assert outcomes[{q, ids["error"]}] == {:stop, :dead}
    assert outcomes[{q, ids["raise"]}] == {:exception, :dead}
    assert outcomes[{q, ids["odd"]}] == {:stop, :dead}
  end

  test "a module handler of arity 2 gets a connection of its own", %{conn: c} do
    q = fresh_queue!(c, "ex_sup_conn")
    out = fresh_queue!(c, "ex_sup_out")
    {:ok, id} = Pgflow.send(c, q, %{})

    start_supervised!(
      {Pgflow.Consumer,
       connect: dsn(),
       queue: q,
       workers: 1,
       handler: Handlers,
       handler_method: :handle_with_conn,
       wait: 200}
    )

    wait_until(fn -> archived_counts(c, q) == %{id => 1} end)
    assert {:ok, [%{payload: %{"from" => ^id}}]} = Pgflow.read(c, out)
  end

  test "create_queues: true creates the entries' missing queues with their policies", %{conn: c} do
    for q <- ~w(ex_sup_made_p ex_sup_made_c) do
      {:ok, _} = Pgflow.query(c, "SELECT pgflow.drop_queue($1, if_exists => true)::text", [q])
    end

    config = [
      database_url: dsn(),
      create_queues: true,
      producers: [
        {:made_p,
         %{queue_name: "ex_sup_made_p", max_retries: 5, retry_delay_ms: 250, priority: :high}}
      ],
      consumers: [
        {:made_c,
         %{
           queue_name: "ex_sup_made_c",
           workers: 1,
           handler: Handlers,
           handler_method: :handle_outcomes
         }}
      ]
    ]

    start_supervised!({Pgflow.Supervisor, config})
    {:ok, queues} = Pgflow.list_queues()
    by_name = Map.new(queues, &{&1.queue_name, &1})

    assert %{max_retries: 5, retry_delay_ms: 250, default_priority: 10} = by_name["ex_sup_made_p"]
    # Unset keys take create_queue's defaults (3 retries from 1 s, priority 0).
    assert %{max_retries: 3, retry_delay_ms: 1000, default_priority: 0} = by_name["ex_sup_made_c"]
    # A second start finds them and changes nothing.
    :ok = stop_supervised(Pgflow.Supervisor)
    start_supervised!({Pgflow.Supervisor, config})
    {:ok, again} = Pgflow.list_queues()
    assert %{max_retries: 5} = Enum.find(again, &(&1.queue_name == "ex_sup_made_p"))
  end

  test "a consumer of an unknown queue does not start (42704); bad options raise" do
    assert {:error, {%Pgflow.Error{code: "42704"}, _}} =
             start_supervised(
               {Pgflow.Consumer, connect: dsn(), queue: "ex_sup_nope", handler: fn _ -> :ok end}
             )

    assert_raise ArgumentError, ~r/handler/, fn ->
      Pgflow.Consumer.options(connect: dsn(), queue: "q")
    end

    assert_raise ArgumentError, ~r/not defined/, fn ->
      Pgflow.Consumer.options(
        connect: dsn(),
        queue: "q",
        handler: Handlers,
        handler_method: :nope
      )
    end
  end

  test "a worker whose session is terminated reconnects and goes on", %{conn: c} do
    q = fresh_queue!(c, "ex_sup_reconnect")
    parent = self()

    start_supervised!(
      {Pgflow.Consumer,
       connect: dsn(),
       queue: q,
       workers: 1,
       wait: 500,
       handler: fn m -> send(parent, {:got, m.id}) && :ok end}
    )

    {:ok, a} = Pgflow.send(c, q, %{})
    assert_receive {:got, ^a}, 10_000

    # End the consumer's session from the server (it is the one long-polling this queue).
    wait_until(fn ->
      {:ok, [[n]]} =
        Pgflow.query(c, "SELECT count(pg_terminate_backend(pid))::text FROM pg_stat_activity
                          WHERE pid <> pg_backend_pid() AND usename = current_user
                            AND query LIKE '%pgflow.%read%'")

      n != "0"
    end)

    {:ok, b} = Pgflow.send(c, q, %{})
    assert_receive {:got, ^b}, 20_000
    wait_until(fn -> archived_counts(c, q) == %{a => 1, b => 1} end)
  end

  describe "the admin API (the seeds' names) on the named connection" do
    setup %{conn: c} do
      start_supervised!({Pgflow.Connection, connect: dsn()})
      q = fresh_queue!(c, "ex_admin", ", max_retries => 0, visibility_timeout => '45 s'")
      {:ok, q: q}
    end

    test "queues, stats, pending messages, the DLQ, redrive and purge", %{conn: c, q: q} do
      assert {:ok, queues} = Pgflow.list_queues()

      assert %{
               queue_name: ^q,
               max_retries: 0,
               visibility_timeout_ms: 45_000,
               retry_delay_ms: 1_000
             } = Enum.find(queues, &(&1.queue_name == q))

      {:ok, a} = Pgflow.send(Pgflow.Conn, q, %{"n" => 1})
      {:ok, b} = Pgflow.send(Pgflow.Conn, q, %{"n" => 2}, priority: :high)
      assert {:ok, %{queue_length: 2, visible: 2, dlq_length: 0}} = Pgflow.get_queue_stats(q)
      assert {:ok, %{queue_length: 2}} = Pgflow.get_queue_stats(q, exact: true)

      # Pending, in read's order: the high-priority message first, nothing leased by looking.
      assert {:ok,
              [%{msg_id: ^b, priority: 10, state: "ready", payload: %{"n" => 2}}, %{msg_id: ^a}]} =
               Pgflow.list_pending_messages(q)

      assert {:ok, [%{msg_id: ^b}]} = Pgflow.list_pending_messages(q, limit: 1)

      # Dead-letter a (max_retries 0: the first failure kills it).
      {:ok, [_, _]} = Pgflow.read(c, q, qty: 2)
      {:ok, :dead} = Pgflow.nack(c, q, a, error: "boom")
      {:ok, :dead} = Pgflow.nack(c, q, b, error: "bang")

      assert {:ok, all} = Pgflow.list_dlq_messages()

      assert [%{queue_name: ^q, msg_id: ^a, last_error: "boom", payload: %{"n" => 1}}] =
               Enum.filter(all, &(&1.queue_name == q and &1.msg_id == a))

      assert {:ok, [_, _] = mine} = Pgflow.list_dlq_messages(q)
      assert Enum.all?(mine, &is_map_key(&1, :died_at))
      assert {:ok, [_]} = Pgflow.list_dlq_messages(q, limit: 1)

      dead_a = Enum.find(all, &(&1.queue_name == q and &1.msg_id == a))
      assert {:ok, new_id} = Pgflow.retry_dlq_message(dead_a)
      assert is_integer(new_id) and new_id > b
      assert {:ok, nil} = Pgflow.retry_dlq_message(q, a)
      assert {:ok, %{dlq_length: 1, visible: 1}} = Pgflow.get_queue_stats(q, exact: true)

      assert {:ok, 1} = Pgflow.purge_dlq(q)
      assert {:ok, 0} = Pgflow.purge_dlq(q)

      {:ok, [m]} = Pgflow.read(c, q)
      {:ok, :dead} = Pgflow.nack(c, q, m.id, error: "again")
      assert {:ok, n} = Pgflow.purge_dlq()
      assert n >= 1
      assert {:ok, []} = Pgflow.list_dlq_messages(q)
    end

    test "errors keep their SQLSTATE; another connection can be named", %{conn: c} do
      assert {:error, %Pgflow.Error{code: "42704"}} = Pgflow.get_queue_stats("ex_admin_nope")

      assert {:error, %Pgflow.Error{code: "22023"}} =
               Pgflow.list_pending_messages("ex_admin", limit: 0)

      assert {:error, %Pgflow.Error{code: "42704"}} = Pgflow.purge_dlq("ex_admin_nope")
      assert {:ok, %{queue_length: 0}} = Pgflow.get_queue_stats("ex_admin", conn: c)

      assert_raise ArgumentError, ~r/of your own/, fn ->
        Pgflow.transaction(Pgflow.Conn, fn -> :ok end)
      end
    end

    test "the named connection comes back after its session is lost", %{conn: c} do
      assert {:ok, _} = Pgflow.list_queues()

      {:ok, _} =
        Pgflow.query(
          c,
          "SELECT count(pg_terminate_backend(pid))::text FROM pg_stat_activity
                                   WHERE pid <> pg_backend_pid() AND usename = current_user AND state = 'idle'"
        )

      # Calls fail with 08006 while it reconnects, then succeed.
      wait_until(fn -> match?({:ok, _}, Pgflow.list_queues()) end)
    end
  end

  describe "Pgflow.Telemetry" do
    test "publish events, handler detached when it raises, one-line forwarding shape", %{conn: c} do
      q = fresh_queue!(c, "ex_telemetry")
      parent = self()

      :ok =
        Pgflow.Telemetry.attach("pub", [:pgflow, :publish], &send(parent, {&1, &2, &3, &4}), :cfg)

      assert {:error, :already_exists} =
               Pgflow.Telemetry.attach("pub", [:pgflow, :publish], fn _, _, _, _ -> :ok end, nil)

      :ok =
        Pgflow.Telemetry.attach(
          "bad",
          [:pgflow, :publish],
          fn _, _, _, _ -> raise "oops" end,
          nil
        )

      {:ok, id} = Pgflow.send(c, q, %{})

      assert_received {[:pgflow, :publish], %{count: 1, duration: d},
                       %{queue: ^q, msg_id: ^id, result: :ok}, :cfg}

      assert is_integer(d) and d >= 0
      # The raising handler was detached; the other stays.
      assert [%{id: "pub"}] = Pgflow.Telemetry.list_handlers([:pgflow, :publish])

      {:error, e} = Pgflow.send(c, "ex_telemetry_nope", %{})
      assert_received {[:pgflow, :publish], %{count: 0}, %{result: :error, error: ^e}, :cfg}

      {:ok, [{^q, _}]} =
        (fn ->
           {:ok, _} = Pgflow.query(c, "SELECT pgflow.bind('ex.telemetry', $1)::text", [q])
           Pgflow.publish(c, "ex.telemetry", %{})
         end).()

      assert_received {[:pgflow, :publish], %{count: 1},
                       %{topic: "ex.telemetry", queues: [{^q, _}]}, :cfg}

      assert :ok = Pgflow.Telemetry.detach("pub")
      assert {:error, :not_found} = Pgflow.Telemetry.detach("pub")
      {:ok, _} = Pgflow.send(c, q, %{})
      refute_received {[:pgflow, :publish], _, _, _}
    end
  end

  test "a database URL with a percent-encoded password connects" do
    [user, pass, port, db] =
      for k <- ~w(user password port dbname) do
        [_, v] = Regex.run(~r/(?:^|\s)#{k}=(\S+)/, dsn())
        v
      end

    url =
      "postgresql://#{URI.encode_www_form(user)}:#{URI.encode_www_form(pass)}@127.0.0.1:#{port}/#{db}"

    assert {:ok, conn} = Pgflow.connect(url)
    assert {:ok, [["1"]]} = Pgflow.query(conn, "SELECT 1::text")
    Pgflow.close(conn)
  end

  # Polls a condition the server decides, up to 30 s (a bound for a stuck test, not a margin).
  defp wait_until(fun, tries \\ 300) do
    cond do
      fun.() -> :ok
      tries == 0 -> flunk("condition not met in 30 s")
      true -> Process.sleep(100) && wait_until(fun, tries - 1)
    end
  end
end
