-- Operator: the dead-letter queue of one queue, or of every queue.
--   psql -v queue=patterns_for_aggregator_queue -f examples/psql/dlq.sql
--   psql -f examples/psql/dlq.sql                     (all queues)
\pset footer off
\if :{?queue}
SELECT msg_id, read_ct, died_at, reason, first_error, last_error, message
  FROM pgflow.dlq_list(:'queue', 1000);
\else
SELECT q.queue_name, d.msg_id, d.read_ct, d.died_at, d.reason, d.last_error
  FROM pgflow.list_queues() q, LATERAL pgflow.dlq_list(q.queue_name, 1000) d
 ORDER BY d.died_at;
\endif
