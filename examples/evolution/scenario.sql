-- The evolution system on pgflow, every hop (part 1; genesis_worker.sql runs the job runner
-- with 4 parallel workers, report.sql prints the end state and checks it). Plain SQL: each step
-- is what a service would send over its own connection. Run by scripts/evolution.sh.
\set ON_ERROR_STOP on
\set QUIET on
\pset footer off
SET client_min_messages = warning;

CREATE OR REPLACE VIEW pg_temp.depths AS
SELECT queue_name AS queue, visible AS ready, in_flight, delayed, waiting, dlq_length AS dlq,
       total_archived AS archived
  FROM pgflow.metrics_all()
 WHERE queue_length + dlq_length + total_archived > 0;

\echo
\echo '== 1. singularity_1 proposes a change (proposals_for_consensus_queue)'
SELECT pgflow.send('proposals_for_consensus_queue', jsonb_build_object(
         'type', 'proposal_for_consensus', 'proposal_id', '123e4567-e89b-12d3-a456-426614174000',
         'instance_id', 'singularity_1', 'agent_type', 'BugFixerAgent',
         'code_change', jsonb_build_object('file', 'lib/cache.ex', 'change', 'guard nil keys'),
         'impact_score', 8.0, 'risk_score', 1.0,
         'safety_profile', jsonb_build_object('success_rate', 0.95, 'cost_factor', 2.0),
         'timestamp', '2026-11-22T10:00:00Z', 'retry_count', 0, 'max_retries', 3),
         dedup_key => '123e4567-e89b-12d3-a456-426614174000') AS proposal_msg_id \gset
-- The instance times out and retries the send: the dedup key makes it a no-op.
SELECT pgflow.send('proposals_for_consensus_queue', jsonb_build_object(
         'type', 'proposal_for_consensus', 'proposal_id', '123e4567-e89b-12d3-a456-426614174000',
         'instance_id', 'singularity_1', 'agent_type', 'BugFixerAgent',
         'code_change', jsonb_build_object('file', 'lib/cache.ex', 'change', 'guard nil keys'),
         'impact_score', 8.0, 'risk_score', 1.0, 'timestamp', '2026-11-22T10:00:00Z'),
         dedup_key => '123e4567-e89b-12d3-a456-426614174000') AS retried_msg_id \gset
\echo '   proposal sent as message' :proposal_msg_id '; the retried send returned' :retried_msg_id '(deduplicated)'
-- A malformed proposal never enters the queue: the contract refuses it.
DO $$ BEGIN
  PERFORM pgflow.send('proposals_for_consensus_queue', '{"type": "proposal_for_consensus", "impact_score": 42}');
EXCEPTION WHEN check_violation THEN RAISE WARNING USING MESSAGE = '   contract: ' || SQLERRM;
END $$;
SELECT * FROM pg_temp.depths;

\echo '== 2. CentralCloud consensus reads it, votes, and publishes the result with the archive, in one transaction'
BEGIN;
SELECT msg_id AS consensus_msg, message->>'proposal_id' AS proposal_id
  FROM pgflow.read('proposals_for_consensus_queue', '30 s', 1) \gset
SELECT pgflow.send('consensus_results_queue', jsonb_build_object(
         'type', 'consensus_result', 'proposal_id', :'proposal_id', 'instance_id', 'singularity_1',
         'status', 'approved',
         'votes', '{"singularity_1": "approve", "singularity_2": "approve", "singularity_3": "reject"}'::jsonb,
         'confidence', 0.95, 'decision_rationale', 'Similar to pattern_X',
         'timestamp', '2026-11-22T10:00:01Z')) AS result_msg \gset
SELECT pgflow.archive('proposals_for_consensus_queue', :consensus_msg::bigint) AS archived \gset
COMMIT;
\echo '   approved: result message' :result_msg
SELECT * FROM pg_temp.depths;

\echo '== 3. singularity_1 takes the result, executes, and reports metrics to the guardian'
BEGIN;
SELECT msg_id AS result_id FROM pgflow.read('consensus_results_queue', '30 s', 1) \gset
SELECT pgflow.send('proposals_for_execution_queue', jsonb_build_object(
         'type', 'proposal_for_execution', 'proposal_id', :'proposal_id')) IS NOT NULL AS queued \gset
SELECT pgflow.archive('consensus_results_queue', :result_id::bigint) AS archived \gset
COMMIT;
BEGIN;
SELECT msg_id AS exec_id FROM pgflow.read('proposals_for_execution_queue', '5 minutes', 1) \gset
SELECT pgflow.send('metrics_to_guardian_queue', jsonb_build_object(
         'type', 'execution_metrics', 'proposal_id', :'proposal_id', 'instance_id', 'singularity_1',
         'agent_type', 'BugFixerAgent',
         'metrics_before', '{"cpu_usage": 45.2, "memory": 512.0, "error_count": 2}'::jsonb,
         'metrics_after', '{"cpu_usage": 46.1, "memory": 513.5, "error_count": 30}'::jsonb,
         'status', 'executing', 'timestamp', '2026-11-22T10:00:02Z')) IS NOT NULL AS reported \gset
