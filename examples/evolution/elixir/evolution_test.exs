defmodule Pgflow.EvolutionTest do
  # The evolution queues, bindings and contracts of examples/evolution/ (loaded by
  # tests/clients/elixir.sh), driven from Elixir.
  use ExUnit.Case, async: false
  import Pgflow.TestHelper
  alias Pgflow.Evolution

  setup do
    conn = conn!()
    on_exit(fn -> Process.alive?(conn) && Pgflow.close(conn) end)
    {:ok, conn: conn}
  end

  defp uuid do
    <<a::32, b::16, c::16, d::16, e::48>> = :crypto.strong_rand_bytes(16)

    :io_lib.format("~8.16.0b-~4.16.0b-~4.16.0b-~4.16.0b-~12.16.0b", [a, b, c, d, e])
    |> List.to_string()
  end

  test "a proposal travels instance -> consensus -> instance -> guardian", %{conn: c} do
    pid = uuid()
    assert {:ok, first} = Evolution.propose(c, "singularity_ex", pid, "lib/a.ex", "guard nil")
    # The instance retries after a timeout: the dedup key makes it the same message.
    assert {:ok, ^first} = Evolution.propose(c, "singularity_ex", pid, "lib/a.ex", "guard nil")
    assert {:ok, ^pid} = Evolution.vote(c)
    assert {:ok, ^pid} = Evolution.execute_and_report(c, 7)

    assert {:ok, [m]} = Pgflow.read(c, "metrics_to_guardian_queue", vt: 30_000)
    assert m.payload["proposal_id"] == pid
    assert m.payload["metrics_after"]["error_count"] == 7

    # The guardian sees the breach. An advisory queued earlier at the default priority is
    # overtaken by the rollback (the queue's default priority is 100).
    {:ok, advisory} =
      Pgflow.send(
        c,
        "rollback_triggers_queue",
        %{
          "type" => "rollback_trigger",
          "proposal_id" => uuid(),
          "instance_id" => "singularity_ex",
          "reason" => "advisory",
          "timestamp" => "2026-11-22T10:00:00Z"
        },
        priority: 0
      )

    assert {:ok, rollback} = Evolution.trigger_rollback(c, pid, "singularity_ex", 0.12)
    assert {:ok, true} = Pgflow.archive(c, "metrics_to_guardian_queue", m.id)
    assert {:ok, [r1, r2]} = Pgflow.read(c, "rollback_triggers_queue", qty: 2)
    assert [r1.id, r2.id] == [rollback, advisory]
    assert r1.payload["threshold"]["actual"] == 0.12

    for id <- [rollback, advisory],
        do: assert({:ok, true} = Pgflow.archive(c, "rollback_triggers_queue", id))
  end

  test "a payload that breaks its contract is refused with 23514 naming the field", %{conn: c} do
    before =
      one!(c, "SELECT queue_length::text FROM pgflow.metrics('proposals_for_consensus_queue')")

    assert {:error, %Pgflow.Error{code: "23514", message: msg}} =
             Pgflow.send(c, "proposals_for_consensus_queue", %{
               "type" => "proposal_for_consensus",
               "proposal_id" => uuid(),
               "instance_id" => "singularity_ex",
               "agent_type" => "BugFixerAgent",
               "code_change" => %{"file" => "x", "change" => "y"},
               "impact_score" => 42,
               "risk_score" => 1,
               "timestamp" => "2026-11-22T10:00:00Z"
             })

    assert msg =~ "impact_score"
    assert msg =~ "at most 10"

    assert one!(
             c,
             "SELECT queue_length::text FROM pgflow.metrics('proposals_for_consensus_queue')"
           ) ==
             before
  end

  test "a safety profile broadcast reaches each of the three instances", %{conn: c} do
    profile = %{
      "type" => "safety_profile_update",
      "agent_type" => "ElixirAgent",
      "safety_profile" => %{"success_rate" => 0.97, "error_threshold" => 0.05},
      "source" => "genesis_learning_loop",
      "timestamp" => "2026-11-22T10:00:05Z"
    }

    assert {:ok, routed} = Pgflow.publish(c, "safety_profile.ElixirAgent", profile)
    queues = for {q, _} <- routed, do: q
    assert Enum.sort(queues) == for(i <- 1..3, do: "safety_profiles_singularity_#{i}")

    for {q, id} <- routed do
      assert {:ok, [m]} = Pgflow.read(c, q)
      assert {m.id, m.payload} == {id, profile}
      assert {:ok, true} = Pgflow.archive(c, q, id)
    end
  end

  test "the Genesis runner: 4 handlers, one contract-valid result per request", %{conn: c} do
    count_results = fn ->
      one!(c, "SELECT count(*)::text || '/' || count(DISTINCT message->>'id')::text
                 FROM pgflow.message m JOIN pgflow.queue q USING (queue_id)
                WHERE q.queue_name = 'code_execution_results' AND message->>'id' LIKE 'ex_job_%'")
    end

    assert count_results.() == "0/0"

    for i <- 1..12 do
      {:ok, _} =
        Pgflow.send(c, "code_execution_requests", %{
          "type" => "code_execution_request",
          "id" => "ex_job_#{i}",
          "code" => "def f#{i}, do: #{i}",
          "language" => "elixir",
          "analysis_type" => Enum.at(~w(quality security linting testing), rem(i, 4))
        })
    end

    {:ok, runner} = Evolution.genesis_runner(dsn(), wait: 500, stop_when_idle: true)
    assert Pgflow.Consumer.await(runner) == %{archived: 12, nacked: 0, dead: 0, lost: 0}
    assert count_results.() == "12/12"
    assert {:ok, %{"queue_length" => 0}} = Pgflow.metrics(c, "code_execution_requests")
  end
end
