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