SELECT pgflow.archive('proposals_for_execution_queue', :exec_id::bigint) AS archived \gset
COMMIT;
SELECT * FROM pg_temp.depths;

\echo '== 4. the guardian sees the error rate breach and sends a rollback that overtakes earlier messages'
-- Two routine advisories were already waiting for the instance (priority 0)...
SELECT count(pgflow.send('rollback_triggers_queue', jsonb_build_object(
         'type', 'rollback_trigger', 'proposal_id', '00000000-0000-4000-8000-00000000000' || i,
         'instance_id', 'singularity_1', 'reason', 'latency_advisory', 'timestamp', '2026-11-22T09:59:00Z'),
         priority => 0)) AS advisories FROM generate_series(1, 2) i \gset
BEGIN;
SELECT msg_id AS metrics_id, (message->'metrics_after'->>'error_count')::int AS errors_after
  FROM pgflow.read('metrics_to_guardian_queue', '30 s', 1) \gset
-- ...the breach goes out with the queue's default priority (100).
SELECT pgflow.send('rollback_triggers_queue', jsonb_build_object(
         'type', 'rollback_trigger', 'proposal_id', :'proposal_id', 'instance_id', 'singularity_1',
         'reason', 'error_rate_breach', 'threshold', '{"error_rate": 0.10, "actual": 0.15}'::jsonb,
         'timestamp', '2026-11-22T10:00:03Z')) AS rollback_msg \gset
SELECT pgflow.archive('metrics_to_guardian_queue', :metrics_id::bigint) AS archived \gset
COMMIT;
\echo '   the instance reads its rollback queue: the breach comes first'
CREATE TEMP TABLE rollbacks AS
SELECT row_number() OVER () AS delivered, r.msg_id, r.message->>'reason' AS reason
  FROM pgflow.read('rollback_triggers_queue', '30 s', 3) r;
SELECT r.delivered, r.msg_id, r.reason, m.priority
  FROM rollbacks r JOIN pgflow.message m ON m.msg_id = r.msg_id
  JOIN pgflow.queue q ON q.queue_id = m.queue_id AND q.queue_name = 'rollback_triggers_queue'
 ORDER BY r.delivered;
DO $$ BEGIN
  IF (SELECT reason FROM rollbacks WHERE delivered = 1) IS DISTINCT FROM 'error_rate_breach' THEN
    RAISE EXCEPTION 'the rollback did not overtake the advisories';
  END IF;
END $$;
SELECT count(*) AS rollbacks_archived
  FROM pgflow.archive('rollback_triggers_queue',
                      ARRAY(SELECT msg_id FROM pgflow.list_pending('rollback_triggers_queue'))) \gset

\echo '== 5. the aggregator fails on a pattern until it is dead-lettered (3 retries, then the DLQ)'
-- Backoff from 1 s would make the demo wait 7 s; the aggregator names retry_after 0 instead
-- (a Retry-After), and pgflow.retry_schedule shows what the policy alone would wait.
SELECT pgflow.send('patterns_for_aggregator_queue', jsonb_build_object(
         'type', 'pattern_discovered', 'instance_id', 'singularity_1', 'pattern_type', 'refactoring',
         'code_pattern', '{"before": "if x != nil", "after": "when not is_nil(x)", "description": "guard"}'::jsonb,
         'success_rate', 0.97, 'agent_type', 'RefactoringAgent', 'timestamp', '2026-11-22T10:00:04Z'))
       AS pattern_msg \gset
SELECT attempt, min_delay, max_delay FROM pgflow.retry_schedule('patterns_for_aggregator_queue');
CREATE TEMP TABLE attempts (delivery integer, msg_id bigint, outcome text);
DO $$
DECLARE
    m record;
    r record;
BEGIN
    FOR i IN 1 .. 4 LOOP
        SELECT * INTO m FROM pgflow.read('patterns_for_aggregator_queue', '30 s', 1);
        SELECT * INTO r FROM pgflow.nack('patterns_for_aggregator_queue', m.msg_id,
                                         'aggregator: embedding service unavailable',
                                         retry_after => '0', read_ct => m.read_ct);
        INSERT INTO attempts VALUES (m.read_ct, m.msg_id, r.outcome);
    END LOOP;
END $$;
SELECT * FROM attempts ORDER BY delivery;
\echo '   the operator inspects the DLQ (examples/psql/dlq.sql shows the same)'
SELECT msg_id, read_ct, reason, last_error FROM pgflow.dlq_list('patterns_for_aggregator_queue');
\echo '   the service is back: redrive, and a healthy aggregator archives it'
SELECT dead_msg_id, msg_id AS new_msg_id FROM pgflow.dlq_retry('patterns_for_aggregator_queue');
SELECT count(*) AS archived FROM pgflow.archive('patterns_for_aggregator_queue',
         ARRAY(SELECT msg_id FROM pgflow.read('patterns_for_aggregator_queue', '30 s', 10))) \gset
