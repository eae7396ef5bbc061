-- pgflow 0.1.0 -> 0.3.0 in one step: sql/guard.sql, then the released 0.1.0 -> 0.2.0
-- script's body, then the 0.2.0 -> 0.3.0 script's body (written by tests/upgrade/upgrade.sh
-- --generate). ALTER EXTENSION pgflow UPDATE takes it instead of the two-step chain.
\echo Use "ALTER EXTENSION pgflow UPDATE" to load this file. \quit

-- sql/guard.sql: nothing runs before it.
-- guard: the first statement of the install script and of every upgrade script (issue #34).
-- It refuses to go on where running the rest could be hijacked or silently go wrong:
--
--  * standard_conforming_strings off (a database owner can set it with ALTER DATABASE): the
--    whole script is lexed before it runs, so backslashes in its strings would mean other
--    things (a LIKE '\_%' that matches every name, for one). Nothing in a script can switch it
--    back for itself, so the guard refuses and says how to run it.
--  * schema pgflow owned by anyone but the installing role or pgflow_owner (a schema made
--    before the install by a database owner): its owner could plant an operator or function
--    there that the script's own statements resolve to, and it would run as a superuser.
--  * an object in schema pgflow, or a trigger on one of its tables, owned by a role that is
--    neither a superuser nor pgflow_owner: planted by whoever had CREATE on the schema (0.1.0
--    told its users to grant it). An operator =(oid, regnamespace) placed there beats
--    pg_catalog's =(oid, oid) for every `x = 'pgflow'::regnamespace`, whatever the path's order.
--  * on a fresh install, any object already in schema pgflow except the per-queue sequences
--    an earlier DROP EXTENSION leaves: pgflow needs a schema of its own (another tool's schema
--    of the same name would be adopted and mixed with pgflow's objects).
--  * a privilege on the schema for anyone but its owner, on a fresh install (an upgrade takes
--    them back instead: scripts/upgrade-steps/0.2.0--0.3.0.pre.sql).
--  * role pgflow_owner, if it exists, able to log in or with members: whoever can act as it
--    would own every pgflow object.
--
-- Every operator and function below is named with its schema, and nothing is cast to a type
-- that schema pgflow could hold: during CREATE EXTENSION and ALTER EXTENSION UPDATE the
-- search_path is schema pgflow, which the guard has not yet judged. No string here holds a
-- backslash, so it reads the same whatever standard_conforming_strings says.
DO $guard$
DECLARE
    v_nsp   pg_catalog.oid;
    v_owner pg_catalog.text;
    v_ext   pg_catalog.oid;
    v_fresh boolean;
    v_what  pg_catalog.text;
    v_who   pg_catalog.text;
BEGIN
    IF pg_catalog.current_setting('standard_conforming_strings') OPERATOR(pg_catalog.<>) 'on' THEN
        RAISE EXCEPTION 'pgflow''s install and upgrade scripts need standard_conforming_strings = on'
            USING ERRCODE = '55000',
                  DETAIL = 'It is off in this session (a database or role default set with ALTER DATABASE or ALTER ROLE): the script''s string literals would be read differently.',
                  HINT = 'Run SET standard_conforming_strings = on; in the same session, then CREATE EXTENSION or ALTER EXTENSION again.';
    END IF;

    SELECT n.oid, pg_catalog.pg_get_userbyid(n.nspowner)::pg_catalog.text INTO v_nsp, v_owner
      FROM pg_catalog.pg_namespace n
     WHERE n.nspname OPERATOR(pg_catalog.=) 'pgflow'::pg_catalog.name;
    SELECT e.oid INTO v_ext
      FROM pg_catalog.pg_extension e
     WHERE e.extname OPERATOR(pg_catalog.=) 'pgflow'::pg_catalog.name;
    v_fresh := NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_depend d
         WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
           AND d.refobjid OPERATOR(pg_catalog.=) v_ext
           AND d.deptype OPERATOR(pg_catalog.=) 'e'::pg_catalog."char");

    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                WHERE r.rolname OPERATOR(pg_catalog.=) 'pgflow_owner'::pg_catalog.name
                  AND (r.rolcanlogin OR r.rolsuper
                       OR EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                                   WHERE m.roleid OPERATOR(pg_catalog.=) r.oid))) THEN
        RAISE EXCEPTION 'role pgflow_owner can log in, is a superuser or has members'
            USING ERRCODE = '42501',
                  DETAIL = 'pgflow_owner owns every pgflow object and runs its functions: whoever can act as it could change them.',
                  HINT = 'ALTER ROLE pgflow_owner NOLOGIN NOSUPERUSER, and REVOKE pgflow_owner FROM each of its members; or DROP ROLE pgflow_owner if no database uses pgflow yet.';
    END IF;

    IF v_nsp IS NULL THEN
        RETURN;  -- nothing there yet (an upgrade always has it)
    END IF;
    IF v_owner OPERATOR(pg_catalog.<>) CURRENT_USER::pg_catalog.text
       AND v_owner OPERATOR(pg_catalog.<>) 'pgflow_owner' THEN
        RAISE EXCEPTION 'schema pgflow belongs to role %, not to pgflow', v_owner
            USING ERRCODE = '42501',
                  DETAIL = 'CREATE EXTENSION pgflow creates schema pgflow and gives it to pgflow_owner; a schema made before by another role could hold objects that the install would run as a superuser.',
                  HINT = 'Look at what it holds, then DROP SCHEMA pgflow (or rename it) and run CREATE EXTENSION pgflow again.';
    END IF;

    -- Objects in the schema (each has a dependency on its schema) and triggers on its tables,
    -- with their owners (pg_shdepend records every owner but the bootstrap superuser).
    SELECT pg_catalog.pg_describe_object(o.classid, o.objid, 0), pg_catalog.pg_get_userbyid(o.owner)::pg_catalog.text
      INTO v_what, v_who
      FROM (SELECT d.classid, d.objid,
                   coalesce((SELECT s.refobjid FROM pg_catalog.pg_shdepend s
                              WHERE s.dbid OPERATOR(pg_catalog.=) (SELECT db.oid FROM pg_catalog.pg_database db
                                                                   WHERE db.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
                                AND s.classid OPERATOR(pg_catalog.=) d.classid
                                AND s.objid OPERATOR(pg_catalog.=) d.objid
                                AND s.deptype OPERATOR(pg_catalog.=) 'o'::pg_catalog."char"
                              LIMIT 1), 10::pg_catalog.oid) AS owner
              FROM pg_catalog.pg_depend d
             WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
               AND d.refobjid OPERATOR(pg_catalog.=) v_nsp
               AND d.classid OPERATOR(pg_catalog.<>) 'pg_catalog.pg_extension'::pg_catalog.regclass
            UNION ALL
            SELECT 'pg_catalog.pg_trigger'::pg_catalog.regclass::pg_catalog.oid, t.oid, p.proowner
              FROM pg_catalog.pg_trigger t
              JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.tgrelid
              JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) t.tgfoid
             WHERE c.relnamespace OPERATOR(pg_catalog.=) v_nsp AND NOT t.tgisinternal) AS o
      JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) o.owner
     WHERE NOT r.rolsuper AND r.rolname OPERATOR(pg_catalog.<>) 'pgflow_owner'::pg_catalog.name
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'schema pgflow holds % of role %', v_what, v_who
            USING ERRCODE = '42501',
                  DETAIL = 'Only pgflow_owner and superusers may own objects in schema pgflow: another role''s function, operator or trigger there would run with pgflow''s rights, or a superuser''s during this script.',
                  HINT = 'Check what it is, drop it (DROP ... CASCADE), then run the command again.';
    END IF;

    IF v_fresh THEN
        SELECT pg_catalog.pg_describe_object(d.classid, d.objid, 0) INTO v_what
          FROM pg_catalog.pg_depend d
          LEFT JOIN pg_catalog.pg_class c
                 ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                AND c.oid OPERATOR(pg_catalog.=) d.objid
         WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
           AND d.refobjid OPERATOR(pg_catalog.=) v_nsp
           AND d.classid OPERATOR(pg_catalog.<>) 'pg_catalog.pg_extension'::pg_catalog.regclass
           -- What an earlier install's DROP EXTENSION leaves: its per-queue sequences.
           AND NOT coalesce(c.relkind OPERATOR(pg_catalog.=) 'S'::pg_catalog."char"
                            AND pg_catalog.textregexeq(c.relname::pg_catalog.text, '^q[0-9]+_(msg|archived)_seq$'), false)
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'schema pgflow already exists and holds % (it is not pgflow''s)', v_what
                USING ERRCODE = '42P06',
                      DETAIL = 'pgflow needs schema pgflow for itself: another tool''s schema of that name would be mixed with pgflow''s objects.',
                      HINT = 'Rename the other schema (ALTER SCHEMA pgflow RENAME TO ...) or drop it, then run CREATE EXTENSION pgflow again.';
        END IF;
        SELECT CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0::pg_catalog.oid THEN 'PUBLIC'
                    ELSE pg_catalog.pg_get_userbyid(a.grantee)::pg_catalog.text END INTO v_who
          FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
         WHERE n.oid OPERATOR(pg_catalog.=) v_nsp
           AND a.grantee OPERATOR(pg_catalog.<>) n.nspowner
           AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'schema pgflow grants CREATE to %', v_who
                USING ERRCODE = '42501',
                      DETAIL = 'A role that may create objects in schema pgflow could plant functions or operators that pgflow''s install would run.',
                      HINT = 'REVOKE CREATE ON SCHEMA pgflow FROM the roles that have it, then run CREATE EXTENSION pgflow again.';
        END IF;
    END IF;
END
$guard$;

-- The body of sql/pgflow--0.1.0--0.2.0.sql.

-- Hand-written steps (scripts/upgrade-steps/0.1.0--0.2.0.pre.sql, before the drafted part).
-- Per-queue grants (sql/schema.sql has the same definition).
CREATE TABLE pgflow.queue_grant (
    queue_id   integer     NOT NULL,
    grantee    regrole     NOT NULL,
    privilege  text        NOT NULL CHECK (privilege IN ('produce', 'consume', 'admin')),
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue_id, grantee, privilege)
);
SELECT pg_catalog.pg_extension_config_dump('pgflow.queue_grant', '');

-- Alerts now firing (sql/schema.sql has the same definition). The queue's alert thresholds are
-- appended columns: scripts/upgrade_sql.py adds them, and their CHECKs, itself.
CREATE TABLE pgflow.alert (
    queue_id  integer          NOT NULL,
    alert     text             NOT NULL CHECK (alert IN ('dlq', 'age', 'depth')),
    since     timestamptz      NOT NULL,
    threshold double precision NOT NULL,
    PRIMARY KEY (queue_id, alert)
);

-- Tables: columns appended (nullable with no default, or NOT NULL with a constant default:
-- no row is rewritten). Their CHECKs come with the constraints below.
ALTER TABLE pgflow.message ADD COLUMN holder bigint;
ALTER TABLE pgflow.queue ADD COLUMN alert_dlq bigint;
ALTER TABLE pgflow.queue ADD COLUMN alert_age interval;
ALTER TABLE pgflow.queue ADD COLUMN alert_depth bigint;
ALTER TABLE pgflow.queue ADD COLUMN session_leases boolean not null default false;
-- Functions 0.2.0 no longer has, or whose arguments or result changed.
DROP FUNCTION pgflow._check_contract_schema(jsonb);
DROP FUNCTION pgflow._metrics(integer,timestamp with time zone);
DROP FUNCTION pgflow._promote_queue(integer,timestamp with time zone,integer);
DROP FUNCTION pgflow._queue(text);
DROP FUNCTION pgflow._validate_contract(integer,text,text,bigint,jsonb,integer);
DROP FUNCTION pgflow._wait_sleep(timestamp with time zone,boolean);
DROP FUNCTION pgflow.alter_queue(text,interval,integer,interval,interval,double precision,interval,double precision,integer,interval,boolean,jsonb);
DROP FUNCTION pgflow.archive(text,bigint);
DROP FUNCTION pgflow.archive(text,bigint[]);
DROP FUNCTION pgflow.create_queue(text,interval,integer,interval,interval,boolean,double precision,interval,double precision,integer,interval,boolean,jsonb);
DROP FUNCTION pgflow.delete(text,bigint);
DROP FUNCTION pgflow.delete(text,bigint[]);
DROP FUNCTION pgflow.metrics(text);
DROP FUNCTION pgflow.metrics_all();
DROP FUNCTION pgflow.nack(text,bigint,text,interval,integer,timestamp with time zone);
DROP FUNCTION pgflow.set_vt(text,bigint,interval);

-- Composite types: new ones, and attributes appended to existing ones.
CREATE TYPE pgflow.grant_info AS (queue_name text, role regrole, privilege text, granted_at timestamp with time zone);
CREATE TYPE pgflow.horizon_holder AS (holder text, pid integer, xmin_age integer, since timestamp with time zone, detail text);
ALTER TYPE pgflow.message_record ADD ATTRIBUTE receipt bigint;
ALTER TYPE pgflow.queue_info ADD ATTRIBUTE alert_dlq bigint;
ALTER TYPE pgflow.queue_info ADD ATTRIBUTE alert_age interval;
ALTER TYPE pgflow.queue_info ADD ATTRIBUTE alert_depth bigint;
ALTER TYPE pgflow.queue_info ADD ATTRIBUTE session_leases boolean;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE horizon_age_sec double precision;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE horizon_holder text;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE exact boolean;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE sent bigint;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE delivered bigint;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE archived bigint;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE deleted bigint;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE nacked bigint;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE expired bigint;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE dead_lettered bigint;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE redriven bigint;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE wait_p50_sec double precision;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE wait_p99_sec double precision;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE end_to_end_p50_sec double precision;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE end_to_end_p99_sec double precision;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE stats_reset_at timestamp with time zone;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE processing_p50_sec double precision;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE processing_p99_sec double precision;
ALTER TYPE pgflow.queue_metrics ADD ATTRIBUTE oldest_ready_age_sec double precision;

-- Functions, new or changed (C, PL/pgSQL, SQL, then BEGIN ATOMIC bodies).
CREATE OR REPLACE FUNCTION pgflow._caller()
 RETURNS oid
 LANGUAGE c
 STABLE PARALLEL SAFE STRICT
AS 'MODULE_PATHNAME', $function$_caller_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._caller_class(writes boolean DEFAULT false)
 RETURNS integer
 LANGUAGE c
 STABLE PARALLEL SAFE STRICT
AS 'MODULE_PATHNAME', $function$_caller_class_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._check_contract_schema(schema text)
 RETURNS void
 LANGUAGE c
 IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', $function$_check_contract_schema_text_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._claim_begin(queue_id integer, seq oid)
 RETURNS bigint[]
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_claim_begin_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._claim_end(qty integer)
 RETURNS void
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_claim_end_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._claim_span(first bigint[], last bigint[], n bigint)
 RETURNS boolean
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_claim_span_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._cursor_check(queue_id integer, seq oid, now timestamp with time zone)
 RETURNS bigint[]
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_cursor_check_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._cursor_forget(queue_id integer)
 RETURNS void
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_cursor_forget_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._cursor_freezes()
 RETURNS bigint
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_cursor_freezes_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._cursor_lower(queue_id integer, seq oid, priority smallint, msg_id bigint)
 RETURNS void
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_cursor_lower_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._cursor_status()
 RETURNS TABLE(queue_id integer, seq oid, mark_priority integer, mark_msg_id bigint, due timestamp with time zone, events bigint, frozen boolean)
 LANGUAGE c
 PARALLEL RESTRICTED STRICT
AS 'MODULE_PATHNAME', $function$_cursor_status_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._cursor_thaw(seen bigint)
 RETURNS boolean
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_cursor_thaw_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._due(queue_id integer, seq oid)
 RETURNS timestamp with time zone
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_due_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._due_at(queue_id integer, seq oid, vt timestamp with time zone)
 RETURNS boolean
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_due_at_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._due_begin(queue_id integer, seq oid, now timestamp with time zone)
 RETURNS integer
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_due_begin_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._due_end(queue_id integer, seq oid, next timestamp with time zone)
 RETURNS void
 LANGUAGE c
AS 'MODULE_PATHNAME', $function$_due_end_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._metrics_text(queue_ids integer[], horizon_age double precision, horizon_xmin_age integer)
 RETURNS text
 LANGUAGE c
AS 'MODULE_PATHNAME', $function$_metrics_text_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._primary()
 RETURNS void
 LANGUAGE c
 STABLE PARALLEL SAFE STRICT
AS 'MODULE_PATHNAME', $function$_primary_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._ready(queue_id integer, seq oid, priority smallint, msg_id bigint)
 RETURNS boolean
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_ready_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._receipt(enqueued_at timestamp with time zone, read_ct integer)
 RETURNS bigint
 LANGUAGE c
 IMMUTABLE PARALLEL SAFE STRICT
AS 'MODULE_PATHNAME', $function$_receipt_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._session_key()
 RETURNS bigint
 LANGUAGE c
 STABLE PARALLEL SAFE STRICT
AS 'MODULE_PATHNAME', $function$_session_key_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._session_key_of(pid integer, backend_start timestamp with time zone)
 RETURNS bigint
 LANGUAGE c
 IMMUTABLE PARALLEL SAFE STRICT
AS 'MODULE_PATHNAME', $function$_session_key_of_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._stats(queue_id integer)
 RETURNS TABLE(valid boolean, ready bigint, delayed bigint, in_flight bigint, waiting bigint, dead bigint, archived_rows bigint, sent bigint, delivered bigint, archived bigint, deleted bigint, nacked bigint, expired bigint, dead_lettered bigint, redriven bigint, wait_p50 double precision, wait_p99 double precision, end_to_end_p50 double precision, end_to_end_p99 double precision, processing_p50 double precision, processing_p99 double precision, reset_at timestamp with time zone, oldest_ready_at timestamp with time zone)
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_stats_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._stats_alerts(queue_ids integer[], alerts text[], since timestamp with time zone[])
 RETURNS void
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_stats_alerts_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._stats_created(queue_id integer, queue_name text)
 RETURNS void
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_stats_created_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._stats_dropped(queue_id integer)
 RETURNS void
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_stats_dropped_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._stats_enabled()
 RETURNS boolean
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_stats_enabled_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._stats_load(queue_ids integer[], names text[], ready bigint[], delayed bigint[], in_flight bigint[], waiting bigint[], dead bigint[], archived bigint[])
 RETURNS bigint
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_stats_load_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._stats_mode(mode text)
 RETURNS void
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_stats_mode_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._stats_needs_rebuild(queue_ids integer[])
 RETURNS boolean
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_stats_needs_rebuild_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._stats_note()
 RETURNS trigger
 LANGUAGE c
AS 'MODULE_PATHNAME', $function$_stats_note_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._stats_oldest(queue_ids integer[], oldest timestamp with time zone[])
 RETURNS void
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_stats_oldest_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._stats_ready()
 RETURNS SETOF integer
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_stats_ready_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._stats_reset(queue_id integer)
 RETURNS void
 LANGUAGE c
AS 'MODULE_PATHNAME', $function$_stats_reset_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._touch(queue_id integer, seq oid)
 RETURNS void
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_touch_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._validate_contract(queue_id integer, queue_name text, version text, revision bigint, message text, pos integer)
 RETURNS void
 LANGUAGE c
 STABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', $function$_validate_contract_text_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._wait_for(until timestamp with time zone, woken boolean)
 RETURNS boolean
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_wait_for_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow.worker_status()
 RETURNS TABLE(datname text, state text, pid integer, started_at timestamp with time zone, last_tick_at timestamp with time zone, ticks bigint, expired bigint, promoted bigint, pruned bigint, restarts integer, detail text)
 LANGUAGE c
 PARALLEL RESTRICTED STRICT
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS 'MODULE_PATHNAME', $function$worker_status_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow."grant"(queue_name text, role regrole, privilege text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
BEGIN
    PERFORM pgflow._require(role, 'role');
    PERFORM pgflow._check_privilege(privilege);
    INSERT INTO pgflow.queue_grant (queue_id, grantee, privilege)
    VALUES (q.queue_id, role, privilege)
    ON CONFLICT ON CONSTRAINT queue_grant_pkey DO NOTHING;
    RETURN FOUND;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._alert_age(value interval, arg text)
 RETURNS interval
 LANGUAGE plpgsql
 IMMUTABLE PARALLEL SAFE
AS $function$
BEGIN
    IF value IS NOT NULL THEN
        PERFORM pgflow._check_interval(value, arg, true);
    END IF;
    RETURN value;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._alert_count(value bigint, arg text)
 RETURNS bigint
 LANGUAGE plpgsql
 IMMUTABLE PARALLEL SAFE
AS $function$
BEGIN
    IF value < -1 THEN
        RAISE EXCEPTION '% must be a count (0 or more), or -1 for none, got %', arg, value
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN value;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._alerts_check(p_now timestamp with time zone DEFAULT NULL::timestamp with time zone)
 RETURNS TABLE(started bigint, cleared bigint)
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    r record;
BEGIN
    started := 0;
    cleared := 0;
    FOR r IN
        WITH cur AS (
            SELECT * FROM pgflow._alert_values(v_now) v WHERE v.value > v.threshold
        ), ins AS (
            INSERT INTO pgflow.alert AS x (queue_id, alert, since, threshold)
            SELECT c.queue_id, c.alert, v_now, c.threshold FROM cur c
            ON CONFLICT ON CONSTRAINT alert_pkey DO NOTHING
            RETURNING x.queue_id, x.alert, x.since
        ), del AS (
            DELETE FROM pgflow.alert x
             WHERE NOT EXISTS (SELECT 1 FROM cur c WHERE c.queue_id = x.queue_id AND c.alert = x.alert)
            RETURNING x.queue_id, x.alert, x.since, x.threshold
        )
        SELECT 'firing' AS state, c.queue_name, c.alert, c.value, c.threshold, i.since
          FROM ins i JOIN cur c USING (queue_id, alert)
        UNION ALL
        SELECT 'resolved', q.queue_name, d.alert, v.value, d.threshold, d.since
          FROM del d
          JOIN pgflow.queue q ON q.queue_id = d.queue_id
          LEFT JOIN pgflow._alert_values(v_now) v ON v.queue_id = d.queue_id AND v.alert = d.alert
    LOOP
        IF r.state = 'firing' THEN started := started + 1; ELSE cleared := cleared + 1; END IF;
        PERFORM pg_catalog.pg_notify('pgflow_alerts', pg_catalog.json_build_object(
            'state', r.state, 'queue', r.queue_name, 'alert', r.alert, 'value', r.value,
            'threshold', r.threshold, 'since', r.since)::text);
        RAISE LOG 'pgflow alert %: queue "%" %: % (threshold %, since %)',
            r.state, r.queue_name, r.alert, r.value, r.threshold, r.since;
    END LOOP;
    PERFORM pgflow._stats_alerts(coalesce(array_agg(a.queue_id), '{}'),
                                 coalesce(array_agg(a.alert), '{}'),
                                 coalesce(array_agg(a.since), '{}'))
      FROM pgflow.alert a;
    RETURN NEXT;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._archive(q pgflow.queue, msg_ids bigint[], receipts bigint[])
 RETURNS SETOF bigint
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    RETURN QUERY
    WITH moved AS (
        -- Each row's receipts, paired with the ids by position (whatever the arrays' bounds),
        -- in two uncorrelated subqueries that are hashed once per statement; the index
        -- condition stays the plain (queue_id, msg_id = ANY) one. An id given twice is
        -- archived if either pair matches; a NULL receipt checks nothing. The ids' span
        -- bounds the walk whatever the plan (sql/internal.sql, "Id spans").
        DELETE FROM pgflow.message m
         WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (msg_ids)
           AND m.msg_id BETWEEN (SELECT min(i) FROM unnest(msg_ids) i)
                            AND (SELECT max(i) FROM unnest(msg_ids) i)
           AND (receipts IS NULL
                OR (m.msg_id, pgflow._receipt(m.enqueued_at, m.read_ct))
                   IN (SELECT r.id, r.receipt FROM unnest(msg_ids, receipts) AS r(id, receipt)
                        WHERE r.receipt IS NOT NULL)
                OR m.msg_id IN (SELECT r.id FROM unnest(msg_ids, receipts) AS r(id, receipt)
                                 WHERE r.receipt IS NULL))
        RETURNING m.*
    ), archived AS (
        INSERT INTO pgflow.archive (queue_id, read_ct, msg_id, enqueued_at, archived_at,
                                    priority, message, headers, group_key)
        SELECT mv.queue_id, mv.read_ct, mv.msg_id, mv.enqueued_at, v_now,
               mv.priority, mv.message, mv.headers, mv.group_key
          FROM moved mv
        RETURNING archive.msg_id
    )
    -- nextval once per archived row keeps the archived total without a shared counter row.
    SELECT a.msg_id FROM archived a WHERE nextval(q.archived_seq) > 0;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._before_claim(q pgflow.queue, p_now timestamp with time zone, qty integer, v_probe integer)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF EXISTS (SELECT 1 FROM pgflow.message m
                WHERE m.queue_id = q.queue_id AND m.state = 'l' AND m.vt <= p_now) THEN
        PERFORM pgflow._expire_queue(q, p_now, 100);
    END IF;
    IF EXISTS (SELECT 1 FROM pgflow.message m
                WHERE m.queue_id = q.queue_id AND m.state = 'd' AND m.vt <= p_now) THEN
        PERFORM pgflow._promote_queue(q, p_now, greatest(qty, 100));
    END IF;
    IF v_probe = 2 THEN
        -- A statement of its own: its snapshot comes after _due_begin.
        PERFORM pgflow._due_end(q.queue_id, q.msg_seq::oid, pgflow._next_due(q.queue_id));
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._check_contract(q pgflow.queue, message jsonb, headers jsonb, pos integer DEFAULT NULL::integer)
 RETURNS void
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    v_version text := coalesce(headers ->> 'schema_version', q.contract_version);
    v_revision bigint;
BEGIN
    -- The revision only: _validate_contract keeps parsed schemas per backend and reads the
    -- schema itself when its copy is missing or stale.
    SELECT c.revision INTO v_revision FROM pgflow.contract c
     WHERE c.queue_id = q.queue_id AND c.version = v_version;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%queue "%" has no contract version "%" (it has: %)',
            CASE WHEN pos IS NULL THEN '' ELSE 'messages[' || pos || ']: ' END,
            q.queue_name, v_version,
            (SELECT string_agg(c.version, ', ' ORDER BY c.version) FROM pgflow.contract c
              WHERE c.queue_id = q.queue_id)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pgflow._validate_contract(q.queue_id, q.queue_name, v_version, v_revision,
                                      message::text, pos);
END $function$;

CREATE OR REPLACE FUNCTION pgflow._check_interval(value interval, arg text, allow_zero boolean)
 RETURNS void
 LANGUAGE plpgsql
 IMMUTABLE PARALLEL SAFE
AS $function$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', arg USING ERRCODE = 'null_value_not_allowed';
    ELSIF value < interval '0' OR (NOT allow_zero AND value = interval '0') THEN
        RAISE EXCEPTION '% must be %, got %', arg,
            CASE WHEN allow_zero THEN 'zero or positive' ELSE 'positive' END, value
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF value > interval '100 years' THEN
        RAISE EXCEPTION '% must be at most 100 years, got %', arg, value
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._check_key(value text, arg text)
 RETURNS void
 LANGUAGE plpgsql
 IMMUTABLE PARALLEL SAFE
