-- Operator: every queue at a glance, the background workers, and what holds back VACUUM.
--   psql -f examples/psql/queues.sql
\pset footer off
SELECT queue_name, queue_length, visible, in_flight, delayed, waiting, dlq_length,
       round(oldest_msg_age_sec::numeric, 1) AS oldest_age_s, total_messages, total_archived
  FROM pgflow.metrics_all();
SELECT queue_name, max_retries, retry_delay, visibility_timeout, default_priority,
       archive_retention, notify, contract_version
  FROM pgflow.list_queues();
SELECT datname, state, pid, last_tick_at, ticks, expired, promoted, pruned, restarts, detail
  FROM pgflow.worker_status();
-- What holds back the xmin horizon (dead rows stay until it ends; docs/operations.md).
SELECT holder, pid, xmin_age, now() - since AS held_for, detail
  FROM pgflow.horizon();
