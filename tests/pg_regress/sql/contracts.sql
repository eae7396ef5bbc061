-- Message contracts: the evolution system's seven contracts, valid seed messages pass, each
-- kind of breach names its field and rule (23514), versions selected by header, bad contracts
-- refused (22023).
\set VERBOSITY terse
CREATE FUNCTION pg_temp.err(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE stmt; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;

-- The example files, found through pg_regress's PG_ABS_SRCDIR (tests/pg_regress).
\getenv abs_srcdir PG_ABS_SRCDIR
\set topology :abs_srcdir '/../../examples/evolution/topology.sql'
\set contracts :abs_srcdir '/../../examples/evolution/contracts.sql'
\set ECHO none
\o /dev/null
\i :topology
\i :contracts
\o
\set ECHO all
SELECT queue_name, version, is_default, contract ->> 'title' AS title
  FROM pgflow.list_queues() q, pgflow.list_contracts(q.queue_name) c ORDER BY 1;

-- The seed messages, as the producers send them.
SELECT pgflow.send('proposals_for_consensus_queue', '{
  "type": "proposal_for_consensus", "proposal_id": "123e4567-e89b-12d3-a456-426614174000",
  "instance_id": "singularity_1", "agent_type": "BugFixerAgent",
  "code_change": {"file": "lib/a.ex", "change": "..."}, "impact_score": 8.0, "risk_score": 1.0,
  "safety_profile": {"success_rate": 0.95, "cost_factor": 2.0},
  "timestamp": "2026-11-22T10:00:00.000000Z", "retry_count": 0, "max_retries": 3}') > 0 AS ok;
SELECT pgflow.send('consensus_results_queue', '{
  "type": "consensus_result", "proposal_id": "123e4567-e89b-12d3-a456-426614174000",
  "instance_id": "singularity_1", "status": "approved",
  "votes": {"singularity_1": "approve", "singularity_2": "approve", "singularity_3": "reject"},
  "confidence": 0.95, "decision_rationale": "Similar to pattern_X",
  "timestamp": "2026-11-22T10:00:01Z"}') > 0 AS ok;
SELECT pgflow.send('metrics_to_guardian_queue', '{
  "type": "execution_metrics", "proposal_id": "123e4567-e89b-12d3-a456-426614174000",
  "instance_id": "singularity_1", "agent_type": "BugFixerAgent",
  "metrics_before": {"cpu_usage": 45.2, "memory": 512.0, "error_count": 2},
  "metrics_after": {"cpu_usage": 46.1, "memory": 513.5, "error_count": 3},
  "status": "executing", "timestamp": "2026-11-22T10:00:02Z"}') > 0 AS ok;
SELECT pgflow.send('patterns_for_aggregator_queue', '{
  "type": "pattern_discovered", "instance_id": "singularity_1", "pattern_type": "refactoring",
  "code_pattern": {"before": "...", "after": "...", "description": "Extract function"},
  "success_rate": 0.97, "agent_type": "RefactoringAgent", "timestamp": "2026-11-22T10:00:03Z"}') > 0 AS ok;
SELECT pgflow.send('rollback_triggers_queue', '{
  "type": "rollback_trigger", "proposal_id": "123e4567-e89b-12d3-a456-426614174000",
  "instance_id": "singularity_1", "reason": "error_rate_breach",
  "threshold": {"error_rate": 0.10, "actual": 0.15}, "timestamp": "2026-11-22T10:00:04Z"}') > 0 AS ok;
SELECT pgflow.send('guardian_safety_profiles_queue', '{
  "type": "safety_profile_update", "instance_id": "singularity_1", "agent_type": "BugFixerAgent",
  "safety_profile": {"success_rate": 0.99, "error_threshold": 0.10, "latency_threshold": 3000,
                     "cost_threshold": 0.10},
  "source": "genesis_learning_loop", "timestamp": "2026-11-22T10:00:05Z"}') > 0 AS ok;
SELECT pgflow.send('learning_loop_completed_queue', '{
  "type": "learning_loop_completed", "patterns_processed": 5, "rules_generated": 2,
  "thresholds_updated": 3, "timestamp": "2026-11-22T10:00:06Z"}') > 0 AS ok;
SELECT pgflow.send('genesis_rule_updates_results', '{
  "type": "genesis_rule_update_result", "status": "applied", "namespace": "refactoring",
  "confidence": 0.9, "timestamp": "2026-11-22T10:00:08Z"}') > 0 AS ok;
SELECT pgflow.send('genesis_llm_config_updates_results', '{
  "type": "genesis_llm_config_update_result", "status": "applied", "provider": "anthropic",
  "complexity": "complex", "models_count": 2, "timestamp": "2026-11-22T10:00:08Z"}') > 0 AS ok;

-- Breaches: refused with 23514, the field and the rule named, nothing stored.
SELECT pg_temp.err($$SELECT pgflow.send('consensus_results_queue', '{"type": "consensus_result",
  "proposal_id": "123e4567-e89b-12d3-a456-426614174000", "instance_id": "s1", "status": "maybe",
  "votes": {}, "confidence": 0.5, "timestamp": "2026-11-22T10:00:01Z"}')$$);
SELECT pg_temp.err($$SELECT pgflow.send('consensus_results_queue', '{"type": "consensus_result",
  "proposal_id": "123e4567-e89b-12d3-a456-426614174000", "instance_id": "s1", "status": "approved",
  "votes": {"s2": "yes"}, "confidence": 0.5, "timestamp": "2026-11-22T10:00:01Z"}')$$);
SELECT pg_temp.err($$SELECT pgflow.send('learning_loop_completed_queue', '{"type": "learning_loop_completed",
  "patterns_processed": 5, "rules_generated": 2, "timestamp": "2026-11-22T10:00:06Z"}')$$);
SELECT pg_temp.err($$SELECT pgflow.send('learning_loop_completed_queue', '{"type": "learning_loop_completed",
  "patterns_processed": 5.5, "rules_generated": 2, "thresholds_updated": 1, "timestamp": "2026-11-22T10:00:06Z"}')$$);
SELECT pg_temp.err($$SELECT pgflow.send('rollback_triggers_queue', '{"type": "rollback_trigger",
  "proposal_id": "not-a-uuid", "instance_id": "s1", "reason": "x", "timestamp": "2026-11-22T10:00:04Z"}')$$);
SELECT pg_temp.err($$SELECT pgflow.send('rollback_triggers_queue', '{"type": "rollback_trigger",
  "proposal_id": "123e4567-e89b-12d3-a456-426614174000", "instance_id": "s1", "reason": "x",
  "timestamp": "yesterday"}')$$);
SELECT pg_temp.err($$SELECT pgflow.send('metrics_to_guardian_queue', '{"type": "execution_metrics",
  "proposal_id": "123e4567-e89b-12d3-a456-426614174000", "instance_id": "s1",
  "metrics_before": {"error_count": 2}, "metrics_after": {"error_count": -1}, "status": "executing",
  "timestamp": "2026-11-22T10:00:02Z"}')$$);
SELECT pg_temp.err($$SELECT pgflow.send('patterns_for_aggregator_queue', '{"type": "rollback_trigger"}')$$);
SELECT pg_temp.err($$SELECT pgflow.send('genesis_rule_updates_results', '{"type": "genesis_rule_update_result",
  "status": "done", "namespace": "refactoring", "confidence": 0.9, "timestamp": "2026-11-22T10:00:08Z"}')$$);
SELECT pg_temp.err($$SELECT pgflow.send('genesis_llm_config_updates_results', '{
  "type": "genesis_llm_config_update_result", "status": "applied", "provider": "anthropic",
  "complexity": "complex", "models_count": 1.5, "timestamp": "2026-11-22T10:00:08Z"}')$$);
-- send_batch names the element.
SELECT pg_temp.err($$SELECT pgflow.send_batch('learning_loop_completed_queue', ARRAY['{"type": "learning_loop_completed",
  "patterns_processed": 1, "rules_generated": 0, "thresholds_updated": 0, "timestamp": "2026-11-22T10:00:06Z"}',
  '{"type": "learning_loop_completed"}']::jsonb[])$$);
SELECT queue_name, queue_length FROM pgflow.metrics_all() ORDER BY 1;

-- Versions: a producer migrating to v2 names it in a header; others still use the default.
SELECT pgflow.set_contract('learning_loop_completed_queue', '{"type": "object",
  "required": ["type", "rules_generated", "duration_ms"],
  "properties": {"duration_ms": {"type": "integer", "minimum": 0}}}', version => '2',
  make_default => false);
SELECT version, is_default FROM pgflow.list_contracts('learning_loop_completed_queue');
SELECT pgflow.send('learning_loop_completed_queue', '{"type": "learning_loop_completed",
  "rules_generated": 1, "duration_ms": 1200}', headers => '{"schema_version": "2"}') > 0 AS v2_ok;
SELECT pg_temp.err($$SELECT pgflow.send('learning_loop_completed_queue', '{"type": "learning_loop_completed",
  "rules_generated": 1, "duration_ms": 1200}')$$);
SELECT pg_temp.err($$SELECT pgflow.send('learning_loop_completed_queue', '{}', headers => '{"schema_version": "3"}')$$);
SELECT pgflow.drop_contract('learning_loop_completed_queue', '1');
SELECT version, is_default FROM pgflow.list_contracts('learning_loop_completed_queue');
SELECT pgflow.drop_contract('learning_loop_completed_queue', '2'), pgflow.drop_contract('learning_loop_completed_queue', '2') AS again;
SELECT pgflow.send('learning_loop_completed_queue', '{"anything": true}') > 0 AS no_contract_left;

-- Contracts the checker cannot honour are refused when registered.
SELECT pg_temp.err($$SELECT pgflow.set_contract('consensus_results_queue', '{"properties": {"a": {"pattern": "^x"}}}')$$);
SELECT pg_temp.err($$SELECT pgflow.set_contract('consensus_results_queue', '{"type": "text"}')$$);
SELECT pg_temp.err($$SELECT pgflow.set_contract('consensus_results_queue', '{}', version => 'v 1')$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue('contracted', contract => '{"format": "email"}')$$);
SELECT count(*) FROM pgflow.list_queues() WHERE queue_name = 'contracted';
SELECT pgflow.create_queue('contracted', contract => '{"type": "object", "required": ["id"]}');
SELECT pg_temp.err($$SELECT pgflow.send('contracted', '{}')$$);
SELECT count(*) FROM pgflow.alter_queue('contracted', contract => '{"type": "object"}');
SELECT version, is_default, contract FROM pgflow.list_contracts('contracted');
SELECT pgflow.send('contracted', '{}') > 0 AS replaced;
-- Each backend caches parsed schemas; the cache follows every change, also inside a
-- transaction, and a rollback brings the old contract back.
BEGIN;
SELECT pgflow.set_contract('contracted', '{"type": "object", "required": ["v2"]}');
SELECT pg_temp.err($$SELECT pgflow.send('contracted', '{}')$$);
SELECT pgflow.set_contract('contracted', '{"type": "object", "required": ["v3"]}');
SELECT pg_temp.err($$SELECT pgflow.send('contracted', '{"v2": 1}')$$);
ROLLBACK;
SELECT pgflow.send('contracted', '{}') > 0 AS old_contract_again;
-- publish checks each bound queue's contract: all or nothing.
SELECT pgflow.bind('evolution.#', 'contracted'), pgflow.bind('evolution.#', 'rollback_triggers_queue');
SELECT pg_temp.err($$SELECT pgflow.publish('evolution.rollback', '{"type": "rollback_trigger"}')$$);
SELECT queue_name, queue_length FROM pgflow.metrics_all() WHERE queue_name IN ('contracted', 'rollback_triggers_queue');

SELECT count(pgflow.drop_queue(queue_name)) FROM pgflow.list_queues();
SELECT count(*) AS leftovers FROM pgflow.contract;