AS $function$
BEGIN
    IF octet_length(value) > 512 THEN
        RAISE EXCEPTION '% must be at most 512 bytes, got %', arg, octet_length(value)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._check_privilege(privilege text)
 RETURNS void
 LANGUAGE plpgsql
 IMMUTABLE PARALLEL SAFE
AS $function$
BEGIN
    IF privilege IS NULL THEN
        RAISE EXCEPTION 'privilege must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    ELSIF privilege NOT IN ('produce', 'consume', 'admin') THEN
        RAISE EXCEPTION 'privilege must be produce, consume or admin, got "%"', privilege
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._check_receipt(q pgflow.queue, p_msg_id bigint, p_receipt bigint, leased boolean DEFAULT false)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    m record;
BEGIN
    SELECT s.read_ct, s.enqueued_at, s.state INTO m
      FROM pgflow.message s
     WHERE s.queue_id = q.queue_id AND s.msg_id = p_msg_id
       FOR UPDATE;
    IF FOUND AND leased AND m.state <> 'l'
       AND pgflow._receipt(m.enqueued_at, m.read_ct) = p_receipt THEN
        RAISE EXCEPTION 'lease lost: message % of queue "%" is not leased any more', p_msg_id, q.queue_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Its lease ran out, or it was nacked or handed back; it will be delivered again.',
                  HINT = 'Do not act on it: its next delivery will.';
    END IF;
    IF FOUND AND pgflow._receipt(m.enqueued_at, m.read_ct) <> p_receipt THEN
        RAISE EXCEPTION 'lease lost: message % of queue "%" is not the delivery this receipt names',
                p_msg_id, q.queue_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('It was delivered again since (read_ct is now %s), or it is another message given the same id after a failover.', m.read_ct),
                  HINT = 'Do not act on it: whoever holds the current delivery will.';
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._check_receipts(msg_ids bigint[], receipts bigint[])
 RETURNS void
 LANGUAGE plpgsql
 IMMUTABLE
AS $function$
BEGIN
    PERFORM pgflow._require(msg_ids, 'msg_ids');
    IF receipts IS NOT NULL
       AND coalesce(cardinality(receipts), 0) <> coalesce(cardinality(msg_ids), 0) THEN
        RAISE EXCEPTION 'receipts has % elements and msg_ids %: give one receipt per id',
                cardinality(receipts), cardinality(msg_ids)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._check_retry_policy(backoff double precision, delay_max interval, jitter double precision)
 RETURNS void
 LANGUAGE plpgsql
 IMMUTABLE PARALLEL SAFE
AS $function$
BEGIN
    IF backoff IS NULL OR delay_max IS NULL OR jitter IS NULL THEN
        RAISE EXCEPTION 'retry_backoff, retry_delay_max and retry_jitter must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    ELSIF NOT (backoff >= 1 AND backoff <= 100) THEN
        RAISE EXCEPTION 'retry_backoff must be between 1 and 100, got %', backoff
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF delay_max < interval '0' OR delay_max > interval '100 years' THEN
        RAISE EXCEPTION 'retry_delay_max must be between zero and 100 years, got %', delay_max
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF NOT (jitter >= 0 AND jitter <= 1) THEN
        RAISE EXCEPTION 'retry_jitter must be between 0 and 1, got %', jitter
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._each_queue(job text, p_now timestamp with time zone, batch integer)
 RETURNS bigint
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
DECLARE
    q pgflow.queue;
    n bigint := 0;
BEGIN
    -- A name no branch below knows would match no queue and quietly do nothing.
    IF job IS NULL OR job NOT IN ('expire_leases', 'promote_delayed', 'prune_archive', 'prune_dedup') THEN
        RAISE EXCEPTION 'unknown maintenance job "%"', job USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pgflow._primary();
    PERFORM pgflow._check_int(batch, 'batch', 1);
    FOR q IN SELECT * FROM pgflow.queue qq
              WHERE CASE job
                    WHEN 'expire_leases' THEN
                        -- vt <= p_now is the index condition, so the probe stops at the first
                        -- lease not yet due instead of walking every lease in flight (as it
                        -- did while the session_leases test shared vt's condition).
                        -- A queue with session leases also looks for any lease: its holder
                        -- may have exited.
                        EXISTS (SELECT 1 FROM pgflow.message m
                                 WHERE m.queue_id = qq.queue_id AND m.state = 'l'
                                   AND m.vt <= p_now)
                        OR (qq.session_leases
                            AND EXISTS (SELECT 1 FROM pgflow.message m
                                         WHERE m.queue_id = qq.queue_id AND m.state = 'l'))
                    WHEN 'promote_delayed' THEN
                        EXISTS (SELECT 1 FROM pgflow.message m
                                 WHERE m.queue_id = qq.queue_id AND m.state = 'd' AND m.vt <= p_now)
                    WHEN 'prune_archive' THEN
                        EXISTS (SELECT 1 FROM pgflow.archive o
                                 WHERE o.queue_id = qq.queue_id
                                   AND o.archived_at < p_now - qq.archive_retention)
                    WHEN 'prune_dedup' THEN
                        EXISTS (SELECT 1 FROM pgflow.dedup o
                                 WHERE o.queue_id = qq.queue_id AND o.expires_at <= p_now)
                    END
              ORDER BY qq.queue_id LOOP
        -- One queue's failure is logged with its name and skipped (its work is rolled back
        -- to here): the other queues keep their maintenance. A block with an exception
        -- handler is a subtransaction, paid only by the queues that have work.
        BEGIN
            n := n + CASE job
                     WHEN 'expire_leases'   THEN pgflow._expire_queue(q, p_now, batch)
                                                 + CASE WHEN q.session_leases
                                                        THEN pgflow._release_orphans(q, p_now, batch)
                                                        ELSE 0 END
                     WHEN 'promote_delayed' THEN pgflow._promote_queue(q, p_now, batch)
                     WHEN 'prune_archive'   THEN pgflow._prune_archive_queue(q, p_now, batch)
                     WHEN 'prune_dedup'     THEN pgflow._prune_dedup_queue(q.queue_id, p_now, batch)
                     END;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pgflow: % of queue "%" failed and was skipped: % (SQLSTATE %)',
                          job, q.queue_name, SQLERRM, SQLSTATE;
        END;
    END LOOP;
    RETURN n;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._expire_queue(q pgflow.queue, p_now timestamp with time zone, lim integer)
 RETURNS bigint
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
DECLARE
    ids bigint[];
BEGIN
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    SELECT array_agg(e.msg_id) INTO ids
      FROM (SELECT m.msg_id FROM pgflow.message m
             WHERE m.queue_id = q.queue_id AND m.state = 'l' AND m.vt <= p_now
             ORDER BY m.vt
             LIMIT lim
               FOR UPDATE SKIP LOCKED) e;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    RETURN pgflow._fail_lost(q, ids, 'visibility timeout expired', p_now);
END $function$;

CREATE OR REPLACE FUNCTION pgflow._fail_lost(q pgflow.queue, ids bigint[], reason text, p_now timestamp with time zone)
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
DECLARE
    n bigint;
BEGIN
    PERFORM pgflow._stats_mode('expire');
    n := (SELECT count(*) FROM pgflow._fail(q, ids, reason, NULL, p_now, reason));
    PERFORM pgflow._stats_mode('plain');
    RETURN n;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._group_advance()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    nxt record;
    u pgflow.queue;
    v_state "char";
BEGIN
    PERFORM pg_advisory_xact_lock(OLD.queue_id, hashtext(OLD.group_key));
    SELECT m.msg_id, m.state, m.vt, m.priority INTO nxt
      FROM pgflow.message m
     WHERE m.queue_id = OLD.queue_id AND m.group_key = OLD.group_key
     ORDER BY m.msg_id
     LIMIT 1;
    IF FOUND AND nxt.state = 'g' THEN
        UPDATE pgflow.message m
           SET state = CASE WHEN m.vt > clock_timestamp() THEN 'd' ELSE 'r' END
         WHERE m.queue_id = OLD.queue_id AND m.msg_id = nxt.msg_id
        RETURNING m.state INTO v_state;
        SELECT * INTO u FROM pgflow.queue WHERE queue_id = OLD.queue_id;
        IF FOUND THEN
            IF v_state = 'r' THEN
                PERFORM pgflow._ready(u.queue_id, u.msg_seq::oid, nxt.priority, nxt.msg_id);
            ELSE
                PERFORM pgflow._due_at(u.queue_id, u.msg_seq::oid, nxt.vt);
            END IF;
            PERFORM pgflow._announce(u.queue_id, u.queue_name, u.notify);
        END IF;
    END IF;
    RETURN NULL;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._may(p_queue_id integer, need text)
 RETURNS boolean
 LANGUAGE plpgsql
 STABLE PARALLEL SAFE
AS $function$
BEGIN
    RETURN EXISTS (
        SELECT 1 FROM pgflow.queue_grant g
          JOIN pg_catalog.pg_roles r ON r.oid = g.grantee
         WHERE g.queue_id = p_queue_id
           AND (g.privilege = need OR g.privilege = 'admin' OR need = 'see')
           AND pg_catalog.pg_has_role(pgflow._caller(), r.oid, 'USAGE'));
END $function$;

CREATE OR REPLACE FUNCTION pgflow._promote_queue(q pgflow.queue, p_now timestamp with time zone, lim integer)
 RETURNS bigint
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
DECLARE
    n bigint;
BEGIN
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    WITH due AS (
        SELECT d.msg_id FROM pgflow.message d
         WHERE d.queue_id = q.queue_id AND d.state = 'd' AND d.vt <= p_now
         ORDER BY d.vt
         LIMIT lim
           FOR UPDATE SKIP LOCKED
    ), promoted AS (
        UPDATE pgflow.message m
           SET state = 'r'
         WHERE m.queue_id = q.queue_id
           -- An array, not a join: see read; and the ids' span (sql/internal.sql).
           AND m.msg_id = ANY (ARRAY(SELECT d.msg_id FROM due d))
           AND m.msg_id BETWEEN (SELECT min(d.msg_id) FROM due d) AND (SELECT max(d.msg_id) FROM due d)
        RETURNING m.priority, m.msg_id
    )
    SELECT count(*) INTO n FROM promoted p
     WHERE pgflow._ready(q.queue_id, q.msg_seq::oid, p.priority, p.msg_id);
    IF n > 0 THEN
        -- Waiting readers wake at the commit, as for a send.
        PERFORM pgflow._announce(q.queue_id, q.queue_name, q.notify);
    END IF;
    RETURN n;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._prune_archive_queue(q pgflow.queue, p_now timestamp with time zone, lim integer)
 RETURNS bigint
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
DECLARE
    n bigint;
BEGIN
    DELETE FROM pgflow.archive a
     WHERE a.queue_id = q.queue_id
       AND a.msg_id IN (SELECT o.msg_id FROM pgflow.archive o
                         WHERE o.queue_id = q.queue_id
                           AND o.archived_at < p_now - q.archive_retention
                         ORDER BY o.archived_at
                         LIMIT lim
                           FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._prune_dedup_queue(p_queue_id integer, p_now timestamp with time zone, lim integer)
 RETURNS bigint
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
DECLARE
    n bigint;
BEGIN
    DELETE FROM pgflow.dedup d
     WHERE d.queue_id = p_queue_id
       AND d.dedup_key IN (SELECT o.dedup_key FROM pgflow.dedup o
                            WHERE o.queue_id = p_queue_id AND o.expires_at <= p_now
                            ORDER BY o.expires_at
                            LIMIT lim
                              FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._queue(queue_name text, need text, writes boolean DEFAULT true)
 RETURNS pgflow.queue
 LANGUAGE plpgsql
 STABLE PARALLEL SAFE
AS $function$
DECLARE
    q pgflow.queue;
    v_class integer;
BEGIN
    SELECT * INTO q FROM pgflow.queue WHERE queue.queue_name = _queue.queue_name;
    IF NOT FOUND THEN
        PERFORM pgflow._check_queue_name(queue_name);
        RAISE EXCEPTION 'queue "%" does not exist', queue_name
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create it with pgflow.create_queue(), or see pgflow.list_queues().';
    END IF;
    v_class := pgflow._caller_class(writes AND need <> 'see');
    IF v_class < 2 AND NOT (need = 'see' AND v_class = 1) AND NOT pgflow._may(q.queue_id, need) THEN
        RAISE EXCEPTION 'permission denied for queue "%": % needs the % privilege on it', queue_name,
            pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(pgflow._caller())),
            CASE need WHEN 'see' THEN 'produce, consume or admin' ELSE need END
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A member of pgflow_admin grants it with pgflow.grant(queue, role, privilege).';
    END IF;
    RETURN q;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._read(q pgflow.queue, vt interval, qty integer, wait interval)
 RETURNS SETOF pgflow.message_record
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_vt interval := coalesce(_read.vt, q.visibility_timeout);
    v_deadline timestamptz;
    v_woken boolean;
    v_next timestamptz;
    v_from bigint[];
    v_probe integer;
    v_backoff interval;
    n bigint;
BEGIN
    -- The checks' fast path inline; the helpers raise the precise error.
    IF v_vt IS NULL OR v_vt <= interval '0' OR v_vt > interval '100 years' THEN
        PERFORM pgflow._check_interval(v_vt, 'vt', false);
    END IF;
    IF qty IS NULL OR qty < 1 THEN
        PERFORM pgflow._check_int(qty, 'qty', 1);
    END IF;
    IF wait IS NOT NULL AND wait > interval '0' THEN
        PERFORM pgflow._check_interval(wait, 'wait', true);
        IF current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'read with wait needs READ COMMITTED, not %',
                            current_setting('transaction_isolation')
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'A snapshot that never changes would never see a new message.';
        END IF;
        v_deadline := v_now + wait;
        -- Register before the first look, so a send that commits after it wakes us.
        v_woken := pgflow._wait_begin(q.queue_id);
    ELSIF wait IS NOT NULL THEN
        PERFORM pgflow._check_interval(wait, 'wait', true);
    END IF;
    LOOP
        v_probe := pgflow._due_begin(q.queue_id, q.msg_seq::oid, v_now);
        IF v_probe > 0 THEN
            PERFORM pgflow._before_claim(q, v_now, qty, v_probe);
        END IF;
        -- The claim starts after the queue's claim cursor (a statement of its own, before the
        -- claim's snapshot; src/ipc/cursor.rs has the rules that keep it safe).
        v_from := pgflow._claim_begin(q.queue_id, q.msg_seq::oid);
        RETURN QUERY
        WITH picked AS (
            SELECT m.msg_id FROM pgflow.message m
             WHERE m.queue_id = q.queue_id AND m.state = 'r'
               AND (-(m.priority::integer), m.msg_id) > (v_from[1]::integer, v_from[2])
             ORDER BY -(m.priority::integer), m.msg_id
             LIMIT qty
               FOR UPDATE SKIP LOCKED
        ), leased AS (
            -- The picked ids as an array, so both key columns are the index condition: a join
            -- with picked let a plan cached on a near-empty table (a fresh install) scan every
            -- row of the queue on each claim, for the life of the session. The span bounds
            -- the walk whatever the plan (sql/internal.sql, "Id spans").
            UPDATE pgflow.message m
               SET state = 'l', vt = v_now + v_vt, read_ct = m.read_ct + 1,
                   holder = CASE WHEN q.session_leases THEN pgflow._session_key() END
             WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (ARRAY(SELECT p.msg_id FROM picked p))
               AND m.msg_id BETWEEN (SELECT min(p.msg_id) FROM picked p)
                                AND (SELECT max(p.msg_id) FROM picked p)
            RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, m.headers, m.priority
        ), noted AS (
            -- What the claim took, noted for the claim cursor in one call.
            SELECT pgflow._claim_span(min(ARRAY[-(l.priority::bigint), l.msg_id]),
                                      max(ARRAY[-(l.priority::bigint), l.msg_id]), count(*)) AS ok
              FROM leased l
        )
        SELECT l.msg_id, l.read_ct, l.enqueued_at, l.vt, l.message, l.headers,
               pgflow._receipt(l.enqueued_at, l.read_ct)
          FROM leased l, noted
         WHERE noted.ok
         ORDER BY l.priority DESC, l.msg_id;
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM pgflow._claim_end(qty);
        IF n > 0 THEN
            PERFORM pgflow._due_at(q.queue_id, q.msg_seq::oid, v_now + v_vt);
        END IF;
        EXIT WHEN n > 0 OR v_deadline IS NULL OR v_now >= v_deadline;
        -- Sleep at most until the next delayed message or lease comes due: the queue's due
        -- time when shared memory knows it, else from the table. When that has passed and
        -- still nothing could be claimed (another reader is recomputing it, or the due lease
        -- is row-locked by an open transaction, such as a consumer archiving inside a longer
        -- one), back off: 10 ms, doubling up to 1 s, or until a wake-up.
        v_next := pgflow._due(q.queue_id, q.msg_seq::oid);
        IF v_next IS NULL THEN
            v_next := pgflow._next_due(q.queue_id);
        END IF;
        IF v_next <= v_now THEN
            v_backoff := least(coalesce(v_backoff * 2, interval '10 ms'), interval '1 s');
            v_next := v_now + v_backoff;
        END IF;
        -- False when the extension, its schema or the database is being dropped.
        EXIT WHEN NOT pgflow._wait_for(least(v_deadline, v_next), v_woken);
        v_now := clock_timestamp();
    END LOOP;
    IF v_deadline IS NOT NULL THEN
        PERFORM pgflow._wait_end();
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._release_orphans(q pgflow.queue, p_now timestamp with time zone, lim integer)
 RETURNS bigint
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
AS $function$
DECLARE
    v_held bigint[];
    v_live bigint[];
    ids bigint[];
BEGIN
    SELECT array_agg(DISTINCT m.holder) INTO v_held
      FROM pgflow.message m
     WHERE m.queue_id = q.queue_id AND m.state = 'l' AND m.holder IS NOT NULL;
    IF v_held IS NULL THEN
        RETURN 0;
    END IF;
    -- A fresh list: pg_stat_activity is read once per transaction unless cleared.
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    SELECT CASE WHEN bool_and(a.backend_start IS NOT NULL)
                THEN coalesce(array_agg(pgflow._session_key_of(a.pid, a.backend_start)), '{}')
           END
      INTO v_live
      FROM pg_catalog.pg_stat_get_activity(NULL) a
     WHERE a.pid IS NOT NULL;
    IF v_live IS NULL THEN
        RETURN 0;
    END IF;
    SELECT array_agg(e.msg_id) INTO ids
      FROM (SELECT m.msg_id FROM pgflow.message m
             WHERE m.queue_id = q.queue_id AND m.state = 'l'
               AND m.holder = ANY (v_held) AND NOT (m.holder = ANY (v_live))
             ORDER BY m.vt
             LIMIT lim
               FOR UPDATE SKIP LOCKED) e;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    RETURN pgflow._fail_lost(q, ids, 'lease holder disconnected', p_now);
END $function$;

CREATE OR REPLACE FUNCTION pgflow._stats_rebuild(lock_wait interval DEFAULT '00:00:01'::interval)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
BEGIN
    PERFORM pg_catalog.set_config('lock_timeout', (extract(epoch FROM lock_wait) * 1000)::bigint::text,
                                  true);
    LOCK TABLE pgflow.message, pgflow.dead, pgflow.archive IN SHARE MODE;
    PERFORM pgflow._stats_load(coalesce(array_agg(q.queue_id ORDER BY q.queue_id), '{}'),
                               coalesce(array_agg(q.queue_name ORDER BY q.queue_id), '{}'),
                               coalesce(array_agg(coalesce(m.r, 0) ORDER BY q.queue_id), '{}'),
                               coalesce(array_agg(coalesce(m.d, 0) ORDER BY q.queue_id), '{}'),
                               coalesce(array_agg(coalesce(m.l, 0) ORDER BY q.queue_id), '{}'),
                               coalesce(array_agg(coalesce(m.g, 0) ORDER BY q.queue_id), '{}'),
                               coalesce(array_agg(coalesce(x.n, 0) ORDER BY q.queue_id), '{}'),
                               coalesce(array_agg(coalesce(a.n, 0) ORDER BY q.queue_id), '{}'))
      FROM pgflow.queue q
      LEFT JOIN (SELECT s.queue_id,
                        count(*) FILTER (WHERE s.state = 'r') AS r,
                        count(*) FILTER (WHERE s.state = 'd') AS d,
                        count(*) FILTER (WHERE s.state = 'l') AS l,
                        count(*) FILTER (WHERE s.state = 'g') AS g
                   FROM pgflow.message s GROUP BY s.queue_id) m ON m.queue_id = q.queue_id
      LEFT JOIN (SELECT t.queue_id, count(*) AS n FROM pgflow.dead t GROUP BY t.queue_id) x
             ON x.queue_id = q.queue_id
      LEFT JOIN (SELECT t.queue_id, count(*) AS n FROM pgflow.archive t GROUP BY t.queue_id) a
             ON a.queue_id = q.queue_id;
    RETURN true;
EXCEPTION WHEN lock_not_available THEN
    RETURN false;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._stats_tick(OUT rebuilt boolean, OUT horizon_age double precision, OUT horizon_xmin_age integer)
 RETURNS record
 LANGUAGE plpgsql
AS $function$
BEGIN
    rebuilt := false;
    horizon_age := 0;
    horizon_xmin_age := 0;
    -- A failure here (a statement_timeout set on the database, say) is a WARNING: it must not
    -- end the worker, whose maintenance round comes next.
    BEGIN
        IF pgflow._stats_enabled()
           AND pgflow._stats_needs_rebuild(ARRAY(SELECT q.queue_id FROM pgflow.queue q)) THEN
            rebuilt := pgflow._stats_rebuild();
        END IF;
        PERFORM pgflow._alerts_check();
        -- The oldest ready message of every queue with ready messages, for the endpoint.
        PERFORM pgflow._stats_oldest(coalesce(array_agg(o.queue_id), '{}'),
                                     coalesce(array_agg(o.oldest), '{}'))
          FROM (SELECT q.queue_id, pgflow._oldest_ready(q.queue_id, c.mark_priority, c.mark_msg_id) AS oldest
                  FROM pgflow.queue q
                  -- The queues with ready messages, from shared memory in one call: an idle
                  -- database's tick then costs nothing per queue (bench W8).
                  JOIN pgflow._stats_ready() r(queue_id) ON r.queue_id = q.queue_id
                  LEFT JOIN pgflow._cursor_status() c ON c.queue_id = q.queue_id AND c.seq = q.msg_seq::oid
               ) o
         WHERE o.oldest IS NOT NULL;
    EXCEPTION WHEN query_canceled OR OTHERS THEN
        RAISE WARNING 'pgflow: the statistics and alerts step failed, the maintenance goes on: % (%)',
            SQLERRM, SQLSTATE;
    END;
    SELECT coalesce(extract(epoch FROM clock_timestamp() - h.since)::float8, 0),
           coalesce(h.xmin_age, 0)
      INTO horizon_age, horizon_xmin_age
      FROM pgflow.horizon() h
     LIMIT 1;
    horizon_age := coalesce(horizon_age, 0);
    horizon_xmin_age := coalesce(horizon_xmin_age, 0);
END $function$;

CREATE OR REPLACE FUNCTION pgflow._visible(p_queue_id integer)
 RETURNS boolean
 LANGUAGE plpgsql
 STABLE PARALLEL SAFE
AS $function$
BEGIN
    RETURN pgflow._caller_class() > 0 OR pgflow._may(p_queue_id, 'see');
END $function$;

CREATE OR REPLACE FUNCTION pgflow.alter_queue(queue_name text, visibility_timeout interval DEFAULT NULL::interval, max_retries integer DEFAULT NULL::integer, retry_delay interval DEFAULT NULL::interval, archive_retention interval DEFAULT NULL::interval, retry_backoff double precision DEFAULT NULL::double precision, retry_delay_max interval DEFAULT NULL::interval, retry_jitter double precision DEFAULT NULL::double precision, default_priority integer DEFAULT NULL::integer, dedup_window interval DEFAULT NULL::interval, notify boolean DEFAULT NULL::boolean, contract jsonb DEFAULT NULL::jsonb, alert_dlq bigint DEFAULT NULL::bigint, alert_age interval DEFAULT NULL::interval, alert_depth bigint DEFAULT NULL::bigint, session_leases boolean DEFAULT NULL::boolean)
 RETURNS SETOF pgflow.queue_info
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(alter_queue.queue_name, 'admin');
BEGIN
    IF alter_queue.visibility_timeout IS NOT NULL THEN
        PERFORM pgflow._check_interval(alter_queue.visibility_timeout, 'visibility_timeout', false);
    END IF;
    IF alter_queue.max_retries IS NOT NULL THEN
        PERFORM pgflow._check_int(alter_queue.max_retries, 'max_retries', 0);
    END IF;
    IF alter_queue.retry_delay IS NOT NULL THEN
        PERFORM pgflow._check_interval(alter_queue.retry_delay, 'retry_delay', true);
    END IF;
    IF alter_queue.archive_retention IS NOT NULL THEN
        PERFORM pgflow._check_interval(alter_queue.archive_retention, 'archive_retention', false);
    END IF;
    IF alter_queue.default_priority IS NOT NULL THEN
        PERFORM pgflow._check_priority(alter_queue.default_priority, 'default_priority');
    END IF;
    IF alter_queue.dedup_window IS NOT NULL THEN
        PERFORM pgflow._check_interval(alter_queue.dedup_window, 'dedup_window', false);
    END IF;
    IF alter_queue.contract IS NOT NULL THEN
        PERFORM pgflow.set_contract(alter_queue.queue_name, alter_queue.contract,
                                    coalesce(q.contract_version, '1'));
    END IF;
    PERFORM pgflow._alert_count(alter_queue.alert_dlq, 'alert_dlq');
    PERFORM pgflow._alert_count(alter_queue.alert_depth, 'alert_depth');
    PERFORM pgflow._alert_age(alter_queue.alert_age, 'alert_age');
    PERFORM pgflow._check_retry_policy(coalesce(alter_queue.retry_backoff, q.retry_backoff),
                                       coalesce(alter_queue.retry_delay_max, q.retry_delay_max),
                                       coalesce(alter_queue.retry_jitter, q.retry_jitter));

    RETURN QUERY
    UPDATE pgflow.queue u
       SET visibility_timeout = coalesce(alter_queue.visibility_timeout, u.visibility_timeout),
           max_retries        = coalesce(alter_queue.max_retries, u.max_retries),
           retry_delay        = coalesce(alter_queue.retry_delay, u.retry_delay),
           archive_retention  = coalesce(alter_queue.archive_retention, u.archive_retention),
           retry_backoff      = coalesce(alter_queue.retry_backoff, u.retry_backoff),
           retry_delay_max    = coalesce(alter_queue.retry_delay_max, u.retry_delay_max),
           retry_jitter       = coalesce(alter_queue.retry_jitter, u.retry_jitter),
           default_priority   = coalesce(alter_queue.default_priority, u.default_priority),
           dedup_window       = coalesce(alter_queue.dedup_window, u.dedup_window),
           notify             = coalesce(alter_queue.notify, u.notify),
           alert_dlq          = CASE WHEN alter_queue.alert_dlq IS NULL THEN u.alert_dlq
                                     ELSE nullif(alter_queue.alert_dlq, -1) END,
           alert_age          = CASE WHEN alter_queue.alert_age IS NULL THEN u.alert_age
                                     ELSE nullif(alter_queue.alert_age, interval '0') END,
           alert_depth        = CASE WHEN alter_queue.alert_depth IS NULL THEN u.alert_depth
                                     ELSE nullif(alter_queue.alert_depth, -1) END,
           session_leases     = coalesce(alter_queue.session_leases, u.session_leases)
     WHERE u.queue_id = q.queue_id
    RETURNING u.queue_name, u.visibility_timeout, u.max_retries, u.retry_delay, u.retry_backoff,
              u.retry_delay_max, u.retry_jitter, u.archive_retention, u.created_at,
              u.default_priority, u.dedup_window, u.notify, u.contract_version,
              u.alert_dlq, u.alert_age, u.alert_depth, u.session_leases;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.archive(queue_name text, msg_id bigint, receipt bigint DEFAULT NULL::bigint)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_seqscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'consume');
