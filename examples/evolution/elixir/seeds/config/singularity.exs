# Seed 003's Singularity configuration (nexus/singularity/config/config.exs), as written.
import Config

# PgFlow Message Queues Configuration
# ============================================================================
# Asynchronous, durable messaging to CentralCloud

config :singularity, :pgflow_queues,
  database_url: System.get_env("PGFLOW_DATABASE_URL") || "postgresql://localhost/singularity",
  producers: [
    # Queue for sending proposals to CentralCloud consensus
    {
      :proposals_for_consensus,
      %{
        queue_name: "proposals_for_consensus_queue",
        workers: System.get_env("PGFLOW_PROPOSALS_WORKERS", "2") |> String.to_integer(),
        max_retries: 3,
        retry_delay_ms: 1000
      }
    },
    # Queue for sending metrics to Guardian
    {
      :metrics_to_guardian,
      %{
        queue_name: "metrics_to_guardian_queue",
        workers: System.get_env("PGFLOW_METRICS_WORKERS", "2") |> String.to_integer(),
        max_retries: 3,
        retry_delay_ms: 1000
      }
    },
    # Queue for sending patterns to Aggregator
    {
      :patterns_for_aggregator,
      %{
        queue_name: "patterns_for_aggregator_queue",
        workers: System.get_env("PGFLOW_PATTERNS_WORKERS", "1") |> String.to_integer(),
        max_retries: 3,
        retry_delay_ms: 1000
      }
    }
  ],
  consumers: [
    # Consumer for consensus results
    {
      :consensus_results,
      %{
        queue_name: "consensus_results_queue",
        workers: System.get_env("PGFLOW_CONSENSUS_WORKERS", "2") |> String.to_integer(),
        handler: Singularity.Evolution.Pgflow.Consumers,
        handler_method: :handle_consensus_result,
        max_retries: 3,
        retry_delay_ms: 1000
      }
    },
    # Consumer for rollback triggers
    {
      :rollback_triggers,
      %{
        queue_name: "rollback_triggers_queue",
        workers: System.get_env("PGFLOW_ROLLBACK_WORKERS", "1") |> String.to_integer(),
        handler: Singularity.Evolution.Pgflow.Consumers,
        handler_method: :handle_rollback_trigger,
        max_retries: 3,
        retry_delay_ms: 1000,
        priority: :high
      }
    },
    # Consumer for safety profile updates
    {
      :safety_profiles,
      %{
        queue_name: "guardian_safety_profiles_queue",
        workers: System.get_env("PGFLOW_SAFETY_WORKERS", "1") |> String.to_integer(),
        handler: Singularity.Evolution.Pgflow.Consumers,
        handler_method: :handle_safety_profile_update,
        max_retries: 3,
        retry_delay_ms: 1000
      }
    }
  ]

# Telemetry for PgFlow events
config :telemetry, :events,
  [
    [:evolution, :pgflow, :proposal_published],
    [:evolution, :pgflow, :metrics_published],
    [:evolution, :pgflow, :pattern_published],
    [:evolution, :pgflow, :publish_failed],
    [:evolution, :pgflow, :consensus_approved],
    [:evolution, :pgflow, :consensus_rejected],
    [:evolution, :pgflow, :rollback_completed],
    [:evolution, :pgflow, :profile_updated]
  ]
