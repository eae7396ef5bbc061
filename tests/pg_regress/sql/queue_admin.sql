-- Queue management: create, list, alter, purge, drop, and their errors.
\set VERBOSITY terse
CREATE FUNCTION pg_temp.err(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE stmt; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;

SELECT pgflow.create_queue('proposals_for_consensus_queue');
SELECT pgflow.create_queue('rollback_triggers_queue', visibility_timeout => '10 seconds',
                           max_retries => 5, retry_delay => '500 ms', archive_retention => '30 days');
SELECT queue_name, visibility_timeout, max_retries, retry_delay, archive_retention,
       created_at <= now() AS created FROM pgflow.list_queues() ORDER BY queue_name;

-- A second create of the same name: 42710, or false with if_not_exists (settings untouched).
SELECT pg_temp.err($$SELECT pgflow.create_queue('rollback_triggers_queue')$$);
SELECT pgflow.create_queue('rollback_triggers_queue', max_retries => 1, if_not_exists => true);
SELECT queue_name, max_retries FROM pgflow.list_queues() ORDER BY queue_name;

-- Names: data, never identifiers.
SELECT pg_temp.err($$SELECT pgflow.create_queue('x; drop table y --')$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue('')$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue(repeat('a', 81))$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue('_hidden')$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue(NULL)$$);
SELECT pgflow.create_queue(repeat('a', 80)) AS eighty_chars_ok;

-- Bad settings.
SELECT pg_temp.err($$SELECT pgflow.create_queue('q', visibility_timeout => '0')$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue('q', max_retries => -1)$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue('q', retry_delay => '-1 s')$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue('q', archive_retention => '0')$$);

-- alter_queue changes only what it is given.
SELECT queue_name, visibility_timeout, max_retries, retry_delay, archive_retention FROM pgflow.alter_queue('proposals_for_consensus_queue', max_retries => 7);
SELECT queue_name, visibility_timeout, max_retries, retry_delay, archive_retention FROM pgflow.alter_queue('proposals_for_consensus_queue', visibility_timeout => '2 min',
                                 archive_retention => '1 day');
SELECT pg_temp.err($$SELECT pgflow.alter_queue('proposals_for_consensus_queue', retry_delay => '-1 s')$$);
SELECT pg_temp.err($$SELECT pgflow.alter_queue('missing', max_retries => 1)$$);

-- purge removes live messages and keeps the archive.
SELECT count(*) FROM pgflow.send_batch('proposals_for_consensus_queue', array_fill('{}'::jsonb, ARRAY[3]));
SELECT pgflow.archive('proposals_for_consensus_queue', 1::bigint);
SELECT pgflow.purge_queue('proposals_for_consensus_queue');
SELECT queue_length, archive_length FROM pgflow.metrics('proposals_for_consensus_queue');

-- drop removes the queue, its messages, its archive; if_exists makes it idempotent.
SELECT pgflow.drop_queue('proposals_for_consensus_queue');
SELECT pg_temp.err($$SELECT pgflow.drop_queue('proposals_for_consensus_queue')$$);
SELECT pgflow.drop_queue('proposals_for_consensus_queue', if_exists => true);
SELECT count(*) AS archive_rows_left FROM pgflow.archive;
SELECT queue_name FROM pgflow.list_queues() ORDER BY queue_name;
SELECT pgflow.drop_queue(repeat('a', 80));
SELECT pgflow.drop_queue('rollback_triggers_queue');