BEGIN
    PERFORM pgflow._require(msg_id, 'msg_id');
    RETURN EXISTS (SELECT 1 FROM pgflow._archive(q, ARRAY[msg_id],
                                                  CASE WHEN receipt IS NOT NULL THEN ARRAY[receipt] END));
END $function$;

CREATE OR REPLACE FUNCTION pgflow.archive(queue_name text, msg_ids bigint[], receipts bigint[] DEFAULT NULL::bigint[])
 RETURNS SETOF bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_seqscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'consume');
BEGIN
    IF msg_ids IS NULL OR receipts IS NOT NULL THEN
        PERFORM pgflow._check_receipts(msg_ids, receipts);
    END IF;
    RETURN QUERY SELECT * FROM pgflow._archive(q, msg_ids, receipts);
END $function$;

CREATE OR REPLACE FUNCTION pgflow.archive_read(queue_name text, msg_ids bigint[], vt interval DEFAULT NULL::interval, qty integer DEFAULT 1, wait interval DEFAULT NULL::interval, receipts bigint[] DEFAULT NULL::bigint[])
 RETURNS SETOF pgflow.message_record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_seqscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'consume');
BEGIN
    PERFORM pgflow._check_receipts(msg_ids, receipts);
    IF vt IS NOT NULL THEN
        PERFORM pgflow._check_interval(vt, 'vt', false);
    END IF;
    PERFORM pgflow._check_int(qty, 'qty', 1);
    IF wait IS NOT NULL THEN
        PERFORM pgflow._check_interval(wait, 'wait', true);
    END IF;
    -- The bodies, not the entry points: one queue lookup and no nested SET per round trip.
    IF cardinality(msg_ids) > 0 THEN
        PERFORM pgflow._archive(q, msg_ids, receipts);
    END IF;
    RETURN QUERY SELECT * FROM pgflow._read(q, vt, qty, wait);
END $function$;

CREATE OR REPLACE FUNCTION pgflow.bind(pattern text, queue_name text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
BEGIN
    PERFORM pgflow._check_topic_pattern(pattern);
    INSERT INTO pgflow.binding (pattern, queue_id) VALUES (bind.pattern, q.queue_id)
    ON CONFLICT DO NOTHING;
    RETURN FOUND;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.check_cursors(now timestamp with time zone DEFAULT NULL::timestamp with time zone)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_seqscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    v_now timestamptz := coalesce(check_cursors.now, clock_timestamp());
    q record;
    v_mark bigint[];
    r record;
    v_seen bigint;
    n bigint := 0;
BEGIN
    PERFORM pgflow._primary();
    FOR q IN SELECT u.queue_id, u.msg_seq FROM pgflow.queue u ORDER BY u.queue_id LOOP
        v_mark := pgflow._cursor_check(q.queue_id, q.msg_seq::oid, v_now);
        CONTINUE WHEN v_mark IS NULL;
        SELECT m.priority, m.msg_id INTO r
          FROM pgflow.message m
         WHERE m.queue_id = q.queue_id AND m.state = 'r'
           AND (-(m.priority::integer), m.msg_id) <= (v_mark[1]::integer, v_mark[2])
         ORDER BY -(m.priority::integer), m.msg_id
         LIMIT 1;
        IF FOUND THEN
            PERFORM pgflow._cursor_lower(q.queue_id, q.msg_seq::oid, r.priority, r.msg_id);
            n := n + 1;
        END IF;
    END LOOP;
    -- Read the freeze count first: a PREPARE after it keeps its queues frozen.
    v_seen := pgflow._cursor_freezes();
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_xacts p
                    WHERE p.database = pg_catalog.current_database()) THEN
        PERFORM pgflow._cursor_thaw(v_seen);
    END IF;
    RETURN n;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.create_queue(queue_name text, visibility_timeout interval DEFAULT '00:00:30'::interval, max_retries integer DEFAULT 3, retry_delay interval DEFAULT '00:00:01'::interval, archive_retention interval DEFAULT '7 days'::interval, if_not_exists boolean DEFAULT false, retry_backoff double precision DEFAULT 2, retry_delay_max interval DEFAULT '01:00:00'::interval, retry_jitter double precision DEFAULT 0.1, default_priority integer DEFAULT 0, dedup_window interval DEFAULT '00:05:00'::interval, notify boolean DEFAULT false, contract jsonb DEFAULT NULL::jsonb, alert_dlq bigint DEFAULT NULL::bigint, alert_age interval DEFAULT NULL::interval, alert_depth bigint DEFAULT NULL::bigint, session_leases boolean DEFAULT false)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    v_id integer;
    v_msg_seq text;
    v_archived_seq text;
BEGIN
    PERFORM pgflow._primary();
    PERFORM pgflow._check_queue_name(queue_name);
    PERFORM pgflow._check_interval(visibility_timeout, 'visibility_timeout', false);
    PERFORM pgflow._check_int(max_retries, 'max_retries', 0);
    PERFORM pgflow._check_interval(retry_delay, 'retry_delay', true);
    PERFORM pgflow._check_interval(archive_retention, 'archive_retention', false);
    PERFORM pgflow._require(if_not_exists, 'if_not_exists');
    PERFORM pgflow._check_retry_policy(retry_backoff, retry_delay_max, retry_jitter);
    PERFORM pgflow._require(default_priority, 'default_priority');
    PERFORM pgflow._check_priority(default_priority, 'default_priority');
    PERFORM pgflow._check_interval(dedup_window, 'dedup_window', false);
    PERFORM pgflow._require(notify, 'notify');
    PERFORM pgflow._require(session_leases, 'session_leases');
    IF contract IS NOT NULL THEN
        PERFORM pgflow._check_contract_schema(contract::text);
    END IF;
    PERFORM pgflow._alert_count(alert_dlq, 'alert_dlq');
    PERFORM pgflow._alert_count(alert_depth, 'alert_depth');
    PERFORM pgflow._alert_age(alert_age, 'alert_age');

    IF EXISTS (SELECT 1 FROM pgflow.queue q WHERE q.queue_name = create_queue.queue_name) THEN
        IF if_not_exists THEN
            RETURN false;
        END IF;
        RAISE EXCEPTION 'queue "%" already exists', queue_name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Pass if_not_exists => true to make creation idempotent.';
    END IF;

    -- The sequences are named after the numeric id, never after the user's string.
    v_id := nextval('pgflow.queue_queue_id_seq');
    v_msg_seq := 'pgflow.q' || v_id || '_msg_seq';
    v_archived_seq := 'pgflow.q' || v_id || '_archived_seq';
    EXECUTE 'CREATE SEQUENCE ' || v_msg_seq || ' AS bigint';
    EXECUTE 'CREATE SEQUENCE ' || v_archived_seq || ' AS bigint';

    INSERT INTO pgflow.queue (queue_id, queue_name, visibility_timeout, max_retries, retry_delay,
                              retry_backoff, retry_delay_max, retry_jitter,
                              archive_retention, msg_seq, archived_seq, default_priority,
                              dedup_window, notify, alert_dlq, alert_age, alert_depth,
                              session_leases)
    VALUES (v_id, queue_name, visibility_timeout, max_retries, retry_delay,
            retry_backoff, retry_delay_max, retry_jitter,
            archive_retention, v_msg_seq::regclass, v_archived_seq::regclass, default_priority,
            dedup_window, notify, nullif(alert_dlq, -1), nullif(alert_age, interval '0'),
            nullif(alert_depth, -1), session_leases)
    ON CONFLICT ON CONSTRAINT queue_queue_name_key DO NOTHING;

    IF NOT FOUND THEN
        -- A concurrent create of the same name committed first.
        EXECUTE 'DROP SEQUENCE ' || v_msg_seq || ', ' || v_archived_seq;
        IF if_not_exists THEN
            RETURN false;
        END IF;
        RAISE EXCEPTION 'queue "%" already exists', queue_name USING ERRCODE = 'duplicate_object';
    END IF;
    IF contract IS NOT NULL THEN
        PERFORM pgflow.set_contract(queue_name, contract);
    END IF;
    -- Its statistics start empty, and exact, when this commits (src/ipc/stats.rs).
    PERFORM pgflow._stats_created(v_id, queue_name);
    RETURN true;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.delete(queue_name text, msg_id bigint, receipt bigint DEFAULT NULL::bigint)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgflow._require(msg_id, 'msg_id');
    RETURN EXISTS (SELECT 1 FROM pgflow.delete(queue_name, ARRAY[msg_id],
                                               CASE WHEN receipt IS NOT NULL THEN ARRAY[receipt] END));
END $function$;

CREATE OR REPLACE FUNCTION pgflow.delete(queue_name text, msg_ids bigint[], receipts bigint[] DEFAULT NULL::bigint[])
 RETURNS SETOF bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_seqscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'consume');
BEGIN
    PERFORM pgflow._check_receipts(msg_ids, receipts);
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    RETURN QUERY
    DELETE FROM pgflow.message m
     WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (msg_ids)
       AND m.msg_id BETWEEN (SELECT min(i) FROM unnest(msg_ids) i)
                        AND (SELECT max(i) FROM unnest(msg_ids) i)
       AND (receipts IS NULL  -- paired as in _archive
            OR (m.msg_id, pgflow._receipt(m.enqueued_at, m.read_ct))
               IN (SELECT r.id, r.receipt FROM unnest(msg_ids, receipts) AS r(id, receipt)
                    WHERE r.receipt IS NOT NULL)
            OR m.msg_id IN (SELECT r.id FROM unnest(msg_ids, receipts) AS r(id, receipt)
                             WHERE r.receipt IS NULL))
    RETURNING m.msg_id;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.dlq_delete(queue_name text, msg_ids bigint[])
 RETURNS SETOF bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
BEGIN
    PERFORM pgflow._require(msg_ids, 'msg_ids');
    RETURN QUERY
    DELETE FROM pgflow.dead d
     WHERE d.queue_id = q.queue_id AND d.msg_id = ANY (msg_ids)
       AND d.msg_id BETWEEN (SELECT min(i) FROM unnest(msg_ids) i)
                        AND (SELECT max(i) FROM unnest(msg_ids) i)
    RETURNING d.msg_id;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.dlq_list(queue_name text, qty integer DEFAULT 100)
 RETURNS SETOF pgflow.dead_message
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin', writes => false);
BEGIN
    PERFORM pgflow._check_int(qty, 'qty', 1);
    RETURN QUERY
    SELECT d.msg_id, d.read_ct, d.enqueued_at, d.died_at, d.reason,
           d.errors -> 0 ->> 'error', d.errors -> -1 ->> 'error', d.errors, d.message, d.headers
      FROM pgflow.dead d
     WHERE d.queue_id = q.queue_id
     ORDER BY d.died_at, d.msg_id
     LIMIT qty;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.dlq_list_all(qty integer DEFAULT 100)
 RETURNS TABLE(queue_name text, msg_id bigint, read_ct integer, enqueued_at timestamp with time zone, died_at timestamp with time zone, reason text, first_error text, last_error text, errors jsonb, message jsonb, headers jsonb)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    v_all boolean := pgflow._caller_class() = 2;
BEGIN
    PERFORM pgflow._check_int(qty, 'qty', 1);
    RETURN QUERY
    SELECT q.queue_name, d.msg_id, d.read_ct, d.enqueued_at, d.died_at, d.reason,
           d.errors -> 0 ->> 'error', d.errors -> -1 ->> 'error', d.errors, d.message, d.headers
      FROM pgflow.dead d
      JOIN pgflow.queue q ON q.queue_id = d.queue_id
     WHERE v_all OR pgflow._may(q.queue_id, 'admin')
     ORDER BY d.died_at, q.queue_name, d.msg_id
     LIMIT qty;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.dlq_purge(queue_name text, older_than timestamp with time zone DEFAULT NULL::timestamp with time zone)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
    n bigint;
BEGIN
    DELETE FROM pgflow.dead d
     WHERE d.queue_id = q.queue_id AND (older_than IS NULL OR d.died_at < older_than);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.dlq_retry(queue_name text, msg_id bigint)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgflow._require(msg_id, 'msg_id');
    RETURN (SELECT r.msg_id FROM pgflow.dlq_retry(queue_name, ARRAY[msg_id]) r);
END $function$;

CREATE OR REPLACE FUNCTION pgflow.dlq_retry(queue_name text, msg_ids bigint[] DEFAULT NULL::bigint[], died_before timestamp with time zone DEFAULT NULL::timestamp with time zone)
 RETURNS TABLE(dead_msg_id bigint, msg_id bigint)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
    v_now timestamptz := clock_timestamp();
    d record;
    v_state "char";
BEGIN
    -- The statistics count the new messages as redriven, not sent (src/ipc/stats.rs).
    PERFORM pgflow._stats_mode('redrive');
    -- One insert per dead letter, in id order: a grouped one goes back behind its group's live
    -- messages, and each sees the one redriven before it.
    FOR d IN
        WITH moved AS (
            DELETE FROM pgflow.dead x
             WHERE x.queue_id = q.queue_id
               AND (msg_ids IS NULL OR x.msg_id = ANY (msg_ids))
               AND (died_before IS NULL OR x.died_at < died_before)
            RETURNING x.*
        )
        SELECT * FROM moved ORDER BY moved.msg_id
    LOOP
        dead_msg_id := d.msg_id;
        msg_id := nextval(q.msg_seq);
        v_state := pgflow._group_state(q.queue_id, d.group_key, 'r'::"char");
        INSERT INTO pgflow.message (queue_id, msg_id, enqueued_at, vt, priority, state, message,
                                    headers, group_key)
        VALUES (q.queue_id, dlq_retry.msg_id, v_now, v_now, d.priority, v_state, d.message,
                d.headers, d.group_key);
        IF v_state = 'r' THEN
            PERFORM pgflow._ready(q.queue_id, q.msg_seq::oid, d.priority, dlq_retry.msg_id);
        END IF;
        PERFORM pgflow._announce(q.queue_id, q.queue_name, q.notify);
        RETURN NEXT;
    END LOOP;
    PERFORM pgflow._stats_mode('plain');
END $function$;

CREATE OR REPLACE FUNCTION pgflow.drop_contract(queue_name text, version text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
BEGIN
    PERFORM pgflow._require(version, 'version');
    DELETE FROM pgflow.contract c WHERE c.queue_id = q.queue_id AND c.version = drop_contract.version;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF q.contract_version = drop_contract.version THEN
        UPDATE pgflow.queue u
           SET contract_version = (SELECT c.version FROM pgflow.contract c WHERE c.queue_id = q.queue_id
                                    ORDER BY c.created_at DESC, c.version DESC LIMIT 1)
         WHERE u.queue_id = q.queue_id;
    END IF;
    RETURN true;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.drop_queue(queue_name text, if_exists boolean DEFAULT false)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue;
BEGIN
    PERFORM pgflow._primary();
    PERFORM pgflow._require(queue_name, 'queue_name');
    -- Lock the queue row: a concurrent drop of the same queue waits, then finds nothing.
    SELECT * INTO q FROM pgflow.queue u WHERE u.queue_name = drop_queue.queue_name FOR UPDATE;
    IF NOT FOUND THEN
        IF coalesce(if_exists, false) THEN
            RETURN false;
        END IF;
        q := pgflow._queue(queue_name, 'admin');  -- raises the right error
    END IF;
    PERFORM pgflow._queue(queue_name, 'admin');  -- 42501 unless the caller may

    -- The deletes lock every message, ready ones included: should this transaction abort, the
    -- queue's claim cursor must start over (src/ipc/cursor.rs).
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    DELETE FROM pgflow.message m WHERE m.queue_id = q.queue_id;
    DELETE FROM pgflow.archive a WHERE a.queue_id = q.queue_id;
    DELETE FROM pgflow.dead d WHERE d.queue_id = q.queue_id;
    DELETE FROM pgflow.dedup k WHERE k.queue_id = q.queue_id;
    DELETE FROM pgflow.binding b WHERE b.queue_id = q.queue_id;
    DELETE FROM pgflow.queue_grant g WHERE g.queue_id = q.queue_id;
    DELETE FROM pgflow.contract c WHERE c.queue_id = q.queue_id;
    DELETE FROM pgflow.alert x WHERE x.queue_id = q.queue_id;
    DELETE FROM pgflow.queue u WHERE u.queue_id = q.queue_id;
    PERFORM pgflow._notify_forget(q.queue_id);
    PERFORM pgflow._cursor_forget(q.queue_id);
    PERFORM pgflow._stats_dropped(q.queue_id);
    -- regclass values print as qualified, quoted names: safe to splice.
    EXECUTE 'DROP SEQUENCE ' || q.msg_seq::text || ', ' || q.archived_seq::text;
    RETURN true;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.list_contracts(queue_name text)
 RETURNS TABLE(version text, is_default boolean, contract jsonb, created_at timestamp with time zone)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'see');
BEGIN
    RETURN QUERY
    SELECT c.version, c.version = q.contract_version, c.schema, c.created_at
      FROM pgflow.contract c WHERE c.queue_id = q.queue_id
     ORDER BY c.version = q.contract_version DESC, c.version;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.list_grants(queue_name text DEFAULT NULL::text)
 RETURNS SETOF pgflow.grant_info
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    v_id integer;
BEGIN
    IF list_grants.queue_name IS NOT NULL THEN
        v_id := (pgflow._queue(list_grants.queue_name, 'admin', writes => false)).queue_id;
    END IF;
    RETURN QUERY
    SELECT q.queue_name, g.grantee, g.privilege, g.granted_at
      FROM pgflow.queue_grant g JOIN pgflow.queue q USING (queue_id)
     WHERE v_id IS NULL OR g.queue_id = v_id
     ORDER BY q.queue_name, g.grantee::text, g.privilege;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.list_pending(queue_name text, qty integer DEFAULT 100)
 RETURNS SETOF pgflow.pending_message
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'consume', writes => false);
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM pgflow._check_int(qty, 'qty', 1);
    RETURN QUERY
    SELECT m.msg_id,
           CASE WHEN m.state = 'r' OR (m.state = 'd' AND m.vt <= v_now) THEN 'ready'
                WHEN m.state = 'd' THEN 'delayed'
                WHEN m.state = 'g' THEN 'waiting'
                ELSE 'in_flight' END,
           m.read_ct, m.enqueued_at, m.vt, m.priority, m.message, m.headers, m.group_key
      FROM pgflow.message m
     WHERE m.queue_id = q.queue_id
     -- Deliverable first, in read's order (due messages join the ready ones), then the rest.
     ORDER BY NOT (m.state = 'r' OR (m.state = 'd' AND m.vt <= v_now)),
              m.priority DESC, m.msg_id
     LIMIT qty;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.maintain(now timestamp with time zone DEFAULT NULL::timestamp with time zone, batch integer DEFAULT 1000, prune_batch integer DEFAULT 10000)
 RETURNS TABLE(job text, processed bigint)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    v_now timestamptz := coalesce(maintain.now, clock_timestamp());
BEGIN
    PERFORM pgflow._primary();
    PERFORM pgflow._check_int(batch, 'batch', 1);
    PERFORM pgflow._check_int(prune_batch, 'prune_batch', 1);
    job := 'expire_leases';   processed := pgflow.expire_leases(v_now, batch);         RETURN NEXT;
    job := 'promote_delayed'; processed := pgflow.promote_delayed(v_now, batch);       RETURN NEXT;
    job := 'prune_archive';   processed := pgflow.prune_archive(v_now, prune_batch);   RETURN NEXT;
    job := 'prune_dedup';     processed := pgflow.prune_dedup(v_now, prune_batch);     RETURN NEXT;
    job := 'check_cursors';   processed := pgflow.check_cursors(v_now);               RETURN NEXT;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.metrics(queue_name text, exact boolean DEFAULT false)
 RETURNS SETOF pgflow.queue_metrics
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET jit TO 'off'
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
BEGIN
    RETURN QUERY SELECT * FROM pgflow._metrics((pgflow._queue(queue_name, 'see')).queue_id,
                                               clock_timestamp(), coalesce(exact, false));
END $function$;

CREATE OR REPLACE FUNCTION pgflow.nack(queue_name text, msg_id bigint, error text DEFAULT NULL::text, retry_after interval DEFAULT NULL::interval, read_ct integer DEFAULT NULL::integer, now timestamp with time zone DEFAULT NULL::timestamp with time zone, receipt bigint DEFAULT NULL::bigint)
 RETURNS SETOF pgflow.nack_result
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_seqscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'consume');
    v_now timestamptz := coalesce(nack.now, clock_timestamp());
    m record;
BEGIN
    PERFORM pgflow._require(nack.msg_id, 'msg_id');
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    IF retry_after IS NOT NULL THEN
        PERFORM pgflow._check_interval(retry_after, 'retry_after', true);
    END IF;
    SELECT s.state, s.read_ct, s.enqueued_at INTO m
      FROM pgflow.message s
     WHERE s.queue_id = q.queue_id AND s.msg_id = nack.msg_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF nack.receipt IS NOT NULL AND nack.receipt <> pgflow._receipt(m.enqueued_at, m.read_ct) THEN
        PERFORM pgflow._check_receipt(q, nack.msg_id, nack.receipt);
    END IF;
    IF m.state <> 'l' THEN
        RAISE EXCEPTION 'message % of queue "%" is not in flight', nack.msg_id, queue_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Only a leased message (one returned by read) can be nacked.';
    END IF;
    IF nack.read_ct IS NOT NULL AND nack.read_ct <> m.read_ct THEN
        RAISE EXCEPTION 'lease lost: message % of queue "%" was delivered again (read_ct %, yours %)',
                nack.msg_id, queue_name, m.read_ct, nack.read_ct
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN QUERY SELECT * FROM pgflow._fail(q, ARRAY[nack.msg_id], error, retry_after, v_now,
                                            'max_retries exceeded');
END $function$;

CREATE OR REPLACE FUNCTION pgflow.pop(queue_name text, qty integer DEFAULT 1)
 RETURNS SETOF pgflow.message_record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_seqscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'consume');
    v_now timestamptz := clock_timestamp();
    v_from bigint[];
    v_probe integer;
BEGIN
    PERFORM pgflow._check_int(qty, 'qty', 1);
    v_probe := pgflow._due_begin(q.queue_id, q.msg_seq::oid, v_now);
    IF v_probe > 0 THEN
        PERFORM pgflow._before_claim(q, v_now, qty, v_probe);
    END IF;
    v_from := pgflow._claim_begin(q.queue_id, q.msg_seq::oid);
    -- The statistics count what the delete removes as delivered (src/ipc/stats.rs).
    PERFORM pgflow._stats_mode('pop');
    RETURN QUERY
    WITH picked AS (
        SELECT m.msg_id FROM pgflow.message m
         WHERE m.queue_id = q.queue_id AND m.state = 'r'
           AND (-(m.priority::integer), m.msg_id) > (v_from[1]::integer, v_from[2])
         ORDER BY -(m.priority::integer), m.msg_id
         LIMIT qty
           FOR UPDATE SKIP LOCKED
    ), popped AS (
        -- An array, not a join, and the span: see read.
        DELETE FROM pgflow.message m
         WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (ARRAY(SELECT p.msg_id FROM picked p))
           AND m.msg_id BETWEEN (SELECT min(p.msg_id) FROM picked p)
                            AND (SELECT max(p.msg_id) FROM picked p)
        RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, m.headers, m.priority
    ), noted AS (
        SELECT pgflow._claim_span(min(ARRAY[-(p.priority::bigint), p.msg_id]),
                                  max(ARRAY[-(p.priority::bigint), p.msg_id]), count(*)) AS ok
          FROM popped p
    )
    SELECT p.msg_id, p.read_ct + 1, p.enqueued_at, v_now, p.message, p.headers,
           pgflow._receipt(p.enqueued_at, p.read_ct + 1)
      FROM popped p, noted
     WHERE noted.ok
     ORDER BY p.priority DESC, p.msg_id;
    PERFORM pgflow._stats_mode('plain');
    PERFORM pgflow._claim_end(qty);
END $function$;

CREATE OR REPLACE FUNCTION pgflow.publish(topic text, message jsonb, headers jsonb DEFAULT NULL::jsonb, delay interval DEFAULT '00:00:00'::interval, priority integer DEFAULT NULL::integer)
 RETURNS TABLE(queue_name text, msg_id bigint)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    v_headers jsonb;
BEGIN
    PERFORM pgflow._primary();
    PERFORM pgflow._check_topic(topic);
    PERFORM pgflow._check_payload(message, headers);
    v_headers := coalesce(headers, '{}'::jsonb) || jsonb_build_object('topic', topic);
    FOR queue_name IN
        SELECT q.queue_name FROM pgflow.queue q
         WHERE EXISTS (SELECT 1 FROM pgflow.binding b
                        WHERE b.queue_id = q.queue_id AND pgflow._topic_matches(b.pattern, topic))
         ORDER BY q.queue_name
    LOOP
        msg_id := pgflow.send(queue_name, message, v_headers, delay, priority);
        RETURN NEXT;
    END LOOP;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.purge_queue(queue_name text)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
    n bigint;
BEGIN
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    DELETE FROM pgflow.message m WHERE m.queue_id = q.queue_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.read(queue_name text, vt interval DEFAULT NULL::interval, qty integer DEFAULT 1, wait interval DEFAULT NULL::interval)
 RETURNS SETOF pgflow.message_record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_seqscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
BEGIN
    RETURN QUERY SELECT * FROM pgflow._read(pgflow._queue(queue_name, 'consume'), vt, qty, wait);
END $function$;

CREATE OR REPLACE FUNCTION pgflow.retry_schedule(queue_name text)
 RETURNS TABLE(attempt integer, min_delay interval, max_delay interval)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'see');
BEGIN
    RETURN QUERY
    SELECT n, pgflow._retry_interval(q, n, 1.0), pgflow._retry_interval(q, n, 0.0)
      FROM generate_series(1, q.max_retries) AS n;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.revoke(queue_name text, role regrole, privilege text DEFAULT NULL::text)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
    n bigint;
