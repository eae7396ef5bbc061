-- Every stored row of pgflow and every id sequence's position, in a fixed order: the upgrade
-- must leave this output unchanged.
\pset format unaligned
\pset footer off
-- up_poison's settings are clamped by the update on purpose (fill.sql, api.sql).
-- 0.1.0's columns (0.2.0 appends the alert thresholds, NULL after the update, and
-- session_leases, false; and message.holder, NULL).
SELECT 'queue', q.queue_id, q.queue_name, q.visibility_timeout, q.max_retries, q.retry_delay,
       q.retry_backoff, q.retry_delay_max, q.retry_jitter, q.archive_retention, q.default_priority,
       q.dedup_window, q.notify, q.contract_version, q.msg_seq, q.archived_seq, q.created_at
  FROM pgflow.queue q WHERE q.queue_name <> 'up_poison' ORDER BY queue_id;
SELECT 'message', m.queue_id, m.read_ct, m.msg_id, m.enqueued_at, m.vt, m.priority, m.state,
       m.group_key, m.message, m.headers, m.errors
  FROM pgflow.message m ORDER BY queue_id, msg_id;
SELECT 'archive', a.* FROM pgflow.archive a ORDER BY queue_id, msg_id;
SELECT 'dead', d.* FROM pgflow.dead d ORDER BY queue_id, msg_id;
SELECT 'dedup', k.* FROM pgflow.dedup k ORDER BY queue_id, dedup_key;
SELECT 'contract', c.* FROM pgflow.contract c ORDER BY queue_id, version;
SELECT 'binding', b.* FROM pgflow.binding b ORDER BY pattern, queue_id;
SELECT 'sequence', q.queue_name, pg_catalog.pg_sequence_last_value(q.msg_seq),
       pg_catalog.pg_sequence_last_value(q.archived_seq)
  FROM pgflow.queue q WHERE q.queue_name <> 'up_poison' ORDER BY queue_id;
SELECT 'sequence', pg_catalog.pg_sequence_last_value('pgflow.queue_queue_id_seq'),
       pg_catalog.pg_sequence_last_value('pgflow.contract_revision');
