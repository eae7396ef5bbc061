# Singularity, from the seeds as written: seed 000's producers and consumers (Steps 2 and 3),
# seed 003's application (section 5), and stand-ins for what the seeds call but do not show.
# Nothing between the "as written" markers may change: clients/elixir/test/seeds_test.exs
# checks them against the seeds' text when it sits beside the clone.

# ---- seed 000, Step 2, as written ----
defmodule Singularity.Evolution.PgflowProducers do
  @moduledoc """
  Producers for sending messages to CentralCloud via pgflow queues.
  """

  require Logger

  @doc "Publish proposal to consensus queue"
  def propose_for_consensus(proposal) do
    message = %{
      type: "proposal_for_consensus",
      proposal_id: proposal.id,
      instance_id: instance_id(),
      agent_type: proposal.agent_type,
      code_change: proposal.code_change,
      impact_score: proposal.impact_score,
      risk_score: proposal.risk_score,
      safety_profile: proposal.safety_profile,
      timestamp: DateTime.utc_now()
    }

    case ExPgflow.publish(
      :singularity,
      "proposals_for_consensus_queue",
      message
    ) do
      {:ok, message_id} ->
        Logger.info("Published proposal #{proposal.id} with message_id #{message_id}")
        {:ok, message_id}

      {:error, reason} ->
        Logger.error("Failed to publish proposal: #{inspect(reason)}")
        {:error, reason}
    end
  end

  @doc "Publish metrics to Guardian"
  def report_metrics_to_guardian(proposal, metrics_before, metrics_after) do
    message = %{
      type: "execution_metrics",
      proposal_id: proposal.id,
      instance_id: instance_id(),
      agent_type: proposal.agent_type,
      metrics_before: metrics_before,
      metrics_after: metrics_after,
      status: proposal.status,
      timestamp: DateTime.utc_now()
    }

    case ExPgflow.publish(
      :singularity,
      "metrics_to_guardian_queue",
      message
    ) do
      {:ok, message_id} ->
        Logger.debug("Published metrics for proposal #{proposal.id}")
        {:ok, message_id}

      {:error, reason} ->
        Logger.warn("Failed to publish metrics: #{inspect(reason)}")
        # Don't fail execution if metrics publishing fails
        {:ok, :async}
    end
  end

  @doc "Publish pattern to Aggregator"
  def report_pattern_to_aggregator(pattern_type, code_pattern, success_rate, agent_type) do
    message = %{
      type: "pattern_discovered",
      instance_id: instance_id(),
      pattern_type: pattern_type,
      code_pattern: code_pattern,
      success_rate: success_rate,
      agent_type: agent_type,
      timestamp: DateTime.utc_now()
    }

    case ExPgflow.publish(
      :singularity,
      "patterns_for_aggregator_queue",
      message
    ) do
      {:ok, message_id} ->
        Logger.debug("Published pattern of type #{pattern_type}")
        {:ok, message_id}

      {:error, reason} ->
        Logger.warn("Failed to publish pattern: #{inspect(reason)}")
        {:ok, :async}
    end
  end

  defp instance_id do
    System.get_env("INSTANCE_ID", "singularity_default")
  end
end
# ---- end ----

# ---- seed 000, Step 3, as written ----
defmodule Singularity.Evolution.PgflowConsumers do
  @moduledoc """
  Consumers for handling messages from CentralCloud via pgflow queues.
  """

  require Logger
  alias Singularity.Evolution.ProposalQueue

  @doc "Handle consensus result from CentralCloud"
  def handle_consensus_result(message) do
    Logger.info("Received consensus result for proposal #{message.proposal_id}")

    case message do
      %{"status" => "approved", "proposal_id" => proposal_id} ->
        # Mark as consensus_reached and execute
        ProposalQueue.check_consensus_result(proposal_id)
        {:ok, "processed"}

      %{"status" => "rejected", "proposal_id" => proposal_id} ->
        # Mark as consensus_failed
        case ProposalQueue.get_proposal(proposal_id) do
          {:ok, proposal} ->
            updated = Singularity.Schemas.Evolution.Proposal.mark_consensus_failed(
              proposal,
              message["votes"]
            )
            Singularity.Repo.update(updated)
            {:ok, "processed"}

          _ ->
            {:error, "proposal not found"}
        end

      _ ->
        Logger.warn("Invalid consensus result message: #{inspect(message)}")
        {:error, "invalid message"}
    end
  end

  @doc "Handle rollback trigger from Guardian"
  def handle_rollback_trigger(message) do
    Logger.warn("Received rollback trigger for proposal #{message.proposal_id}")

    case ProposalQueue.get_proposal(message.proposal_id) do
      {:ok, proposal} ->
        # Revert code change, mark as rolled_back
        updated = Singularity.Schemas.Evolution.Proposal.mark_rolled_back(
          proposal,
          message["reason"]
        )
        Singularity.Repo.update(updated)
        {:ok, "rolled_back"}

      _ ->
        {:error, "proposal not found"}
    end
  end

  @doc "Handle safety profile update from Guardian"
  def handle_safety_profile_update(message) do
    Logger.info("Received safety profile update for #{message.agent_type}")

    # Cache in SafetyProfiles
    Singularity.Evolution.SafetyProfiles.update_from_central(
      message.agent_type,
      message.safety_profile
    )

    {:ok, "updated"}
  end
end
# ---- end ----

defmodule Singularity.Application do
  @moduledoc false
  use Application

  # ---- seed 003, section 5, as written ----
  def start(_type, _args) do
    children = [
      # ... existing services ...

      # PgFlow consumers for incoming messages from CentralCloud
      {ExPgflow.Consumer, Application.get_env(:singularity, :pgflow_consumers)},

      # ... rest of supervision tree ...
    ]

    opts = [strategy: :one_for_one, name: Singularity.Supervisor]
    Supervisor.start_link(children, opts)
  end
  # ---- end ----
end

# Seed 003's configuration names the handler module Singularity.Evolution.Pgflow.Consumers
# (seed 001 puts it in evolution/pgflow/consumers.ex); seed 000 writes it as PgflowConsumers.
defmodule Singularity.Evolution.Pgflow.Consumers do
  @moduledoc false
  alias Singularity.Evolution.PgflowConsumers
  defdelegate handle_consensus_result(message), to: PgflowConsumers
  defdelegate handle_rollback_trigger(message), to: PgflowConsumers
  defdelegate handle_safety_profile_update(message), to: PgflowConsumers
end

# ---- stand-ins: what seed 000's consumers call, reporting to the test ----

defmodule Singularity.Schemas.Evolution.Proposal do
  @moduledoc false
  defstruct [:id, :agent_type, :code_change, :impact_score, :risk_score, :safety_profile, :status]

  def mark_consensus_failed(proposal, votes), do: {:consensus_failed, proposal.id, votes}
  def mark_rolled_back(proposal, reason), do: {:rolled_back, proposal.id, reason}
end

defmodule Singularity.Evolution.ProposalQueue do
  @moduledoc false
  def check_consensus_result(proposal_id), do: Pgflow.Seeds.record({:consensus_checked, proposal_id})

  def get_proposal(proposal_id),
    do: {:ok, %Singularity.Schemas.Evolution.Proposal{id: proposal_id, status: "executing"}}
end

defmodule Singularity.Repo do
  @moduledoc false
  def update(change) do
    Pgflow.Seeds.record({:repo_update, change})
    {:ok, change}
  end
end

defmodule Singularity.Evolution.SafetyProfiles do
  @moduledoc false
  def update_from_central(agent_type, profile),
    do: Pgflow.Seeds.record({:safety_profile, agent_type, profile})
end