BEGIN
    PERFORM pgflow._require(role, 'role');
    IF privilege IS NOT NULL THEN
        PERFORM pgflow._check_privilege(privilege);
    END IF;
    DELETE FROM pgflow.queue_grant g
     WHERE g.queue_id = q.queue_id AND g.grantee = role
       AND (revoke.privilege IS NULL OR g.privilege = revoke.privilege);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.send(queue_name text, message jsonb, headers jsonb DEFAULT NULL::jsonb, delay interval DEFAULT '00:00:00'::interval, priority integer DEFAULT NULL::integer, group_key text DEFAULT NULL::text, dedup_key text DEFAULT NULL::text, deliver_at timestamp with time zone DEFAULT NULL::timestamp with time zone)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'produce');
    v_now timestamptz := clock_timestamp();
    v_id bigint;
    v_vt timestamptz;
    v_first bigint;
    v_state "char";
    v_priority smallint;
BEGIN
    -- The checks' fast path inline (a PL/pgSQL call each costs more than the send's INSERT);
    -- the helpers raise the precise error.
    IF message IS NULL OR jsonb_typeof(message) <> 'object'
       OR (headers IS NOT NULL AND jsonb_typeof(headers) <> 'object') THEN
        PERFORM pgflow._check_payload(message, headers);
    END IF;
    IF delay IS NULL OR delay < interval '0' OR delay > interval '100 years' THEN
        PERFORM pgflow._check_interval(delay, 'delay', true);
    END IF;
    IF octet_length(group_key) > 512 OR octet_length(dedup_key) > 512 THEN
        PERFORM pgflow._check_key(group_key, 'group_key');
        PERFORM pgflow._check_key(dedup_key, 'dedup_key');
    END IF;
    IF deliver_at > v_now + interval '100 years' THEN
        RAISE EXCEPTION 'deliver_at must be at most 100 years from now, got %', deliver_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF priority < -32768 OR priority > 32767 THEN
        PERFORM pgflow._check_priority(priority, 'priority');
    END IF;
    IF q.contract_version IS NOT NULL THEN
        PERFORM pgflow._check_contract(q, message, headers);
    END IF;
    IF deliver_at IS NOT NULL AND delay <> interval '0' THEN
        RAISE EXCEPTION 'give delay or deliver_at, not both' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_vt := greatest(v_now, coalesce(deliver_at, v_now + delay));
    v_priority := coalesce(send.priority, q.default_priority);
    v_id := nextval(q.msg_seq);
    IF dedup_key IS NOT NULL THEN
        -- A concurrent send with the same key waits here for the first one's transaction: if it
        -- commits, this send returns its id; if it rolls back, this send goes ahead.
        INSERT INTO pgflow.dedup AS k (queue_id, dedup_key, msg_id, expires_at)
        VALUES (q.queue_id, send.dedup_key, v_id, v_now + q.dedup_window)
        ON CONFLICT ON CONSTRAINT dedup_pkey DO UPDATE
           SET msg_id = EXCLUDED.msg_id, expires_at = EXCLUDED.expires_at
         WHERE k.expires_at <= v_now
        RETURNING k.msg_id INTO v_first;
        IF NOT FOUND THEN
            SELECT k.msg_id INTO v_first FROM pgflow.dedup k
             WHERE k.queue_id = q.queue_id AND k.dedup_key = send.dedup_key;
            RETURN v_first;
        END IF;
    END IF;
    v_state := CASE WHEN v_vt > v_now THEN 'd' ELSE 'r' END;
    IF send.group_key IS NOT NULL THEN
        v_state := pgflow._group_state(q.queue_id, send.group_key, v_state);
    END IF;
    INSERT INTO pgflow.message (queue_id, msg_id, enqueued_at, vt, priority, state, message,
                                headers, group_key)
    VALUES (q.queue_id, v_id, v_now, v_vt, v_priority, v_state, send.message, send.headers,
            send.group_key);
    IF v_state = 'r' THEN
        PERFORM pgflow._ready(q.queue_id, q.msg_seq::oid, v_priority, v_id);
    ELSIF v_state = 'd' THEN
        PERFORM pgflow._due_at(q.queue_id, q.msg_seq::oid, v_vt);
    END IF;
    PERFORM pgflow._announce(q.queue_id, q.queue_name, q.notify);
    RETURN v_id;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.send_batch(queue_name text, messages jsonb[], headers jsonb[] DEFAULT NULL::jsonb[], delay interval DEFAULT '00:00:00'::interval, priority integer DEFAULT NULL::integer)
 RETURNS SETOF bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'produce');
    v_now timestamptz := clock_timestamp();
    v_bad record;
    v_ids bigint[];
    v_priority smallint;
BEGIN
    PERFORM pgflow._require(messages, 'messages');
    IF array_ndims(messages) > 1 OR array_ndims(headers) > 1 THEN
        RAISE EXCEPTION 'messages and headers must be one-dimensional arrays'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pgflow._check_interval(delay, 'delay', true);
    PERFORM pgflow._check_priority(priority, 'priority');
    v_priority := coalesce(send_batch.priority, q.default_priority);
    IF headers IS NOT NULL AND cardinality(headers) <> cardinality(messages) THEN
        RAISE EXCEPTION 'headers has % elements but messages has %',
            cardinality(headers), cardinality(messages)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT m.ord, m.msg, h.hdr INTO v_bad
      FROM unnest(messages) WITH ORDINALITY AS m(msg, ord)
      LEFT JOIN unnest(headers) WITH ORDINALITY AS h(hdr, ord) USING (ord)
     WHERE m.msg IS NULL OR jsonb_typeof(m.msg) <> 'object'
        OR (h.hdr IS NOT NULL AND jsonb_typeof(h.hdr) <> 'object')
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'messages[%]: %', v_bad.ord,
            CASE WHEN v_bad.msg IS NULL THEN 'message must not be NULL'
                 WHEN jsonb_typeof(v_bad.msg) <> 'object' THEN 'message must be a JSON object, got ' || jsonb_typeof(v_bad.msg)
                 ELSE 'headers must be a JSON object or NULL, got ' || jsonb_typeof(v_bad.hdr) END
            USING ERRCODE = CASE WHEN v_bad.msg IS NULL THEN 'null_value_not_allowed'
                                 ELSE 'invalid_parameter_value' END;
    END IF;

    IF q.contract_version IS NOT NULL THEN
        -- Paired by position, as they are stored (not by subscript: an array may start at any
        -- index); messages[n] in an error is the n-th element.
        FOR v_bad IN SELECT m.ord, m.msg, h.hdr
                       FROM unnest(messages) WITH ORDINALITY AS m(msg, ord)
                       LEFT JOIN unnest(headers) WITH ORDINALITY AS h(hdr, ord) USING (ord)
                      ORDER BY m.ord LOOP
            PERFORM pgflow._check_contract(q, v_bad.msg, v_bad.hdr, v_bad.ord::integer);
        END LOOP;
    END IF;
    PERFORM pgflow._announce(q.queue_id, q.queue_name, q.notify);
    -- Ids are drawn in input order (ORDER BY ord before nextval), then returned in that order.
    WITH input AS (
        SELECT m.msg, h.hdr, m.ord
          FROM unnest(messages) WITH ORDINALITY AS m(msg, ord)
          LEFT JOIN unnest(headers) WITH ORDINALITY AS h(hdr, ord) USING (ord)
         ORDER BY m.ord
    ), numbered AS (
        SELECT nextval(q.msg_seq) AS id, i.* FROM input i
    ), inserted AS (
        INSERT INTO pgflow.message (queue_id, msg_id, enqueued_at, vt, priority, state,
                                    message, headers)
        SELECT q.queue_id, n.id, v_now, v_now + delay, v_priority,
               CASE WHEN delay > interval '0' THEN 'd' ELSE 'r' END, n.msg, n.hdr
          FROM numbered n
        RETURNING msg_id
    )
    SELECT array_agg(n.id ORDER BY n.ord) INTO v_ids FROM numbered n;
    -- One note for the whole batch, for the claim cursor (its lowest key: every message has
    -- the same priority) or the due time (the same for all); see src/ipc/cursor.rs.
    IF cardinality(v_ids) > 0 THEN
        IF delay > interval '0' THEN
            PERFORM pgflow._due_at(q.queue_id, q.msg_seq::oid, v_now + delay);
        ELSE
            PERFORM pgflow._ready(q.queue_id, q.msg_seq::oid, v_priority, v_ids[1]);
        END IF;
    END IF;
    RETURN QUERY SELECT unnest(v_ids);
END $function$;

CREATE OR REPLACE FUNCTION pgflow.set_contract(queue_name text, contract jsonb, version text DEFAULT '1'::text, make_default boolean DEFAULT true)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
BEGIN
    PERFORM pgflow._check_contract_schema(contract::text);
    PERFORM pgflow._require(version, 'version');
    PERFORM pgflow._require(make_default, 'make_default');
    IF version !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$' THEN
        RAISE EXCEPTION 'invalid contract version "%": 1 to 64 of A-Z a-z 0-9 _ . -', version
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO pgflow.contract AS c (queue_id, version, schema)
    VALUES (q.queue_id, set_contract.version, contract)
    ON CONFLICT ON CONSTRAINT contract_pkey
    DO UPDATE SET schema = EXCLUDED.schema, created_at = now(),
                  revision = nextval('pgflow.contract_revision');
    IF make_default OR q.contract_version IS NULL THEN
        UPDATE pgflow.queue u SET contract_version = set_contract.version WHERE u.queue_id = q.queue_id;
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.set_vt(queue_name text, msg_id bigint, vt interval, receipt bigint DEFAULT NULL::bigint)
 RETURNS SETOF pgflow.message_record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET enable_seqscan TO 'off'
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'consume');
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM pgflow._require(set_vt.msg_id, 'msg_id');
    PERFORM pgflow._check_interval(set_vt.vt, 'vt', true);
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    IF set_vt.receipt IS NOT NULL THEN
        PERFORM pgflow._check_receipt(q, set_vt.msg_id, set_vt.receipt, leased => true);
    END IF;
    RETURN QUERY
    UPDATE pgflow.message m
       SET vt = v_now + set_vt.vt,
           -- vt 0 hands the message back at once, without counting a failure (SQS's
           -- ChangeMessageVisibility 0); a positive vt renews a lease or schedules delivery.
           -- A message waiting behind its group keeps waiting; vt applies once it is its turn.
           state = CASE WHEN m.state = 'g' THEN 'g'
                        WHEN set_vt.vt = interval '0' THEN 'r'
                        WHEN m.state = 'l' THEN 'l'
                        ELSE 'd' END
     WHERE m.queue_id = q.queue_id AND m.msg_id = set_vt.msg_id
    RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, m.headers,
              pgflow._receipt(m.enqueued_at, m.read_ct);
    IF set_vt.vt = interval '0' THEN
        PERFORM pgflow._ready(q.queue_id, q.msg_seq::oid, m.priority, m.msg_id)
           FROM pgflow.message m
          WHERE m.queue_id = q.queue_id AND m.msg_id = set_vt.msg_id AND m.state = 'r';
        PERFORM pgflow._announce(q.queue_id, q.queue_name, q.notify);
    ELSE
        PERFORM pgflow._due_at(q.queue_id, q.msg_seq::oid, v_now + set_vt.vt);
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.stats_reset(queue_name text DEFAULT NULL::text)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue;
BEGIN
    IF queue_name IS NULL THEN
        IF pgflow._caller_class(writes => true) < 2 THEN
            RAISE EXCEPTION 'permission denied to reset the statistics of every queue'
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Name a queue you administer, or be a member of pgflow_admin.';
        END IF;
        PERFORM pgflow._stats_reset(NULL);
        RETURN (SELECT count(*) FROM pgflow.queue);
    END IF;
    q := pgflow._queue(queue_name, 'admin');
    PERFORM pgflow._stats_reset(q.queue_id);
    RETURN 1;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.unbind(pattern text, queue_name text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
BEGIN
    PERFORM pgflow._require(pattern, 'pattern');
    DELETE FROM pgflow.binding b WHERE b.pattern = unbind.pattern AND b.queue_id = q.queue_id;
    RETURN FOUND;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._alert_values(p_now timestamp with time zone)
 RETURNS TABLE(queue_id integer, queue_name text, alert text, value double precision, threshold double precision)
 LANGUAGE sql
 SET jit TO 'off'
AS $function$
    SELECT q.queue_id, q.queue_name, a.alert, a.value, a.threshold
      FROM pgflow.queue q
      LEFT JOIN LATERAL (SELECT * FROM pgflow._stats(q.queue_id) s WHERE s.valid) st ON true
      CROSS JOIN LATERAL (
        SELECT 'dlq' AS alert,
               coalesce(st.dead, (SELECT count(*) FROM pgflow.dead d WHERE d.queue_id = q.queue_id))::float8 AS value,
               q.alert_dlq::float8 AS threshold
         WHERE q.alert_dlq IS NOT NULL
        UNION ALL
        SELECT 'depth',
               coalesce(st.ready, (SELECT count(*) FROM pgflow.message m
                                    WHERE m.queue_id = q.queue_id AND m.state = 'r'))::float8,
               q.alert_depth::float8
         WHERE q.alert_depth IS NOT NULL
        UNION ALL
        SELECT 'age',
               coalesce(extract(epoch FROM p_now - (SELECT m.enqueued_at FROM pgflow.message m
                                                     WHERE m.queue_id = q.queue_id AND m.state = 'r'
                                                     ORDER BY m.msg_id LIMIT 1))::float8, 0),
               extract(epoch FROM q.alert_age)::float8
         WHERE q.alert_age IS NOT NULL
      ) a
     WHERE q.alert_dlq IS NOT NULL OR q.alert_age IS NOT NULL OR q.alert_depth IS NOT NULL;
$function$;

CREATE OR REPLACE FUNCTION pgflow._fail(q pgflow.queue, ids bigint[], err text, retry_after interval, p_now timestamp with time zone, dead_reason text)
 RETURNS SETOF pgflow.nack_result
 LANGUAGE sql
AS $function$
    WITH target AS (
        SELECT m.msg_id, m.read_ct, m.errors
          FROM pgflow.message m
         WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (ids) AND m.state = 'l'
           -- The ids' span bounds the walk whatever the plan (sql/internal.sql, "Id spans").
           AND m.msg_id BETWEEN (SELECT min(i) FROM unnest(ids) i) AND (SELECT max(i) FROM unnest(ids) i)
           FOR UPDATE
    ), noted AS (
        SELECT t.msg_id, t.read_ct, t.read_ct > q.max_retries AS dead,
               -- Keep the first error and the last 19.
               (SELECT CASE WHEN jsonb_array_length(e) > 20
                            THEN jsonb_build_array(e -> 0) || jsonb_path_query_array(e, '$[last - 18 to last]')
                            ELSE e END
                  FROM (SELECT coalesce(t.errors, '[]'::jsonb)
                               || jsonb_build_array(jsonb_build_object(
                                      'at', p_now, 'attempt', t.read_ct, 'error', coalesce(err, '')))) AS x(e)
               ) AS errors
          FROM target t
    ), died AS (
        DELETE FROM pgflow.message m
         USING noted n
         -- msg_id = ANY (ids) and the span keep both key columns in the index condition
         -- whatever the plan (see read in consume.sql).
         WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (ids) AND m.msg_id = n.msg_id AND n.dead
           AND m.msg_id BETWEEN (SELECT min(t.msg_id) FROM target t) AND (SELECT max(t.msg_id) FROM target t)
        RETURNING m.*, n.errors AS all_errors
    ), buried AS (
        INSERT INTO pgflow.dead (queue_id, read_ct, msg_id, enqueued_at, died_at, priority, reason,
                                 errors, message, headers, group_key)
        SELECT d.queue_id, d.read_ct, d.msg_id, d.enqueued_at, p_now, d.priority,
               dead_reason || ' after ' || d.read_ct || ' deliveries (max_retries ' || q.max_retries || ')',
               d.all_errors, d.message, d.headers, d.group_key
          FROM died d
        RETURNING dead.msg_id
    ), retried AS (
        UPDATE pgflow.message m
           SET state = 'd',
               vt = p_now + coalesce(retry_after, pgflow._retry_interval(q, n.read_ct, random())),
               errors = n.errors
          FROM noted n
         WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (ids) AND m.msg_id = n.msg_id AND NOT n.dead
           AND m.msg_id BETWEEN (SELECT min(t.msg_id) FROM target t) AND (SELECT max(t.msg_id) FROM target t)
        RETURNING m.msg_id, m.read_ct, m.vt
    )
    SELECT r.msg_id, 'retry', r.read_ct, r.vt FROM retried r
     WHERE pgflow._due_at(q.queue_id, q.msg_seq::oid, r.vt)
    UNION ALL
    SELECT d.msg_id, 'dead', d.read_ct, NULL::timestamptz FROM died d
     WHERE d.msg_id IN (SELECT b.msg_id FROM buried b);
$function$;

CREATE OR REPLACE FUNCTION pgflow._metrics(p_queue_id integer, p_now timestamp with time zone, p_exact boolean)
 RETURNS SETOF pgflow.queue_metrics
 LANGUAGE sql
AS $function$
    SELECT q.queue_name,
           coalesce(st.ready + st.delayed + st.in_flight + st.waiting, s.length, 0),
           coalesce(st.ready, s.visible, 0),
           coalesce(st.in_flight, s.in_flight, 0),
           coalesce(st.delayed, s.delayed, 0),
           extract(epoch FROM p_now - coalesce(s.oldest, o.oldest))::double precision,
           extract(epoch FROM p_now - coalesce(s.newest, o.newest))::double precision,
           coalesce(pg_catalog.pg_sequence_last_value(q.msg_seq), 0),
           coalesce(pg_catalog.pg_sequence_last_value(q.archived_seq), 0),
           coalesce(st.archived_rows, (SELECT count(*) FROM pgflow.archive a WHERE a.queue_id = q.queue_id)),
           coalesce(st.dead, (SELECT count(*) FROM pgflow.dead d WHERE d.queue_id = q.queue_id)),
           p_now,
           coalesce(st.waiting, s.waiting, 0),
           extract(epoch FROM p_now - h.since)::double precision,
           h.holder || coalesce(' ' || h.pid, '') || ': ' || h.detail,
           st.ready IS NULL,
           c.sent, c.delivered, c.archived, c.deleted, c.nacked, c.expired, c.dead_lettered,
           c.redriven, c.wait_p50, c.wait_p99, c.end_to_end_p50, c.end_to_end_p99, c.reset_at,
           c.processing_p50, c.processing_p99,
           extract(epoch FROM p_now - coalesce(s.oldest_ready, st.oldest_ready_at))::double precision
      FROM pgflow.queue q
      -- The oldest holder of the horizon, looked up once for all queues.
      LEFT JOIN (SELECT * FROM pgflow.horizon() LIMIT 1) h ON true
      LEFT JOIN LATERAL (SELECT * FROM pgflow._stats(q.queue_id)) c ON true
      -- The gauges, when they are exact and wanted.
      LEFT JOIN LATERAL (SELECT c.ready, c.delayed, c.in_flight, c.waiting, c.dead, c.archived_rows,
                                c.oldest_ready_at
                          WHERE c.valid AND NOT p_exact) st ON true
      -- Otherwise the rows, counted (the WHERE on st is a one-time filter: no scan when the
      -- gauges are used).
      LEFT JOIN LATERAL (
        SELECT count(*) AS length,
               count(*) FILTER (WHERE m.state = 'r' OR (m.state = 'd' AND m.vt <= p_now)) AS visible,
               -- A lease that ran out stays in flight until the retry policy has run on it.
               count(*) FILTER (WHERE m.state = 'l') AS in_flight,
               count(*) FILTER (WHERE m.state = 'd' AND m.vt > p_now) AS delayed,
               count(*) FILTER (WHERE m.state = 'g') AS waiting,
               min(m.enqueued_at) AS oldest,
               max(m.enqueued_at) AS newest,
               min(m.enqueued_at) FILTER (WHERE m.state = 'r') AS oldest_ready
          FROM pgflow.message m
         WHERE m.queue_id = q.queue_id AND st.ready IS NULL
      ) s ON true
      -- With the gauges: the oldest and newest live message by id, one index probe each.
      LEFT JOIN LATERAL (
        SELECT (SELECT m.enqueued_at FROM pgflow.message m WHERE m.queue_id = q.queue_id
                 ORDER BY m.msg_id LIMIT 1) AS oldest,
               (SELECT m.enqueued_at FROM pgflow.message m WHERE m.queue_id = q.queue_id
                 ORDER BY m.msg_id DESC LIMIT 1) AS newest
         WHERE st.ready IS NOT NULL
      ) o ON true
     -- Every queue the caller sees (metrics_all), or the one metrics checked.
     WHERE (p_queue_id IS NULL AND pgflow._visible(q.queue_id)) OR q.queue_id = p_queue_id
     ORDER BY q.queue_name;
$function$;

CREATE OR REPLACE FUNCTION pgflow._next_due(p_queue_id integer)
 RETURNS timestamp with time zone
 LANGUAGE sql
 STABLE
AS $function$
    SELECT min(x.vt)
      FROM (SELECT min(m.vt) AS vt FROM pgflow.message m
             WHERE m.queue_id = p_queue_id AND m.state = 'd'
            UNION ALL
            SELECT min(m.vt) FROM pgflow.message m
             WHERE m.queue_id = p_queue_id AND m.state = 'l') x;
$function$;

CREATE OR REPLACE FUNCTION pgflow._oldest_ready(p_queue_id integer, p_from integer, p_from_id bigint)
 RETURNS timestamp with time zone
 LANGUAGE sql
 STABLE
 SET enable_seqscan TO 'off'
AS $function$
    WITH RECURSIVE heads AS (
        (SELECT -(m.priority::integer) AS k, m.enqueued_at
           FROM pgflow.message m
          WHERE m.queue_id = p_queue_id AND m.state = 'r'
            AND (-(m.priority::integer), m.msg_id)
                > (coalesce(-p_from, -2147483648), coalesce(p_from_id, -9223372036854775808))
          ORDER BY -(m.priority::integer), m.msg_id
          LIMIT 1)
        UNION ALL
        SELECT n.k, n.enqueued_at
          FROM heads h
          CROSS JOIN LATERAL (SELECT -(m.priority::integer) AS k, m.enqueued_at
                                FROM pgflow.message m
                               WHERE m.queue_id = p_queue_id AND m.state = 'r'
                                 AND -(m.priority::integer) > h.k
                               ORDER BY -(m.priority::integer), m.msg_id
                               LIMIT 1) n
    )
    SELECT min(h.enqueued_at) FROM heads h;
$function$;

CREATE OR REPLACE FUNCTION pgflow.alerts()
 RETURNS TABLE(queue_name text, alert text, since timestamp with time zone, value double precision, threshold double precision)
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
    SELECT q.queue_name, a.alert, a.since, v.value, a.threshold
      FROM pgflow.alert a
      JOIN pgflow.queue q ON q.queue_id = a.queue_id
      LEFT JOIN pgflow._alert_values(clock_timestamp()) v
             ON v.queue_id = a.queue_id AND v.alert = a.alert
     WHERE pgflow._visible(q.queue_id)
     ORDER BY a.since, q.queue_name, a.alert;
$function$;

CREATE OR REPLACE FUNCTION pgflow.cursor_status()
 RETURNS TABLE(queue_name text, mark_priority integer, mark_msg_id bigint, due timestamp with time zone, events bigint, frozen boolean)
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
    SELECT q.queue_name, c.mark_priority, c.mark_msg_id, c.due, c.events, c.frozen
      FROM pgflow._cursor_status() c
      JOIN pgflow.queue q ON q.queue_id = c.queue_id AND q.msg_seq::oid = c.seq
     ORDER BY q.queue_name;
$function$;

CREATE OR REPLACE FUNCTION pgflow.horizon()
 RETURNS SETOF pgflow.horizon_holder
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
    SELECT h.* FROM (
        SELECT CASE WHEN a.backend_type = 'walsender' THEN 'standby' ELSE 'backend' END,
               a.pid,
               greatest(pg_catalog.age(a.backend_xmin), pg_catalog.age(a.backend_xid)),
               a.xact_start,
               -- The query's start only for pg_monitor and pgflow_admin: metrics() shows
               -- this to every role that sees the queue.
               pg_catalog.concat_ws(' ', a.usename, '(' || a.state || ')',
                                    CASE WHEN pgflow._caller_class() > 0
                                         THEN pg_catalog.left(a.query, 80) END)
          FROM pg_catalog.pg_stat_activity a
         WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
           AND a.pid <> pg_catalog.pg_backend_pid()
           AND (a.datname = pg_catalog.current_database() OR a.backend_type = 'walsender')
        UNION ALL
        SELECT 'replication slot', s.active_pid, pg_catalog.age(s.xmin), NULL::timestamptz,
               s.slot_name || ' (' || s.slot_type || CASE WHEN s.active THEN ', active)'
                                                     ELSE ', inactive)' END
          FROM pg_catalog.pg_replication_slots s
         WHERE s.xmin IS NOT NULL
        UNION ALL
        SELECT 'prepared transaction', NULL::integer, pg_catalog.age(p.transaction), p.prepared,
               p.gid || ' (' || p.owner || ')'
          FROM pg_catalog.pg_prepared_xacts p
         WHERE p.database = pg_catalog.current_database()
    ) AS h(holder, pid, xmin_age, since, detail)
     ORDER BY h.xmin_age DESC, h.since;
$function$;

CREATE OR REPLACE FUNCTION pgflow.list_bindings()
 RETURNS TABLE(pattern text, queue_name text, created_at timestamp with time zone)
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
    SELECT b.pattern, q.queue_name, b.created_at
      FROM pgflow.binding b JOIN pgflow.queue q USING (queue_id)
     WHERE pgflow._visible(q.queue_id)
     ORDER BY b.pattern, q.queue_name;
$function$;

CREATE OR REPLACE FUNCTION pgflow.list_queues()
 RETURNS SETOF pgflow.queue_info
 LANGUAGE sql
 STABLE PARALLEL SAFE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
    SELECT q.queue_name, q.visibility_timeout, q.max_retries, q.retry_delay, q.retry_backoff,
           q.retry_delay_max, q.retry_jitter, q.archive_retention, q.created_at,
           q.default_priority, q.dedup_window, q.notify, q.contract_version,
           q.alert_dlq, q.alert_age, q.alert_depth, q.session_leases
      FROM pgflow.queue q
     WHERE pgflow._visible(q.queue_id)
     ORDER BY q.queue_name;
$function$;

CREATE OR REPLACE FUNCTION pgflow.metrics_all(exact boolean DEFAULT false)
 RETURNS SETOF pgflow.queue_metrics
 LANGUAGE sql
 SECURITY DEFINER
 SET jit TO 'off'
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
    SELECT * FROM pgflow._metrics(NULL, clock_timestamp(), coalesce(exact, false));
$function$;

CREATE OR REPLACE FUNCTION pgflow.metrics_text()
 RETURNS text
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
    SELECT pgflow._metrics_text(ARRAY(SELECT q.queue_id FROM pgflow.queue q
                                       WHERE pgflow._visible(q.queue_id)),
                                h.age, h.xmin_age)
      FROM (SELECT NULL::float8 AS age, NULL::integer AS xmin_age) n
      LEFT JOIN LATERAL (SELECT coalesce(extract(epoch FROM clock_timestamp() - x.since)::float8, 0) AS age,
                                x.xmin_age
                           FROM pgflow.horizon() x LIMIT 1) h ON true;
$function$;

CREATE OR REPLACE FUNCTION pgflow.expire_leases(now timestamp with time zone DEFAULT NULL::timestamp with time zone, batch integer DEFAULT 1000)
 RETURNS bigint
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
BEGIN ATOMIC
 SELECT pgflow._each_queue('expire_leases'::text, COALESCE(now, clock_timestamp()), batch) AS _each_queue;
END;

CREATE OR REPLACE FUNCTION pgflow.promote_delayed(now timestamp with time zone DEFAULT NULL::timestamp with time zone, batch integer DEFAULT 1000)
 RETURNS bigint
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
BEGIN ATOMIC
 SELECT pgflow._each_queue('promote_delayed'::text, COALESCE(now, clock_timestamp()), batch) AS _each_queue;
END;

CREATE OR REPLACE FUNCTION pgflow.prune_archive(now timestamp with time zone DEFAULT NULL::timestamp with time zone, batch integer DEFAULT 10000)
 RETURNS bigint
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
BEGIN ATOMIC
 SELECT pgflow._each_queue('prune_archive'::text, COALESCE(now, clock_timestamp()), batch) AS _each_queue;
END;

CREATE OR REPLACE FUNCTION pgflow.prune_dedup(now timestamp with time zone DEFAULT NULL::timestamp with time zone, batch integer DEFAULT 10000)
 RETURNS bigint
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
BEGIN ATOMIC
 SELECT pgflow._each_queue('prune_dedup'::text, COALESCE(now, clock_timestamp()), batch) AS _each_queue;
END;


-- Indexes that changed.
DROP INDEX pgflow.message_ready;
CREATE INDEX message_ready ON pgflow.message USING btree (queue_id, ((- (priority)::integer)), msg_id) WHERE (state = 'r'::"char");

-- Constraints that changed.
ALTER TABLE pgflow.message DROP CONSTRAINT message_errors_check;
ALTER TABLE pgflow.message DROP CONSTRAINT message_headers_check;
ALTER TABLE pgflow.message DROP CONSTRAINT message_message_check;
ALTER TABLE pgflow.message DROP CONSTRAINT message_read_ct_check;
ALTER TABLE pgflow.message DROP CONSTRAINT message_state_check;
ALTER TABLE pgflow.queue ADD CONSTRAINT queue_alert_age_check CHECK (((alert_age > '00:00:00'::interval) AND (alert_age <= '100 years'::interval)));
ALTER TABLE pgflow.queue ADD CONSTRAINT queue_alert_depth_check CHECK ((alert_depth >= 0));
ALTER TABLE pgflow.queue ADD CONSTRAINT queue_alert_dlq_check CHECK ((alert_dlq >= 0));

-- Triggers that changed.
CREATE TRIGGER archive_stats BEFORE INSERT OR DELETE ON pgflow.archive FOR EACH ROW EXECUTE FUNCTION pgflow._stats_note('archive');
CREATE TRIGGER dead_stats BEFORE INSERT OR DELETE ON pgflow.dead FOR EACH ROW EXECUTE FUNCTION pgflow._stats_note('dead');
CREATE TRIGGER message_stats BEFORE INSERT OR DELETE OR UPDATE ON pgflow.message FOR EACH ROW EXECUTE FUNCTION pgflow._stats_note('message');

-- Hand-written steps (scripts/upgrade-steps/0.1.0--0.2.0.sql, appended by upgrade.sh --generate).
-- 0.2.0 limits every interval to 100 years (docs/api.md, "Limits"). 0.1.0 accepted any, and a
-- queue set beyond that stopped maintenance for its whole database: such settings come down to
-- the limit, so that every queue's can be applied.
UPDATE pgflow.queue
   SET visibility_timeout = least(visibility_timeout, interval '100 years'),
       retry_delay        = least(retry_delay, interval '100 years'),
       retry_delay_max    = least(retry_delay_max, interval '100 years'),
       archive_retention  = least(archive_retention, interval '100 years'),
       dedup_window       = least(dedup_window, interval '100 years')
 WHERE greatest(visibility_timeout, retry_delay, retry_delay_max, archive_retention,
                dedup_window) > interval '100 years';

-- sql/finalize.sql, as at the end of the install script.
-------------------------------------------------------------------------------------------------
-- search_path: every function that code outside pgflow can enter pins it (pg_catalog, pgflow,
-- pg_temp), so that no caller's path (a session's, a database default's, the worker's) can put
-- another schema's function or operator in front of pg_catalog's. An exact-type function
-- planted in public beats pg_catalog's VARIADIC "any" one, whatever the path's order: the only
-- defence is public not being on the path at all (docs/design.md, "search_path"). Those are the
-- user-facing functions and the trigger function. The internal `_` functions run only inside
-- them, under the path they pinned: no role but pgflow_owner may execute one (the grants
-- below). They have no SET clause of their own because a nested one costs every call a save
-- and restore of the setting: on 15, a send's backend CPU grew 7% with every SQL and PL/pgSQL
-- function pinned, 15% with the C functions too, and 1% with the entry points alone
-- (docs/design.md). The regression test `hardening` checks both halves and plants the shadows.
--
-- The statements are built from catalog identities (regprocedure prints a qualified, quoted
-- signature), never from a user's string.
-------------------------------------------------------------------------------------------------
DO $pin$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'pgflow'::regnamespace
                -- A trigger written in C runs no SQL: nothing to pin (and no SET to pay per row).
                AND (p.proname NOT LIKE '\_%' OR (p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype
                                                   AND p.prolang <> (SELECT l.oid FROM pg_catalog.pg_language l
                                                                      WHERE l.lanname = 'c')))
              ORDER BY p.oid LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pgflow, pg_temp', f);
    END LOOP;
