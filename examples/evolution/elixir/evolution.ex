defmodule Pgflow.Evolution do
  @moduledoc """
  The Elixir side of the evolution system (`examples/evolution/`, `../shared/seeds/`): a
  Singularity instance and the Genesis job runner, each a few plain SQL calls through
  `Pgflow`. The queues, bindings and contracts come from `examples/evolution/topology.sql` and
  `contracts.sql`; every payload here satisfies its queue's contract.
  """

  @doc "An instance proposes a change for consensus (deduplicated by proposal id)."
  def propose(conn, instance_id, proposal_id, file, change) do
    Pgflow.send(
      conn,
      "proposals_for_consensus_queue",
      %{
        "type" => "proposal_for_consensus",
        "proposal_id" => proposal_id,
        "instance_id" => instance_id,
        "agent_type" => "BugFixerAgent",
        "code_change" => %{"file" => file, "change" => change},
        "impact_score" => 7.5,
        "risk_score" => 2.0,
        "timestamp" => now(),
        "retry_count" => 0,
        "max_retries" => 3
      },
      dedup_key: proposal_id
    )
  end

  @doc """
  CentralCloud votes: takes a proposal, publishes the approved consensus result and archives
  the proposal, in one transaction. Returns the proposal id, or nil when there is none.
  """
  def vote(conn) do
    relay(conn, "proposals_for_consensus_queue", [vt: 30_000], "consensus_results_queue", fn p ->
      %{
        "type" => "consensus_result",
        "proposal_id" => p["proposal_id"],
        "instance_id" => p["instance_id"],
        "status" => "approved",
        "votes" => %{"singularity_2" => "approve", "singularity_3" => "approve"},
        "confidence" => 0.9,
        "timestamp" => now()
      }
    end)
  end

  @doc """
  The instance takes its consensus result, "executes" and reports metrics to the guardian,
  archiving the result in the same transaction. Returns the proposal id, or nil.
  """
  def execute_and_report(conn, errors_after) do
    read_opts = [vt: 30_000, wait: 1_000]

    relay(conn, "consensus_results_queue", read_opts, "metrics_to_guardian_queue", fn r ->
      %{
        "type" => "execution_metrics",
        "proposal_id" => r["proposal_id"],
        "instance_id" => r["instance_id"],
        "metrics_before" => %{"cpu_usage" => 40.0, "error_count" => 1},
        "metrics_after" => %{"cpu_usage" => 38.5, "error_count" => errors_after},
        "status" => "completed",
        "timestamp" => now()
      }
    end)
  end

  # One hop, in one transaction: lease a message from `from`, send `build.(payload)` to `to`,
  # archive the message. Returns the message's proposal id, or nil when `from` was empty.
  defp relay(conn, from, read_opts, to, build) do
    Pgflow.transaction(conn, fn ->
      case Pgflow.read(conn, from, read_opts) do
        {:ok, [m]} ->
          with {:ok, _} <- Pgflow.send(conn, to, build.(m.payload)),
               {:ok, true} <- Pgflow.archive(conn, from, m.id) do
            {:ok, m.payload["proposal_id"]}
          end

        {:ok, []} ->
          {:ok, nil}

        error ->
          error
      end
    end)
  end

  @doc "The guardian sends a rollback trigger (the queue's default priority puts it first)."
  def trigger_rollback(conn, proposal_id, instance_id, actual_error_rate) do
    Pgflow.send(conn, "rollback_triggers_queue", %{
      "type" => "rollback_trigger",
      "proposal_id" => proposal_id,
      "instance_id" => instance_id,
      "reason" => "error rate #{actual_error_rate} above threshold 0.05",
      "threshold" => %{"error_rate" => 0.05, "actual" => actual_error_rate},
      "timestamp" => now()
    })
  end

  @doc """
  The Genesis job runner: `concurrency` handlers on `code_execution_requests`, each result
  published to `code_execution_results` before its request is archived (at-least-once: a crash
  in between publishes the result again; results carry the request id to dedupe on).
  """
  def genesis_runner(connect, opts \\ []) do
    Pgflow.Consumer.start(
      Keyword.merge(
        [
          connect: connect,
          queue: "code_execution_requests",
          concurrency: 4,
          lease: 30_000,
          handler: &run_job/2
        ],
        opts
      )
    )
  end

  # "Analysis": a stand-in that derives a score and an issue count from the code, published
  # over the handler's own connection.
  defp run_job(%Pgflow.Message{payload: req}, conn) do
    t0 = System.monotonic_time(:microsecond)
    code = req["code"] || ""

    Pgflow.send(conn, "code_execution_results", %{
      "type" => "code_execution_result",
      "id" => req["id"],
      "status" => "succeeded",
      "output" => "#{req["analysis_type"]} ok (elixir #{inspect(self())})",
      "metrics" => %{
        "execution_ms" => (System.monotonic_time(:microsecond) - t0) / 1000,
        "quality_score" => 5 + rem(byte_size(code), 5),
        "issues_count" => rem(byte_size(code), 3)
      },
      "timestamp" => now()
    })
  end

  defp now, do: DateTime.utc_now() |> DateTime.truncate(:millisecond) |> DateTime.to_iso8601()
end
