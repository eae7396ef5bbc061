defmodule ExPgflow.Telemetry do
  @moduledoc """
  The seeds' event names (seed 003's `config :telemetry, :events` and its
  `:telemetry.attach("pgflow_monitor", [:evolution, :pgflow, :*], ...)`), emitted by
  `Pgflow.Telemetry` beside its own events for the six queues of the evolution system:

  | queue | a send succeeds | a consumer's handler succeeds |
  |---|---|---|
  | `proposals_for_consensus_queue` | `:proposal_published` | `:proposal_received` |
  | `metrics_to_guardian_queue` | `:metrics_published` | `:metrics_received` |
  | `patterns_for_aggregator_queue` | `:pattern_published` | `:pattern_received` |
  | `consensus_results_queue` | `:consensus_result_published` | `:consensus_approved` or `:consensus_rejected` (the payload's `status`) |
  | `rollback_triggers_queue` | `:rollback_trigger_published` | `:rollback_completed` |
  | `guardian_safety_profiles_queue` | `:profile_update_published` | `:profile_updated` |

  and `:publish_failed` when a send to one of them fails. Each is `[:evolution, :pgflow,
  name]` with the measurements and metadata of the pgflow event (`[:pgflow, :publish]` or
  `[:pgflow, :consume, :stop]`), and each is emitted once more as `[:evolution, :pgflow, :*]`
  with the name in the metadata's `event`: `:telemetry` has no wildcards, so that is the event
  seed 003's handler attaches to.
  """

  @queues %{
    "proposals_for_consensus_queue" => {:proposal_published, :proposal_received},
    "metrics_to_guardian_queue" => {:metrics_published, :metrics_received},
    "patterns_for_aggregator_queue" => {:pattern_published, :pattern_received},
    "consensus_results_queue" => {:consensus_result_published, :consensus_result},
    "rollback_triggers_queue" => {:rollback_trigger_published, :rollback_completed},
    "guardian_safety_profiles_queue" => {:profile_update_published, :profile_updated}
  }

  @doc "The seeds' events for a pgflow event: `[{event, metadata}]`, often none."
  @spec seed_events(Pgflow.Telemetry.event(), map()) :: [{Pgflow.Telemetry.event(), map()}]
  def seed_events([:pgflow, :publish], %{queue: queue, result: result} = md)
      when is_map_key(@queues, queue) do
    {published, _} = @queues[queue]
    named(if(result == :ok, do: published, else: :publish_failed), md)
  end

  def seed_events([:pgflow, :consume, :stop], %{queue: queue, outcome: :archive} = md)
      when is_map_key(@queues, queue) do
    case {@queues[queue], md[:payload]} do
      {{_, :consensus_result}, %{"status" => "approved"}} -> named(:consensus_approved, md)
      {{_, :consensus_result}, %{"status" => "rejected"}} -> named(:consensus_rejected, md)
      {{_, :consensus_result}, _} -> []
      {{_, received}, _} -> named(received, md)
    end
  end

  def seed_events(_event, _metadata), do: []

  defp named(name, md) do
    event = [:evolution, :pgflow, name]
    [{event, md}, {[:evolution, :pgflow, :*], Map.put(md, :event, event)}]
  end
end