END
$pin$;

-------------------------------------------------------------------------------------------------
-- Roles and ownership (docs/operations.md, "Roles and grants"). Four NOLOGIN roles, created
-- when missing (roles belong to the cluster: a second database's install finds them, and
-- DROP EXTENSION leaves them):
--   pgflow_owner     owns every pgflow object and nothing else, and is no superuser. The
--                    user-facing functions are SECURITY DEFINER, so they run as this role;
--                    so do the worker's rounds. It may read every backend's statistics
--                    (pg_read_all_stats), for horizon().
--   pgflow_producer  may call the producing functions; pgflow_consumer the consuming ones;
--                    both the read-only ones. Which queues: their per-queue grants
--                    (pgflow.grant).
--   pgflow_admin     may call every user-facing function, on every queue.
-- PUBLIC may call nothing and reaches no table. pg_monitor may call the observing functions
-- and sees every queue's figures. This block is also the last step of every upgrade script
-- (tests/upgrade/upgrade.sh appends it), so an upgraded install ends exactly like a fresh one;
-- it may run again.
-------------------------------------------------------------------------------------------------
DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['pgflow_owner', 'pgflow_producer', 'pgflow_consumer', 'pgflow_admin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                    WHERE m.roleid = 'pg_read_all_stats'::regrole AND m.member = 'pgflow_owner'::regrole) THEN
        GRANT pg_read_all_stats TO pgflow_owner;
    END IF;
END
$roles$;

DO $own$
DECLARE
    o record;
BEGIN
    ALTER SCHEMA pgflow OWNER TO pgflow_owner;
    -- Tables carry their indexes and the sequences they own; then the other sequences
    -- (per-queue ones included), the composite types and the functions.
    FOR o IN SELECT c.oid::regclass AS rel, c.relkind
               FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'pgflow'::regnamespace AND c.relkind IN ('r', 'S')
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                 WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                                   AND d.deptype IN ('a', 'i'))
              ORDER BY c.relkind, c.oid LOOP
        EXECUTE pg_catalog.format(CASE o.relkind WHEN 'r' THEN 'ALTER TABLE %s OWNER TO pgflow_owner'
                                                 ELSE 'ALTER SEQUENCE %s OWNER TO pgflow_owner' END, o.rel);
    END LOOP;
    FOR o IN SELECT t.oid::regtype AS typ
               FROM pg_catalog.pg_type t JOIN pg_catalog.pg_class c ON c.oid = t.typrelid
              WHERE t.typnamespace = 'pgflow'::regnamespace AND c.relkind = 'c'
              ORDER BY t.oid LOOP
        EXECUTE pg_catalog.format('ALTER TYPE %s OWNER TO pgflow_owner', o.typ);
    END LOOP;
    FOR o IN SELECT p.oid::regprocedure AS fn, p.proname
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'pgflow'::regnamespace
              ORDER BY p.oid LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO pgflow_owner', o.fn);
        -- Every user-facing function but worker_status (which reads shared memory and checks
        -- the caller itself) runs as the owner; the internal ones run as their caller, which
        -- is then the owner.
        EXECUTE pg_catalog.format(CASE WHEN o.proname LIKE '\_%' OR o.proname = 'worker_status'
                                       THEN 'ALTER FUNCTION %s SECURITY INVOKER'
                                       ELSE 'ALTER FUNCTION %s SECURITY DEFINER' END, o.fn);
    END LOOP;
END
$own$;

REVOKE ALL ON SCHEMA pgflow FROM PUBLIC;
GRANT USAGE ON SCHEMA pgflow TO pgflow_producer, pgflow_consumer, pgflow_admin, pg_monitor;
REVOKE ALL ON ALL TABLES IN SCHEMA pgflow FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA pgflow FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA pgflow FROM PUBLIC;

DO $grants$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT p.oid::regprocedure AS fn, r.role
               FROM pg_catalog.pg_proc p
               JOIN (VALUES
                   ('pgflow_producer', ARRAY['send', 'send_batch', 'publish']),
                   ('pgflow_consumer', ARRAY['read', 'pop', 'archive', 'archive_read', 'delete',
                                             'set_vt', 'nack', 'list_pending']),
                   ('pgflow_producer', ARRAY['list_queues', 'metrics', 'metrics_all', 'metrics_text', 'list_contracts',
                                             'list_bindings', 'retry_schedule', 'worker_status']),
                   ('pgflow_consumer', ARRAY['list_queues', 'metrics', 'metrics_all', 'metrics_text', 'list_contracts',
                                             'list_bindings', 'retry_schedule', 'worker_status']),
                   ('pg_monitor', ARRAY['list_queues', 'metrics', 'metrics_all', 'metrics_text', 'list_bindings',
                                        'worker_status', 'horizon', 'cursor_status']))
                 AS r(role, names) ON p.proname = ANY (r.names)
              WHERE p.pronamespace = 'pgflow'::regnamespace
             UNION ALL
             SELECT p.oid::regprocedure, 'pgflow_admin'
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'pgflow'::regnamespace AND p.proname NOT LIKE '\_%'
              ORDER BY 1, 2 LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', g.fn, g.role);
    END LOOP;
END
$grants$;

-------------------------------------------------------------------------------------------------
-- Last: ask the launcher for this database's worker once CREATE EXTENSION commits (a no-op
-- when pgflow is not in shared_preload_libraries).
-------------------------------------------------------------------------------------------------
SELECT pgflow._worker_wake();

-- The body of sql/pgflow--0.2.0--0.3.0.sql.

-- sql/guard.sql, as at the start of the install script.
-- guard: the first statement of the install script and of every upgrade script (issue #34).
-- It refuses to go on where running the rest could be hijacked or silently go wrong:
--
--  * standard_conforming_strings off (a database owner can set it with ALTER DATABASE): the
--    whole script is lexed before it runs, so backslashes in its strings would mean other
--    things (a LIKE '\_%' that matches every name, for one). Nothing in a script can switch it
--    back for itself, so the guard refuses and says how to run it.
--  * schema pgflow owned by anyone but the installing role or pgflow_owner (a schema made
--    before the install by a database owner): its owner could plant an operator or function
--    there that the script's own statements resolve to, and it would run as a superuser.
--  * an object in schema pgflow, or a trigger on one of its tables, owned by a role that is
--    neither a superuser nor pgflow_owner: planted by whoever had CREATE on the schema (0.1.0
--    told its users to grant it). An operator =(oid, regnamespace) placed there beats
--    pg_catalog's =(oid, oid) for every `x = 'pgflow'::regnamespace`, whatever the path's order.
--  * on a fresh install, any object already in schema pgflow except the per-queue sequences
--    an earlier DROP EXTENSION leaves: pgflow needs a schema of its own (another tool's schema
--    of the same name would be adopted and mixed with pgflow's objects).
--  * a privilege on the schema for anyone but its owner, on a fresh install (an upgrade takes
--    them back instead: scripts/upgrade-steps/0.2.0--0.3.0.pre.sql).
--  * role pgflow_owner, if it exists, able to log in or with members: whoever can act as it
--    would own every pgflow object.
--
-- Every operator and function below is named with its schema, and nothing is cast to a type
-- that schema pgflow could hold: during CREATE EXTENSION and ALTER EXTENSION UPDATE the
-- search_path is schema pgflow, which the guard has not yet judged. No string here holds a
-- backslash, so it reads the same whatever standard_conforming_strings says.
DO $guard$
DECLARE
    v_nsp   pg_catalog.oid;
    v_owner pg_catalog.text;
    v_ext   pg_catalog.oid;
    v_fresh boolean;
    v_what  pg_catalog.text;
    v_who   pg_catalog.text;
BEGIN
    IF pg_catalog.current_setting('standard_conforming_strings') OPERATOR(pg_catalog.<>) 'on' THEN
        RAISE EXCEPTION 'pgflow''s install and upgrade scripts need standard_conforming_strings = on'
            USING ERRCODE = '55000',
                  DETAIL = 'It is off in this session (a database or role default set with ALTER DATABASE or ALTER ROLE): the script''s string literals would be read differently.',
                  HINT = 'Run SET standard_conforming_strings = on; in the same session, then CREATE EXTENSION or ALTER EXTENSION again.';
    END IF;

    SELECT n.oid, pg_catalog.pg_get_userbyid(n.nspowner)::pg_catalog.text INTO v_nsp, v_owner
      FROM pg_catalog.pg_namespace n
     WHERE n.nspname OPERATOR(pg_catalog.=) 'pgflow'::pg_catalog.name;
    SELECT e.oid INTO v_ext
      FROM pg_catalog.pg_extension e
     WHERE e.extname OPERATOR(pg_catalog.=) 'pgflow'::pg_catalog.name;
    v_fresh := NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_depend d
         WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
           AND d.refobjid OPERATOR(pg_catalog.=) v_ext
           AND d.deptype OPERATOR(pg_catalog.=) 'e'::pg_catalog."char");

    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                WHERE r.rolname OPERATOR(pg_catalog.=) 'pgflow_owner'::pg_catalog.name
                  AND (r.rolcanlogin OR r.rolsuper
                       OR EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                                   WHERE m.roleid OPERATOR(pg_catalog.=) r.oid))) THEN
        RAISE EXCEPTION 'role pgflow_owner can log in, is a superuser or has members'
            USING ERRCODE = '42501',
                  DETAIL = 'pgflow_owner owns every pgflow object and runs its functions: whoever can act as it could change them.',
                  HINT = 'ALTER ROLE pgflow_owner NOLOGIN NOSUPERUSER, and REVOKE pgflow_owner FROM each of its members; or DROP ROLE pgflow_owner if no database uses pgflow yet.';
    END IF;

    IF v_nsp IS NULL THEN
        RETURN;  -- nothing there yet (an upgrade always has it)
    END IF;
    IF v_owner OPERATOR(pg_catalog.<>) CURRENT_USER::pg_catalog.text
       AND v_owner OPERATOR(pg_catalog.<>) 'pgflow_owner' THEN
        RAISE EXCEPTION 'schema pgflow belongs to role %, not to pgflow', v_owner
            USING ERRCODE = '42501',
                  DETAIL = 'CREATE EXTENSION pgflow creates schema pgflow and gives it to pgflow_owner; a schema made before by another role could hold objects that the install would run as a superuser.',
                  HINT = 'Look at what it holds, then DROP SCHEMA pgflow (or rename it) and run CREATE EXTENSION pgflow again.';
    END IF;

    -- Objects in the schema (each has a dependency on its schema) and triggers on its tables,
    -- with their owners (pg_shdepend records every owner but the bootstrap superuser).
    SELECT pg_catalog.pg_describe_object(o.classid, o.objid, 0), pg_catalog.pg_get_userbyid(o.owner)::pg_catalog.text
      INTO v_what, v_who
      FROM (SELECT d.classid, d.objid,
                   coalesce((SELECT s.refobjid FROM pg_catalog.pg_shdepend s
                              WHERE s.dbid OPERATOR(pg_catalog.=) (SELECT db.oid FROM pg_catalog.pg_database db
                                                                   WHERE db.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
                                AND s.classid OPERATOR(pg_catalog.=) d.classid
                                AND s.objid OPERATOR(pg_catalog.=) d.objid
                                AND s.deptype OPERATOR(pg_catalog.=) 'o'::pg_catalog."char"
                              LIMIT 1), 10::pg_catalog.oid) AS owner
              FROM pg_catalog.pg_depend d
             WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
               AND d.refobjid OPERATOR(pg_catalog.=) v_nsp
               AND d.classid OPERATOR(pg_catalog.<>) 'pg_catalog.pg_extension'::pg_catalog.regclass
            UNION ALL
            SELECT 'pg_catalog.pg_trigger'::pg_catalog.regclass::pg_catalog.oid, t.oid, p.proowner
              FROM pg_catalog.pg_trigger t
              JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.tgrelid
              JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) t.tgfoid
             WHERE c.relnamespace OPERATOR(pg_catalog.=) v_nsp AND NOT t.tgisinternal) AS o
      JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) o.owner
     WHERE NOT r.rolsuper AND r.rolname OPERATOR(pg_catalog.<>) 'pgflow_owner'::pg_catalog.name
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'schema pgflow holds % of role %', v_what, v_who
            USING ERRCODE = '42501',
                  DETAIL = 'Only pgflow_owner and superusers may own objects in schema pgflow: another role''s function, operator or trigger there would run with pgflow''s rights, or a superuser''s during this script.',
                  HINT = 'Check what it is, drop it (DROP ... CASCADE), then run the command again.';
    END IF;

    IF v_fresh THEN
        SELECT pg_catalog.pg_describe_object(d.classid, d.objid, 0) INTO v_what
          FROM pg_catalog.pg_depend d
          LEFT JOIN pg_catalog.pg_class c
                 ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                AND c.oid OPERATOR(pg_catalog.=) d.objid
         WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
           AND d.refobjid OPERATOR(pg_catalog.=) v_nsp
           AND d.classid OPERATOR(pg_catalog.<>) 'pg_catalog.pg_extension'::pg_catalog.regclass
           -- What an earlier install's DROP EXTENSION leaves: its per-queue sequences.
           AND NOT coalesce(c.relkind OPERATOR(pg_catalog.=) 'S'::pg_catalog."char"
                            AND pg_catalog.textregexeq(c.relname::pg_catalog.text, '^q[0-9]+_(msg|archived)_seq$'), false)
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'schema pgflow already exists and holds % (it is not pgflow''s)', v_what
                USING ERRCODE = '42P06',
                      DETAIL = 'pgflow needs schema pgflow for itself: another tool''s schema of that name would be mixed with pgflow''s objects.',
                      HINT = 'Rename the other schema (ALTER SCHEMA pgflow RENAME TO ...) or drop it, then run CREATE EXTENSION pgflow again.';
        END IF;
        SELECT CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0::pg_catalog.oid THEN 'PUBLIC'
                    ELSE pg_catalog.pg_get_userbyid(a.grantee)::pg_catalog.text END INTO v_who
          FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
         WHERE n.oid OPERATOR(pg_catalog.=) v_nsp
           AND a.grantee OPERATOR(pg_catalog.<>) n.nspowner
           AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'schema pgflow grants CREATE to %', v_who
                USING ERRCODE = '42501',
                      DETAIL = 'A role that may create objects in schema pgflow could plant functions or operators that pgflow''s install would run.',
                      HINT = 'REVOKE CREATE ON SCHEMA pgflow FROM the roles that have it, then run CREATE EXTENSION pgflow again.';
        END IF;
    END IF;
END
$guard$;

-- Hand-written steps (scripts/upgrade-steps/0.2.0--0.3.0.pre.sql, after sql/guard.sql and
-- before the drafted part).
--
-- Every privilege on pgflow's schema and objects that is not the role model's goes (issue #34).
-- 0.1.0 needed its users to hold CREATE on schema pgflow and privileges on its tables, and the
-- update to 0.2.0 kept them: such a role still read every queue's messages and updated
-- pgflow.queue without any pgflow role. Here every grant to anyone but the object's owner is
-- taken back (CASCADE: with what it was passed on to); sql/finalize.sql, at the end of this
-- script, grants the model again. The guard has already refused objects planted by others.
-- The statements are built from catalog identities, never from a user's string.
DO $revoke$
DECLARE
    g record;
BEGIN
    FOR g IN
        SELECT DISTINCT x.kind, x.obj,
               CASE WHEN x.grantee OPERATOR(pg_catalog.=) 0::pg_catalog.oid THEN 'PUBLIC'
                    ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(x.grantee)) END AS who
          FROM (SELECT 'SCHEMA' AS kind, pg_catalog.quote_ident(n.nspname) AS obj, a.grantee, n.nspowner AS owner
                  FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
                 WHERE n.nspname OPERATOR(pg_catalog.=) 'pgflow'::pg_catalog.name
                UNION ALL
                SELECT CASE WHEN c.relkind OPERATOR(pg_catalog.=) 'S'::pg_catalog."char" THEN 'SEQUENCE' ELSE 'TABLE' END,
                       c.oid::pg_catalog.regclass::pg_catalog.text, a.grantee, c.relowner
                  FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
                 WHERE c.relnamespace OPERATOR(pg_catalog.=) 'pgflow'::pg_catalog.regnamespace
                UNION ALL
                -- Column privileges: REVOKE ... ON TABLE takes them too.
                SELECT 'TABLE', c.oid::pg_catalog.regclass::pg_catalog.text, a.grantee, c.relowner
                  FROM pg_catalog.pg_class c
                  JOIN pg_catalog.pg_attribute att ON att.attrelid OPERATOR(pg_catalog.=) c.oid,
                       pg_catalog.aclexplode(att.attacl) a
                 WHERE c.relnamespace OPERATOR(pg_catalog.=) 'pgflow'::pg_catalog.regnamespace
                UNION ALL
                SELECT 'FUNCTION', p.oid::pg_catalog.regprocedure::pg_catalog.text, a.grantee, p.proowner
                  FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
                 WHERE p.pronamespace OPERATOR(pg_catalog.=) 'pgflow'::pg_catalog.regnamespace
                UNION ALL
                SELECT 'TYPE', t.oid::pg_catalog.regtype::pg_catalog.text, a.grantee, t.typowner
                  FROM pg_catalog.pg_type t, pg_catalog.aclexplode(t.typacl) a
                 WHERE t.typnamespace OPERATOR(pg_catalog.=) 'pgflow'::pg_catalog.regnamespace) x
         WHERE x.grantee OPERATOR(pg_catalog.<>) x.owner
         ORDER BY 1, 2, 3
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON %s %s FROM %s CASCADE', g.kind, g.obj, g.who);
    END LOOP;
END
$revoke$;

-- 0.3.0 bounds max_retries at 1000 (retry_schedule() of 2147483647 retries filled the disk).
UPDATE pgflow.queue SET max_retries = 1000 WHERE max_retries > 1000;

-- sql/links_schema.sql, as in the install script.
-- The tables of sites and links (sql/links.sql has the functions and says how it works), and
-- the timeline the ids are past. A file of its own: the update from 0.2.0 creates these tables
-- with it, as the install does.

