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
