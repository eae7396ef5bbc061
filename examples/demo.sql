-- pgflow demo: an instance proposes code changes, CentralCloud votes on them.
-- Run by `make demo` against a throwaway cluster; safe to run again (it starts from scratch).
\pset footer off
\set QUIET on
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pgflow CASCADE;
CREATE EXTENSION pgflow;

\echo
\echo '== 1. Create the queues (retries 3 from 1 s, leases of 30 s, archive kept 7 days)'
SELECT pgflow.create_queue('proposals_for_consensus_queue') AS proposals_created,
       pgflow.create_queue('consensus_results_queue')       AS results_created;
SELECT queue_name, visibility_timeout, max_retries, retry_delay, archive_retention
  FROM pgflow.list_queues();

\echo '== 2. Singularity instances send proposals (one, then a batch of three)'
SELECT pgflow.send('proposals_for_consensus_queue',
  jsonb_build_object(
    'type', 'proposal_for_consensus',
    'proposal_id', '123e4567-e89b-12d3-a456-426614174000',
    'instance_id', 'singularity_1',
    'agent_type', 'BugFixerAgent',
    'code_change', jsonb_build_object('file', 'lib/cache.ex', 'change', 'bound the ETS table'),
    'impact_score', 8.0, 'risk_score', 1.0,
    'safety_profile', jsonb_build_object('success_rate', 0.95, 'cost_factor', 2.0),
    'timestamp', now()),
  headers => '{"trace_id": "demo-1"}') AS msg_id;
SELECT pgflow.send_batch('proposals_for_consensus_queue', ARRAY(
  SELECT jsonb_build_object('type', 'proposal_for_consensus', 'proposal_id', gen_random_uuid(),
                            'instance_id', 'singularity_' || i, 'agent_type', 'RefactorAgent',
                            'impact_score', 5 + i, 'risk_score', 0.5 * i)
    FROM generate_series(2, 4) AS i)) AS batch_ids;

\echo '== 3. What is waiting (an operator''s view; nothing is leased by looking)'
SELECT msg_id, state, read_ct, message->>'instance_id' AS instance, message->>'agent_type' AS agent
  FROM pgflow.list_pending('proposals_for_consensus_queue');

\echo '== 4. The consensus service leases two proposals for 30 s'
SELECT msg_id, read_ct, message->>'proposal_id' AS proposal, vt - now() < '31 s' AS lease_30s
  FROM pgflow.read('proposals_for_consensus_queue', vt => '30 seconds', qty => 2);

\echo '== 5. In ONE transaction: publish the result and archive the proposal (both or neither)'
BEGIN;
SELECT pgflow.send('consensus_results_queue',
  jsonb_build_object('type', 'consensus_result', 'proposal_id', '123e4567-e89b-12d3-a456-426614174000',
                     'status', 'approved', 'votes', jsonb_build_object('for', 3, 'against', 0))) AS result_id;
SELECT pgflow.archive('proposals_for_consensus_queue', 1::bigint) AS archived;
COMMIT;

\echo '== 6. A consumer that crashes mid-transaction loses nothing: its archive rolls back'
BEGIN;
SELECT pgflow.archive('proposals_for_consensus_queue', 2::bigint) AS archived_then_rolled_back;
ROLLBACK;

\echo '== 7. Metrics for every queue (total_archived counts the rolled-back archive of step 6 too:'
\echo '      totals come from sequences, which never go back; see docs/api.md)'
SELECT queue_name, queue_length, visible, in_flight, delayed, total_messages, total_archived
  FROM pgflow.metrics_all();

\echo '== 8. The audit trail'
SELECT msg_id, read_ct, message->>'proposal_id' AS proposal, archived_at - enqueued_at < '1 min' AS within_a_minute
  FROM pgflow.archive;

\echo '== 9. A consumer keeps failing on proposal 3: retries back off 1 s, 2 s, 4 s, then the DLQ'
\echo '      (the demo skips each wait with set_vt(queue, id, ''0''))'
SELECT pgflow.alter_queue('proposals_for_consensus_queue', retry_jitter => 0) IS NOT NULL AS exact_schedule;
SELECT attempt, max_delay AS waits FROM pgflow.retry_schedule('proposals_for_consensus_queue');
SELECT msg_id AS m FROM pgflow.read('proposals_for_consensus_queue', '30 s', 1) \gset
SELECT outcome, read_ct AS delivery, date_trunc('second', retry_at - now() + interval '0.5 s') AS retry_in
  FROM pgflow.nack('proposals_for_consensus_queue', :m, 'consensus timeout 1');
SELECT pgflow.set_vt('proposals_for_consensus_queue', :m, '0') AS skip_the_wait \gset
SELECT msg_id AS m FROM pgflow.read('proposals_for_consensus_queue', '30 s', 1) \gset
SELECT outcome, read_ct AS delivery, date_trunc('second', retry_at - now() + interval '0.5 s') AS retry_in
  FROM pgflow.nack('proposals_for_consensus_queue', :m, 'consensus timeout 2');
SELECT pgflow.set_vt('proposals_for_consensus_queue', :m, '0') AS skip_the_wait \gset
SELECT msg_id AS m FROM pgflow.read('proposals_for_consensus_queue', '30 s', 1) \gset
SELECT outcome, read_ct AS delivery, date_trunc('second', retry_at - now() + interval '0.5 s') AS retry_in
  FROM pgflow.nack('proposals_for_consensus_queue', :m, 'consensus timeout 3');
SELECT pgflow.set_vt('proposals_for_consensus_queue', :m, '0') AS skip_the_wait \gset
SELECT msg_id AS m FROM pgflow.read('proposals_for_consensus_queue', '30 s', 1) \gset
SELECT outcome, read_ct AS delivery, date_trunc('second', retry_at - now() + interval '0.5 s') AS retry_in
  FROM pgflow.nack('proposals_for_consensus_queue', :m, 'consensus timeout 4');
SELECT msg_id, read_ct, reason, last_error FROM pgflow.dlq_list('proposals_for_consensus_queue');
\echo '   An operator redrives it: back in the queue with a new id'
SELECT dead_msg_id, msg_id AS new_msg_id FROM pgflow.dlq_retry('proposals_for_consensus_queue');

\echo '== 10. Bad input gets a clear error and a specific SQLSTATE (here 42704: unknown queue)'
\set VERBOSITY verbose
\set ON_ERROR_STOP off
SELECT pgflow.send('no_such_queue', '{}');
\set ON_ERROR_STOP on
