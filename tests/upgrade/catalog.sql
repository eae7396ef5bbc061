-- Every object of extension pgflow in this database, one row each (kind, identity,
-- definition), sorted: what an upgraded install and a fresh one must share exactly. Used by
-- tests/upgrade/upgrade.sh and scripts/upgrade_sql.py.
WITH members AS (
    SELECT d.classid, d.objid
      FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
     WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
       AND e.extname = 'pgflow'
), rels AS (
    SELECT c.oid FROM pg_catalog.pg_class c
      JOIN members m ON m.classid = 'pg_catalog.pg_class'::regclass AND m.objid = c.oid
)
SELECT kind, ident, def FROM (
    SELECT 'member' AS kind, pg_catalog.pg_describe_object(m.classid, m.objid, 0) AS ident, '' AS def
      FROM members m
    UNION ALL
    SELECT 'function', p.oid::regprocedure::text, pg_catalog.pg_get_functiondef(p.oid)
      FROM pg_catalog.pg_proc p
      JOIN members m ON m.classid = 'pg_catalog.pg_proc'::regclass AND m.objid = p.oid
    UNION ALL
    SELECT 'acl', pg_catalog.pg_describe_object(m.classid, m.objid, 0),
           coalesce((SELECT p.proacl::text FROM pg_catalog.pg_proc p WHERE m.classid = 'pg_catalog.pg_proc'::regclass AND p.oid = m.objid),
                    (SELECT c.relacl::text FROM pg_catalog.pg_class c WHERE m.classid = 'pg_catalog.pg_class'::regclass AND c.oid = m.objid),
                    (SELECT n.nspacl::text FROM pg_catalog.pg_namespace n WHERE m.classid = 'pg_catalog.pg_namespace'::regclass AND n.oid = m.objid),
                    '')
      FROM members m
    UNION ALL
    SELECT 'owner', pg_catalog.pg_describe_object(m.classid, m.objid, 0),
           coalesce((SELECT p.proowner::regrole::text || CASE WHEN p.prosecdef THEN ' definer' ELSE '' END
                       FROM pg_catalog.pg_proc p WHERE m.classid = 'pg_catalog.pg_proc'::regclass AND p.oid = m.objid),
                    (SELECT c.relowner::regrole::text FROM pg_catalog.pg_class c WHERE m.classid = 'pg_catalog.pg_class'::regclass AND c.oid = m.objid),
                    (SELECT n.nspowner::regrole::text FROM pg_catalog.pg_namespace n WHERE m.classid = 'pg_catalog.pg_namespace'::regclass AND n.oid = m.objid),
                    (SELECT t.typowner::regrole::text FROM pg_catalog.pg_type t WHERE m.classid = 'pg_catalog.pg_type'::regclass AND t.oid = m.objid),
                    '')
      FROM members m
    UNION ALL
    SELECT 'type', t.oid::regtype::text,
           coalesce((SELECT string_agg(a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
                       FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped), t.typtype::text)
      FROM pg_catalog.pg_type t
      JOIN members m ON m.classid = 'pg_catalog.pg_type'::regclass AND m.objid = t.oid
    UNION ALL
    SELECT 'relation', c.oid::regclass::text,
           c.relkind::text || ': ' || coalesce((
               SELECT string_agg(a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod)
                                 || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                                 || coalesce(' default ' || pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), '')
                                 || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END,
                                 ', ' ORDER BY a.attnum)
                 FROM pg_catalog.pg_attribute a
                 LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
      FROM pg_catalog.pg_class c JOIN rels r ON r.oid = c.oid
    UNION ALL
    SELECT 'index', i.indexrelid::regclass::text, pg_catalog.pg_get_indexdef(i.indexrelid)
      FROM pg_catalog.pg_index i JOIN rels r ON r.oid = i.indrelid
    UNION ALL
    SELECT 'constraint', con.conrelid::regclass::text || '.' || con.conname, pg_catalog.pg_get_constraintdef(con.oid)
      FROM pg_catalog.pg_constraint con JOIN rels r ON r.oid = con.conrelid
    UNION ALL
    SELECT 'trigger', t.tgrelid::regclass::text || '.' || t.tgname, pg_catalog.pg_get_triggerdef(t.oid)
      FROM pg_catalog.pg_trigger t JOIN rels r ON r.oid = t.tgrelid
     WHERE NOT t.tgisinternal
    UNION ALL
    -- When each fires (O origin, A always, R replica, D disabled): a separate kind, which the
    -- upgrade's hand-written steps set (ALTER TABLE ... ENABLE ALWAYS TRIGGER).
    SELECT 'trigger_mode', t.tgrelid::regclass::text || '.' || t.tgname, t.tgenabled::text
      FROM pg_catalog.pg_trigger t JOIN rels r ON r.oid = t.tgrelid
     WHERE NOT t.tgisinternal
    UNION ALL
    SELECT 'comment', pg_catalog.pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description
      FROM pg_catalog.pg_description d
      JOIN members m ON m.classid = d.classoid AND m.objid = d.objoid
    UNION ALL
    SELECT 'config', x.cfg::regclass::text, coalesce(x.cond, '')
      FROM pg_catalog.pg_extension e,
           unnest(e.extconfig, e.extcondition) AS x(cfg, cond)
     WHERE e.extname = 'pgflow'
) o
ORDER BY kind, ident, def;
