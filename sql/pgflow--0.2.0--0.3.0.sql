-- pgflow 0.2.0 -> 0.3.0: ALTER EXTENSION pgflow UPDATE.
-- Drafted by scripts/upgrade_sql.py from catalog snapshots of fresh 0.2.0 and 0.3.0 installs
-- (tests/upgrade/upgrade.sh 15 PORT --generate); tests/upgrade/upgrade.sh checks it on every
-- Postgres version: the upgraded catalog equals a fresh install's, every row survives.
\echo Use "ALTER EXTENSION pgflow UPDATE" to load this file. \quit

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

-- Tables: columns appended (nullable with no default, or NOT NULL with a constant default:
-- no row is rewritten). Their CHECKs come with the constraints below.
-- Functions 0.2.0 no longer has, or whose arguments or result changed.

-- Composite types: new ones, and attributes appended to existing ones.

-- Functions, new or changed (C, PL/pgSQL, SQL, then BEGIN ATOMIC bodies).
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
-- Roles and ownership (docs/operations.md, "Roles and grants"). Four NOLOGIN roles, created
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
        -- the caller itself) runs as the owner; the internal ones run as their caller, which
        -- is then the owner.
        EXECUTE pg_catalog.format(CASE WHEN pg_catalog.starts_with(o.proname::pg_catalog.text, '_') OR o.proname = 'worker_status'
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
