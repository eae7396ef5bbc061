-- Operator: move dead letters back into their queue (new ids, fresh attempts), in one
-- transaction. All of a queue's dead letters, or one:
--   psql -v queue=patterns_for_aggregator_queue -f examples/psql/redrive.sql
--   psql -v queue=patterns_for_aggregator_queue -v msg_id=7 -f examples/psql/redrive.sql
\set ON_ERROR_STOP on
\pset footer off
\if :{?queue}
\else
\echo 'usage: psql -v queue=NAME [-v msg_id=ID] -f examples/psql/redrive.sql'
\quit
\endif
\if :{?msg_id}
SELECT dead_msg_id, msg_id AS new_msg_id FROM pgflow.dlq_retry(:'queue', ARRAY[:msg_id]::bigint[]);
\else
SELECT dead_msg_id, msg_id AS new_msg_id FROM pgflow.dlq_retry(:'queue');
\endif