-- This site's name: what a link at another site calls it, and what the origin headers and
-- the loop check name. One row, set with pgflow.set_site.
CREATE TABLE pgflow.site (
    only_row   boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    site_name  text        NOT NULL
               CONSTRAINT site_name_format CHECK (site_name ~ '^[a-z0-9][a-z0-9_]{0,39}$'),
    set_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pgflow.site IS 'This pgflow site''s name; use pgflow.set_site().';

-- Links to other sites. A link's publication and the replication slot the remote subscribes
-- with are both named pgflow_link_<link_id> (never after link_name).
CREATE TABLE pgflow.link (
    link_id      integer     GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    link_name    text        NOT NULL UNIQUE
                 CONSTRAINT link_name_format CHECK (link_name ~ '^[a-z0-9][a-z0-9_]{0,39}$'),
    remote_site  text        NOT NULL
                 CONSTRAINT remote_site_format CHECK (remote_site ~ '^[a-z0-9][a-z0-9_]{0,39}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Alert threshold (NULL: none): the oldest unforwarded message's age.
    alert_age    interval    CHECK (alert_age > interval '0' AND alert_age <= interval '100 years'),
    -- Messages the remote has confirmed (deleted from the outbox), and when it last did.
    forwarded    bigint      NOT NULL DEFAULT 0,
    confirmed_at timestamptz,
    -- When the worker first saw the link's replication slot (the remote's subscription) at all,
    -- and since when it has seen the current one without a break (NULL: none now). Rows in the
    -- outbox before a slot existed are not in its stream: at the first sight of a slot the
    -- worker inserts them again (see _links_confirm).
    subscribed_at timestamptz,
    slot_seen_at  timestamptz,
    slot_lost_at  timestamptz,
    -- The worker's seal: the snapshot of a round and the WAL insert position read after it.
    -- Every outbox row visible in seal_snap committed before seal_lsn, so once the slot's
    -- confirmed position reaches seal_lsn those rows are at the remote.
    seal_lsn     pg_lsn,
    seal_snap    pg_snapshot,
    -- What the worker last found wrong with the link, as it saw it change (_links_confirm):
    -- since when the link has not been streaming (NULL: it is, or never was), its latest
    -- trouble ('disconnected: ...', 'slot lost: ...', 'wal lost: ...') and when that began. The
    -- trouble stays after the link is back, as its last error.
    down_since    timestamptz,
    last_error    text,
    last_error_at timestamptz
);
COMMENT ON TABLE pgflow.link IS 'pgflow links to other sites; use pgflow.link_create/link_drop/links.';

-- Topic rules: a publish whose topic matches pattern is also sent to remote_queue over the
-- link (every link when link_id is NULL). Forwarding rules of queues are on pgflow.queue.
CREATE TABLE pgflow.link_rule (
    pattern      text        NOT NULL,
    link_id      integer     REFERENCES pgflow.link (link_id),
    remote_queue text        NOT NULL
                 CONSTRAINT link_rule_queue_format CHECK (remote_queue ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (pattern, link_id, remote_queue)
);

-- What waits to be forwarded, and (at the destination, as the replicated table) what
-- arrives. Inserts are published, nothing else: the source deletes what the remote has.
CREATE SEQUENCE pgflow.link_outbox_seq;
CREATE TABLE pgflow.link_outbox (
    link_id      integer     NOT NULL,
    seq          bigint      NOT NULL DEFAULT nextval('pgflow.link_outbox_seq'),
    -- The sending transaction, for the worker's seal (pg_visible_in_snapshot).
    xid          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    sent_at      timestamptz NOT NULL,
    -- {"site", "queue", "id"} of the first send ({"site", "topic", "id"} for a publish).
    origin       jsonb       NOT NULL,
    -- The sites the message has been at, its origin first, the sending site last.
    via          text[]      NOT NULL,
    remote_queue text        NOT NULL,
    message      jsonb       NOT NULL,
    headers      jsonb,
    priority     smallint,
    group_key    text,
    dedup_key    text,
    deliver_at   timestamptz,
    -- Sent again at the first sight of a new slot (see _links_confirm): the remote may have
    -- applied it already under the former one. Arrives with the header pgflow_resent: true.
    resent       boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (link_id, seq)
);
COMMENT ON TABLE pgflow.link_outbox IS 'pgflow messages waiting to be forwarded over a link.';

-- Messages a link brought that this site's target queue refused (an unknown queue, a
-- contract, a loop, ...), with the reason: an error in the apply would stop the whole
-- subscription, so nothing is refused by raising. Redrive with link_refused_retry.
CREATE TABLE pgflow.link_refused (
    refused_id   bigint      GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    refused_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    origin       jsonb       NOT NULL,
    via          text[]      NOT NULL,
    remote_queue text        NOT NULL,
    message      jsonb       NOT NULL,
    headers      jsonb,
    priority     smallint,
    group_key    text,
    dedup_key    text,
    deliver_at   timestamptz,
    sqlstate     text        NOT NULL,
    reason       text        NOT NULL
);
COMMENT ON TABLE pgflow.link_refused IS 'Forwarded messages this site refused, with the reason.';

-- The server timeline whose ids the sequences are past (pgflow._ids_for_timeline): a promoted
-- standby may lack sends its old primary acknowledged, and must never issue their ids again.
-- No row on timeline 1. Not in a dump: a restored database checks again.
CREATE TABLE pgflow.id_timeline (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    timeline integer NOT NULL CHECK (timeline >= 1),
    set_at   timestamptz NOT NULL DEFAULT now()
);

-- A dump keeps them, as it keeps the queues (sql/schema.sql): the outbox holds messages.
SELECT pg_catalog.pg_extension_config_dump('pgflow.site', '');
SELECT pg_catalog.pg_extension_config_dump('pgflow.link', '');
SELECT pg_catalog.pg_extension_config_dump('pgflow.link_rule', '');
SELECT pg_catalog.pg_extension_config_dump('pgflow.link_outbox', '');
SELECT pg_catalog.pg_extension_config_dump('pgflow.link_refused', '');
SELECT pg_catalog.pg_extension_config_dump('pgflow.link_outbox_seq', '');
SELECT pg_catalog.pg_extension_config_dump('pgflow.link_link_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('pgflow.link_refused_refused_id_seq', '');

-- Tables: columns appended (nullable with no default, or NOT NULL with a constant default:
-- no row is rewritten). Their CHECKs come with the constraints below.
ALTER TABLE pgflow.queue ADD COLUMN forward_link integer;
ALTER TABLE pgflow.queue ADD COLUMN forward_to text;
ALTER TABLE pgflow.queue ADD COLUMN ids_skipped bigint not null default 0;
-- Functions 0.2.0 no longer has, or whose arguments or result changed.
DROP FUNCTION pgflow.worker_status();

-- Composite types: new ones, and attributes appended to existing ones.

-- Functions, new or changed (C, PL/pgSQL, SQL, then BEGIN ATOMIC bodies).
CREATE OR REPLACE FUNCTION pgflow._arriving("on" boolean)
 RETURNS void
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_arriving_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._sees_activity_of(role oid)
 RETURNS boolean
 LANGUAGE c
 STABLE PARALLEL SAFE STRICT
AS 'MODULE_PATHNAME', $function$_sees_activity_of_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow._stats_alerts_at(queue_ids integer[], alerts text[], since timestamp with time zone[], "values" double precision[], thresholds double precision[])
 RETURNS void
 LANGUAGE c
 STRICT
AS 'MODULE_PATHNAME', $function$_stats_alerts_at_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow.worker_status()
 RETURNS TABLE(datname text, state text, pid integer, started_at timestamp with time zone, last_tick_at timestamp with time zone, ticks bigint, expired bigint, promoted bigint, pruned bigint, restarts integer, detail text, cursor_entries integer, cursor_free integer, stats_free integer)
 LANGUAGE c
 PARALLEL RESTRICTED STRICT
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS 'MODULE_PATHNAME', $function$worker_status_wrapper$function$;

CREATE OR REPLACE FUNCTION pgflow."grant"(queue_name text, role regrole, privilege text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
BEGIN
    PERFORM pgflow._require(role, 'role');
    -- A regrole given as a number is not checked by the cast (grant(q, 12345, ...)).
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = role) THEN
        RAISE EXCEPTION 'role with oid % does not exist', role::oid
            USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM pgflow._check_privilege(privilege);
    INSERT INTO pgflow.queue_grant (queue_id, grantee, privilege)
    VALUES (q.queue_id, role, privilege)
    ON CONFLICT ON CONSTRAINT queue_grant_pkey DO NOTHING;
    RETURN FOUND;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._alerts_check(p_now timestamp with time zone DEFAULT NULL::timestamp with time zone)
 RETURNS TABLE(started bigint, cleared bigint)
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    v_channel text := coalesce(pg_catalog.current_setting('pgflow.alerts_channel', true), '');
    r record;
BEGIN
    started := 0;
    cleared := 0;
    FOR r IN
        WITH cur AS (
            SELECT * FROM pgflow._alert_values(v_now) v WHERE v.value > v.threshold
        ), ins AS (
            INSERT INTO pgflow.alert AS x (queue_id, alert, since, threshold)
            SELECT c.queue_id, c.alert, v_now, c.threshold FROM cur c
            ON CONFLICT ON CONSTRAINT alert_pkey DO NOTHING
            RETURNING x.queue_id, x.alert, x.since
        ), del AS (
            DELETE FROM pgflow.alert x
             WHERE NOT EXISTS (SELECT 1 FROM cur c WHERE c.queue_id = x.queue_id AND c.alert = x.alert)
            RETURNING x.queue_id, x.alert, x.since, x.threshold
        )
        SELECT 'firing' AS state, c.queue_name, c.alert, c.value, c.threshold, i.since
          FROM ins i JOIN cur c USING (queue_id, alert)
        UNION ALL
        SELECT 'resolved', q.queue_name, d.alert, v.value, d.threshold, d.since
          FROM del d
          JOIN pgflow.queue q ON q.queue_id = d.queue_id
          LEFT JOIN pgflow._alert_values(v_now) v ON v.queue_id = d.queue_id AND v.alert = d.alert
    LOOP
        IF r.state = 'firing' THEN started := started + 1; ELSE cleared := cleared + 1; END IF;
        IF v_channel <> '' THEN
            PERFORM pg_catalog.pg_notify(v_channel, pg_catalog.json_build_object(
            'state', r.state, 'queue', r.queue_name, 'alert', r.alert, 'value', r.value,
                'threshold', r.threshold, 'since', r.since)::text);
        END IF;
        RAISE LOG 'pgflow alert %: queue "%" %: % (threshold %, since %)',
            r.state, r.queue_name, r.alert, r.value, r.threshold, r.since;
    END LOOP;
    PERFORM pgflow._stats_alerts_at(coalesce(array_agg(a.queue_id), '{}'),
                                    coalesce(array_agg(a.alert), '{}'),
                                    coalesce(array_agg(a.since), '{}'),
                                    coalesce(array_agg(v.value), '{}'),
                                    coalesce(array_agg(a.threshold), '{}'))
      FROM pgflow.alert a
      LEFT JOIN pgflow._alert_values(v_now) v ON v.queue_id = a.queue_id AND v.alert = a.alert;
    RETURN NEXT;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._check_link_admin(what text, writes boolean DEFAULT true)
 RETURNS void
 LANGUAGE plpgsql
 STABLE
AS $function$
BEGIN
    IF pgflow._caller_class(writes) < 2 THEN
        RAISE EXCEPTION 'permission denied to %: only pgflow_admin members manage links', what
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._check_max_retries(value bigint)
 RETURNS void
 LANGUAGE plpgsql
 IMMUTABLE PARALLEL SAFE
AS $function$
BEGIN
    IF value > 1000 THEN
        RAISE EXCEPTION 'max_retries must be at most 1000, got %', value
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._check_subscribed(l pgflow.link)
 RETURNS void
 LANGUAGE plpgsql
 STABLE
AS $function$
BEGIN
    IF l.subscribed_at IS NULL THEN
        RAISE EXCEPTION 'link "%" has no subscriber yet', l.link_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('Run the CREATE SUBSCRIPTION that link_create returned at site "%s" (slot pgflow_link_%s); pgflow.links() shows the link connected within a worker tick.', l.remote_site, l.link_id);
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._forward_to(p_link integer, p_remote_queue text, p_from_queue text, p_from_id bigint, p_topic text, message jsonb, headers jsonb, priority integer, group_key text, dedup_key text, deliver_at timestamp with time zone, now timestamp with time zone)
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_site text;
    v_remote text;
    v_via text[];
    v_origin jsonb;
    v_seq bigint;
BEGIN
    SELECT s.site_name, k.remote_site INTO v_site, v_remote
      FROM pgflow.link k LEFT JOIN pgflow.site s ON true
     WHERE k.link_id = p_link;
    IF v_site IS NULL THEN
        v_site := pgflow._site();  -- raises 55000
    END IF;
    IF headers ? 'pgflow_via' OR headers ? 'pgflow_origin' THEN
        IF jsonb_typeof(headers -> 'pgflow_via') = 'array' THEN
            v_via := ARRAY(SELECT jsonb_array_elements_text(headers -> 'pgflow_via'));
        END IF;
        v_origin := headers -> 'pgflow_origin';
        headers := headers - 'pgflow_origin' - 'pgflow_via';
    END IF;
    v_via := coalesce(v_via, '{}');
    IF v_remote = ANY (v_via) OR v_remote = v_site THEN
        RAISE EXCEPTION 'forwarding loop: the message has been at site "%" already (via %)', v_remote, v_via
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_origin IS NULL THEN
        v_origin := CASE WHEN p_topic IS NULL
                         THEN jsonb_build_object('site', v_site, 'queue', p_from_queue, 'id', p_from_id)
                         ELSE jsonb_build_object('site', v_site, 'topic', p_topic) END;
    END IF;
    INSERT INTO pgflow.link_outbox (link_id, sent_at, origin, via, remote_queue, message, headers,
                                    priority, group_key, dedup_key, deliver_at)
    VALUES (p_link, now, v_origin, v_via || v_site, p_remote_queue, message, headers, priority,
            group_key, dedup_key, deliver_at)
    RETURNING seq INTO v_seq;
    RETURN v_seq;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._forward_topic(topic text, message jsonb, headers jsonb, delay interval, priority integer)
 RETURNS TABLE(target text, seq bigint)
 LANGUAGE plpgsql
AS $function$
DECLARE
    r record;
    v_now timestamptz := clock_timestamp();
BEGIN
    FOR r IN SELECT DISTINCT l.link_id, l.link_name, x.remote_queue
               FROM pgflow.link_rule x
               JOIN pgflow.link l ON x.link_id IS NULL OR l.link_id = x.link_id
              -- A broadcast skips a link no one has subscribed to yet.
              WHERE pgflow._topic_matches(x.pattern, topic)
                AND (x.link_id IS NOT NULL OR l.subscribed_at IS NOT NULL)
              ORDER BY l.link_name, x.remote_queue LOOP
        target := r.link_name || ':' || r.remote_queue;
        seq := pgflow._forward_to(r.link_id, r.remote_queue, NULL, NULL, topic, message, headers,
            priority, NULL, NULL, CASE WHEN delay > interval '0' THEN v_now + delay END, v_now);
        RETURN NEXT;
    END LOOP;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._ids_for_timeline(tli integer)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_done integer;
    v_floor bigint := tli::bigint << 40;
    v_last bigint;
    q record;
BEGIN
    -- Timeline 1 has nothing before it: no row, no lock (a session's first write takes none).
    IF tli <= 1 THEN
        RETURN;
    END IF;
    SELECT t.timeline INTO v_done FROM pgflow.id_timeline t;
    IF v_done >= tli THEN
        RETURN;
    END IF;
    -- One session at a time, until its transaction ends: a second one that read a sequence
    -- before the first moved it would move it back.
    LOCK TABLE pgflow.id_timeline IN EXCLUSIVE MODE;
    SELECT t.timeline INTO v_done FROM pgflow.id_timeline t;
    IF v_done >= tli THEN
        RETURN;
    END IF;
    FOR q IN SELECT u.queue_id, u.msg_seq FROM pgflow.queue u ORDER BY u.queue_id LOOP
        v_last := coalesce(pg_sequence_last_value(q.msg_seq), 0);
        IF v_last < v_floor THEN
            PERFORM setval(q.msg_seq, v_floor);
            UPDATE pgflow.queue u SET ids_skipped = u.ids_skipped + (v_floor - v_last)
             WHERE u.queue_id = q.queue_id;
        END IF;
    END LOOP;
    IF coalesce(pg_sequence_last_value('pgflow.link_outbox_seq'), 0) < v_floor THEN
        PERFORM setval('pgflow.link_outbox_seq', v_floor);
    END IF;
    INSERT INTO pgflow.id_timeline AS t (timeline) VALUES (tli)
    ON CONFLICT (only_row) DO UPDATE SET timeline = EXCLUDED.timeline, set_at = now();
END $function$;

CREATE OR REPLACE FUNCTION pgflow._link(link_name text)
 RETURNS pgflow.link
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    l pgflow.link;
BEGIN
    PERFORM pgflow._require(link_name, 'link_name');
    SELECT * INTO l FROM pgflow.link k WHERE k.link_name = _link.link_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'link "%" does not exist', link_name
            USING ERRCODE = 'undefined_object', HINT = 'See pgflow.links().';
    END IF;
    RETURN l;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._link_arrive()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    v_headers jsonb;
BEGIN
    v_headers := coalesce(NEW.headers, '{}'::jsonb)
                 || jsonb_build_object('pgflow_origin', NEW.origin, 'pgflow_via', to_jsonb(NEW.via));
    IF NEW.resent THEN
        v_headers := v_headers || '{"pgflow_resent": true}'::jsonb;
    END IF;
    BEGIN
        IF pgflow._site() = ANY (NEW.via) THEN
            RAISE EXCEPTION 'forwarding loop: the message has been at this site ("%") already (via %)',
                pgflow._site(), NEW.via USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- The send runs with the subscription owner's rights (src/api/access.rs, arriving).
        PERFORM pgflow._arriving(true);
        PERFORM pgflow.send(NEW.remote_queue, NEW.message, v_headers, interval '0', NEW.priority,
                            NEW.group_key, NEW.dedup_key, NEW.deliver_at);
        PERFORM pgflow._arriving(false);
    EXCEPTION WHEN OTHERS THEN
        PERFORM pgflow._arriving(false);
        INSERT INTO pgflow.link_refused (origin, via, remote_queue, message, headers, priority,
                                         group_key, dedup_key, deliver_at, sqlstate, reason)
        VALUES (NEW.origin, NEW.via, NEW.remote_queue, NEW.message, NEW.headers, NEW.priority,
                NEW.group_key, NEW.dedup_key, NEW.deliver_at, SQLSTATE, SQLERRM);
    END;
    RETURN NULL;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._link_outbox_guard()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
BEGIN
    IF current_user <> 'pgflow_owner'
       AND NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'permission denied to insert into a link''s outbox: only pgflow writes it'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Send to a forwarded queue or publish on a forwarded topic instead.';
    END IF;
    RETURN NULL;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._links_confirm()
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
DECLARE
    l record;
    v_conf pg_lsn;
    v_active boolean;
    v_wal text;
    v_found boolean;
    v_err text;
    v_n bigint;
    v_total bigint := 0;
BEGIN
    FOR l IN SELECT k.link_id, k.seal_lsn, k.seal_snap, k.slot_seen_at, k.subscribed_at,
                    k.down_since, k.last_error
               FROM pgflow.link k
              ORDER BY k.link_id FOR UPDATE SKIP LOCKED LOOP
        SELECT s.confirmed_flush_lsn, s.active, s.wal_status INTO v_conf, v_active, v_wal
          FROM pg_catalog.pg_replication_slots s
         WHERE s.slot_name = 'pgflow_link_' || l.link_id AND s.database = current_database()
           AND s.slot_type = 'logical';
        v_found := FOUND;
        -- The link's trouble, as links() names its state; written only when it changes. No
        -- connection string, host or role goes into it: only what this site sees of its slot.
        v_err := CASE
            WHEN NOT v_found AND l.subscribed_at IS NOT NULL THEN
                'slot lost: the remote''s subscription (slot pgflow_link_' || l.link_id
                || ') is gone; the outbox goes again once the remote subscribes again'
            WHEN NOT v_found THEN NULL  -- not subscribed yet
            WHEN v_wal = 'lost' THEN
                'wal lost: slot pgflow_link_' || l.link_id || ' lost WAL it needed '
                || '(max_slot_wal_keep_size); the remote must subscribe again'
            WHEN l.slot_seen_at IS NOT NULL AND NOT v_active THEN
                'disconnected: no connection from the remote''s subscription on slot pgflow_link_'
                || l.link_id
            END;
        IF v_err IS NULL AND l.down_since IS NOT NULL THEN
            UPDATE pgflow.link k SET down_since = NULL WHERE k.link_id = l.link_id;
        ELSIF v_err IS NOT NULL AND (l.down_since IS NULL OR l.last_error IS DISTINCT FROM v_err) THEN
            UPDATE pgflow.link k SET down_since = coalesce(k.down_since, clock_timestamp()),
                                     last_error = v_err, last_error_at = clock_timestamp()
             WHERE k.link_id = l.link_id;
        END IF;
        IF NOT v_found THEN
            -- No slot (never subscribed, or the subscription was dropped): rows wait, and a
            -- seal made under a former slot no longer counts.
            IF l.slot_seen_at IS NOT NULL OR l.seal_lsn IS NOT NULL THEN
                UPDATE pgflow.link k SET slot_seen_at = NULL, slot_lost_at = clock_timestamp(),
                                         seal_lsn = NULL, seal_snap = NULL
                 WHERE k.link_id = l.link_id;
            END IF;
            CONTINUE;
        END IF;
        IF l.slot_seen_at IS NULL THEN
            -- First sight of this slot: what the outbox held before it existed is not in its
            -- stream, so it goes in again (the same rows, new inserts). The first slot of a
            -- link has nothing to send again (forward() waits for its first sight). A slot made
            -- again after a loss (the remote dropped its subscription, or the slot lost its WAL
            -- past max_slot_wal_keep_size) may have had some of these rows applied under the
            -- former one, which never confirmed them: they are marked resent and arrive with
            -- the header pgflow_resent (docs/operations.md, "Sites and links").
            WITH gone AS (
                DELETE FROM pgflow.link_outbox o WHERE o.link_id = l.link_id RETURNING o.*
            )
            INSERT INTO pgflow.link_outbox
            SELECT g.link_id, g.seq, pg_current_xact_id(), g.sent_at, g.origin, g.via, g.remote_queue,
                   g.message, g.headers, g.priority, g.group_key, g.dedup_key, g.deliver_at,
                   l.subscribed_at IS NOT NULL
              FROM gone g ORDER BY g.seq;
            UPDATE pgflow.link k SET slot_seen_at = clock_timestamp(),
                                     subscribed_at = coalesce(k.subscribed_at, clock_timestamp()),
                                     seal_lsn = NULL, seal_snap = NULL
             WHERE k.link_id = l.link_id;
            CONTINUE;
        END IF;
        IF l.seal_lsn IS NOT NULL AND v_conf >= l.seal_lsn THEN
            DELETE FROM pgflow.link_outbox o
             WHERE o.link_id = l.link_id AND pg_visible_in_snapshot(o.xid, l.seal_snap);
            GET DIAGNOSTICS v_n = ROW_COUNT;
            v_total := v_total + v_n;
            UPDATE pgflow.link k SET forwarded = k.forwarded + v_n, confirmed_at = clock_timestamp(),
                                     seal_lsn = NULL, seal_snap = NULL
             WHERE k.link_id = l.link_id;
            l.seal_lsn := NULL;
        END IF;
        IF l.seal_lsn IS NULL AND EXISTS (SELECT 1 FROM pgflow.link_outbox o WHERE o.link_id = l.link_id) THEN
            -- One statement: its snapshot is taken before the insert position is read.
            UPDATE pgflow.link k SET seal_snap = pg_current_snapshot(),
                                     seal_lsn = pg_current_wal_insert_lsn()
             WHERE k.link_id = l.link_id;
        END IF;
    END LOOP;
    RETURN v_total;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._links_state()
 RETURNS TABLE(link_name text, remote_site text, state text, connected boolean, backlog bigint, oldest_age double precision, forwarded bigint, confirmed_at timestamp with time zone, slot_name text, wal_kept_bytes numeric, wal_status text, alert_age interval, alerting boolean, lag interval, feedback_at timestamp with time zone, down_since timestamp with time zone, last_error text, last_error_at timestamp with time zone)
 LANGUAGE plpgsql
 STABLE
AS $function$
BEGIN
    RETURN QUERY
    SELECT k.link_name, k.remote_site,
           CASE WHEN s.slot_name IS NULL AND k.subscribed_at IS NULL THEN 'not subscribed'
                WHEN s.slot_name IS NULL THEN 'slot lost'
                WHEN s.wal_status = 'lost' THEN 'wal lost'
                WHEN k.slot_seen_at IS NULL THEN 'starting'
                WHEN s.active THEN 'connected' ELSE 'disconnected' END,
           coalesce(s.active, false),
           coalesce(o.n, 0), extract(epoch FROM clock_timestamp() - o.oldest)::float8,
           k.forwarded, k.confirmed_at, 'pgflow_link_' || k.link_id,
           CASE WHEN s.restart_lsn IS NOT NULL AND NOT pg_is_in_recovery()
                THEN pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn) END,
           coalesce(s.wal_status, 'no subscription'),
           k.alert_age, coalesce(clock_timestamp() - o.oldest > k.alert_age, false),
           r.flush_lag, r.reply_time, k.down_since, k.last_error, k.last_error_at
      FROM pgflow.link k
      LEFT JOIN pg_catalog.pg_replication_slots s
             ON s.slot_name = 'pgflow_link_' || k.link_id AND s.database = current_database()
      LEFT JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid
      LEFT JOIN LATERAL (SELECT count(*) AS n, min(x.sent_at) AS oldest
                           FROM pgflow.link_outbox x WHERE x.link_id = k.link_id) o ON true
     ORDER BY k.link_name;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._queue(queue_name text, need text, writes boolean DEFAULT true)
 RETURNS pgflow.queue
 LANGUAGE plpgsql
 STABLE PARALLEL SAFE
AS $function$
DECLARE
    q pgflow.queue;
    v_class integer;
BEGIN
    SELECT * INTO q FROM pgflow.queue WHERE queue.queue_name = _queue.queue_name;
    IF NOT FOUND THEN
        PERFORM pgflow._check_queue_name(queue_name);
        RAISE EXCEPTION 'queue "%" does not exist', queue_name
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create it with pgflow.create_queue(), or see pgflow.list_queues().';
    END IF;
    v_class := pgflow._caller_class(writes AND need <> 'see');
    IF v_class < 2 AND NOT (need = 'see' AND v_class = 1) AND NOT pgflow._may(q.queue_id, need) THEN
        -- A role with no grant on the queue (and outside pg_monitor) learns nothing of it, not
        -- even that it exists: the same error as for a queue that does not exist.
        IF v_class = 0 AND (need = 'see' OR NOT pgflow._may(q.queue_id, 'see')) THEN
            RAISE EXCEPTION 'queue "%" does not exist', queue_name
                USING ERRCODE = 'undefined_object',
                      HINT = 'Create it with pgflow.create_queue(), or see pgflow.list_queues().';
        END IF;
        RAISE EXCEPTION 'permission denied for queue "%": % needs the % privilege on it', queue_name,
            pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(pgflow._caller())),
            CASE need WHEN 'see' THEN 'produce, consume or admin' ELSE need END
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A member of pgflow_admin grants it with pgflow.grant(queue, role, privilege).';
    END IF;
    RETURN q;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._read(q pgflow.queue, vt interval, qty integer, wait interval)
 RETURNS SETOF pgflow.message_record
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_vt interval := coalesce(_read.vt, q.visibility_timeout);
    v_deadline timestamptz;
    v_woken boolean;
    v_next timestamptz;
    v_from bigint[];
    v_probe integer;
    v_backoff interval;
    n bigint;
BEGIN
    -- The checks' fast path inline; the helpers raise the precise error.
    IF v_vt IS NULL OR v_vt <= interval '0' OR v_vt > interval '100 years' THEN
        PERFORM pgflow._check_interval(v_vt, 'vt', false);
    END IF;
    IF qty IS NULL OR qty < 1 THEN
        PERFORM pgflow._check_int(qty, 'qty', 1);
    END IF;
    IF wait IS NOT NULL AND wait > interval '0' THEN
        PERFORM pgflow._check_interval(wait, 'wait', true);
        IF current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'read with wait needs READ COMMITTED, not %',
                            current_setting('transaction_isolation')
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'A snapshot that never changes would never see a new message.';
        END IF;
        v_deadline := v_now + wait;
        -- Register before the first look, so a send that commits after it wakes us.
        v_woken := pgflow._wait_begin(q.queue_id);
    ELSIF wait IS NOT NULL THEN
        PERFORM pgflow._check_interval(wait, 'wait', true);
    END IF;
    LOOP
        v_probe := pgflow._due_begin(q.queue_id, q.msg_seq::oid, v_now);
        IF v_probe > 0 THEN
            PERFORM pgflow._before_claim(q, v_now, qty, v_probe);
        END IF;
        -- The claim starts after the queue's claim cursor (a statement of its own, before the
        -- claim's snapshot; src/ipc/cursor/ has the rules that keep it safe).
        v_from := pgflow._claim_begin(q.queue_id, q.msg_seq::oid);
        RETURN QUERY
        WITH picked AS (
            SELECT m.msg_id FROM pgflow.message m
             WHERE m.queue_id = q.queue_id AND m.state = 'r'
               AND (-(m.priority::integer), m.msg_id) > (v_from[1]::integer, v_from[2])
             ORDER BY -(m.priority::integer), m.msg_id
             LIMIT qty
               FOR UPDATE SKIP LOCKED
        ), leased AS (
            -- The picked ids as an array, so both key columns are the index condition: a join
            -- with picked let a plan cached on a near-empty table (a fresh install) scan every
            -- row of the queue on each claim, for the life of the session. The span bounds
            -- the walk whatever the plan (sql/internal.sql, "Id spans").
            UPDATE pgflow.message m
               SET state = 'l', vt = v_now + v_vt, read_ct = m.read_ct + 1,
                   holder = CASE WHEN q.session_leases THEN pgflow._session_key() END
             WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (ARRAY(SELECT p.msg_id FROM picked p))
               AND m.msg_id BETWEEN (SELECT min(p.msg_id) FROM picked p)
                                AND (SELECT max(p.msg_id) FROM picked p)
            RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, m.headers, m.priority
        ), noted AS (
            -- What the claim took, noted for the claim cursor in one call.
            SELECT pgflow._claim_span(min(ARRAY[-(l.priority::bigint), l.msg_id]),
                                      max(ARRAY[-(l.priority::bigint), l.msg_id]), count(*)) AS ok
              FROM leased l
        )
        SELECT l.msg_id, l.read_ct, l.enqueued_at, l.vt, l.message, l.headers,
               pgflow._receipt(l.enqueued_at, l.read_ct)
          FROM leased l, noted
         WHERE noted.ok
         ORDER BY l.priority DESC, l.msg_id;
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM pgflow._claim_end(qty);
        IF n > 0 THEN
            PERFORM pgflow._due_at(q.queue_id, q.msg_seq::oid, v_now + v_vt);
        END IF;
        EXIT WHEN n > 0 OR v_deadline IS NULL OR v_now >= v_deadline;
        -- Sleep at most until the next delayed message or lease comes due: the queue's due
        -- time when shared memory knows it, else from the table. When that has passed and
        -- still nothing could be claimed (another reader is recomputing it, or the due lease
        -- is row-locked by an open transaction, such as a consumer archiving inside a longer
        -- one), back off: 10 ms, doubling up to 1 s, or until a wake-up.
        v_next := pgflow._due(q.queue_id, q.msg_seq::oid);
        IF v_next IS NULL THEN
            v_next := pgflow._next_due(q.queue_id);
        END IF;
        IF v_next <= v_now THEN
            v_backoff := least(coalesce(v_backoff * 2, interval '10 ms'), interval '1 s');
            v_next := v_now + v_backoff;
        END IF;
        -- False when the extension, its schema or the database is being dropped.
        EXIT WHEN NOT pgflow._wait_for(least(v_deadline, v_next), v_woken);
        v_now := clock_timestamp();
    END LOOP;
    IF v_deadline IS NOT NULL THEN
        PERFORM pgflow._wait_end();
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._send_forwarded(q pgflow.queue, message jsonb, headers jsonb, priority integer, now timestamp with time zone, delay interval)
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_id bigint := nextval(q.msg_seq);
BEGIN
    PERFORM pgflow._forward_to(q.forward_link, q.forward_to, q.queue_name, v_id, NULL, message,
                               headers, priority, NULL, NULL,
                               CASE WHEN delay > interval '0' THEN now + delay END, now);
    RETURN v_id;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._site()
 RETURNS text
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    v text;
BEGIN
    SELECT s.site_name INTO v FROM pgflow.site s;
    IF v IS NULL THEN
        RAISE EXCEPTION 'this database has no pgflow site name'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'A member of pgflow_admin names it with pgflow.set_site(name).';
    END IF;
    RETURN v;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.alter_queue(queue_name text, visibility_timeout interval DEFAULT NULL::interval, max_retries integer DEFAULT NULL::integer, retry_delay interval DEFAULT NULL::interval, archive_retention interval DEFAULT NULL::interval, retry_backoff double precision DEFAULT NULL::double precision, retry_delay_max interval DEFAULT NULL::interval, retry_jitter double precision DEFAULT NULL::double precision, default_priority integer DEFAULT NULL::integer, dedup_window interval DEFAULT NULL::interval, notify boolean DEFAULT NULL::boolean, contract jsonb DEFAULT NULL::jsonb, alert_dlq bigint DEFAULT NULL::bigint, alert_age interval DEFAULT NULL::interval, alert_depth bigint DEFAULT NULL::bigint, session_leases boolean DEFAULT NULL::boolean)
 RETURNS SETOF pgflow.queue_info
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(alter_queue.queue_name, 'admin');
BEGIN
    IF alter_queue.visibility_timeout IS NOT NULL THEN
        PERFORM pgflow._check_interval(alter_queue.visibility_timeout, 'visibility_timeout', false);
    END IF;
    IF alter_queue.max_retries IS NOT NULL THEN
        PERFORM pgflow._check_int(alter_queue.max_retries, 'max_retries', 0);
        PERFORM pgflow._check_max_retries(alter_queue.max_retries);
    END IF;
    IF alter_queue.retry_delay IS NOT NULL THEN
        PERFORM pgflow._check_interval(alter_queue.retry_delay, 'retry_delay', true);
    END IF;
    IF alter_queue.archive_retention IS NOT NULL THEN
        PERFORM pgflow._check_interval(alter_queue.archive_retention, 'archive_retention', false);
    END IF;
    IF alter_queue.default_priority IS NOT NULL THEN
        PERFORM pgflow._check_priority(alter_queue.default_priority, 'default_priority');
    END IF;
    IF alter_queue.dedup_window IS NOT NULL THEN
        PERFORM pgflow._check_interval(alter_queue.dedup_window, 'dedup_window', false);
    END IF;
    IF alter_queue.contract IS NOT NULL THEN
        PERFORM pgflow.set_contract(alter_queue.queue_name, alter_queue.contract,
                                    coalesce(q.contract_version, '1'));
    END IF;
    PERFORM pgflow._alert_count(alter_queue.alert_dlq, 'alert_dlq');
    PERFORM pgflow._alert_count(alter_queue.alert_depth, 'alert_depth');
    PERFORM pgflow._alert_age(alter_queue.alert_age, 'alert_age');
    PERFORM pgflow._check_retry_policy(coalesce(alter_queue.retry_backoff, q.retry_backoff),
                                       coalesce(alter_queue.retry_delay_max, q.retry_delay_max),
                                       coalesce(alter_queue.retry_jitter, q.retry_jitter));

    RETURN QUERY
    UPDATE pgflow.queue u
       SET visibility_timeout = coalesce(alter_queue.visibility_timeout, u.visibility_timeout),
           max_retries        = coalesce(alter_queue.max_retries, u.max_retries),
           retry_delay        = coalesce(alter_queue.retry_delay, u.retry_delay),
           archive_retention  = coalesce(alter_queue.archive_retention, u.archive_retention),
           retry_backoff      = coalesce(alter_queue.retry_backoff, u.retry_backoff),
           retry_delay_max    = coalesce(alter_queue.retry_delay_max, u.retry_delay_max),
           retry_jitter       = coalesce(alter_queue.retry_jitter, u.retry_jitter),
           default_priority   = coalesce(alter_queue.default_priority, u.default_priority),
           dedup_window       = coalesce(alter_queue.dedup_window, u.dedup_window),
           notify             = coalesce(alter_queue.notify, u.notify),
           alert_dlq          = CASE WHEN alter_queue.alert_dlq IS NULL THEN u.alert_dlq
                                     ELSE nullif(alter_queue.alert_dlq, -1) END,
           alert_age          = CASE WHEN alter_queue.alert_age IS NULL THEN u.alert_age
                                     ELSE nullif(alter_queue.alert_age, interval '0') END,
           alert_depth        = CASE WHEN alter_queue.alert_depth IS NULL THEN u.alert_depth
                                     ELSE nullif(alter_queue.alert_depth, -1) END,
           session_leases     = coalesce(alter_queue.session_leases, u.session_leases)
     WHERE u.queue_id = q.queue_id
    RETURNING u.queue_name, u.visibility_timeout, u.max_retries, u.retry_delay, u.retry_backoff,
              u.retry_delay_max, u.retry_jitter, u.archive_retention, u.created_at,
              u.default_priority, u.dedup_window, u.notify, u.contract_version,
              u.alert_dlq, u.alert_age, u.alert_depth, u.session_leases;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.create_queue(queue_name text, visibility_timeout interval DEFAULT '00:00:30'::interval, max_retries integer DEFAULT 3, retry_delay interval DEFAULT '00:00:01'::interval, archive_retention interval DEFAULT '7 days'::interval, if_not_exists boolean DEFAULT false, retry_backoff double precision DEFAULT 2, retry_delay_max interval DEFAULT '01:00:00'::interval, retry_jitter double precision DEFAULT 0.1, default_priority integer DEFAULT 0, dedup_window interval DEFAULT '00:05:00'::interval, notify boolean DEFAULT false, contract jsonb DEFAULT NULL::jsonb, alert_dlq bigint DEFAULT NULL::bigint, alert_age interval DEFAULT NULL::interval, alert_depth bigint DEFAULT NULL::bigint, session_leases boolean DEFAULT false)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    v_id integer;
    v_msg_seq text;
    v_archived_seq text;
    v_floor bigint;
BEGIN
    PERFORM pgflow._primary();
    PERFORM pgflow._check_queue_name(queue_name);
    PERFORM pgflow._check_interval(visibility_timeout, 'visibility_timeout', false);
    PERFORM pgflow._check_int(max_retries, 'max_retries', 0);
    PERFORM pgflow._check_max_retries(max_retries);
    PERFORM pgflow._check_interval(retry_delay, 'retry_delay', true);
    PERFORM pgflow._check_interval(archive_retention, 'archive_retention', false);
    PERFORM pgflow._require(if_not_exists, 'if_not_exists');
    PERFORM pgflow._check_retry_policy(retry_backoff, retry_delay_max, retry_jitter);
    PERFORM pgflow._require(default_priority, 'default_priority');
    PERFORM pgflow._check_priority(default_priority, 'default_priority');
    PERFORM pgflow._check_interval(dedup_window, 'dedup_window', false);
    PERFORM pgflow._require(notify, 'notify');
    PERFORM pgflow._require(session_leases, 'session_leases');
    IF contract IS NOT NULL THEN
        PERFORM pgflow._check_contract_schema(contract::text);
    END IF;
    PERFORM pgflow._alert_count(alert_dlq, 'alert_dlq');
    PERFORM pgflow._alert_count(alert_depth, 'alert_depth');
    PERFORM pgflow._alert_age(alert_age, 'alert_age');

    IF EXISTS (SELECT 1 FROM pgflow.queue q WHERE q.queue_name = create_queue.queue_name) THEN
        IF if_not_exists THEN
            RETURN false;
        END IF;
        RAISE EXCEPTION 'queue "%" already exists', queue_name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Pass if_not_exists => true to make creation idempotent.';
    END IF;

    -- The sequences are named after the numeric id, never after the user's string.
    v_id := nextval('pgflow.queue_queue_id_seq');
    v_msg_seq := 'pgflow.q' || v_id || '_msg_seq';
    v_archived_seq := 'pgflow.q' || v_id || '_archived_seq';
    EXECUTE 'CREATE SEQUENCE ' || v_msg_seq || ' AS bigint';
    EXECUTE 'CREATE SEQUENCE ' || v_archived_seq || ' AS bigint';
    -- After a failover, ids start past anything the old timelines issued (_ids_for_timeline);
    -- _primary() above has brought pgflow.id_timeline up to this server's timeline.
    v_floor := (SELECT t.timeline::bigint << 40 FROM pgflow.id_timeline t WHERE t.timeline > 1);
    IF v_floor IS NOT NULL THEN
        PERFORM setval(v_msg_seq::regclass, v_floor);
    END IF;

    INSERT INTO pgflow.queue (queue_id, queue_name, visibility_timeout, max_retries, retry_delay,
                              retry_backoff, retry_delay_max, retry_jitter,
                              archive_retention, msg_seq, archived_seq, default_priority,
                              dedup_window, notify, alert_dlq, alert_age, alert_depth,
                              session_leases, ids_skipped)
    VALUES (v_id, queue_name, visibility_timeout, max_retries, retry_delay,
            retry_backoff, retry_delay_max, retry_jitter,
            archive_retention, v_msg_seq::regclass, v_archived_seq::regclass, default_priority,
            dedup_window, notify, nullif(alert_dlq, -1), nullif(alert_age, interval '0'),
            nullif(alert_depth, -1), session_leases, coalesce(v_floor, 0))
    ON CONFLICT ON CONSTRAINT queue_queue_name_key DO NOTHING;

    IF NOT FOUND THEN
        -- A concurrent create of the same name committed first.
        EXECUTE 'DROP SEQUENCE ' || v_msg_seq || ', ' || v_archived_seq;
        IF if_not_exists THEN
            RETURN false;
        END IF;
        RAISE EXCEPTION 'queue "%" already exists', queue_name USING ERRCODE = 'duplicate_object';
    END IF;
    IF contract IS NOT NULL THEN
        PERFORM pgflow.set_contract(queue_name, contract);
    END IF;
    -- Its statistics start empty, and exact, when this commits (src/ipc/stats.rs).
    PERFORM pgflow._stats_created(v_id, queue_name);
    RETURN true;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.drop_queue(queue_name text, if_exists boolean DEFAULT false)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue;
BEGIN
    PERFORM pgflow._primary();
    PERFORM pgflow._require(queue_name, 'queue_name');
    -- Lock the queue row: a concurrent drop of the same queue waits, then finds nothing.
    SELECT * INTO q FROM pgflow.queue u WHERE u.queue_name = drop_queue.queue_name FOR UPDATE;
    IF NOT FOUND THEN
        IF coalesce(if_exists, false) THEN
            RETURN false;
        END IF;
        q := pgflow._queue(queue_name, 'admin');  -- raises the right error
    END IF;
    PERFORM pgflow._queue(queue_name, 'admin');  -- 42501 unless the caller may

    -- The deletes lock every message, ready ones included: should this transaction abort, the
    -- queue's claim cursor must start over (src/ipc/cursor/).
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    DELETE FROM pgflow.message m WHERE m.queue_id = q.queue_id;
    DELETE FROM pgflow.archive a WHERE a.queue_id = q.queue_id;
    DELETE FROM pgflow.dead d WHERE d.queue_id = q.queue_id;
    DELETE FROM pgflow.dedup k WHERE k.queue_id = q.queue_id;
    DELETE FROM pgflow.binding b WHERE b.queue_id = q.queue_id;
    DELETE FROM pgflow.queue_grant g WHERE g.queue_id = q.queue_id;
    DELETE FROM pgflow.contract c WHERE c.queue_id = q.queue_id;
    DELETE FROM pgflow.alert x WHERE x.queue_id = q.queue_id;
    DELETE FROM pgflow.queue u WHERE u.queue_id = q.queue_id;
    PERFORM pgflow._notify_forget(q.queue_id);
    PERFORM pgflow._cursor_forget(q.queue_id);
    PERFORM pgflow._stats_dropped(q.queue_id);
    -- regclass values print as qualified, quoted names: safe to splice.
    EXECUTE 'DROP SEQUENCE ' || q.msg_seq::text || ', ' || q.archived_seq::text;
    RETURN true;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.forward(queue_name text, link_name text, remote_queue text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
    l pgflow.link;
BEGIN
    PERFORM pgflow._check_link_admin('forward a queue');
    l := pgflow._link(link_name);
    PERFORM pgflow._require(remote_queue, 'remote_queue');
    PERFORM pgflow._check_queue_name(remote_queue);
    PERFORM pgflow._check_subscribed(l);
    IF q.forward_link IS NOT DISTINCT FROM l.link_id AND q.forward_to IS NOT DISTINCT FROM remote_queue THEN
        RETURN false;
    END IF;
    UPDATE pgflow.queue u SET forward_link = l.link_id, forward_to = forward.remote_queue
     WHERE u.queue_id = q.queue_id;
    RETURN true;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.forward_topic(pattern text, link_name text, remote_queue text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    v_link integer;
BEGIN
    PERFORM pgflow._check_link_admin('add a topic rule');
    PERFORM pgflow._check_topic_pattern(pattern);
    IF link_name IS NOT NULL THEN
        v_link := (pgflow._link(link_name)).link_id;
        PERFORM pgflow._check_subscribed(pgflow._link(link_name));
    END IF;
    PERFORM pgflow._require(remote_queue, 'remote_queue');
    PERFORM pgflow._check_queue_name(remote_queue);
    INSERT INTO pgflow.link_rule (pattern, link_id, remote_queue)
    VALUES (forward_topic.pattern, v_link, forward_topic.remote_queue)
    ON CONFLICT DO NOTHING;
    RETURN FOUND;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.link_alter(link_name text, alert_age interval)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    l pgflow.link;
BEGIN
    PERFORM pgflow._check_link_admin('alter a link');
    l := pgflow._link(link_name);
    IF alert_age IS NOT NULL AND (alert_age <= interval '0' OR alert_age > interval '100 years') THEN
        RAISE EXCEPTION 'alert_age must be positive and at most 100 years, got %', alert_age
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE pgflow.link k SET alert_age = link_alter.alert_age WHERE k.link_id = l.link_id;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.link_create(link_name text, remote_site text, alert_age interval DEFAULT NULL::interval, failover boolean DEFAULT false)
 RETURNS text
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    v_site text;
    v_id integer;
BEGIN
    PERFORM pgflow._check_link_admin('create a link');
    v_site := pgflow._site();
    PERFORM pgflow._require(link_name, 'link_name');
    PERFORM pgflow._require(remote_site, 'remote_site');
    IF link_name !~ '^[a-z0-9][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'link_name must be 1 to 40 lower-case letters, digits and _, starting with a letter or digit, got "%"', link_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF remote_site !~ '^[a-z0-9][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'remote_site must be 1 to 40 lower-case letters, digits and _, starting with a letter or digit, got "%"', remote_site
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF remote_site = v_site THEN
        RAISE EXCEPTION 'a link to this site itself ("%") would forward in a loop', v_site
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF alert_age IS NOT NULL AND (alert_age <= interval '0' OR alert_age > interval '100 years') THEN
        RAISE EXCEPTION 'alert_age must be positive and at most 100 years, got %', alert_age
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF failover IS NULL THEN
        RAISE EXCEPTION 'failover must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF failover AND current_setting('server_version_num')::integer < 170000 THEN
        RAISE EXCEPTION 'failover slots need Postgres 17 or later (this site runs %)', current_setting('server_version')
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF current_setting('wal_level') <> 'logical' THEN
        RAISE EXCEPTION 'links need wal_level = logical (it is %)', current_setting('wal_level')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Set wal_level = logical in postgresql.conf and restart the server (docs/operations.md, "Sites and links").';
    END IF;
    BEGIN
        INSERT INTO pgflow.link (link_name, remote_site, alert_age)
        VALUES (link_create.link_name, link_create.remote_site, link_create.alert_age)
        RETURNING link_id INTO v_id;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'link "%" already exists', link_name USING ERRCODE = 'duplicate_object';
    END;
    -- Built from the link's id (an integer) only.
    BEGIN
        EXECUTE pg_catalog.format(
            'CREATE PUBLICATION pgflow_link_%s FOR TABLE pgflow.link_outbox WHERE (link_id = %s) WITH (publish = ''insert'')',
            v_id, v_id);
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'pgflow_owner may not create the link''s publication in this database'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = pg_catalog.format('A superuser grants it once: GRANT CREATE ON DATABASE %I TO pgflow_owner;', current_database());
    END;
    RETURN pg_catalog.format(
        'CREATE SUBSCRIPTION pgflow_from_%s_%s CONNECTION ''host=... port=... dbname=%s user=...'' '
        'PUBLICATION pgflow_link_%s WITH (slot_name = ''pgflow_link_%s'', copy_data = false%s)',
        v_site, link_create.link_name, current_database(), v_id, v_id,
        CASE WHEN failover THEN ', failover = true' ELSE '' END);
END $function$;

CREATE OR REPLACE FUNCTION pgflow.link_drop(link_name text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    l pgflow.link;
    v_n bigint;
BEGIN
    PERFORM pgflow._check_link_admin('drop a link');
    l := pgflow._link(link_name);
    PERFORM 1 FROM pgflow.link k WHERE k.link_id = l.link_id FOR UPDATE;
    SELECT count(*) INTO v_n FROM pgflow.queue q WHERE q.forward_link = l.link_id;
    v_n := v_n + (SELECT count(*) FROM pgflow.link_rule r WHERE r.link_id = l.link_id);
    IF v_n > 0 THEN
        RAISE EXCEPTION 'link "%" is used by % forwarding rule(s)', link_name, v_n
            USING ERRCODE = 'object_in_use', HINT = 'Remove them first: pgflow.unforward(), pgflow.unforward_topic(); see pgflow.link_rules().';
    END IF;
    SELECT count(*) INTO v_n FROM pgflow.link_outbox o WHERE o.link_id = l.link_id;
    IF v_n > 0 THEN
        RAISE EXCEPTION 'link "%" still has % message(s) the remote has not confirmed', link_name, v_n
            USING ERRCODE = 'object_in_use', HINT = 'Wait until pgflow.links() shows a backlog of 0.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots s
                WHERE s.slot_name = 'pgflow_link_' || l.link_id AND s.database = current_database()) THEN
        RAISE EXCEPTION 'link "%": the remote site''s subscription (slot pgflow_link_%) still exists', link_name, l.link_id
            USING ERRCODE = 'object_in_use', HINT = 'DROP SUBSCRIPTION at the remote site first.';
    END IF;
    EXECUTE pg_catalog.format('DROP PUBLICATION IF EXISTS pgflow_link_%s', l.link_id);
    DELETE FROM pgflow.link k WHERE k.link_id = l.link_id;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.link_refused_delete(refused_id bigint)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgflow._check_link_admin('delete a refused message');
    DELETE FROM pgflow.link_refused x WHERE x.refused_id = link_refused_delete.refused_id;
    RETURN FOUND;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.link_refused_list(max_rows integer DEFAULT 100)
 RETURNS SETOF pgflow.link_refused
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgflow._check_link_admin('list refused messages', writes => false);
    PERFORM pgflow._check_int(max_rows, 'max_rows', 1);
    RETURN QUERY SELECT * FROM pgflow.link_refused r ORDER BY r.refused_id DESC LIMIT max_rows;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.link_refused_retry(refused_id bigint, queue_name text DEFAULT NULL::text)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    r pgflow.link_refused;
    v_id bigint;
BEGIN
    PERFORM pgflow._check_link_admin('retry a refused message');
    PERFORM pgflow._require(refused_id, 'refused_id');
    DELETE FROM pgflow.link_refused x WHERE x.refused_id = link_refused_retry.refused_id RETURNING * INTO r;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no refused message %', refused_id USING ERRCODE = 'undefined_object';
    END IF;
    v_id := pgflow.send(coalesce(queue_name, r.remote_queue), r.message,
                        coalesce(r.headers, '{}'::jsonb)
                        || jsonb_build_object('pgflow_origin', r.origin, 'pgflow_via', to_jsonb(r.via)),
                        interval '0', r.priority, r.group_key, r.dedup_key, r.deliver_at);
    RETURN v_id;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.link_rules()
 RETURNS TABLE(kind text, source text, link_name text, remote_queue text)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
BEGIN
    PERFORM pgflow._check_link_admin('list link rules', writes => false);
    RETURN QUERY
    SELECT 'queue', q.queue_name, l.link_name, q.forward_to
      FROM pgflow.queue q JOIN pgflow.link l ON l.link_id = q.forward_link
    UNION ALL
    SELECT 'topic', r.pattern, l.link_name, r.remote_queue
      FROM pgflow.link_rule r LEFT JOIN pgflow.link l USING (link_id)
     ORDER BY 3 NULLS FIRST, 1, 2, 4;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.links()
 RETURNS TABLE(link_name text, remote_site text, state text, connected boolean, backlog bigint, oldest_age double precision, forwarded bigint, confirmed_at timestamp with time zone, slot_name text, wal_kept_bytes numeric, wal_status text, alert_age interval, alerting boolean, lag interval, feedback_at timestamp with time zone, down_since timestamp with time zone, last_error text, last_error_at timestamp with time zone)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
BEGIN
    IF pgflow._caller_class() < 1 THEN
        RAISE EXCEPTION 'permission denied to see links: pgflow_admin or pg_monitor members only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN QUERY SELECT * FROM pgflow._links_state();
END $function$;

CREATE OR REPLACE FUNCTION pgflow.maintain(now timestamp with time zone DEFAULT NULL::timestamp with time zone, batch integer DEFAULT 1000, prune_batch integer DEFAULT 10000)
 RETURNS TABLE(job text, processed bigint)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    v_now timestamptz := coalesce(maintain.now, clock_timestamp());
BEGIN
    PERFORM pgflow._primary();
    PERFORM pgflow._check_int(batch, 'batch', 1);
    PERFORM pgflow._check_int(prune_batch, 'prune_batch', 1);
    job := 'expire_leases';   processed := pgflow.expire_leases(v_now, batch);         RETURN NEXT;
    job := 'promote_delayed'; processed := pgflow.promote_delayed(v_now, batch);       RETURN NEXT;
    job := 'prune_archive';   processed := pgflow.prune_archive(v_now, prune_batch);   RETURN NEXT;
    job := 'prune_dedup';     processed := pgflow.prune_dedup(v_now, prune_batch);     RETURN NEXT;
    job := 'check_cursors';   processed := pgflow.check_cursors(v_now);               RETURN NEXT;
    job := 'confirm_forwarded'; processed := pgflow._links_confirm();                 RETURN NEXT;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.publish(topic text, message jsonb, headers jsonb DEFAULT NULL::jsonb, delay interval DEFAULT '00:00:00'::interval, priority integer DEFAULT NULL::integer)
 RETURNS TABLE(queue_name text, msg_id bigint)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    v_headers jsonb;
    v_denied  text;
    v_seen    boolean;
BEGIN
    PERFORM pgflow._primary();
    PERFORM pgflow._check_topic(topic);
    PERFORM pgflow._check_payload(message, headers);
    v_headers := coalesce(headers, '{}'::jsonb) || jsonb_build_object('topic', topic);
    -- Refuse before sending anything, and without naming a queue the caller cannot see: send's
    -- own error would name it (issue #34).
    IF pgflow._caller_class() < 2 THEN
        SELECT q.queue_name, pgflow._visible(q.queue_id) INTO v_denied, v_seen
          FROM pgflow.queue q
         WHERE EXISTS (SELECT 1 FROM pgflow.binding b
                        WHERE b.queue_id = q.queue_id AND pgflow._topic_matches(b.pattern, topic))
           AND NOT pgflow._may(q.queue_id, 'produce')
         ORDER BY NOT pgflow._visible(q.queue_id), q.queue_name
         LIMIT 1;
        IF FOUND AND v_seen THEN
            RAISE EXCEPTION 'permission denied for queue "%": % needs the produce privilege on it to publish "%"',
                v_denied, pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(pgflow._caller())), topic
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'A member of pgflow_admin grants it with pgflow.grant(queue, role, ''produce'').';
        ELSIF FOUND THEN
            RAISE EXCEPTION 'permission denied to publish "%": it routes to a queue % may not produce to', topic,
                pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(pgflow._caller()))
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'A member of pgflow_admin sees the bindings (pgflow.list_bindings()) and grants produce.';
        END IF;
    END IF;
    FOR queue_name IN
        SELECT q.queue_name FROM pgflow.queue q
         WHERE EXISTS (SELECT 1 FROM pgflow.binding b
                        WHERE b.queue_id = q.queue_id AND pgflow._topic_matches(b.pattern, topic))
         ORDER BY q.queue_name
    LOOP
        msg_id := pgflow.send(queue_name, message, v_headers, delay, priority);
        RETURN NEXT;
    END LOOP;
    -- Topic rules to other sites (sql/links.sql): 'link:remote_queue' and the outbox number.
    IF EXISTS (SELECT 1 FROM pgflow.link_rule) THEN
        RETURN QUERY SELECT f.target, f.seq FROM pgflow._forward_topic(topic, message, v_headers, delay, priority) f;
    END IF;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.retry_schedule(queue_name text)
 RETURNS TABLE(attempt integer, min_delay interval, max_delay interval)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'see');
BEGIN
    RETURN QUERY
    SELECT n, pgflow._retry_interval(q, n, 1.0), pgflow._retry_interval(q, n, 0.0)
      FROM generate_series(1, least(q.max_retries, 1000)) AS n;  -- the CHECK's bound, again
END $function$;

CREATE OR REPLACE FUNCTION pgflow.send(queue_name text, message jsonb, headers jsonb DEFAULT NULL::jsonb, delay interval DEFAULT '00:00:00'::interval, priority integer DEFAULT NULL::integer, group_key text DEFAULT NULL::text, dedup_key text DEFAULT NULL::text, deliver_at timestamp with time zone DEFAULT NULL::timestamp with time zone)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'produce');
    v_now timestamptz := clock_timestamp();
    v_id bigint;
    v_vt timestamptz;
    v_first bigint;
    v_state "char";
    v_priority smallint;
BEGIN
    -- The checks' fast path inline (a PL/pgSQL call each costs more than the send's INSERT);
    -- the helpers raise the precise error.
    IF message IS NULL OR jsonb_typeof(message) <> 'object'
       OR (headers IS NOT NULL AND jsonb_typeof(headers) <> 'object') THEN
        PERFORM pgflow._check_payload(message, headers);
    END IF;
    IF delay IS NULL OR delay < interval '0' OR delay > interval '100 years' THEN
        PERFORM pgflow._check_interval(delay, 'delay', true);
    END IF;
    IF octet_length(group_key) > 512 OR octet_length(dedup_key) > 512 THEN
        PERFORM pgflow._check_key(group_key, 'group_key');
        PERFORM pgflow._check_key(dedup_key, 'dedup_key');
    END IF;
    IF deliver_at > v_now + interval '100 years' THEN
        RAISE EXCEPTION 'deliver_at must be at most 100 years from now, got %', deliver_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF priority < -32768 OR priority > 32767 THEN
        PERFORM pgflow._check_priority(priority, 'priority');
    END IF;
    IF q.contract_version IS NOT NULL THEN
        PERFORM pgflow._check_contract(q, message, headers);
    END IF;
    IF deliver_at IS NOT NULL AND delay <> interval '0' THEN
        RAISE EXCEPTION 'give delay or deliver_at, not both' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_vt := greatest(v_now, coalesce(deliver_at, v_now + delay));
    v_priority := coalesce(send.priority, q.default_priority);
    v_id := nextval(q.msg_seq);
    IF q.forward_link IS NOT NULL THEN
        -- A forwarding rule (sql/links.sql): the message goes to the link's outbox, with what
        -- the remote queue needs to apply its own rules (priority, group, dedup, due time).
        PERFORM pgflow._forward_to(q.forward_link, q.forward_to, q.queue_name, v_id, NULL,
                                   send.message, send.headers, send.priority, send.group_key,
                                   send.dedup_key, CASE WHEN v_vt > v_now THEN v_vt END, v_now);
        RETURN v_id;
    END IF;
    IF dedup_key IS NOT NULL THEN
        -- A concurrent send with the same key waits here for the first one's transaction: if it
        -- commits, this send returns its id; if it rolls back, this send goes ahead.
        INSERT INTO pgflow.dedup AS k (queue_id, dedup_key, msg_id, expires_at)
        VALUES (q.queue_id, send.dedup_key, v_id, v_now + q.dedup_window)
        ON CONFLICT ON CONSTRAINT dedup_pkey DO UPDATE
           SET msg_id = EXCLUDED.msg_id, expires_at = EXCLUDED.expires_at
         WHERE k.expires_at <= v_now
        RETURNING k.msg_id INTO v_first;
        IF NOT FOUND THEN
            SELECT k.msg_id INTO v_first FROM pgflow.dedup k
             WHERE k.queue_id = q.queue_id AND k.dedup_key = send.dedup_key;
            RETURN v_first;
        END IF;
    END IF;
    v_state := CASE WHEN v_vt > v_now THEN 'd' ELSE 'r' END;
    IF send.group_key IS NOT NULL THEN
        v_state := pgflow._group_state(q.queue_id, send.group_key, v_state);
    END IF;
    INSERT INTO pgflow.message (queue_id, msg_id, enqueued_at, vt, priority, state, message,
                                headers, group_key)
    VALUES (q.queue_id, v_id, v_now, v_vt, v_priority, v_state, send.message, send.headers,
            send.group_key);
    IF v_state = 'r' THEN
        PERFORM pgflow._ready(q.queue_id, q.msg_seq::oid, v_priority, v_id);
    ELSIF v_state = 'd' THEN
        PERFORM pgflow._due_at(q.queue_id, q.msg_seq::oid, v_vt);
    END IF;
    PERFORM pgflow._announce(q.queue_id, q.queue_name, q.notify);
    RETURN v_id;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.send_batch(queue_name text, messages jsonb[], headers jsonb[] DEFAULT NULL::jsonb[], delay interval DEFAULT '00:00:00'::interval, priority integer DEFAULT NULL::integer)
 RETURNS SETOF bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'produce');
    v_now timestamptz := clock_timestamp();
    v_bad record;
    v_ids bigint[];
    v_priority smallint;
