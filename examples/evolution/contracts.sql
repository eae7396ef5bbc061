-- Message contracts of the evolution system (../shared/seeds/000_*: the seven message types;
-- 004_*: Genesis's requests and results), registered as version '1' of each queue's contract. Run after topology.sql (or on any
-- database where these queues exist). Each field the seeds show is typed; producers may add
-- fields (additionalProperties is left open), but may not send a known field with the wrong
-- type, range or format.

SELECT pgflow.set_contract('proposals_for_consensus_queue', $json$
{
  "title": "proposal_for_consensus",
  "type": "object",
  "required": ["type", "proposal_id", "instance_id", "agent_type", "code_change",
               "impact_score", "risk_score", "timestamp"],
  "properties": {
    "type":          {"const": "proposal_for_consensus"},
    "proposal_id":   {"type": "string", "format": "uuid"},
    "instance_id":   {"type": "string", "minLength": 1},
    "agent_type":    {"type": "string", "minLength": 1},
    "code_change":   {"type": "object", "required": ["file", "change"],
                      "properties": {"file": {"type": "string"}, "change": {"type": "string"}}},
    "impact_score":  {"type": "number", "minimum": 0, "maximum": 10},
    "risk_score":    {"type": "number", "minimum": 0, "maximum": 10},
    "safety_profile": {"type": "object",
                       "properties": {"success_rate": {"type": "number", "minimum": 0, "maximum": 1},
                                      "cost_factor": {"type": "number", "minimum": 0}}},
    "timestamp":     {"type": "string", "format": "date-time"},
    "retry_count":   {"type": "integer", "minimum": 0},
    "max_retries":   {"type": "integer", "minimum": 0}
  }
}
$json$);

SELECT pgflow.set_contract('consensus_results_queue', $json$
{
  "title": "consensus_result",
  "type": "object",
  "required": ["type", "proposal_id", "instance_id", "status", "votes", "confidence", "timestamp"],
  "properties": {
    "type":        {"const": "consensus_result"},
    "proposal_id": {"type": "string", "format": "uuid"},
    "instance_id": {"type": "string", "minLength": 1},
    "status":      {"enum": ["approved", "rejected"]},
    "votes":       {"type": "object", "additionalProperties": {"enum": ["approve", "reject", "abstain"]}},
    "confidence":  {"type": "number", "minimum": 0, "maximum": 1},
    "decision_rationale": {"type": "string"},
    "timestamp":   {"type": "string", "format": "date-time"}
  }
}
$json$);

SELECT pgflow.set_contract('metrics_to_guardian_queue', $json$
{
  "title": "execution_metrics",
  "type": "object",
  "required": ["type", "proposal_id", "instance_id", "metrics_before", "metrics_after", "status",
               "timestamp"],
  "properties": {
    "type":           {"const": "execution_metrics"},
    "proposal_id":    {"type": "string", "format": "uuid"},
    "instance_id":    {"type": "string", "minLength": 1},
    "agent_type":     {"type": "string"},
    "metrics_before": {"type": "object", "required": ["error_count"],
                       "properties": {"cpu_usage": {"type": "number", "minimum": 0},
                                      "memory": {"type": "number", "minimum": 0},
                                      "error_count": {"type": "integer", "minimum": 0}}},
    "metrics_after":  {"type": "object", "required": ["error_count"],
                       "properties": {"cpu_usage": {"type": "number", "minimum": 0},
                                      "memory": {"type": "number", "minimum": 0},
                                      "error_count": {"type": "integer", "minimum": 0}}},
    "status":         {"enum": ["executing", "completed", "failed", "rolled_back"]},
    "timestamp":      {"type": "string", "format": "date-time"}
  }
}
$json$);

SELECT pgflow.set_contract('patterns_for_aggregator_queue', $json$
{
  "title": "pattern_discovered",
  "type": "object",
  "required": ["type", "instance_id", "pattern_type", "code_pattern", "success_rate", "timestamp"],
  "properties": {
    "type":         {"const": "pattern_discovered"},
    "instance_id":  {"type": "string", "minLength": 1},
    "pattern_type": {"enum": ["refactoring", "optimization", "bug_fix"]},
    "code_pattern": {"type": "object", "required": ["before", "after"],
                     "properties": {"before": {"type": "string"}, "after": {"type": "string"},
                                    "description": {"type": "string"}}},
    "success_rate": {"type": "number", "minimum": 0, "maximum": 1},
    "agent_type":   {"type": "string"},
    "timestamp":    {"type": "string", "format": "date-time"}
  }
}
$json$);

SELECT pgflow.set_contract('rollback_triggers_queue', $json$
{
  "title": "rollback_trigger",
  "type": "object",
  "required": ["type", "proposal_id", "instance_id", "reason", "timestamp"],
  "properties": {
    "type":        {"const": "rollback_trigger"},
    "proposal_id": {"type": "string", "format": "uuid"},
    "instance_id": {"type": "string", "minLength": 1},
    "reason":      {"type": "string", "minLength": 1},
    "threshold":   {"type": "object", "properties": {"error_rate": {"type": "number", "minimum": 0},
                                                     "actual": {"type": "number", "minimum": 0}}},
    "timestamp":   {"type": "string", "format": "date-time"}
  }
}
$json$);

SELECT pgflow.set_contract('guardian_safety_profiles_queue', $json$
{
  "title": "safety_profile_update",
  "type": "object",
  "required": ["type", "agent_type", "safety_profile", "source", "timestamp"],
  "properties": {
    "type":           {"const": "safety_profile_update"},
    "instance_id":    {"type": "string"},
    "agent_type":     {"type": "string", "minLength": 1},
    "safety_profile": {"type": "object",
                       "required": ["success_rate", "error_threshold"],
                       "properties": {"success_rate": {"type": "number", "minimum": 0, "maximum": 1},
                                      "error_threshold": {"type": "number", "minimum": 0, "maximum": 1},
                                      "latency_threshold": {"type": "integer", "minimum": 0},
                                      "cost_threshold": {"type": "number", "minimum": 0}}},
    "source":         {"type": "string"},
    "timestamp":      {"type": "string", "format": "date-time"}
  }
}
$json$);

SELECT pgflow.set_contract('learning_loop_completed_queue', $json$
{
  "title": "learning_loop_completed",
  "type": "object",
  "required": ["type", "patterns_processed", "rules_generated", "thresholds_updated", "timestamp"],
  "properties": {
    "type":               {"const": "learning_loop_completed"},
    "patterns_processed": {"type": "integer", "minimum": 0},
    "rules_generated":    {"type": "integer", "minimum": 0},
    "thresholds_updated": {"type": "integer", "minimum": 0},
    "timestamp":          {"type": "string", "format": "date-time"}
  }
}
$json$);

-- Genesis (../shared/seeds/004_*): the three request types and the job runner's result.
SELECT pgflow.set_contract('genesis_rule_updates', $json$
{
  "title": "genesis_rule_update",
  "type": "object",
  "required": ["type", "namespace", "rule", "confidence"],
  "properties": {
    "type":       {"const": "genesis_rule_update"},
    "namespace":  {"type": "string", "minLength": 1},
    "rule":       {"type": "object"},
    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    "timestamp":  {"type": "string", "format": "date-time"}
  }
}
$json$);

SELECT pgflow.set_contract('genesis_llm_config_updates', $json$
{
  "title": "genesis_llm_config_update",
  "type": "object",
  "required": ["type", "provider", "complexity", "models"],
  "properties": {
    "type":       {"const": "genesis_llm_config_update"},
    "provider":   {"type": "string", "minLength": 1},
    "complexity": {"enum": ["simple", "medium", "complex"]},
    "models":     {"type": "array", "items": {"type": "string"}, "minItems": 1},
    "timestamp":  {"type": "string", "format": "date-time"}
  }
}
$json$);

SELECT pgflow.set_contract('code_execution_requests', $json$
{
  "title": "code_execution_request",
  "type": "object",
  "required": ["type", "id", "code", "language", "analysis_type"],
  "properties": {
    "type":          {"const": "code_execution_request"},
    "id":            {"type": "string", "minLength": 1},
    "code":          {"type": "string"},
    "language":      {"type": "string", "minLength": 1},
    "analysis_type": {"enum": ["quality", "security", "linting", "testing"]}
  }
}
$json$);

SELECT pgflow.set_contract('code_execution_results', $json$
{
  "title": "code_execution_result",
  "type": "object",
  "required": ["type", "id", "status", "metrics", "timestamp"],
  "properties": {
    "type":    {"const": "code_execution_result"},
    "id":      {"type": "string", "minLength": 1},
    "status":  {"enum": ["succeeded", "failed"]},
    "output":  {"type": "string"},
    "metrics": {"type": "object", "required": ["execution_ms", "quality_score", "issues_count"],
                "properties": {"execution_ms": {"type": "number", "minimum": 0},
                               "quality_score": {"type": "number", "minimum": 0, "maximum": 10},
                               "issues_count": {"type": "integer", "minimum": 0}}},
    "timestamp": {"type": "string", "format": "date-time"}
  }
}
$json$);

-- What Genesis publishes after applying a rule update or an LLM-config update (seed 004 lists
-- their fields: "status, namespace, confidence, timestamp" and "status, provider, complexity,
-- models_count").
SELECT pgflow.set_contract('genesis_rule_updates_results', $json$
{
  "title": "genesis_rule_update_result",
  "type": "object",
  "required": ["type", "status", "namespace", "confidence", "timestamp"],
  "properties": {
    "type":       {"const": "genesis_rule_update_result"},
    "status":     {"enum": ["applied", "rejected", "failed"]},
    "namespace":  {"type": "string", "minLength": 1},
    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    "error":      {"type": "string"},
    "timestamp":  {"type": "string", "format": "date-time"}
  }
}
$json$);

SELECT pgflow.set_contract('genesis_llm_config_updates_results', $json$
{
  "title": "genesis_llm_config_update_result",
  "type": "object",
  "required": ["type", "status", "provider", "complexity", "models_count", "timestamp"],
  "properties": {
    "type":         {"const": "genesis_llm_config_update_result"},
    "status":       {"enum": ["applied", "rejected", "failed"]},
    "provider":     {"type": "string", "minLength": 1},
    "complexity":   {"enum": ["simple", "medium", "complex"]},
    "models_count": {"type": "integer", "minimum": 0},
    "error":        {"type": "string"},
    "timestamp":    {"type": "string", "format": "date-time"}
  }
}
$json$);
