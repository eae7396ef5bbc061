-- Statistics (issue #15): counters and depths from shared memory, applied at commit; what a
-- rollback or a rolled-back savepoint did counts nothing; metrics() agrees with the exact
-- count; alerts; the dead-letter views the seeds' monitoring API needs. The worker is off in
-- this database (scripts/test.sh), so nothing moves between statements.
\set VERBOSITY terse
CREATE FUNCTION pg_temp.err(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE stmt; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
CREATE FUNCTION pg_temp.depths(q text, ex boolean) RETURNS text LANGUAGE sql AS $$
    SELECT format('length %s visible %s in_flight %s delayed %s waiting %s archive %s dlq %s exact %s',
                  queue_length, visible, in_flight, delayed, waiting, archive_length, dlq_length, exact)
      FROM pgflow.metrics(q, exact => ex) $$;
CREATE FUNCTION pg_temp.counters(q text) RETURNS text LANGUAGE sql AS $$
    SELECT format('sent %s delivered %s archived %s deleted %s nacked %s expired %s dead %s redriven %s',
                  sent, delivered, archived, deleted, nacked, expired, dead_lettered, redriven)
      FROM pgflow.metrics(q) $$;

SELECT pgflow.create_queue('stats_q', max_retries => 0, retry_jitter => 0, alert_dlq => 0,
                           alert_depth => 2);
SELECT pgflow.send('stats_q', jsonb_build_object('n', i)) FROM generate_series(1, 4) i;
BEGIN;
SELECT pgflow.send('stats_q', '{"rolled back": true}');
ROLLBACK;
BEGIN;
SELECT pgflow.send('stats_q', '{"kept": true}');
SAVEPOINT s;
SELECT pgflow.send('stats_q', '{"rolled back to the savepoint": true}');
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT pg_temp.depths('stats_q', false) AS from_stats, pg_temp.depths('stats_q', true) AS counted;
SELECT pg_temp.counters('stats_q');

-- Read 3, archive one, nack one (max_retries 0: dead), pop one, delete one.
SELECT count(*) FROM pgflow.read('stats_q', qty => 3);
SELECT pgflow.archive('stats_q', 1::bigint);
SELECT msg_id, outcome FROM pgflow.nack('stats_q', 2, 'boom');
SELECT msg_id FROM pgflow.pop('stats_q');
SELECT pgflow.delete('stats_q', 5::bigint) AS rolled_back_id, pgflow.delete('stats_q', 6::bigint) AS deleted;
SELECT pg_temp.depths('stats_q', false) AS from_stats, pg_temp.depths('stats_q', true) AS counted;
SELECT pg_temp.counters('stats_q');

-- This session leased and archived message 1: its processing time was observed.
SELECT processing_p50_sec IS NOT NULL AS processing_observed, wait_p50_sec IS NOT NULL AS wait_observed,
       end_to_end_p50_sec IS NOT NULL AS end_to_end_observed
  FROM pgflow.metrics('stats_q');

-- Alerts: one dead letter is over alert_dlq 0; one deliverable message is not over
-- alert_depth 2. The worker's check, run here by hand at a chosen now.
SELECT * FROM pgflow._alerts_check('2030-01-01+00');
SELECT queue_name, alert, since, value, threshold FROM pgflow.alerts();
SELECT * FROM pgflow._alerts_check('2030-01-01 00:01+00');  -- still firing: nothing announced
SELECT pg_temp.err($$SELECT pgflow.alter_queue('stats_q', alert_dlq => -2)$$);
SELECT pg_temp.err($$SELECT pgflow.alter_queue('stats_q', alert_age => '-1 s')$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue('stats_bad', alert_age => '101 years')$$);
SELECT alert_dlq, alert_age, alert_depth FROM pgflow.alter_queue('stats_q', alert_depth => -1);

-- The dead letters of every queue, with their queue's name; one deleted by id.
SELECT queue_name, msg_id, reason, last_error FROM pgflow.dlq_list_all();
SELECT pg_temp.err($$SELECT pgflow.dlq_list_all(0)$$);
SELECT pg_temp.err($$SELECT pgflow.dlq_delete('stats_q', NULL)$$);
SELECT pg_temp.err($$SELECT pgflow.dlq_delete('no_such_q', ARRAY[2])$$);
SELECT pgflow.dlq_delete('stats_q', ARRAY[2, 99]::bigint[]);
SELECT * FROM pgflow._alerts_check('2030-01-01 00:02+00');  -- cleared
SELECT count(*) AS firing FROM pgflow.alerts();
SELECT pg_temp.depths('stats_q', false) AS from_stats, pg_temp.depths('stats_q', true) AS counted;

-- stats_reset zeroes the counters, not the depths.
SELECT pgflow.stats_reset('stats_q');
SELECT pg_temp.counters('stats_q');
SELECT pg_temp.depths('stats_q', false) AS from_stats;
SELECT pg_temp.err($$SELECT pgflow._stats_mode('sideways')$$);
SELECT pgflow.drop_queue('stats_q');

-- stats_reset of every queue needs pgflow_admin (or a superuser): 42501 for a role that was
-- given EXECUTE on it, and 42501 from the queue lookup for a queue it does not administer.
CREATE ROLE pgflow_regress_stats NOLOGIN;
GRANT USAGE ON SCHEMA pgflow TO pgflow_regress_stats;
GRANT EXECUTE ON FUNCTION pgflow.stats_reset(text) TO pgflow_regress_stats;
SELECT pgflow.create_queue('stats_q2');
SET ROLE pgflow_regress_stats;
SELECT pg_temp.err($$SELECT pgflow.stats_reset()$$);
SELECT pg_temp.err($$SELECT pgflow.stats_reset('stats_q2')$$);
RESET ROLE;
SELECT pgflow.drop_queue('stats_q2');
REVOKE ALL ON FUNCTION pgflow.stats_reset(text) FROM pgflow_regress_stats;
REVOKE ALL ON SCHEMA pgflow FROM pgflow_regress_stats;
DROP ROLE pgflow_regress_stats;

-- The trigger finds its columns by name (src/api/stats.rs, Cols::of): on a table with
-- message's columns in another order it counts the rows under the queue they name; on a table
-- that lacks one of them it refuses the write with 55000 instead of reading another column.
SELECT pgflow.create_queue('stats_byname');
CREATE TABLE public.stats_shuffled (errors jsonb, state "char", extra text, headers jsonb,
    message jsonb, msg_id bigint, enqueued_at timestamptz, read_ct integer, queue_id integer);
ALTER TABLE public.stats_shuffled DROP COLUMN extra;
CREATE TRIGGER stats_note BEFORE INSERT OR UPDATE OR DELETE ON public.stats_shuffled
    FOR EACH ROW EXECUTE FUNCTION pgflow._stats_note('message');
INSERT INTO public.stats_shuffled (state, message, msg_id, enqueued_at, read_ct, queue_id)
SELECT 'r', '{}', g, now(), 0, queue_id FROM pgflow.queue, generate_series(1, 2) g
 WHERE queue_name = 'stats_byname';
SELECT pg_temp.depths('stats_byname', false) AS from_stats;
SELECT pg_temp.err($$UPDATE public.stats_shuffled SET state = 'x'$$);
UPDATE public.stats_shuffled SET state = 'l', read_ct = 1;
SELECT pg_temp.depths('stats_byname', false) AS from_stats;
DELETE FROM public.stats_shuffled;
SELECT pg_temp.depths('stats_byname', false) AS from_stats;
CREATE TABLE public.stats_no_queue (read_ct integer, msg_id bigint, enqueued_at timestamptz);
CREATE TRIGGER stats_note BEFORE INSERT ON public.stats_no_queue
    FOR EACH ROW EXECUTE FUNCTION pgflow._stats_note('dead');
SELECT pg_temp.err($$INSERT INTO public.stats_no_queue VALUES (0, 1, now())$$);
CREATE TABLE public.stats_wrong_type (queue_id bigint, read_ct integer, msg_id bigint,
    enqueued_at timestamptz);
CREATE TRIGGER stats_note BEFORE INSERT ON public.stats_wrong_type
    FOR EACH ROW EXECUTE FUNCTION pgflow._stats_note('dead');
SELECT pg_temp.err($$INSERT INTO public.stats_wrong_type VALUES (1, 0, 1, now())$$);
DROP TABLE public.stats_shuffled, public.stats_no_queue, public.stats_wrong_type;
SELECT pgflow.drop_queue('stats_byname');