BEGIN
    PERFORM pgflow._require(messages, 'messages');
    IF array_ndims(messages) > 1 OR array_ndims(headers) > 1 THEN
        RAISE EXCEPTION 'messages and headers must be one-dimensional arrays'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pgflow._check_interval(delay, 'delay', true);
    PERFORM pgflow._check_priority(priority, 'priority');
    v_priority := coalesce(send_batch.priority, q.default_priority);
    IF headers IS NOT NULL AND cardinality(headers) <> cardinality(messages) THEN
        RAISE EXCEPTION 'headers has % elements but messages has %',
            cardinality(headers), cardinality(messages)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT m.ord, m.msg, h.hdr INTO v_bad
      FROM unnest(messages) WITH ORDINALITY AS m(msg, ord)
      LEFT JOIN unnest(headers) WITH ORDINALITY AS h(hdr, ord) USING (ord)
     WHERE m.msg IS NULL OR jsonb_typeof(m.msg) <> 'object'
        OR (h.hdr IS NOT NULL AND jsonb_typeof(h.hdr) <> 'object')
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'messages[%]: %', v_bad.ord,
            CASE WHEN v_bad.msg IS NULL THEN 'message must not be NULL'
                 WHEN jsonb_typeof(v_bad.msg) <> 'object' THEN 'message must be a JSON object, got ' || jsonb_typeof(v_bad.msg)
                 ELSE 'headers must be a JSON object or NULL, got ' || jsonb_typeof(v_bad.hdr) END
            USING ERRCODE = CASE WHEN v_bad.msg IS NULL THEN 'null_value_not_allowed'
                                 ELSE 'invalid_parameter_value' END;
    END IF;

    IF q.contract_version IS NOT NULL THEN
        -- Paired by position, as they are stored (not by subscript: an array may start at any
        -- index); messages[n] in an error is the n-th element.
        FOR v_bad IN SELECT m.ord, m.msg, h.hdr
                       FROM unnest(messages) WITH ORDINALITY AS m(msg, ord)
                       LEFT JOIN unnest(headers) WITH ORDINALITY AS h(hdr, ord) USING (ord)
                      ORDER BY m.ord LOOP
            PERFORM pgflow._check_contract(q, v_bad.msg, v_bad.hdr, v_bad.ord::integer);
        END LOOP;
    END IF;
    IF q.forward_link IS NOT NULL THEN
        -- A forwarding rule (sql/links.sql): each message to the link's outbox, in input order.
        RETURN QUERY
        SELECT pgflow._send_forwarded(q, m.msg, h.hdr, send_batch.priority, v_now, delay)
          FROM unnest(messages) WITH ORDINALITY AS m(msg, ord)
          LEFT JOIN unnest(headers) WITH ORDINALITY AS h(hdr, ord) USING (ord)
         ORDER BY m.ord;
        RETURN;
    END IF;
    PERFORM pgflow._announce(q.queue_id, q.queue_name, q.notify);
    -- Ids are drawn in input order (ORDER BY ord before nextval), then returned in that order.
    WITH input AS (
        SELECT m.msg, h.hdr, m.ord
          FROM unnest(messages) WITH ORDINALITY AS m(msg, ord)
          LEFT JOIN unnest(headers) WITH ORDINALITY AS h(hdr, ord) USING (ord)
         ORDER BY m.ord
    ), numbered AS (
        SELECT nextval(q.msg_seq) AS id, i.* FROM input i
    ), inserted AS (
        INSERT INTO pgflow.message (queue_id, msg_id, enqueued_at, vt, priority, state,
                                    message, headers)
        SELECT q.queue_id, n.id, v_now, v_now + delay, v_priority,
               CASE WHEN delay > interval '0' THEN 'd' ELSE 'r' END, n.msg, n.hdr
          FROM numbered n
        RETURNING msg_id
    )
    SELECT array_agg(n.id ORDER BY n.ord) INTO v_ids FROM numbered n;
    -- One note for the whole batch, for the claim cursor (its lowest key: every message has
    -- the same priority) or the due time (the same for all); see src/ipc/cursor/.
    IF cardinality(v_ids) > 0 THEN
        IF delay > interval '0' THEN
            PERFORM pgflow._due_at(q.queue_id, q.msg_seq::oid, v_now + delay);
        ELSE
            PERFORM pgflow._ready(q.queue_id, q.msg_seq::oid, v_priority, v_ids[1]);
        END IF;
    END IF;
    RETURN QUERY SELECT unnest(v_ids);
