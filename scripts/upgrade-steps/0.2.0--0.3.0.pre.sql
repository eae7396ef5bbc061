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
