-- The message verbs: send, send_batch, read, set_vt, archive, delete, pop, metrics, list_pending.
\set VERBOSITY terse
CREATE FUNCTION pg_temp.err(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE stmt; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;

SELECT pgflow.create_queue('jobs');

-- Ids start at 1 per queue and follow send order.
SELECT pgflow.send('jobs', '{"type": "proposal_for_consensus", "proposal_id": "p-1"}');
SELECT pgflow.send('jobs', '{"type": "proposal_for_consensus", "proposal_id": "p-2"}',
                   headers => '{"trace_id": "t-2"}');
SELECT * FROM pgflow.send_batch('jobs', ARRAY['{"n": 3}', '{"n": 4}', '{"n": 5}']::jsonb[]);
SELECT pgflow.send('jobs', '{"n": 6}', delay => '1 hour');

-- What waits, in delivery order, without leasing.
SELECT msg_id, state, read_ct, message, headers FROM pgflow.list_pending('jobs');

-- read leases in FIFO order; vt is the end of the lease.
SELECT msg_id, read_ct, message, headers,
       vt BETWEEN clock_timestamp() + interval '25 s' AND clock_timestamp() + interval '30 s' AS lease_30s
  FROM pgflow.read('jobs', '30 seconds', 2);
-- Leased messages are skipped; the delayed one is not due.
SELECT msg_id, read_ct FROM pgflow.read('jobs', '30 seconds', 10);
SELECT msg_id, read_ct FROM pgflow.read('jobs', '30 seconds', 10);

SELECT queue_length, visible, in_flight, delayed, total_messages, total_archived, archive_length
  FROM pgflow.metrics('jobs');

-- set_vt: a lease ended early is delivered again, counted as a second read.
SELECT msg_id, read_ct FROM pgflow.set_vt('jobs', 1, '0 seconds');
SELECT msg_id, read_ct, message FROM pgflow.read('jobs', '30 seconds', 10);
-- set_vt on a delayed message makes it due; on a missing one returns nothing.
SELECT msg_id FROM pgflow.set_vt('jobs', 6, '0 seconds');
SELECT msg_id, read_ct FROM pgflow.read('jobs', '30 seconds', 10);
SELECT count(*) FROM pgflow.set_vt('jobs', 999, '1 s');

-- archive moves to the audit trail; each id once.
SELECT pgflow.archive('jobs', 1::bigint);
SELECT pgflow.archive('jobs', 1::bigint);
SELECT * FROM pgflow.archive('jobs', ARRAY[2, 3, 999]::bigint[]) ORDER BY 1;
SELECT msg_id, read_ct, message, headers FROM pgflow.archive ORDER BY msg_id;

-- delete keeps nothing.
SELECT pgflow.delete('jobs', 4::bigint);
SELECT * FROM pgflow.delete('jobs', ARRAY[4, 5]::bigint[]);

SELECT queue_length, visible, in_flight, delayed, total_messages, total_archived, archive_length
  FROM pgflow.metrics('jobs');

-- pop reads and deletes at once.
SELECT pgflow.send('jobs', '{"n": 7}');
SELECT msg_id, read_ct, message FROM pgflow.pop('jobs');
SELECT count(*) FROM pgflow.pop('jobs', 10);

-- The queue default lease applies when read names none.
SELECT visibility_timeout FROM pgflow.alter_queue('jobs', visibility_timeout => '5 minutes');
SELECT pgflow.send('jobs', '{"n": 8}');
SELECT vt > clock_timestamp() + interval '4 minutes' AS default_lease FROM pgflow.read('jobs', qty => 1);

-- Bad input: a specific SQLSTATE, and nothing stored is lost.
SELECT pg_temp.err($$SELECT pgflow.send('nope', '{}')$$);
SELECT pg_temp.err($$SELECT pgflow.send('jobs', '[1, 2]')$$);
SELECT pg_temp.err($$SELECT pgflow.send('jobs', '42')$$);
SELECT pg_temp.err($$SELECT pgflow.send('jobs', NULL)$$);
SELECT pg_temp.err($$SELECT pgflow.send('jobs', '{}', headers => '"h"')$$);
SELECT pg_temp.err($$SELECT pgflow.send('jobs', '{}', delay => '-1 s')$$);
SELECT pg_temp.err($$SELECT pgflow.send_batch('jobs', ARRAY['{}', '[]']::jsonb[])$$);
SELECT pg_temp.err($$SELECT pgflow.send_batch('jobs', ARRAY['{}']::jsonb[], ARRAY['{}', '{}']::jsonb[])$$);
SELECT pg_temp.err($$SELECT pgflow.read('jobs', '30 s', 0)$$);
SELECT pg_temp.err($$SELECT pgflow.read('jobs', '-30 s', 1)$$);
SELECT pg_temp.err($$SELECT pgflow.read('jobs', '30 s', NULL)$$);
SELECT pg_temp.err($$SELECT pgflow.pop('jobs', -1)$$);
SELECT pg_temp.err($$SELECT pgflow.set_vt('jobs', 8, '-1 s')$$);
SELECT pg_temp.err($$SELECT pgflow.archive('jobs', NULL::bigint[])$$);
SELECT pg_temp.err($$SELECT pgflow.list_pending('jobs', 0)$$);
SELECT pg_temp.err($$SELECT pgflow.metrics('x; drop table y --')$$);
SELECT msg_id, state, message FROM pgflow.list_pending('jobs');

-- metrics_all covers every queue.
SELECT pgflow.create_queue('empty');
SELECT queue_name, queue_length, visible, in_flight, delayed, oldest_msg_age_sec IS NULL AS no_age,
       total_messages, total_archived
  FROM pgflow.metrics_all();

SELECT pgflow.drop_queue('jobs'), pgflow.drop_queue('empty');
