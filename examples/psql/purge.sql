-- Operator: purge. Dead letters of a queue (optionally only those older than a time), or,
-- with -v live=1, every live message of the queue (the archive is kept).
--   psql -v queue=patterns_for_aggregator_queue -f examples/psql/purge.sql
--   psql -v queue=patterns_for_aggregator_queue -v older_than="'2026-11-01'" -f examples/psql/purge.sql
--   psql -v queue=code_execution_requests -v live=1 -f examples/psql/purge.sql
\set ON_ERROR_STOP on
\pset footer off
\if :{?queue}
\else
\echo 'usage: psql -v queue=NAME [-v older_than="''TIME''"] [-v live=1] -f examples/psql/purge.sql'
\quit
\endif
\if :{?live}
SELECT pgflow.purge_queue(:'queue') AS live_messages_deleted;
\elif :{?older_than}
SELECT pgflow.dlq_purge(:'queue', :older_than) AS dead_letters_purged;
\else
SELECT pgflow.dlq_purge(:'queue') AS dead_letters_purged;
\endif
