defmodule Pgflow.SeedsTest do
  # The seeds' own code as they wrote it (examples/evolution/elixir/seeds/: seed 000's
  # producers and consumers, seed 003's applications and configuration, seed 004's Genesis
  # settings), started as OTP applications against the evolution queues of
  # tests/clients/elixir.sh, with nothing created beforehand.
  use ExUnit.Case, async: false
  import ExUnit.CaptureLog
  import Pgflow.TestHelper

  alias CentralCloud.Evolution.PgflowConsumers, as: CentralConsumers
  alias CentralCloud.Evolution.PgflowProducers, as: CentralProducers
  alias Singularity.Evolution.PgflowProducers
  alias Singularity.Schemas.Evolution.Proposal

  @seeds_code Path.expand("../../../examples/evolution/elixir/seeds", __DIR__)
  @seeds_text Path.expand("../../../../shared/seeds", __DIR__)
  @apps [
    singularity: Singularity.Application,
    centralcloud: CentralCloud.Application,
    genesis: Genesis.Application
  ]
  # The queues seed 000's consumers drain, by the application that consumes them.
  @consumed [
    singularity:
      ~w(consensus_results_queue rollback_triggers_queue guardian_safety_profiles_queue),
    centralcloud:
      ~w(proposals_for_consensus_queue metrics_to_guardian_queue patterns_for_aggregator_queue)
  ]

  setup_all do
    # Seed 003's configuration reads the server from PGFLOW_DATABASE_URL.
    System.put_env("PGFLOW_DATABASE_URL", url())

    # Each config file on its own: both set `config :telemetry, :events`.
    events =
      for {app, _} <- @apps, into: %{} do
        config = Config.Reader.read!(Path.join([@seeds_code, "config", "#{app}.exs"]))
        Application.put_all_env(Keyword.delete(config, :telemetry))
        {app, get_in(config, [:telemetry, :events]) || []}
      end

    for {app, mod} <- @apps do
      :ok =
        :application.load(
          {:application, app,
           [
             description: ~c"#{app}, from the seeds",
             vsn: ~c"0.0.0",
             modules: [],
             registered: [],
             applications: [:kernel, :stdlib, :elixir, :logger, :pgflow],
             mod: {mod, []},
             env: []
           ]}
        )
    end

    {:ok, telemetry_events: events}
  end

  setup do
    Process.register(self(), :seeds_test)
    conn = conn!()

    on_exit(fn ->
      for {app, _} <- @apps, do: Application.stop(app)
      Process.alive?(conn) && Pgflow.close(conn)
    end)

    {:ok, conn: conn}
  end

  defp uuid do
    <<a::32, b::16, c::16, d::16, e::48>> = :crypto.strong_rand_bytes(16)

    :io_lib.format("~8.16.0b-~4.16.0b-~4.16.0b-~4.16.0b-~12.16.0b", [a, b, c, d, e])
    |> List.to_string()
  end

  defp proposal(change \\ "guard nil") do
    %Proposal{
      id: uuid(),
      agent_type: "BugFixerAgent",
      code_change: %{file: "lib/a.ex", change: change},
      impact_score: 8.0,
      risk_score: 1.0,
      safety_profile: %{success_rate: 0.95, cost_factor: 2.0},
      status: "executing"
    }
  end

  defp start!(app) do
    assert {:ok, _} = Application.ensure_all_started(app)
  end

  # Until the queues hold nothing: no message left, none in flight.
  defp drained(c, queues) do
    wait_until(fn ->
      Enum.all?(queues, fn q ->
        match?({:ok, %{"queue_length" => 0, "in_flight" => 0}}, Pgflow.metrics(c, q))
      end)
    end)
  end

  # How often the message `id` of `queue` was archived, and with which read_ct.
  defp archived(c, queue, id) do
    {:ok, rows} =
      Pgflow.query(
        c,
        "SELECT a.read_ct::text FROM pgflow.archive a JOIN pgflow.queue q USING (queue_id)
          WHERE q.queue_name = $1 AND a.msg_id = $2",
        [queue, id]
      )

    List.flatten(rows)
  end

  defp log_pgflow_event(event, measurements, metadata, _) do
    send(:seeds_test, {:event, event, measurements, metadata})
  end

  test "the applications start as seed 003 writes them (no queue created), and every seed " <>
         "000 message is delivered once, with the seeds' events",
       %{conn: c, telemetry_events: events} do
    # Seed 003's monitor, attached here: :telemetry itself is not installed on this machine.
    :ok =
      Pgflow.Telemetry.attach(
        "pgflow_monitor",
        [:evolution, :pgflow, :*],
        &log_pgflow_event/4,
        nil
      )

    on_exit(fn -> Pgflow.Telemetry.detach("pgflow_monitor") end)

    log =
      capture_log(fn ->
        start!(:singularity)
        start!(:centralcloud)

        assert [{ExPgflow.Consumer, _, :supervisor, _}] =
                 Supervisor.which_children(Singularity.Supervisor)

        approved = proposal()
        rejected = proposal("reject me")
        instance = System.get_env("INSTANCE_ID", "singularity_default")

        # Singularity's producers.
        assert {:ok, p1} = PgflowProducers.propose_for_consensus(approved)
        assert {:ok, p2} = PgflowProducers.propose_for_consensus(rejected)

        assert {:ok, m1} =
                 PgflowProducers.report_metrics_to_guardian(
                   approved,
                   %{cpu_usage: 45.2, memory: 512.0, error_count: 2},
                   %{cpu_usage: 46.1, memory: 513.5, error_count: 3}
                 )

        # A payload its queue's contract refuses (error_count must be >= 0): seed 000 logs
        # it and goes on.
        assert {:ok, :async} =
                 PgflowProducers.report_metrics_to_guardian(approved, %{error_count: -1}, %{
                   error_count: 0
                 })

        assert {:ok, pat} =
                 PgflowProducers.report_pattern_to_aggregator(
                   "refactoring",
                   %{
                     before: "...",
                     after: "...",
                     description: "Extract function for readability"
                   },
                   0.97,
                   "RefactoringAgent"
                 )

        # CentralCloud's producers (the consensus results come from its engine, below).
        assert {:ok, rb} =
                 CentralProducers.send_rollback_trigger(
                   instance,
                   approved.id,
                   "error_rate_breach",
                   %{error_rate: 0.10, actual: 0.15}
                 )

        profile = %{
          success_rate: 0.99,
          error_threshold: 0.10,
          latency_threshold: 3000,
          cost_threshold: 0.10
        }

        assert {:ok, sp} =
                 CentralProducers.send_safety_profile_update(instance, "BugFixerAgent", profile)

        # Each consumer's handler, as seed 000 wrote it, did its work once.
        assert_receive {:seed, {:proposed, a_id, %{agent_type: "BugFixerAgent"}, r1}}, 20_000
        assert_receive {:seed, {:proposed, r_id, _, r2}}, 20_000
        assert Enum.sort([a_id, r_id]) == Enum.sort([approved.id, rejected.id])
        approved_id = approved.id
        rejected_id = rejected.id
        assert_receive {:seed, {:consensus_checked, ^approved_id}}, 20_000

        assert_receive {:seed, {:repo_update, {:consensus_failed, ^rejected_id, votes}}}, 20_000
        assert votes["singularity_3"] == "reject" and votes.singularity_3 == "reject"

        assert_receive {:seed, {:metrics, ^instance, ^approved_id, before, _, "executing"}},
                       20_000

        assert before.error_count == 2
        assert_receive {:seed, {:pattern, ^instance, "refactoring", code_pattern, opts}}, 20_000
        assert code_pattern.description == "Extract function for readability"
        assert opts == [success_rate: 0.97, agent_type: "RefactoringAgent"]

        assert_receive {:seed, {:repo_update, {:rolled_back, ^approved_id, "error_rate_breach"}}},
                       20_000

        assert_receive {:seed, {:safety_profile, "BugFixerAgent", got}}, 20_000
        assert got.latency_threshold == 3000 and got["error_threshold"] == 0.10

        drained(c, @consumed[:singularity] ++ @consumed[:centralcloud])

        # Once each: archived once, on the first delivery.
        for {q, id} <- [
              {"proposals_for_consensus_queue", p1},
              {"proposals_for_consensus_queue", p2},
              {"metrics_to_guardian_queue", m1},
              {"patterns_for_aggregator_queue", pat},
              {"rollback_triggers_queue", rb},
              {"guardian_safety_profiles_queue", sp},
              {"consensus_results_queue", r1},
              {"consensus_results_queue", r2}
            ] do
          assert archived(c, q, id) == ["1"], "#{q} #{id}"
        end

        # The seventh type: ISO 8601 timestamps satisfy its contract's date-time.
        assert {:ok, l} =
                 ExPgflow.publish(:centralcloud, "learning_loop_completed_queue", %{
                   type: "learning_loop_completed",
                   patterns_processed: 5,
                   rules_generated: 2,
                   thresholds_updated: 3,
                   timestamp: DateTime.utc_now()
                 })

        assert {:ok, [m]} = Pgflow.read(c, "learning_loop_completed_queue")
        assert m.id == l
        assert {:ok, _, 0} = DateTime.from_iso8601(m.payload["timestamp"])
        assert {:ok, true} = Pgflow.archive(c, "learning_loop_completed_queue", l)
      end)

    # The seeds' handlers logged as they wrote.
    assert log =~ "Received proposal"
    assert log =~ "Failed to publish metrics"
    refute log =~ "dead-lettered"

    # Every event the seeds' configurations list came, through [:evolution, :pgflow, :*].
    seen =
      Stream.repeatedly(fn ->
        receive do
          {:event, [:evolution, :pgflow, :*], _, %{event: e}} -> e
        after
          0 -> nil
        end
      end)
      |> Enum.take_while(& &1)
      |> MapSet.new()

    for e <- events.singularity ++ events.centralcloud,
        do: assert(e in seen, "#{inspect(e)} not emitted")
  end

  test "seed 003's monitoring calls and seed 000's test, as written", %{conn: c} do
    capture_log(fn ->
      proposal = proposal()

      # Seed 000's test: publish, find it in the queue, hand it to the consumer by hand.
      {:ok, msg_id} = PgflowProducers.propose_for_consensus(proposal)
      assert msg_id

      messages = ExPgflow.list_messages("proposals_for_consensus_queue")
      assert Enum.any?(messages, &(&1.proposal_id == proposal.id))
      # Seed 002's form of the same check.
      messages = ExPgflow.list_pending_messages("proposals_for_consensus_queue")
      assert Enum.any?(messages, &(&1["proposal_id"] == proposal.id))

      message = Enum.find(messages, &(&1.proposal_id == proposal.id))
      {:ok, status} = CentralConsumers.handle_proposal_for_consensus(message)
      assert status == "proposal_recorded"

      received_messages = ExPgflow.list_messages("consensus_results_queue")
      assert Enum.any?(received_messages, &(&1.proposal_id == proposal.id))

      # Seed 003's monitoring.
      queues = ExPgflow.list_queues()
      assert %{max_retries: 3} = Enum.find(queues, &(&1.queue_name == "rollback_triggers_queue"))

      assert %{queue_length: n} = ExPgflow.get_queue_stats("proposals_for_consensus_queue")
      assert n >= 1
      assert is_list(ExPgflow.list_dlq_messages())
      # The same, named by application.
      assert %{queue_length: ^n} =
               ExPgflow.get_queue_stats("proposals_for_consensus_queue", app: :centralcloud)

      # The consumers take the rest (the proposal once more, and its results).
      start!(:singularity)
      start!(:centralcloud)
      drained(c, @consumed[:singularity] ++ @consumed[:centralcloud])
    end)
  end

  test "a handler that raises is retried, then dead-lettered, with a log line and an event " <>
         "for each; seed 003's DLQ calls redrive it",
       %{conn: c} do
    parent = self()

    Pgflow.Telemetry.attach_many(
      "seeds-failures",
      [[:pgflow, :consume, :retry], [:pgflow, :consume, :dead]],
      fn e, _, md, _ -> send(parent, {:failure, List.last(e), md}) end,
      nil
    )

    on_exit(fn -> Pgflow.Telemetry.detach("seeds-failures") end)
    # retry_dlq_message/1 takes an id, which is per queue: another test's dead letter of the same
    # id in another queue would make it ambiguous (it refuses then). Start with empty DLQs.
    ExPgflow.purge_dlq()
    proposal = proposal()
    Pgflow.Seeds.poison(proposal.id)
    on_exit(fn -> Pgflow.Seeds.cure(proposal.id) end)

    log =
      capture_log(fn ->
        start!(:centralcloud)
        {:ok, id} = PgflowProducers.propose_for_consensus(proposal)

        # The queue's policy (3 retries from 1 s) decides; poll the DLQ until it is there.
        wait_until(fn ->
          Enum.any?(
            ExPgflow.list_dlq_messages("proposals_for_consensus_queue"),
            &(&1.msg_id == id)
          )
        end)

        for n <- 1..3 do
          assert_receive {:failure, :retry, %{msg_id: ^id, read_ct: ^n, reason: reason}}
          assert reason =~ "consensus engine unavailable"
        end

        assert_receive {:failure, :dead, %{msg_id: ^id, read_ct: 4, queue: q}}
        assert q == "proposals_for_consensus_queue"
        send(parent, {:id, id})
      end)

    assert_received {:id, id}

    for n <- 1..3 do
      assert log =~
               ~s|message #{id} of queue "proposals_for_consensus_queue" (delivery #{n}) failed: | <>
                 "raised: consensus engine unavailable; it will be retried"
    end

    assert log =~
             ~s|message #{id} of queue "proposals_for_consensus_queue" (delivery 4) failed: | <>
               "raised: consensus engine unavailable; dead-lettered after 4 deliveries"

    # Seed 003's "Messages in Dead-Letter Queue", as written.
    dlq_messages = ExPgflow.list_dlq_messages()
    inspected = ExUnit.CaptureIO.capture_io(fn -> Enum.each(dlq_messages, &IO.inspect(&1)) end)
    assert inspected =~ "consensus engine unavailable"
    # Ids are per queue: another test's queue may hold a dead letter with the same id.
    dead =
      Enum.find(
        dlq_messages,
        &(&1.msg_id == id and &1.queue_name == "proposals_for_consensus_queue")
      )

    assert dead.payload.proposal_id == proposal.id and dead.read_ct == 4

    # After fixing the issue: retry it by id, then clear the DLQ.
    Pgflow.Seeds.cure(proposal.id)
    message_id = dead.msg_id
    new_id = ExPgflow.retry_dlq_message(message_id)
    assert is_integer(new_id)
    assert_receive {:seed, {:proposed, _, _, _}}, 20_000
    assert nil == ExPgflow.retry_dlq_message(message_id)
    assert is_integer(ExPgflow.purge_dlq())

    capture_log(fn ->
      start!(:singularity)
      drained(c, @consumed[:singularity] ++ @consumed[:centralcloud])
    end)

    assert archived(c, "proposals_for_consensus_queue", new_id) == ["1"]
  end

  test "Genesis (seed 004): batch_size is the read, max_parallel_workers the handlers at once",
       %{conn: c} do
    Pgflow.Seeds.gate(true)
    on_exit(fn -> Pgflow.Seeds.gate(false) end)

    # Seed 004's Test 3: eight jobs, queued before the runner starts.
    for i <- 1..8 do
      {:ok, _} =
        ExPgflow.publish(:genesis, "code_execution_requests", %{
          "type" => "code_execution_request",
          "id" => "seed_job_#{i}",
          "code" => "def foo, do: 42",
          "language" => "elixir",
          "analysis_type" => "quality"
        })
    end

    capture_log(fn ->
      start!(:genesis)

      # One read leases all eight (batch_size 10) and four handlers start (4 workers).
      started =
        for _ <- 1..4 do
          assert_receive {:seed, {:job_started, _, pid}}, 20_000
          pid
        end

      wait_until(fn ->
        match?(%{in_flight: 8}, ExPgflow.get_queue_stats("code_execution_requests"))
      end)

      # Each job let go lets one more in, never a fifth at once.
      rest =
        Enum.reduce(1..4, started, fn _, [first | others] ->
          send(first, :go)
          assert_receive {:seed, {:job_started, _, pid}}, 20_000
          others ++ [pid]
        end)

      Enum.each(rest, &send(&1, :go))
      drained(c, ["code_execution_requests"])
    end)

    assert Pgflow.Seeds.max_in() == 4

    # One contract-valid result per job; taken off the results queue again.
    {:ok, results} = Pgflow.read(c, "code_execution_results", qty: 100)
    mine = Enum.filter(results, &String.starts_with?(&1.payload["id"], "seed_job_"))
    assert length(mine) == 8
    for r <- results, do: {:ok, true} = Pgflow.archive(c, "code_execution_results", r.id)
  end

  test "seed 000's configuration: producers send over their entries' URLs; consumers that " <>
         "name no handler stop the start, named",
       %{conn: c} do
    seed003 = Application.get_env(:singularity, :pgflow_queues)
    on_exit(fn -> Application.put_env(:singularity, :pgflow_queues, seed003) end)

    Application.put_env(:singularity, :pgflow_queues,
      producers: [
        {:proposals_for_consensus, url(), [workers: 2]},
        {:metrics_to_guardian, "postgres://nobody@127.0.0.1:1/none", [workers: 2]}
      ],
      consumers: [
        {:consensus_results_consumer, url(), [workers: 2]},
        {:rollback_triggers_consumer, url(), [workers: 1]}
      ]
    )

    capture_log(fn ->
      assert {:ok, id} = PgflowProducers.propose_for_consensus(proposal())
      assert is_integer(id)

      assert {:error, {:singularity, reason}} = Application.ensure_all_started(:singularity)
      assert inspect(reason) =~ "pgflow consumer :consensus_results_consumer"
      assert inspect(reason) =~ "queue_name:, handler: and handler_method:"

      # Taken off the queue again.
      assert {:ok, [%{id: ^id}]} = Pgflow.read(c, "proposals_for_consensus_queue", qty: 10)
      assert {:ok, true} = Pgflow.archive(c, "proposals_for_consensus_queue", id)
    end)
  end

  test "a queue missing at start: the consumer starts, names it, and consumes once it exists",
       %{conn: c} do
    {:ok, _} =
      Pgflow.query(c, "SELECT pgflow.drop_queue('seed_missing', if_exists => true)::text")

    parent = self()

    log =
      capture_log(fn ->
        start_supervised!(
          {ExPgflow.Consumer,
           database_url: url(),
           queue_name: "seed_missing",
           workers: 1,
           wait: 200,
           handler: fn message -> send(parent, {:got, message.n}) && {:ok, "processed"} end}
        )

        fresh_queue!(c, "seed_missing")
        {:ok, _} = Pgflow.send(c, "seed_missing", %{"n" => 1})
        assert_receive {:got, 1}, 20_000
      end)

    assert log =~ ~s(queue "seed_missing" does not exist; the consumer starts)
  end

  test "Pgflow.publish refuses a queue's name that no binding matches; publish_topic routes",
       %{conn: c} do
    log =
      capture_log(fn ->
        assert {:error, %Pgflow.Error{code: "42809", message: msg}} =
                 Pgflow.publish(c, "proposals_for_consensus_queue", %{})

        assert msg =~ "nothing was stored"
      end)

    assert log =~ "Pgflow.send/4"
    assert {:ok, []} = Pgflow.publish_topic(c, "proposals_for_consensus_queue", %{})
    assert {:ok, []} = Pgflow.publish(c, "no.such.topic", %{})
  end

  @tag skip: not File.dir?(@seeds_text) && "needs the seeds (../shared/seeds)"
  test "the seeds' code here is as the seeds wrote it" do
    normalize = fn text ->
      text |> String.split("\n") |> Enum.map(&String.trim/1) |> Enum.reject(&(&1 == ""))
    end

    seeds = @seeds_text |> File.ls!() |> Enum.map(&File.read!(Path.join(@seeds_text, &1)))
    seed_lines = Enum.map(seeds, normalize)

    for file <- ~w(singularity.ex centralcloud.ex) do
      text = File.read!(Path.join(@seeds_code, file))

      blocks =
        Regex.scan(~r/# ---- seed \d+, [^\n]*as written ----\n(.*?)\n\s*# ---- end ----/s, text,
          capture: :all_but_first
        )

      assert length(blocks) == 3

      for [block] <- blocks do
        lines = normalize.(block)
        assert Enum.any?(seed_lines, &contains?(&1, lines)), "#{file}: #{hd(lines)} changed"
      end
    end
  end

  defp contains?(haystack, needle) do
    n = length(needle)
    haystack |> Enum.chunk_every(n, 1, :discard) |> Enum.any?(&(&1 == needle))
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
