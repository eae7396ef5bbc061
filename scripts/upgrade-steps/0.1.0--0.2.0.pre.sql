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
