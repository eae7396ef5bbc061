# Genesis, from seed 004: its supervision tree and its consumer. The seed shows the tree and
# the configuration (config/genesis.exs) but not Genesis.PgFlowWorkflowConsumer's code, only
# what it does: consume three queues with the configured batch size and parallelism, route
# each workflow by payload["type"], publish a result to the queue's results queue, and archive
# the request. Here it is that, on ExPgflow.Consumer.

defmodule Genesis.Application do
  @moduledoc false
  use Application

  # Seed 004's children, less the services that are not pgflow's (Genesis.Repo, Oban, the
  # Task.Supervisor, the isolation, rollback and metrics services) and the disabled legacy
  # consumer.
  def start(_type, _args) do
    children = [
      Genesis.PgFlowWorkflowConsumer
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: Genesis.Supervisor)
  end
end

defmodule Genesis.PgFlowWorkflowConsumer do
  @moduledoc false

  # Each request queue and where its results go.
  @queues %{
    "genesis_rule_updates" => "genesis_rule_updates_results",
    "genesis_llm_config_updates" => "genesis_llm_config_updates_results",
    "code_execution_requests" => "code_execution_results"
  }

  # config :genesis, :pgflow_consumer (batch_size, max_parallel_workers, poll_interval_ms,
  # timeout_ms, enabled, repo) applies to each of the three consumers.
  def child_spec(_) do
    consumers =
      for queue <- Map.keys(@queues) do
        {queue, %{queue_name: queue, handler: __MODULE__, handler_method: :consume_workflow}}
      end

    ExPgflow.Consumer.child_spec(
      Application.get_env(:genesis, :pgflow_consumer) ++ [consumers: consumers]
    )
  end

  # Route: payload["type"]; the result goes out on the handler's own connection.
  def consume_workflow(payload, conn) do
    result =
      case payload["type"] do
        "genesis_rule_update" -> Genesis.RuleEngine.apply_rule(payload)
        "genesis_llm_config_update" -> Genesis.LlmConfigManager.update_config(payload)
        "code_execution_request" -> Genesis.JobExecutor.execute(payload)
      end

    Pgflow.send(conn, results_queue(payload["type"]), result)
  end

  defp results_queue("genesis_rule_update"), do: @queues["genesis_rule_updates"]
  defp results_queue("genesis_llm_config_update"), do: @queues["genesis_llm_config_updates"]
  defp results_queue("code_execution_request"), do: @queues["code_execution_requests"]
end

# ---- stand-ins for Genesis's services: results with the fields seed 004 lists ----

defmodule Genesis.RuleEngine do
  @moduledoc false
  def apply_rule(rule) do
    %{
      type: "genesis_rule_update_result",
      status: "applied",
      namespace: rule.namespace,
      confidence: rule.confidence,
      timestamp: DateTime.utc_now()
    }
  end
end

defmodule Genesis.LlmConfigManager do
  @moduledoc false
  def update_config(config) do
    %{
      type: "genesis_llm_config_update_result",
      status: "applied",
      provider: config.provider,
      complexity: config.complexity,
      models_count: length(config.models),
      timestamp: DateTime.utc_now()
    }
  end
end

defmodule Genesis.JobExecutor do
  @moduledoc false
  def execute(job) do
    started = System.monotonic_time(:microsecond)
    Pgflow.Seeds.at_gate(job.id)

    %{
      type: "code_execution_result",
      id: job.id,
      status: "succeeded",
      output: "#{job.analysis_type} ok",
      metrics: %{
        execution_ms: (System.monotonic_time(:microsecond) - started) / 1000,
        quality_score: 7,
        issues_count: 0
      },
      timestamp: DateTime.utc_now()
    }
  end
end
