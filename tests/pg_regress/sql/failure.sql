-- Failure handling: nack with backoff, retry_after, lease expiry, the dead-letter queue and its
-- redrive, the maintenance jobs. Times are controlled with `now` so the output is exact.
\set VERBOSITY terse
CREATE FUNCTION pg_temp.err(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE stmt; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;

-- The users' policy: 3 retries, exponential from 1 s (jitter off here to make it exact).
SELECT pgflow.create_queue('rollback_triggers_queue', retry_jitter => 0);
SELECT queue_name, max_retries, retry_delay, retry_backoff, retry_delay_max, retry_jitter
  FROM pgflow.list_queues();
SELECT * FROM pgflow.retry_schedule('rollback_triggers_queue');
-- max_retries is bounded at 1000, in create_queue, alter_queue and the table (retry_schedule of
-- 2147483647 retries filled the disk with temporary files).
SELECT pg_temp.err($$SELECT pgflow.create_queue('many_retries', max_retries => 2147483647)$$);
SELECT pg_temp.err($$SELECT pgflow.alter_queue('rollback_triggers_queue', max_retries => 1001)$$);
SELECT pg_temp.err($$UPDATE pgflow.queue SET max_retries = 1001$$);
SELECT max_retries FROM pgflow.alter_queue('rollback_triggers_queue', max_retries => 1000);
SELECT count(*), max(attempt) FROM pgflow.retry_schedule('rollback_triggers_queue');
SELECT max_retries FROM pgflow.alter_queue('rollback_triggers_queue', max_retries => 3);

SELECT pgflow.send('rollback_triggers_queue', '{"type": "rollback_trigger", "instance_id": "singularity_2"}');
SELECT msg_id, read_ct FROM pgflow.read('rollback_triggers_queue', '30 s', 1);

-- Each failed delivery: the error is kept, the next delivery waits 1 s, 2 s, 4 s.
SELECT msg_id, outcome, read_ct, retry_at - '2030-01-01+00' AS waits
  FROM pgflow.nack('rollback_triggers_queue', 1, 'instance unreachable', now => '2030-01-01+00');
SELECT msg_id, state, read_ct FROM pgflow.list_pending('rollback_triggers_queue');
SELECT msg_id FROM pgflow.set_vt('rollback_triggers_queue', 1, '0');
SELECT msg_id, read_ct FROM pgflow.read('rollback_triggers_queue', '30 s', 1);
SELECT msg_id, outcome, read_ct, retry_at - '2030-01-01+00' AS waits
  FROM pgflow.nack('rollback_triggers_queue', 1, 'instance unreachable', now => '2030-01-01+00');
SELECT msg_id FROM pgflow.set_vt('rollback_triggers_queue', 1, '0');
SELECT msg_id, read_ct FROM pgflow.read('rollback_triggers_queue', '30 s', 1);
-- A consumer may name its own delay (a Retry-After).
SELECT msg_id, outcome, read_ct, retry_at - '2030-01-01+00' AS waits
  FROM pgflow.nack('rollback_triggers_queue', 1, 'rate limited', retry_after => '90 s', now => '2030-01-01+00');
SELECT msg_id FROM pgflow.set_vt('rollback_triggers_queue', 1, '0');
SELECT msg_id, read_ct FROM pgflow.read('rollback_triggers_queue', '30 s', 1);
-- The 4th failed delivery uses up max_retries 3: dead-lettered.
SELECT msg_id, outcome, read_ct, retry_at
  FROM pgflow.nack('rollback_triggers_queue', 1, 'still unreachable', now => '2030-01-01+00');
SELECT queue_length, dlq_length FROM pgflow.metrics('rollback_triggers_queue');
SELECT msg_id, read_ct, died_at, reason, first_error, last_error, jsonb_array_length(errors) AS errors, message
  FROM pgflow.dlq_list('rollback_triggers_queue');

-- Redrive: back in the queue with a new id and fresh attempts, in the same transaction.
BEGIN;
SELECT * FROM pgflow.dlq_retry('rollback_triggers_queue');
SELECT msg_id, state, read_ct, message FROM pgflow.list_pending('rollback_triggers_queue');
ROLLBACK;
SELECT dlq_length FROM pgflow.metrics('rollback_triggers_queue');
SELECT pgflow.dlq_retry('rollback_triggers_queue', 1::bigint) AS new_id \gset
-- (ids are never reused: the rolled-back redrive above used one)
SELECT :new_id AS new_id;
SELECT pgflow.dlq_retry('rollback_triggers_queue', 1::bigint) AS again;
SELECT msg_id, read_ct, message FROM pgflow.read('rollback_triggers_queue', '30 s', 1);

-- A lease that runs out is a failed delivery too (here found by the maintenance job).
SELECT pgflow.expire_leases(now => '2099-01-01+00');
SELECT msg_id, state, read_ct, vt - '2099-01-01+00' AS retry_in FROM pgflow.list_pending('rollback_triggers_queue');
SELECT errors -> 0 ->> 'error' AS error FROM pgflow.message;
SELECT * FROM pgflow.maintain(now => '2099-01-01+00');

-- Refused: a nack of a message that is not in flight, or from a consumer whose lease is gone.
SELECT pg_temp.err(format('SELECT pgflow.nack(%L, %s)', 'rollback_triggers_queue', :new_id));
SELECT msg_id = :new_id AS same FROM pgflow.set_vt('rollback_triggers_queue', :new_id, '0');
SELECT msg_id, read_ct FROM pgflow.read('rollback_triggers_queue', '30 s', 1);
SELECT pg_temp.err(format('SELECT pgflow.nack(%L, %s, read_ct => 1)', 'rollback_triggers_queue', :new_id));
SELECT pg_temp.err(format('SELECT pgflow.nack(%L, %s, retry_after => %L)', 'rollback_triggers_queue', :new_id, '-1 s'));
SELECT pg_temp.err($$SELECT pgflow.create_queue('q', retry_backoff => 0)$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue('q', retry_jitter => -0.1)$$);
SELECT count(*) AS nack_of_missing FROM pgflow.nack('rollback_triggers_queue', 42);

-- Archive retention, with the clock moved past it.
SELECT pgflow.archive('rollback_triggers_queue', :new_id::bigint);
SELECT pgflow.prune_archive(now => clock_timestamp() + interval '6 days') AS pruned_too_early;
SELECT pgflow.prune_archive(now => clock_timestamp() + interval '8 days') AS pruned;

SELECT pgflow.dlq_purge('rollback_triggers_queue');
SELECT pgflow.drop_queue('rollback_triggers_queue');

-- Session leases: a lease also names the session that read it (pid and start second), and
-- maintain() gives back, as a failed delivery, a lease whose session runs no more (here a
-- holder key no session has), never a live session's.
SELECT pgflow.create_queue('sess_q', retry_delay => '0', retry_jitter => 0, session_leases => true);
SELECT queue_id AS sq FROM pgflow.queue WHERE queue_name = 'sess_q' \gset
SELECT session_leases FROM pgflow.list_queues() WHERE queue_name = 'sess_q';
SELECT pgflow.send('sess_q', '{"n": 1}') AS s1 \gset
SELECT pgflow.send('sess_q', '{"n": 2}') AS s2 \gset
SELECT count(*) AS leased FROM pgflow.read('sess_q', qty => 2);
SELECT pgflow._session_key() = ((pid::bigint << 32) | (floor(extract(epoch FROM backend_start))::bigint & 4294967295))
       AS key_is_pid_and_start
  FROM pg_stat_activity WHERE pid = pg_backend_pid();
SELECT count(*) AS held_by_this_session FROM pgflow.message
 WHERE queue_id = :sq AND state = 'l' AND holder = pgflow._session_key();
UPDATE pgflow.message SET holder = 1 WHERE queue_id = :sq AND msg_id = :s1;
SELECT job, processed FROM pgflow.maintain() WHERE job = 'expire_leases';
SELECT msg_id = :s1 AS orphan, state, read_ct, errors -> 0 ->> 'error' AS error
  FROM pgflow.message WHERE queue_id = :sq ORDER BY msg_id;
SELECT expired FROM pgflow.metrics('sess_q');
-- Off: the next leases name no session.
SELECT session_leases FROM pgflow.alter_queue('sess_q', session_leases => false);
SELECT msg_id = :s1 AS orphan_again FROM pgflow.read('sess_q');
SELECT count(*) FILTER (WHERE holder IS NULL) AS unheld, count(*) AS leased FROM pgflow.message
 WHERE queue_id = :sq AND state = 'l';
SELECT pg_temp.err($$SELECT pgflow.create_queue('q', session_leases => NULL)$$);
SELECT pgflow.drop_queue('sess_q');