END $function$;

CREATE OR REPLACE FUNCTION pgflow.set_site(site_name text)
 RETURNS text
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    v_old text;
BEGIN
    PERFORM pgflow._check_link_admin('set the site name');
    PERFORM pgflow._require(site_name, 'site_name');
    IF site_name !~ '^[a-z0-9][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'site_name must be 1 to 40 lower-case letters, digits and _, starting with a letter or digit, got "%"', site_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT s.site_name INTO v_old FROM pgflow.site s FOR UPDATE;
    IF v_old IS DISTINCT FROM site_name AND EXISTS (SELECT 1 FROM pgflow.link) THEN
        RAISE EXCEPTION 'this site has links: its name "%" cannot change', v_old
            USING ERRCODE = 'object_in_use', HINT = 'Drop its links first (pgflow.link_drop).';
    END IF;
    INSERT INTO pgflow.site AS s (site_name) VALUES (set_site.site_name)
    ON CONFLICT (only_row) DO UPDATE SET site_name = EXCLUDED.site_name, set_at = now();
    RETURN v_old;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.unforward(queue_name text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
BEGIN
    PERFORM pgflow._check_link_admin('unforward a queue');
    UPDATE pgflow.queue u SET forward_link = NULL, forward_to = NULL
     WHERE u.queue_id = q.queue_id AND u.forward_link IS NOT NULL;
    RETURN FOUND;
END $function$;

CREATE OR REPLACE FUNCTION pgflow.unforward_topic(pattern text, link_name text, remote_queue text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
DECLARE
    v_link integer;
BEGIN
    PERFORM pgflow._check_link_admin('remove a topic rule');
    PERFORM pgflow._require(pattern, 'pattern');
    IF link_name IS NOT NULL THEN
        v_link := (pgflow._link(link_name)).link_id;
    END IF;
    DELETE FROM pgflow.link_rule r
     WHERE r.pattern = unforward_topic.pattern AND r.link_id IS NOT DISTINCT FROM v_link
       AND r.remote_queue = unforward_topic.remote_queue;
    RETURN FOUND;
END $function$;

CREATE OR REPLACE FUNCTION pgflow._metrics(p_queue_id integer, p_now timestamp with time zone, p_exact boolean)
 RETURNS SETOF pgflow.queue_metrics
 LANGUAGE sql
AS $function$
    SELECT q.queue_name,
           coalesce(st.ready + st.delayed + st.in_flight + st.waiting, s.length, 0),
           coalesce(st.ready, s.visible, 0),
           coalesce(st.in_flight, s.in_flight, 0),
           coalesce(st.delayed, s.delayed, 0),
           extract(epoch FROM p_now - coalesce(s.oldest, o.oldest))::double precision,
           extract(epoch FROM p_now - coalesce(s.newest, o.newest))::double precision,
           coalesce(pg_catalog.pg_sequence_last_value(q.msg_seq) - q.ids_skipped, 0),
           coalesce(pg_catalog.pg_sequence_last_value(q.archived_seq), 0),
           coalesce(st.archived_rows, (SELECT count(*) FROM pgflow.archive a WHERE a.queue_id = q.queue_id)),
           coalesce(st.dead, (SELECT count(*) FROM pgflow.dead d WHERE d.queue_id = q.queue_id)),
           p_now,
           coalesce(st.waiting, s.waiting, 0),
           -- A holder whose transaction began after p_now (it started during this call) has
           -- held for no time yet: never a negative age.
           greatest(extract(epoch FROM p_now - h.since), 0)::double precision,
           h.holder || coalesce(' ' || h.pid, '') || ': ' || h.detail,
           st.ready IS NULL,
           c.sent, c.delivered, c.archived, c.deleted, c.nacked, c.expired, c.dead_lettered,
           c.redriven, c.wait_p50, c.wait_p99, c.end_to_end_p50, c.end_to_end_p99, c.reset_at,
           c.processing_p50, c.processing_p99,
           extract(epoch FROM p_now - coalesce(s.oldest_ready, st.oldest_ready_at))::double precision
      FROM pgflow.queue q
      -- The oldest holder of the horizon, looked up once for all queues.
      LEFT JOIN (SELECT * FROM pgflow.horizon() LIMIT 1) h ON true
      LEFT JOIN LATERAL (SELECT * FROM pgflow._stats(q.queue_id)) c ON true
      -- The gauges, when they are exact and wanted.
      LEFT JOIN LATERAL (SELECT c.ready, c.delayed, c.in_flight, c.waiting, c.dead, c.archived_rows,
                                c.oldest_ready_at
                          WHERE c.valid AND NOT p_exact) st ON true
      -- Otherwise the rows, counted (the WHERE on st is a one-time filter: no scan when the
      -- gauges are used).
      LEFT JOIN LATERAL (
        SELECT count(*) AS length,
               count(*) FILTER (WHERE m.state = 'r' OR (m.state = 'd' AND m.vt <= p_now)) AS visible,
               -- A lease that ran out stays in flight until the retry policy has run on it.
               count(*) FILTER (WHERE m.state = 'l') AS in_flight,
               count(*) FILTER (WHERE m.state = 'd' AND m.vt > p_now) AS delayed,
               count(*) FILTER (WHERE m.state = 'g') AS waiting,
               min(m.enqueued_at) AS oldest,
               max(m.enqueued_at) AS newest,
               min(m.enqueued_at) FILTER (WHERE m.state = 'r') AS oldest_ready
          FROM pgflow.message m
         WHERE m.queue_id = q.queue_id AND st.ready IS NULL
      ) s ON true
      -- With the gauges: the oldest and newest live message by id, one index probe each.
      LEFT JOIN LATERAL (
        SELECT (SELECT m.enqueued_at FROM pgflow.message m WHERE m.queue_id = q.queue_id
                 ORDER BY m.msg_id LIMIT 1) AS oldest,
               (SELECT m.enqueued_at FROM pgflow.message m WHERE m.queue_id = q.queue_id
                 ORDER BY m.msg_id DESC LIMIT 1) AS newest
         WHERE st.ready IS NOT NULL
      ) o ON true
     -- Every queue the caller sees (metrics_all), or the one metrics checked.
     WHERE (p_queue_id IS NULL AND pgflow._visible(q.queue_id)) OR q.queue_id = p_queue_id
     ORDER BY q.queue_name;
$function$;

CREATE OR REPLACE FUNCTION pgflow.horizon()
 RETURNS SETOF pgflow.horizon_holder
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgflow', 'pg_temp'
AS $function$
    SELECT h.* FROM (
        SELECT CASE WHEN a.backend_type = 'walsender' THEN 'standby' ELSE 'backend' END,
               a.pid,
               greatest(pg_catalog.age(a.backend_xmin), pg_catalog.age(a.backend_xid)),
               a.xact_start,
               -- The query's start only for a role that pg_stat_activity shows it to (a
               -- member of pg_read_all_stats, or of the backend's role): metrics() shows this
               -- to every role that sees the queue.
               pg_catalog.concat_ws(' ', a.usename, '(' || a.state || ')',
                                    CASE WHEN pgflow._sees_activity_of(a.usesysid)
                                         THEN pg_catalog.left(a.query, 80) END)
          FROM pg_catalog.pg_stat_activity a
         WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
           AND a.pid <> pg_catalog.pg_backend_pid()
           -- pgflow's own processes hold a snapshot for the length of a round: not worth
           -- naming unless one lasts (a stuck round, an index rebuild).
           AND NOT (a.backend_type LIKE 'pgflow %'
                    AND a.xact_start > pg_catalog.clock_timestamp() - interval '10 seconds')
           AND (a.datname = pg_catalog.current_database() OR a.backend_type = 'walsender')
        UNION ALL
        SELECT 'replication slot', s.active_pid, pg_catalog.age(s.xmin), NULL::timestamptz,
               s.slot_name || ' (' || s.slot_type || CASE WHEN s.active THEN ', active)'
                                                     ELSE ', inactive)' END
          FROM pg_catalog.pg_replication_slots s
         WHERE s.xmin IS NOT NULL
        UNION ALL
        SELECT 'prepared transaction', NULL::integer, pg_catalog.age(p.transaction), p.prepared,
               p.gid || ' (' || p.owner || ')'
          FROM pg_catalog.pg_prepared_xacts p
         WHERE p.database = pg_catalog.current_database()
    ) AS h(holder, pid, xmin_age, since, detail)
     ORDER BY h.xmin_age DESC, h.since;
$function$;


-- Constraints that changed.
ALTER TABLE pgflow.queue DROP CONSTRAINT queue_max_retries_check;
ALTER TABLE pgflow.queue ADD CONSTRAINT queue_max_retries_check CHECK (((max_retries >= 0) AND (max_retries <= 1000)));

-- Comments.
COMMENT ON table pgflow.link IS 'pgflow links to other sites; use pgflow.link_create/link_drop/links.';
COMMENT ON table pgflow.link_outbox IS 'pgflow messages waiting to be forwarded over a link.';
COMMENT ON table pgflow.link_refused IS 'Forwarded messages this site refused, with the reason.';
COMMENT ON table pgflow.site IS 'This pgflow site''s name; use pgflow.set_site().';
-- Hand-written steps (scripts/upgrade-steps/0.2.0--0.3.0.sql, after the drafted part): the
-- triggers of the new table pgflow.link_outbox, and when the triggers fire, as sql/links.sql
-- sets them.
CREATE TRIGGER link_arrive BEFORE INSERT ON pgflow.link_outbox
    FOR EACH ROW EXECUTE FUNCTION pgflow._link_arrive();
ALTER TABLE pgflow.link_outbox ENABLE REPLICA TRIGGER link_arrive;
CREATE TRIGGER link_outbox_guard BEFORE INSERT ON pgflow.link_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION pgflow._link_outbox_guard();
ALTER TABLE pgflow.message ENABLE ALWAYS TRIGGER message_stats;
ALTER TABLE pgflow.message ENABLE ALWAYS TRIGGER message_group_advance;
ALTER TABLE pgflow.archive ENABLE ALWAYS TRIGGER archive_stats;
ALTER TABLE pgflow.dead ENABLE ALWAYS TRIGGER dead_stats;

-- sql/finalize.sql, as at the end of the install script.
-------------------------------------------------------------------------------------------------
-- search_path: every function that code outside pgflow can enter pins it (pg_catalog, pgflow,
-- pg_temp), so that no caller's path (a session's, a database default's, the worker's) can put
-- another schema's function or operator in front of pg_catalog's. An exact-type function
-- planted in public beats pg_catalog's VARIADIC "any" one, whatever the path's order: the only
-- defence is public not being on the path at all (docs/design.md, "search_path"). Those are the
-- user-facing functions and the trigger function. The internal `_` functions run only inside
-- them, under the path they pinned: no role but pgflow_owner may execute one (the grants
-- below). They have no SET clause of their own because a nested one costs every call a save
-- and restore of the setting: on 15, a send's backend CPU grew 7% with every SQL and PL/pgSQL
-- function pinned, 15% with the C functions too, and 1% with the entry points alone
-- (docs/design.md). The regression test `hardening` checks both halves and plants the shadows.
--
-- The statements are built from catalog identities (regprocedure prints a qualified, quoted
-- signature), never from a user's string.
-------------------------------------------------------------------------------------------------
DO $pin$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace OPERATOR(pg_catalog.=) 'pgflow'::pg_catalog.regnamespace
                -- A trigger written in C runs no SQL: nothing to pin (and no SET to pay per row).
                AND (NOT pg_catalog.starts_with(p.proname::pg_catalog.text, '_') OR (p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype
                                                   AND p.prolang <> (SELECT l.oid FROM pg_catalog.pg_language l
                                                                      WHERE l.lanname = 'c')))
              ORDER BY p.oid LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pgflow, pg_temp', f);
    END LOOP;
END
$pin$;

-------------------------------------------------------------------------------------------------
-- Roles and ownership (docs/operations.md, "Roles and grants"). Five NOLOGIN roles, created
-- when missing (roles belong to the cluster: a second database's install finds them, and
-- DROP EXTENSION leaves them):
--   pgflow_owner     owns every pgflow object and nothing else, and is no superuser. The
--                    user-facing functions are SECURITY DEFINER, so they run as this role;
--                    so do the worker's rounds. It may read every backend's statistics
--                    (pg_read_all_stats), for horizon().
--   pgflow_producer  may call the producing functions; pgflow_consumer the consuming ones;
--                    both the read-only ones, and the functions a per-queue 'admin' grant
--                    allows. Which queues: their per-queue grants (pgflow.grant).
--   pgflow_admin     may call every user-facing function, on every queue.
--   pgflow_link_receiver  may INSERT into pgflow.link_outbox, for a link's subscription owned by
--                    a role without superuser (16 and later, run_as_owner = true); only an
--                    apply's insert gets through (the guard trigger), and what it sends needs
--                    that role's produce grants (sql/links.sql). Five roles in all.
-- PUBLIC may call nothing and reaches no table. pg_monitor may call the observing functions
-- and sees every queue's figures. This block is also the last step of every upgrade script
-- (tests/upgrade/upgrade.sh appends it), so an upgraded install ends exactly like a fresh one;
-- it may run again.
-------------------------------------------------------------------------------------------------
DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['pgflow_owner', 'pgflow_producer', 'pgflow_consumer', 'pgflow_admin',
                             'pgflow_link_receiver'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                    WHERE m.roleid = 'pg_read_all_stats'::regrole AND m.member = 'pgflow_owner'::regrole) THEN
        GRANT pg_read_all_stats TO pgflow_owner;
    END IF;
END
$roles$;

DO $own$
DECLARE
    o record;
BEGIN
    ALTER SCHEMA pgflow OWNER TO pgflow_owner;
    -- Tables carry their indexes and the sequences they own; then the other sequences
    -- (per-queue ones included), the composite types and the functions.
    FOR o IN SELECT c.oid::regclass AS rel, c.relkind
               FROM pg_catalog.pg_class c
              WHERE c.relnamespace OPERATOR(pg_catalog.=) 'pgflow'::pg_catalog.regnamespace AND c.relkind IN ('r', 'S')
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                 WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                                   AND d.deptype IN ('a', 'i'))
              ORDER BY c.relkind, c.oid LOOP
        EXECUTE pg_catalog.format(CASE o.relkind WHEN 'r' THEN 'ALTER TABLE %s OWNER TO pgflow_owner'
                                                 ELSE 'ALTER SEQUENCE %s OWNER TO pgflow_owner' END, o.rel);
    END LOOP;
    FOR o IN SELECT t.oid::regtype AS typ
               FROM pg_catalog.pg_type t JOIN pg_catalog.pg_class c ON c.oid = t.typrelid
              WHERE t.typnamespace OPERATOR(pg_catalog.=) 'pgflow'::pg_catalog.regnamespace AND c.relkind = 'c'
              ORDER BY t.oid LOOP
        EXECUTE pg_catalog.format('ALTER TYPE %s OWNER TO pgflow_owner', o.typ);
    END LOOP;
    FOR o IN SELECT p.oid::regprocedure AS fn, p.proname
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace OPERATOR(pg_catalog.=) 'pgflow'::pg_catalog.regnamespace
              ORDER BY p.oid LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO pgflow_owner', o.fn);
        -- Every user-facing function but worker_status (which reads shared memory and checks
        -- the caller itself) runs as the owner;
        -- the internal ones run as their caller, which is then the owner; link_arrive, the
        -- trigger of a link's apply, runs as the owner too (sql/links.sql says why).
        EXECUTE pg_catalog.format(CASE WHEN (pg_catalog.starts_with(o.proname::pg_catalog.text, '_') AND o.proname <> '_link_arrive')
                                            OR o.proname = 'worker_status'
                                       THEN 'ALTER FUNCTION %s SECURITY INVOKER'
                                       ELSE 'ALTER FUNCTION %s SECURITY DEFINER' END, o.fn);
    END LOOP;
END
$own$;

REVOKE ALL ON SCHEMA pgflow FROM PUBLIC;
GRANT USAGE ON SCHEMA pgflow TO pgflow_producer, pgflow_consumer, pgflow_admin, pg_monitor;
REVOKE ALL ON ALL TABLES IN SCHEMA pgflow FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA pgflow FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA pgflow FROM PUBLIC;
GRANT INSERT ON pgflow.link_outbox TO pgflow_link_receiver;

DO $grants$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT p.oid::regprocedure AS fn, r.role
               FROM pg_catalog.pg_proc p
               JOIN (VALUES
                   ('pgflow_producer', ARRAY['send', 'send_batch', 'publish']),
                   ('pgflow_consumer', ARRAY['read', 'pop', 'archive', 'archive_read', 'delete',
                                             'set_vt', 'nack', 'list_pending']),
                   ('pgflow_producer', ARRAY['list_queues', 'metrics', 'metrics_all', 'metrics_text', 'list_contracts',
                                             'list_bindings', 'retry_schedule', 'worker_status']),
                   ('pgflow_consumer', ARRAY['list_queues', 'metrics', 'metrics_all', 'metrics_text', 'list_contracts',
                                             'list_bindings', 'retry_schedule', 'worker_status']),
                   ('pg_monitor', ARRAY['list_queues', 'metrics', 'metrics_all', 'metrics_text', 'list_bindings', 'links',
                                        'worker_status', 'horizon', 'cursor_status']),
                   -- A per-queue 'admin' grant needs these too (each checks that grant itself).
                   ('pgflow_producer', ARRAY['alter_queue', 'purge_queue', 'drop_queue', 'dlq_list', 'dlq_list_all',
                                             'dlq_delete', 'dlq_retry', 'dlq_purge', 'set_contract',
                                             'drop_contract', 'bind', 'unbind']),
                   ('pgflow_consumer', ARRAY['alter_queue', 'purge_queue', 'drop_queue', 'dlq_list', 'dlq_list_all',
                                             'dlq_delete', 'dlq_retry', 'dlq_purge', 'set_contract',
                                             'drop_contract', 'bind', 'unbind']))
                 AS r(role, names) ON p.proname = ANY (r.names)
              WHERE p.pronamespace OPERATOR(pg_catalog.=) 'pgflow'::pg_catalog.regnamespace
             UNION ALL
             SELECT p.oid::regprocedure, 'pgflow_admin'
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace OPERATOR(pg_catalog.=) 'pgflow'::pg_catalog.regnamespace AND NOT pg_catalog.starts_with(p.proname::pg_catalog.text, '_')
              ORDER BY 1, 2 LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', g.fn, g.role);
    END LOOP;
END
$grants$;

-------------------------------------------------------------------------------------------------
-- Last: ask the launcher for this database's worker once CREATE EXTENSION commits (a no-op
-- when pgflow is not in shared_preload_libraries).
-------------------------------------------------------------------------------------------------
SELECT pgflow._worker_wake();
