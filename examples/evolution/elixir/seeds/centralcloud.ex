# CentralCloud, from the seeds as written: seed 000's consumers and producers (Steps 6 and 7),
# seed 003's application (section 5), and stand-ins for what the seeds call but do not show.
# Nothing between the "as written" markers may change: clients/elixir/test/seeds_test.exs
# checks them against the seeds' text when it sits beside the clone.

# ---- seed 000, Step 6, as written ----
defmodule CentralCloud.Evolution.PgflowConsumers do
  @moduledoc """
  Consumers for handling messages from Singularity instances via pgflow.
  """

  require Logger

  alias CentralCloud.Consensus.Engine
  alias CentralCloud.Guardian.RollbackService
  alias CentralCloud.Patterns.PatternAggregator

  @doc "Handle proposal for consensus from instance"
  def handle_proposal_for_consensus(message) do
    Logger.info("Received proposal #{message.proposal_id} for consensus")

    case Engine.propose_change(
      message.instance_id,
      message.proposal_id,
      message.code_change,
      %{
        agent_type: message.agent_type,
        impact_score: message.impact_score,
        risk_score: message.risk_score,
        safety_profile: message.safety_profile
      }
    ) do
      {:ok, _} ->
        {:ok, "proposal_recorded"}

      {:error, reason} ->
        Logger.error("Failed to record proposal: #{inspect(reason)}")
        {:error, reason}
    end
  end

  @doc "Handle metrics from instance"
  def handle_execution_metrics(message) do
    Logger.debug("Received metrics for proposal #{message.proposal_id}")

    case RollbackService.report_metrics(
      message.instance_id,
      message.proposal_id,
      message.metrics_before,
      message.metrics_after,
      message.status
    ) do
      {:ok, _} ->
        {:ok, "metrics_recorded"}

      {:error, reason} ->
        Logger.warn("Failed to record metrics: #{inspect(reason)}")
        {:error, reason}
    end
  end

  @doc "Handle pattern from instance"
  def handle_pattern_discovered(message) do
    Logger.info("Received pattern from #{message.instance_id}")

    case PatternAggregator.record_pattern(
      message.instance_id,
      message.pattern_type,
      message.code_pattern,
      success_rate: message.success_rate,
      agent_type: message.agent_type
    ) do
      {:ok, _} ->
        {:ok, "pattern_recorded"}

      {:error, reason} ->
        Logger.warn("Failed to record pattern: #{inspect(reason)}")
        {:error, reason}
    end
  end
end
# ---- end ----

# ---- seed 000, Step 7, as written ----
defmodule CentralCloud.Evolution.PgflowProducers do
  @moduledoc """
  Producers for sending messages to Singularity instances via pgflow.
  """

  require Logger

  @doc "Send consensus result to instance"
  def send_consensus_result(instance_id, proposal_id, status, votes, confidence) do
    message = %{
      type: "consensus_result",
      proposal_id: proposal_id,
      instance_id: instance_id,
      status: status,  # "approved" or "rejected"
      votes: votes,
      confidence: confidence,
      decision_rationale: "Multi-instance consensus voting",
      timestamp: DateTime.utc_now()
    }

    case ExPgflow.publish(
      :centralcloud,
      "consensus_results_queue",
      message
    ) do
      {:ok, message_id} ->
        Logger.info("Published consensus result for proposal #{proposal_id}")
        {:ok, message_id}

      {:error, reason} ->
        Logger.error("Failed to publish consensus result: #{inspect(reason)}")
        {:error, reason}
    end
  end

  @doc "Send rollback trigger to instance"
  def send_rollback_trigger(instance_id, proposal_id, reason, threshold_details) do
    message = %{
      type: "rollback_trigger",
      proposal_id: proposal_id,
      instance_id: instance_id,
      reason: reason,
      threshold: threshold_details,
      timestamp: DateTime.utc_now()
    }

    case ExPgflow.publish(
      :centralcloud,
      "rollback_triggers_queue",
      message
    ) do
      {:ok, message_id} ->
        Logger.warn("Published rollback trigger for proposal #{proposal_id}")
        {:ok, message_id}

      {:error, reason} ->
        Logger.error("Failed to publish rollback: #{inspect(reason)}")
        {:error, reason}
    end
  end

  @doc "Send safety profile update to instance"
  def send_safety_profile_update(instance_id, agent_type, safety_profile) do
    message = %{
      type: "safety_profile_update",
      instance_id: instance_id,
      agent_type: agent_type,
      safety_profile: safety_profile,
      source: "genesis_learning_loop",
      timestamp: DateTime.utc_now()
    }

    case ExPgflow.publish(
      :centralcloud,
      "guardian_safety_profiles_queue",
      message
    ) do
      {:ok, message_id} ->
        Logger.info("Published safety profile update for #{agent_type}")
        {:ok, message_id}

      {:error, reason} ->
        Logger.warn("Failed to publish safety profile: #{inspect(reason)}")
        {:error, reason}
    end
  end
end
# ---- end ----

defmodule CentralCloud.Application do
  @moduledoc false
  use Application

  # ---- seed 003, section 5, as written ----
  def start(_type, _args) do
    children = [
      # ... existing services ...

      # PgFlow consumers for incoming messages from instances
      {ExPgflow.Consumer, Application.get_env(:centralcloud, :pgflow_consumers)},

      # ... rest of supervision tree ...
    ]

    opts = [strategy: :one_for_one, name: CentralCloud.Supervisor]
    Supervisor.start_link(children, opts)
  end
  # ---- end ----
end

# Seed 003's name for seed 000's CentralCloud.Evolution.PgflowConsumers (see singularity.ex).
defmodule CentralCloud.Evolution.Pgflow.Consumers do
  @moduledoc false
  alias CentralCloud.Evolution.PgflowConsumers
  defdelegate handle_proposal_for_consensus(message), to: PgflowConsumers
  defdelegate handle_execution_metrics(message), to: PgflowConsumers
  defdelegate handle_pattern_discovered(message), to: PgflowConsumers
end

# ---- stand-ins: what seed 000's consumers call, reporting to the test ----

defmodule CentralCloud.Consensus.Engine do
  @moduledoc false
  # Votes at once and sends the result with seed 000's producer: a change described as
  # "reject me" is rejected, any other approved. Raises for a poisoned proposal.
  def propose_change(instance_id, proposal_id, code_change, meta) do
    if Pgflow.Seeds.poisoned?(proposal_id), do: raise("consensus engine unavailable")
    status = if code_change["change"] == "reject me", do: "rejected", else: "approved"
    votes = %{singularity_1: "approve", singularity_2: "approve", singularity_3: "reject"}

    {:ok, msg_id} =
      CentralCloud.Evolution.PgflowProducers.send_consensus_result(
        instance_id,
        proposal_id,
        status,
        votes,
        0.95
      )

    Pgflow.Seeds.record({:proposed, proposal_id, meta, msg_id})
    {:ok, status}
  end
end

defmodule CentralCloud.Guardian.RollbackService do
  @moduledoc false
  def report_metrics(instance_id, proposal_id, before, after_, status) do
    Pgflow.Seeds.record({:metrics, instance_id, proposal_id, before, after_, status})
    {:ok, :recorded}
  end
end

defmodule CentralCloud.Patterns.PatternAggregator do
  @moduledoc false
  def record_pattern(instance_id, pattern_type, code_pattern, opts) do
    Pgflow.Seeds.record({:pattern, instance_id, pattern_type, code_pattern, opts})
    {:ok, :recorded}
  end
end
