-------------------------------------------------------------------------------------------------
-- search_path: every function that resolves a name pins it, so that no caller's path (a
-- session's, a database default's, the worker's) can put another schema's function or operator
-- in front of pg_catalog's. An exact-type function planted in public beats pg_catalog's
-- VARIADIC "any" one, whatever the path's order: the only defence is public not being on the
-- path at all (docs/design.md, "search_path"). That is every SQL and PL/pgSQL function, and the
-- C function that runs SQL (_validate_contract reads the contract table). The other C functions
-- run no SQL and resolve no name; a SET clause would cost each call a save and restore of the
-- setting (they sit on the per-message path), so they are left as they are. The regression test
-- `search_path` checks this list and plants the shadows.
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
                AND (p.prolang <> (SELECT l.oid FROM pg_catalog.pg_language l WHERE l.lanname = 'c')
                     OR p.proname = '_validate_contract')
              ORDER BY p.oid LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pgflow, pg_temp', f);
    END LOOP;
END
$pin$;

-------------------------------------------------------------------------------------------------
-- Last: ask the launcher for this database's worker once CREATE EXTENSION commits (a no-op
-- when pgflow is not in shared_preload_libraries).
-------------------------------------------------------------------------------------------------
SELECT pgflow._worker_wake();
