-- Plans made on stale statistics (sql/internal.sql, "Id spans"). A queue's statistics are taken
-- when autovacuum happens to look, often while the queue is nearly empty; PL/pgSQL then keeps a
-- generic plan for the session. On such statistics the verbs that find messages by a list of
-- ids used to scan the queue's whole primary-key range and filter the ids, so that one round
-- of a consumer read every entry of the queue (20,000 here, tens of thousands of dead ones in
-- bench W10 under a held snapshot). Each verb here runs with generic plans, on statistics
-- taken when the queue held 3 messages, against a queue of 20,000, and must read no more
-- primary-key entries than a few batches' worth. The counts are this transaction's own
-- (pg_stat_get_xact_tuples_returned), so nothing depends on timing.
\set VERBOSITY terse
CREATE DATABASE pgflow_plans;
-- No worker (it would promote and expire on the real clock, as in pgflow_regress).
ALTER DATABASE pgflow_plans SET pgflow.enabled = off;
\c pgflow_plans
SET client_min_messages = warning;
CREATE EXTENSION pgflow;
RESET client_min_messages;
SELECT pgflow.create_queue('q', max_retries => 1, retry_delay => '0', retry_jitter => 0);
SELECT count(pgflow.send('q', '{}')) FROM generate_series(1, 3);
ANALYZE pgflow.message;
SELECT count(*) AS sent FROM pgflow.send_batch('q', array(SELECT '{}'::jsonb FROM generate_series(1, 20000)));
SET plan_cache_mode = force_generic_plan;
-- Primary-key entries this transaction has read so far, and the ids in flight.
CREATE FUNCTION pg_temp.entries() RETURNS bigint LANGUAGE sql
AS $$ SELECT pg_stat_get_xact_tuples_returned('pgflow.message_pkey'::regclass) $$;
CREATE FUNCTION pg_temp.held(deliveries integer) RETURNS int8[] LANGUAGE sql
AS $$ SELECT array_agg(msg_id ORDER BY msg_id) FROM pgflow.message WHERE state = 'l' AND read_ct = deliveries $$;

-- read: the claim finds its batch's rows by id.
BEGIN;
SELECT pg_temp.entries() AS before \gset
SELECT count(*) AS read FROM pgflow.read('q', '30 s', 10);
SELECT pg_temp.entries() - :before < 500 AS read_walks_its_batch;
COMMIT;
SELECT pg_temp.held(1) AS held \gset

-- archive_read: archives the last batch and claims the next.
BEGIN;
SELECT pg_temp.entries() AS before \gset
SELECT count(*) AS read FROM pgflow.archive_read('q', :'held', '30 s', 10);
SELECT pg_temp.entries() - :before < 500 AS archive_read_walks_its_batches;
COMMIT;
SELECT pg_temp.held(1) AS held \gset

-- archive, delete, nack (a retry, then a dead letter) and pop.
BEGIN;
SELECT pg_temp.entries() AS before \gset
SELECT count(*) AS archived FROM pgflow.archive('q', (:'held'::int8[])[1:4]);
SELECT pg_temp.entries() - :before < 500 AS archive_walks_its_ids;
SELECT pg_temp.entries() AS before \gset
SELECT count(*) AS deleted FROM pgflow.delete('q', (:'held'::int8[])[5:7]);
SELECT pg_temp.entries() - :before < 500 AS delete_walks_its_ids;
SELECT pg_temp.entries() AS before \gset
SELECT n.outcome, count(*) FROM unnest((:'held'::int8[])[8:10]) i, pgflow.nack('q', i, 'failed') n
 GROUP BY n.outcome;
SELECT pg_temp.entries() - :before < 500 AS nack_walks_its_ids;
COMMIT;
-- The retried messages come due at once: the next read promotes them, then claims them
-- again (their second delivery), and their nack dead-letters them.
BEGIN;
SELECT pg_temp.entries() AS before \gset
SELECT read_ct, count(*) FROM pgflow.read('q', '30 s', 3) GROUP BY read_ct;
SELECT pg_temp.entries() - :before < 500 AS promote_and_read_walk_their_ids;
COMMIT;
SELECT pg_temp.held(2) AS again \gset
BEGIN;
SELECT pg_temp.entries() AS before \gset
SELECT n.outcome, count(*) FROM unnest(:'again'::int8[]) i, pgflow.nack('q', i, 'failed again') n
 GROUP BY n.outcome;
SELECT pg_temp.entries() - :before < 500 AS dead_lettering_walks_its_ids;
SELECT pg_temp.entries() AS before \gset
SELECT count(*) AS popped FROM pgflow.pop('q', 10);
SELECT pg_temp.entries() - :before < 500 AS pop_walks_its_batch;
COMMIT;
SELECT (SELECT count(*) FROM pgflow.message) AS in_queue, (SELECT count(*) FROM pgflow.archive) AS archived,
       (SELECT count(*) FROM pgflow.dead) AS dead;

-- The worker's lease-expiry probe (expire_leases, each tick) looks for a due lease by its
-- expiry, so with 5,000 leases in flight and none due it stops at the first (it used to walk
-- every lease of the queue each tick, while the session_leases test shared its condition with
-- vt and kept vt out of the index condition).
SELECT pgflow.create_queue('inflight');
SELECT count(*) AS sent FROM pgflow.send_batch('inflight', array(SELECT '{}'::jsonb FROM generate_series(1, 5000)));
SELECT count(*) AS leased FROM pgflow.read('inflight', '1 h', 5000);
BEGIN;
SELECT pg_stat_get_xact_tuples_returned('pgflow.message_leased'::regclass) AS before \gset
SELECT pgflow.expire_leases() AS expired;
SELECT pg_stat_get_xact_tuples_returned('pgflow.message_leased'::regclass) - :before < 500
       AS expiry_probe_stops_at_the_first_lease_not_due;
COMMIT;
-- A queue with session leases still looks at every lease: a holder may have exited.
SELECT pgflow.create_queue('held', session_leases => true);
SELECT count(*) AS sent FROM pgflow.send_batch('held', array(SELECT '{}'::jsonb FROM generate_series(1, 3)));
SELECT count(*) AS leased FROM pgflow.read('held', '1 h', 3);
UPDATE pgflow.message SET holder = 1 WHERE state = 'l' AND holder IS NOT NULL;
SELECT pgflow.expire_leases() AS released_from_a_gone_holder;

\c pgflow_regress
DROP DATABASE pgflow_plans;
