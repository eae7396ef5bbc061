# Seed 003's CentralCloud configuration (nexus/central_services/config/config.exs), as written.
import Config

# PgFlow Message Queues Configuration
# ============================================================================
# Asynchronous, durable messaging from Singularity instances

config :centralcloud, :pgflow_queues,
  database_url: System.get_env("PGFLOW_DATABASE_URL") || "postgresql://localhost/central_services",
  producers: [
    # Queue for sending consensus results to instances
    {
      :consensus_results,
      %{
        queue_name: "consensus_results_queue",
        workers: System.get_env("PGFLOW_CONSENSUS_RESULTS_WORKERS", "2") |> String.to_integer(),
        max_retries: 3,
        retry_delay_ms: 1000
      }
    },
    # Queue for sending rollback triggers (high priority)
    {
      :rollback_triggers,
      %{
        queue_name: "rollback_triggers_queue",
        workers: System.get_env("PGFLOW_ROLLBACK_WORKERS", "1") |> String.to_integer(),
        max_retries: 3,
        retry_delay_ms: 1000,
        priority: :high
      }
    },
    # Queue for sending safety profile updates
    {
      :safety_profiles,
      %{
        queue_name: "guardian_safety_profiles_queue",
        workers: System.get_env("PGFLOW_PROFILE_WORKERS", "1") |> String.to_integer(),
        max_retries: 3,
        retry_delay_ms: 1000
      }
    }
  ],
  consumers: [
    # Consumer for proposals from instances
    {
      :proposals,
      %{
        queue_name: "proposals_for_consensus_queue",
        workers: System.get_env("PGFLOW_PROPOSALS_WORKERS", "3") |> String.to_integer(),
        handler: CentralCloud.Evolution.Pgflow.Consumers,
        handler_method: :handle_proposal_for_consensus,
        max_retries: 3,
        retry_delay_ms: 1000
      }
    },
    # Consumer for metrics from instances
    {
      :metrics,
      %{
        queue_name: "metrics_to_guardian_queue",
        workers: System.get_env("PGFLOW_METRICS_WORKERS", "2") |> String.to_integer(),
        handler: CentralCloud.Evolution.Pgflow.Consumers,
        handler_method: :handle_execution_metrics,
        max_retries: 3,
        retry_delay_ms: 1000
      }
    },
    # Consumer for patterns from instances
    {
      :patterns,
      %{
        queue_name: "patterns_for_aggregator_queue",
        workers: System.get_env("PGFLOW_PATTERNS_WORKERS", "1") |> String.to_integer(),
        handler: CentralCloud.Evolution.Pgflow.Consumers,
        handler_method: :handle_pattern_discovered,
        max_retries: 3,
        retry_delay_ms: 1000
      }
    }
  ]

# Telemetry for PgFlow events
config :telemetry, :events,
  [
    [:evolution, :pgflow, :proposal_received],
    [:evolution, :pgflow, :metrics_received],
    [:evolution, :pgflow, :pattern_received],
    [:evolution, :pgflow, :consensus_result_published],
    [:evolution, :pgflow, :rollback_trigger_published],
    [:evolution, :pgflow, :profile_update_published]
  ]
