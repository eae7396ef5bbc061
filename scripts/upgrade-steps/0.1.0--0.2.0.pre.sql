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
