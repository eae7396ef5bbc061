-- Hardening (issue #14): search_path pinned against planted shadows; limits on every interval
-- and key, so that anything accepted can be applied; one queue's maintenance failure skipped,
-- not fatal to the others; JSON a contract cannot hold, odd arrays and long topics refused
-- with 22023, never XX000.
\set VERBOSITY terse
CREATE FUNCTION pg_temp.err(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE stmt; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;

-------------------------------------------------------------------------------------------------
-- search_path. Every function code outside pgflow can enter (the user-facing ones and the
-- trigger functions written in SQL) pins its path; the internal ones, which run only inside
-- those, may be executed by no role but their owner (sql/finalize.sql). The statistics trigger
-- is C and runs no SQL.
SELECT p.oid::regprocedure AS entry_point_unpinned
  FROM pg_proc p
 WHERE p.pronamespace = 'pgflow'::regnamespace
   AND (p.proname NOT LIKE '\_%' OR (p.prorettype = 'trigger'::regtype
                                      AND p.prolang <> (SELECT oid FROM pg_language WHERE lanname = 'c')))
   AND NOT coalesce('search_path=pg_catalog, pgflow, pg_temp' = ANY (p.proconfig), false)
 ORDER BY 1;
SELECT p.oid::regprocedure AS internal_executable, r.rolname
  FROM pg_proc p, pg_roles r
 WHERE p.pronamespace = 'pgflow'::regnamespace AND p.proname LIKE '\_%'
   AND r.rolname <> 'pgflow_owner' AND NOT r.rolsuper
   AND has_function_privilege(r.oid, p.oid, 'EXECUTE')
 ORDER BY 1, 2;
SELECT count(*) FILTER (WHERE proconfig IS NOT NULL) > 40 AS pinned,
       count(*) FILTER (WHERE proname LIKE '\_%') > 40 AS internal
  FROM pg_proc WHERE pronamespace = 'pgflow'::regnamespace;

-- Shadows as a database owner could plant them in public (issue #14: an exact-type
-- jsonb_build_object beat pg_catalog's VARIADIC "any" one inside the worker's _fail). Each
-- records that it was called. With public first on the path, even same-signature ones would
-- win over pg_catalog's, so the session below puts it first.
CREATE TABLE public.shadow_calls (fn text);
CREATE FUNCTION public.jsonb_build_object(text, timestamptz, text, integer, text, text)
RETURNS jsonb LANGUAGE sql AS $$ INSERT INTO public.shadow_calls VALUES ('jsonb_build_object/6') RETURNING '{}'::jsonb $$;
CREATE FUNCTION public.jsonb_build_object(text, text)
RETURNS jsonb LANGUAGE sql AS $$ INSERT INTO public.shadow_calls VALUES ('jsonb_build_object/2') RETURNING '{}'::jsonb $$;
CREATE FUNCTION public.jsonb_build_array(jsonb)
RETURNS jsonb LANGUAGE sql AS $$ INSERT INTO public.shadow_calls VALUES ('jsonb_build_array') RETURNING '[]'::jsonb $$;
CREATE FUNCTION public.clock_timestamp()
RETURNS timestamptz LANGUAGE sql AS $$ INSERT INTO public.shadow_calls VALUES ('clock_timestamp') RETURNING pg_catalog.now() $$;
CREATE FUNCTION public.jsonb_typeof(jsonb)
RETURNS text LANGUAGE sql AS $$ INSERT INTO public.shadow_calls VALUES ('jsonb_typeof') RETURNING 'object' $$;
CREATE FUNCTION public.nextval(regclass)
RETURNS bigint LANGUAGE sql AS $$ INSERT INTO public.shadow_calls VALUES ('nextval') RETURNING 1::bigint $$;
CREATE FUNCTION public.random()
RETURNS float8 LANGUAGE sql AS $$ INSERT INTO public.shadow_calls VALUES ('random') RETURNING 0.5::float8 $$;
CREATE FUNCTION public.int4eq_shadow(integer, integer) RETURNS boolean LANGUAGE sql AS
$$ INSERT INTO public.shadow_calls VALUES ('=') RETURNING $1 OPERATOR(pg_catalog.=) $2 $$;
CREATE OPERATOR public.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = public.int4eq_shadow);

SET search_path = public, pg_catalog;
SELECT pgflow.create_queue('h_shadow', max_retries => 0, retry_jitter => 0, contract => '{"type": "object"}');
SELECT pgflow.bind('h.#', 'h_shadow');
SELECT pgflow.send('h_shadow', '{"a": 1}', dedup_key => 'k') > 0 AS sent;
SELECT count(*) FROM pgflow.send_batch('h_shadow', ARRAY['{"b": 1}', '{"b": 2}']::jsonb[]);
SELECT count(*) FROM pgflow.publish('h.x', '{"c": 1}');
SELECT count(*) FROM pgflow.read('h_shadow', '1 s', 2);
-- The leases expire (at a chosen now; the test's own calls are qualified): _fail records the
-- error and dead-letters, as in the worker.
SELECT job, processed FROM pgflow.maintain(now => pg_catalog.clock_timestamp() + interval '1 hour') WHERE processed > 0;
SELECT outcome FROM pgflow.nack('h_shadow', (SELECT msg_id FROM pgflow.read('h_shadow', '1 s', 1)), 'boom');
SELECT count(*) FROM pgflow.dlq_list('h_shadow');
SELECT count(*) AS redriven FROM pgflow.dlq_retry('h_shadow');
SELECT queue_length >= 0 AS ok FROM pgflow.metrics('h_shadow');
SELECT pgflow.drop_queue('h_shadow');
RESET search_path;
SELECT fn, count(*) FROM public.shadow_calls GROUP BY fn ORDER BY fn;  -- none
DROP OPERATOR public.= (integer, integer);
DROP FUNCTION public.int4eq_shadow(integer, integer), public.jsonb_build_object(text, timestamptz, text, integer, text, text),
    public.jsonb_build_object(text, text), public.jsonb_build_array(jsonb), public.clock_timestamp(),
    public.jsonb_typeof(jsonb), public.nextval(regclass), public.random();
DROP TABLE public.shadow_calls;

-------------------------------------------------------------------------------------------------
-- Limits: every interval at most 100 years, keys at most 512 bytes (22023), so that nothing
-- accepted overflows later.
SELECT pg_temp.err($$SELECT pgflow.create_queue('h_poison', archive_retention => '10000 years')$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue('h_poison', retry_delay_max => '1000000 years')$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue('h_poison', visibility_timeout => '1000000 years')$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue('h_poison', dedup_window => '1000000 years')$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue('h_poison', retry_delay => '101 years')$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue('h_poison', default_priority => NULL)$$);
SELECT pgflow.create_queue('h_limits', archive_retention => '100 years', retry_delay_max => '100 years',
                           visibility_timeout => '100 years', dedup_window => '100 years');
SELECT pg_temp.err($$SELECT pgflow.alter_queue('h_limits', archive_retention => '10000 years')$$);
SELECT pg_temp.err($$SELECT pgflow.alter_queue('h_limits', retry_delay_max => '1000000 years')$$);
SELECT pg_temp.err($$SELECT pgflow.send('h_limits', '{}', delay => '1000000 years')$$);
SELECT pg_temp.err($$SELECT pgflow.send('h_limits', '{}', deliver_at => 'infinity')$$);
SELECT pg_temp.err($$SELECT pgflow.send('h_limits', '{}', group_key => repeat('g', 513))$$);
SELECT pg_temp.err($$SELECT pgflow.send('h_limits', '{}', dedup_key => repeat('k', 1000000))$$);
SELECT pg_temp.err($$SELECT pgflow.send_batch('h_limits', ARRAY['{}']::jsonb[], delay => '1000000 years')$$);
SELECT pg_temp.err($$SELECT pgflow.read('h_limits', vt => '1000000 years')$$);
SELECT pg_temp.err($$SELECT pgflow.read('h_limits', wait => '1000000 years')$$);
SELECT pg_temp.err($$SELECT pgflow.set_vt('h_limits', 1, '1000000 years')$$);
SELECT pg_temp.err($$SELECT pgflow.nack('h_limits', 1, retry_after => '1000000 years')$$);
-- At the limits, everything applies: a send with the longest keys and delay, a dedup repeat,
-- a 100-year lease that expires into a 100-year retry, archive pruning a century on.
SELECT pgflow.send('h_limits', '{}', group_key => repeat('g', 512), dedup_key => repeat('k', 512)) AS first_id;
SELECT pgflow.send('h_limits', '{}', dedup_key => repeat('k', 512)) AS same_id;
SELECT pgflow.send('h_limits', '{}', delay => '100 years') > 0 AS delayed;
SELECT count(*) FROM pgflow.read('h_limits', qty => 10);
SELECT pgflow.archive('h_limits', pgflow.send('h_limits', '{}'));
SELECT job, processed FROM pgflow.maintain(now => clock_timestamp() + interval '100 years 1 day')
 WHERE processed > 0 ORDER BY job;
SELECT pgflow.drop_queue('h_limits');

-------------------------------------------------------------------------------------------------
-- One queue's maintenance failure is logged with its name and skipped; the others go on. A
-- setting written past the API (as 0.1.0 allowed) stands in for any per-queue failure.
SELECT pgflow.create_queue('h_bad', retry_jitter => 0);
SELECT pgflow.create_queue('h_good', retry_jitter => 0);
SELECT count(*) FROM pgflow.send_batch('h_bad', ARRAY['{}', '{}']::jsonb[]);
SELECT count(*) FROM pgflow.send_batch('h_good', ARRAY['{}', '{}']::jsonb[]);
SELECT count(*) FROM pgflow.read('h_bad', '1 s', 2);
SELECT count(*) FROM pgflow.read('h_good', '1 s', 2);
UPDATE pgflow.queue SET retry_delay_max = '1000000 years', retry_delay = '1000000 years', retry_backoff = 100
 WHERE queue_name = 'h_bad';
-- The WARNING names the queue and the job; its message is Postgres's and differs between
-- versions (timestamp or interval out of range), so it is not shown here.
SET client_min_messages = error;
SELECT job, processed FROM pgflow.maintain(now => clock_timestamp() + interval '1 hour') WHERE processed > 0;
RESET client_min_messages;
SELECT queue_name, state, count(*) FROM pgflow.message m JOIN pgflow.queue USING (queue_id)
 WHERE queue_name IN ('h_bad', 'h_good') GROUP BY 1, 2 ORDER BY 1, 2;
SELECT pgflow.drop_queue('h_bad'), pgflow.drop_queue('h_good');

-------------------------------------------------------------------------------------------------
-- JSON a contract cannot hold: 22023, not XX000; nothing stored.
SELECT pgflow.create_queue('h_typed', contract => '{"type": "object"}');
SELECT pg_temp.err($$SELECT pgflow.send('h_typed', '{"x": 1e400}')$$);
SELECT pg_temp.err($$SELECT pgflow.send('h_typed', ('{"x": ' || repeat('[', 200) || repeat(']', 200) || '}')::jsonb)$$);
SELECT pg_temp.err($$SELECT pgflow.send_batch('h_typed', ARRAY['{"x": 1e400}']::jsonb[])$$);
SELECT pg_temp.err($$SELECT pgflow.set_contract('h_typed', '{"maximum": 1e400}')$$);
SELECT pg_temp.err($$SELECT pgflow.set_contract('h_typed', ('{"default": ' || repeat('[', 200) || repeat(']', 200) || '}')::jsonb)$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue('h_typed2', contract => '{"minimum": -1e400}')$$);
SELECT pg_temp.err($$SELECT pgflow.alter_queue('h_typed', contract => '{"minimum": -1e400}')$$);
-- A queue without a contract stores such JSON as it is.
SELECT pgflow.create_queue('h_plain');
SELECT pgflow.send('h_plain', '{"x": 1e400}') > 0 AS stored;

-- send_batch: arrays of more than one dimension refused; arrays starting at any index pair by
-- position, and every message is checked against the contract its own headers name.
SELECT pgflow.set_contract('h_typed', '{"type": "object", "required": ["v2"]}', '2', make_default => false);
SELECT pg_temp.err($$SELECT pgflow.send_batch('h_typed', '{{"{}"},{"{}"}}'::jsonb[])$$);
SELECT pg_temp.err($$SELECT pgflow.send_batch('h_typed', ARRAY['{}', '{}']::jsonb[], '{{"{}"},{"{}"}}'::jsonb[])$$);
-- Message 1 (index 0) names version 2 and lacks v2; message 2 (index 1) names nothing.
SELECT pg_temp.err($$SELECT pgflow.send_batch('h_typed', '[0:1]={"{}","{}"}'::jsonb[],
                                                '[0:1]={"{\"schema_version\": \"2\"}",NULL}'::jsonb[])$$);
SELECT pg_temp.err($$SELECT pgflow.send_batch('h_typed', '[5:6]={"{}","{\"v2\": 1}"}'::jsonb[],
                                                '[0:1]={NULL,"{\"schema_version\": \"2\"}"}'::jsonb[])$$);
SELECT msg_id, message, headers FROM pgflow.list_pending('h_typed', 10) ORDER BY msg_id;
SELECT pgflow.drop_queue('h_typed'), pgflow.drop_queue('h_plain');

-------------------------------------------------------------------------------------------------
-- Topic matching is bounded by the 255 bytes publish and bind accept (it asked for about 10 GB
-- at 200 kB and aborted the server).
SELECT pg_temp.err($$SELECT pgflow._topic_matches(repeat('a.', 99999) || 'a', repeat('a.', 99999) || 'a')$$);
SELECT pg_temp.err($$SELECT pgflow._topic_matches('#', repeat('a.', 200) || 'a')$$);
SELECT pgflow._topic_matches('#.a', repeat('a.', 127) || 'a') AS longest_matches;

-------------------------------------------------------------------------------------------------
-- The caller's class is cached per backend until a role or a membership changes: a GRANT or
-- REVOKE of pgflow_admin applies at the role's next call (SET ROLE is the caller, too).
SELECT pgflow.create_queue('h_roles');
CREATE ROLE pgflow_h_role;
GRANT pgflow_producer TO pgflow_h_role;
SET ROLE pgflow_h_role;
SELECT count(*) AS seen_without_grants FROM pgflow.metrics_all();
SELECT pg_temp.err($$SELECT pgflow.send('h_roles', '{}')$$);
RESET ROLE;
GRANT pgflow_admin TO pgflow_h_role;
SET ROLE pgflow_h_role;
SELECT count(*) > 0 AS seen_as_admin FROM pgflow.metrics_all();
SELECT pgflow.send('h_roles', '{}') > 0 AS sent_as_admin;
RESET ROLE;
REVOKE pgflow_admin FROM pgflow_h_role;
SET ROLE pgflow_h_role;
SELECT count(*) AS seen_after_revoke FROM pgflow.metrics_all();
SELECT pg_temp.err($$SELECT pgflow.send('h_roles', '{}')$$);
RESET ROLE;
SELECT pgflow.grant('h_roles', 'pgflow_h_role', 'produce');
SET ROLE pgflow_h_role;
SELECT pgflow.send('h_roles', '{}') > 0 AS sent_with_grant;
RESET ROLE;
SELECT pgflow.drop_queue('h_roles');
DROP ROLE pgflow_h_role;

-------------------------------------------------------------------------------------------------
-- The row invariants of pgflow.message, checked by its C trigger (they were CHECKs until 0.2.0),
-- on any INSERT or UPDATE, even a superuser's by hand, with 23514. A large payload stored
-- compressed or stored out of line is checked from its first word, and passes.
SELECT pgflow.create_queue('inv_q');
SELECT pgflow.send('inv_q', jsonb_build_object('big', repeat('x', 100000))) AS big_id \gset
SELECT pgflow.send('inv_q', jsonb_build_object('md5', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 4000) i))) AS ext_id \gset
SELECT pgflow.send('inv_q', '{"a": 1}') AS id \gset
-- Rows whose stored payload is compressed, or out of line: an UPDATE carries the stored datum.
SELECT pg_temp.err($$UPDATE pgflow.message SET read_ct = read_ct + 1 WHERE msg_id IN ($$ || :big_id || ', ' || :ext_id || ')');
SELECT pg_temp.err($$UPDATE pgflow.message SET state = 'x' WHERE msg_id = $$ || :id);
SELECT pg_temp.err($$UPDATE pgflow.message SET read_ct = -1 WHERE msg_id = $$ || :id);
SELECT pg_temp.err($$UPDATE pgflow.message SET message = '[1]' WHERE msg_id = $$ || :id);
SELECT pg_temp.err($$UPDATE pgflow.message SET message = '"s"' WHERE msg_id = $$ || :id);
SELECT pg_temp.err($$UPDATE pgflow.message SET headers = '2' WHERE msg_id = $$ || :id);
SELECT pg_temp.err($$UPDATE pgflow.message SET errors = '{}' WHERE msg_id = $$ || :id);
SELECT pg_temp.err($$UPDATE pgflow.message SET message = jsonb_build_array(repeat('y', 100000)) WHERE msg_id = $$ || :id);
SELECT pg_temp.err($$UPDATE pgflow.message SET errors = '[]', headers = NULL, message = '{}' WHERE msg_id = $$ || :id);
SELECT pg_temp.err($$INSERT INTO pgflow.message (queue_id, msg_id, enqueued_at, vt, state, message)
                     SELECT queue_id, 999, now(), now(), 'r', '[]' FROM pgflow.queue WHERE queue_name = 'inv_q'$$);
SELECT pg_temp.err($$INSERT INTO pgflow.message (queue_id, msg_id, enqueued_at, vt, state, message)
                     SELECT queue_id, 999, now(), now(), NULL, '{}' FROM pgflow.queue WHERE queue_name = 'inv_q'$$);
SELECT msg_id = :id AS same, state, read_ct, message, headers, errors
  FROM pgflow.message WHERE msg_id IN (:id, 999) ORDER BY msg_id;
SELECT count(*) AS no_check_on_message FROM pg_constraint
 WHERE conrelid = 'pgflow.message'::regclass AND contype = 'c';
SELECT pgflow.drop_queue('inv_q');
