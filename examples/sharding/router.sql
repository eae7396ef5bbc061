-- pgflow sharded across Postgres servers with PL/Proxy: the router database's functions.
--
-- Every shard is an ordinary pgflow database (CREATE EXTENSION pgflow, the library preloaded,
-- its own workers). The router holds no messages: each function below is a PL/Proxy function
-- that runs one pgflow call on one shard, chosen by a hash, in the shard's own transaction.
--
-- Two ways to place a queue:
--   * by queue name (the default): a queue lives on the shard hashtext(queue_name) picks, whole.
--     Every verb goes there. FIFO, priorities, groups, dedup and the DLQ work as on one server.
--   * by key (per-key FIFO at scale): the queue exists on every shard (create_queue_everywhere)
--     and send_keyed puts each message on the shard its group key hashes to, with the key as
--     its group_key. A key's messages stay in order (one live at a time, on one shard); the
--     queue's consumers read every shard (examples/sharding/consumer.py), and archive and nack
--     go to the shard the message came from (the *_on functions, or a direct connection).
--
-- What is lost across shards: global FIFO and priorities across keys on different shards; any
-- transaction spanning shards (a router call commits on its shard by itself, even if the
-- caller's transaction at the router rolls back: send through the router is not
-- transactional with the caller's own writes; write them to the shard, with pgflow.send
-- there, to keep that); message ids are per shard (an id names a message only together with
-- its shard); metrics, alerts and the DLQ are per shard (metrics_all sums nothing: it returns
-- every shard's rows).
--
-- Setup (tests/cluster/sharding.sh does exactly this): CREATE EXTENSION plproxy in the router
-- database, then a server that lists the shards as partitions (a power of two of them), then
-- this file:
--
--   CREATE SERVER pgflow_shards FOREIGN DATA WRAPPER plproxy
--       OPTIONS (partition_0 'host=10.0.0.1 dbname=app', partition_1 'host=10.0.0.2 dbname=app');
--   CREATE USER MAPPING FOR PUBLIC SERVER pgflow_shards OPTIONS (user 'app');
--   \i examples/sharding/router.sql
--
-- The functions are created in schema pgflow_router; grant EXECUTE on them as on pgflow's own.
-- Each shard still checks its own roles and grants for the user the mapping names.
CREATE SCHEMA IF NOT EXISTS pgflow_router;

-- The shapes of pgflow's results, for the router (which has no pgflow of its own).
DO $$
BEGIN
    IF to_regtype('pgflow_router.message_record') IS NULL THEN
        CREATE TYPE pgflow_router.message_record AS (
            msg_id bigint, read_ct integer, enqueued_at timestamptz, vt timestamptz,
            message jsonb, headers jsonb, receipt bigint);
        CREATE TYPE pgflow_router.nack_result AS (
            msg_id bigint, outcome text, read_ct integer, retry_at timestamptz);
        CREATE TYPE pgflow_router.queue_row AS (queue_name text, created_at timestamptz);
    END IF;
END $$;

-- The shard a queue (or a key) hashes to, as PL/Proxy picks it: hashtext's value modulo the
-- number of partitions. For operators and consumers that want to connect to it directly.
CREATE OR REPLACE FUNCTION pgflow_router.shard_of(key text)
RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT (hashtext(key) & (count(*) - 1))::integer
      FROM pg_catalog.pg_foreign_server s, unnest(s.srvoptions) o
     WHERE s.srvname = 'pgflow_shards' AND o LIKE 'partition\_%'
$$;

-- The shards' connection strings, in partition order (for a consumer that reads them all).
CREATE OR REPLACE FUNCTION pgflow_router.shards()
RETURNS TABLE (shard integer, connstr text)
LANGUAGE sql STABLE AS $$
    SELECT substr(split_part(o, '=', 1), 11)::integer,
           substr(o, strpos(o, '=') + 1)
      FROM pg_catalog.pg_foreign_server s, unnest(s.srvoptions) o
     WHERE s.srvname = 'pgflow_shards' AND o LIKE 'partition\_%'
     ORDER BY 1
$$;

---------------------------------------------------------------------------------------------
-- Queues placed by name.
---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pgflow_router.create_queue(queue_name text)
RETURNS boolean AS $$
    CLUSTER 'pgflow_shards';
    RUN ON hashtext(queue_name);
    TARGET pgflow.create_queue;
$$ LANGUAGE plproxy;

CREATE OR REPLACE FUNCTION pgflow_router.send(queue_name text, message jsonb,
                                              headers jsonb DEFAULT NULL,
                                              delay interval DEFAULT '0',
                                              priority integer DEFAULT NULL,
                                              group_key text DEFAULT NULL,
                                              dedup_key text DEFAULT NULL)
RETURNS bigint AS $$
    CLUSTER 'pgflow_shards';
    RUN ON hashtext(queue_name);
    TARGET pgflow.send;
$$ LANGUAGE plproxy;

CREATE OR REPLACE FUNCTION pgflow_router.read(queue_name text, vt interval DEFAULT NULL,
                                              qty integer DEFAULT 1)
RETURNS SETOF pgflow_router.message_record AS $$
    CLUSTER 'pgflow_shards';
    RUN ON hashtext(queue_name);
    TARGET pgflow.read;
$$ LANGUAGE plproxy;

CREATE OR REPLACE FUNCTION pgflow_router.archive(queue_name text, msg_id bigint,
                                                 receipt bigint DEFAULT NULL)
RETURNS boolean AS $$
    CLUSTER 'pgflow_shards';
    RUN ON hashtext(queue_name);
    TARGET pgflow.archive;
$$ LANGUAGE plproxy;

CREATE OR REPLACE FUNCTION pgflow_router.nack(queue_name text, msg_id bigint,
                                              error text DEFAULT NULL,
                                              retry_after interval DEFAULT NULL,
                                              read_ct integer DEFAULT NULL,
                                              now timestamptz DEFAULT NULL,
                                              receipt bigint DEFAULT NULL)
RETURNS SETOF pgflow_router.nack_result AS $$
    CLUSTER 'pgflow_shards';
    RUN ON hashtext(queue_name);
    TARGET pgflow.nack;
$$ LANGUAGE plproxy;

CREATE OR REPLACE FUNCTION pgflow_router.set_vt(queue_name text, msg_id bigint, vt interval,
                                                receipt bigint DEFAULT NULL)
RETURNS SETOF pgflow_router.message_record AS $$
    CLUSTER 'pgflow_shards';
    RUN ON hashtext(queue_name);
    TARGET pgflow.set_vt;
$$ LANGUAGE plproxy;

-- Every shard's queues (a queue placed by name is listed by its shard only).
CREATE OR REPLACE FUNCTION pgflow_router.list_queues()
RETURNS SETOF pgflow_router.queue_row AS $$
    CLUSTER 'pgflow_shards';
    RUN ON ALL;
    SELECT queue_name, created_at FROM pgflow.list_queues();
$$ LANGUAGE plproxy;

---------------------------------------------------------------------------------------------
-- Queues placed by key: on every shard, each message on its key's shard.
---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pgflow_router.create_queue_everywhere(queue_name text)
RETURNS SETOF boolean AS $$
    CLUSTER 'pgflow_shards';
    RUN ON ALL;
    TARGET pgflow.create_queue;
$$ LANGUAGE plproxy;

-- The key is the message's group_key on its shard: one live message per key, in send order.
CREATE OR REPLACE FUNCTION pgflow_router.send_keyed(queue_name text, key text, message jsonb,
                                                    headers jsonb DEFAULT NULL,
                                                    dedup_key text DEFAULT NULL)
RETURNS bigint AS $$
    CLUSTER 'pgflow_shards';
    RUN ON hashtext(key);
    SELECT pgflow.send(queue_name, message, headers, interval '0', NULL::integer, key, dedup_key);
$$ LANGUAGE plproxy;

CREATE OR REPLACE FUNCTION pgflow_router.read_on(shard integer, queue_name text,
                                                 vt interval DEFAULT NULL, qty integer DEFAULT 1)
RETURNS SETOF pgflow_router.message_record AS $$
    CLUSTER 'pgflow_shards';
    RUN ON shard;
    SELECT * FROM pgflow.read(queue_name, vt, qty);
$$ LANGUAGE plproxy;

CREATE OR REPLACE FUNCTION pgflow_router.archive_on(shard integer, queue_name text,
                                                    msg_id bigint, receipt bigint DEFAULT NULL)
RETURNS boolean AS $$
    CLUSTER 'pgflow_shards';
    RUN ON shard;
    SELECT pgflow.archive(queue_name, msg_id, receipt);
$$ LANGUAGE plproxy;

CREATE OR REPLACE FUNCTION pgflow_router.nack_on(shard integer, queue_name text, msg_id bigint,
                                                 error text DEFAULT NULL,
                                                 receipt bigint DEFAULT NULL)
RETURNS SETOF pgflow_router.nack_result AS $$
    CLUSTER 'pgflow_shards';
    RUN ON shard;
    SELECT * FROM pgflow.nack(queue_name, msg_id, error, NULL::interval, NULL::integer,
                              NULL::timestamptz, receipt);
$$ LANGUAGE plproxy;