SELECT * FROM pg_temp.depths;

\echo '== 6. the learning loop broadcasts a safety profile to every instance and tells Genesis'
BEGIN;
SELECT queue_name, msg_id FROM pgflow.publish('safety_profile.BugFixerAgent', jsonb_build_object(
         'type', 'safety_profile_update', 'agent_type', 'BugFixerAgent',
         'safety_profile', '{"success_rate": 0.99, "error_threshold": 0.10, "latency_threshold": 3000, "cost_threshold": 0.10}'::jsonb,
         'source', 'genesis_learning_loop', 'timestamp', '2026-11-22T10:00:05Z'));
SELECT pgflow.send('learning_loop_completed_queue', jsonb_build_object(
         'type', 'learning_loop_completed', 'patterns_processed', 5, 'rules_generated', 2,
         'thresholds_updated', 3, 'timestamp', '2026-11-22T10:00:06Z')) IS NOT NULL AS told \gset
SELECT count(*) AS rule_updates FROM pgflow.publish('genesis.rule_update', jsonb_build_object(
         'type', 'genesis_rule_update', 'namespace', 'refactoring', 'confidence', 0.9,
         'rule', '{"prefer": "guards"}'::jsonb)) \gset
SELECT pgflow.send('genesis_llm_config_updates', jsonb_build_object(
         'type', 'genesis_llm_config_update', 'provider', 'anthropic', 'complexity', 'complex',
         'models', '["claude-opus", "claude-sonnet"]'::jsonb,
         'timestamp', '2026-11-22T10:00:07Z')) IS NOT NULL AS llm_update \gset
COMMIT;
-- Each instance reads its copy.
SELECT q AS instance_queue, m.message->'safety_profile'->>'success_rate' AS success_rate
  FROM unnest(ARRAY['safety_profiles_singularity_1', 'safety_profiles_singularity_2',
                    'safety_profiles_singularity_3']) q,
       LATERAL pgflow.read(q, '30 s', 1) m;
SELECT sum((SELECT count(*) FROM pgflow.archive(q, ARRAY(SELECT msg_id FROM pgflow.list_pending(q)))))
       AS profiles_archived
  FROM unnest(ARRAY['safety_profiles_singularity_1', 'safety_profiles_singularity_2',
                    'safety_profiles_singularity_3']) q \gset
-- Genesis applies the rule, the LLM config and the loop report: each result published and
-- its request archived in one transaction.
BEGIN;
SELECT msg_id AS rule_id, message->>'namespace' AS ns, message->>'confidence' AS confidence
  FROM pgflow.read('genesis_rule_updates', '30 s', 1) \gset
SELECT pgflow.send('genesis_rule_updates_results', jsonb_build_object(
         'type', 'genesis_rule_update_result', 'status', 'applied', 'namespace', :'ns',
         'confidence', :confidence::numeric, 'timestamp', '2026-11-22T10:00:08Z')) IS NOT NULL AS published \gset
SELECT msg_id AS llm_id, message->>'provider' AS provider, message->>'complexity' AS complexity,
       jsonb_array_length(message->'models') AS models_count
  FROM pgflow.read('genesis_llm_config_updates', '30 s', 1) \gset
SELECT pgflow.send('genesis_llm_config_updates_results', jsonb_build_object(
         'type', 'genesis_llm_config_update_result', 'status', 'applied', 'provider', :'provider',
         'complexity', :'complexity', 'models_count', :models_count,
         'timestamp', '2026-11-22T10:00:08Z')) IS NOT NULL AS published \gset
SELECT pgflow.archive('genesis_rule_updates', :rule_id::bigint) AS a1,
       pgflow.archive('genesis_llm_config_updates', :llm_id::bigint) AS a3,
       pgflow.archive('learning_loop_completed_queue',
                      (SELECT msg_id FROM pgflow.read('learning_loop_completed_queue', '30 s', 1))) AS a2 \gset
COMMIT;
\echo '   Genesis applied rule namespace' :ns 'and the' :provider 'LLM config with' :models_count 'models; results published'

\echo '== 7. Genesis gets 12 code-analysis requests; 4 workers run them in parallel (30 s lease each)'
SELECT count(pgflow.send('code_execution_requests', jsonb_build_object(
         'type', 'code_execution_request', 'id', 'job_' || i,
         'code', 'def f' || i || ', do: ' || i, 'language', 'elixir',
         'analysis_type', (ARRAY['quality', 'security', 'linting', 'testing'])[1 + i % 4])))
       AS requests FROM generate_series(1, 12) i;
SELECT * FROM pg_temp.depths;
