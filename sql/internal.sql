-- pgflow internals every later file uses: the result types of the verbs, _queue and the argument
-- checks, the message-group trigger and the payload check. Every verb resolves its queue through
-- pgflow._queue (one index probe, 42704 for an unknown queue), checks its arguments (22004 for a
-- NULL, 22023 for a bad value) and runs static SQL, so PL/pgSQL caches each plan once per session.
--
-- Result columns follow pgmq's names (msg_id, read_ct, enqueued_at, vt, message, headers)
-- so consumers written for pgmq read pgflow rows unchanged.
--
-- enable_seqscan: the verbs that find messages by id or claim them carry SET enable_seqscan =
-- off. A queue table's statistics are stale by nature (it swings from empty to a backlog between
-- two autoanalyze runs), and PL/pgSQL keeps a plan for the whole session: a plan made while the
-- statistics said "a few rows" used a sequential scan to join claimed ids back to the table,
-- and stayed in use as the table grew, so each read cost O(table) and a steady-state queue
-- fell behind and never caught up (seen in bench W4). Every statement has an exact index; the
-- setting only removes the plan that is never right, and is restored when the call ends.
--
-- Id spans: a statement that finds messages by a list of ids (msg_id = ANY) also bounds msg_id
-- by the list's smallest and largest id. With statistics taken while the queue was nearly empty,
-- the planner reckons each id matches a good share of a few rows, and prefers a scan of the
-- queue's whole primary-key range (queue_id alone as the index condition, the ids as a filter)
-- to one descent per id; PL/pgSQL then keeps that plan while the queue grows, and while a held
-- snapshot keeps the dead versions of every claimed and archived message in the index. Each
-- claim and archive walked tens of thousands of index entries to find ten rows, and the
-- consumers fell behind for up to a minute, until autovacuum's next statistics replanned
-- (seen in bench W10, with auto_explain). The planner puts a range condition on an index
-- column into the condition of every scan of that index, so whatever plan it picks walks at
-- most the ids between the list's ends: a batch's few, for a consumer.

-------------------------------------------------------------------------------------------------
-- Result types (named, so argument names such as vt or queue_name can match column names).
-------------------------------------------------------------------------------------------------

-- A delivered message, as read, pop and set_vt return it.
CREATE TYPE pgflow.message_record AS (
    msg_id      bigint,       -- id, unique within the queue, increasing in send order
    read_ct     integer,      -- deliveries so far, this one included
    enqueued_at timestamptz,  -- when it was sent
    vt          timestamptz,  -- when it becomes visible again (the end of this lease)
    message     jsonb,        -- the payload
    headers     jsonb,        -- the producer's headers, or NULL
    -- This delivery's lease receipt (src/queue/receipt.rs): pass it to archive, delete, set_vt
    -- and nack so that they act only on the delivery received, never on a later delivery of
    -- the message or on another message given the same id after a failover.
    receipt     bigint
);

-- A queue and its settings, as list_queues and alter_queue return them.
CREATE TYPE pgflow.queue_info AS (
    queue_name         text,
    visibility_timeout interval,
    max_retries        integer,
    retry_delay        interval,
    retry_backoff      float8,
    retry_delay_max    interval,
    retry_jitter       float8,
    archive_retention  interval,
    created_at         timestamptz,
    default_priority   smallint,
    dedup_window       interval,
    notify             boolean,
    contract_version   text,         -- the default contract version; NULL: no contract
    alert_dlq          bigint,       -- alert thresholds; NULL: none (pgflow.alerts())
    alert_age          interval,
    alert_depth        bigint,
    session_leases     boolean       -- leases also end with the reading session
);

-- Queue statistics, as metrics and metrics_all return them.
CREATE TYPE pgflow.queue_metrics AS (
    queue_name         text,
    queue_length       bigint,            -- live messages: visible + in_flight + delayed
    visible            bigint,            -- deliverable now
    in_flight          bigint,            -- leased (a lease that ran out counts until the policy ran on it)
    delayed            bigint,            -- not deliverable yet (delayed send or set_vt)
    oldest_msg_age_sec double precision,  -- age of the oldest live message, NULL when empty
    newest_msg_age_sec double precision,  -- age of the newest live message, NULL when empty
    total_messages     bigint,            -- messages ever sent (a rolled-back send counts too)
    total_archived     bigint,            -- messages ever archived (likewise)
    archive_length     bigint,            -- messages now in the archive (within retention)
    dlq_length         bigint,            -- messages now in the dead-letter queue
    scrape_time        timestamptz,
    waiting            bigint,            -- grouped messages waiting behind an earlier one
    horizon_age_sec    double precision,  -- how long the oldest holder of the xmin horizon has held it
    horizon_holder     text,              -- who that is (see horizon()); NULL when nothing holds it back
    -- From the statistics in shared memory (src/ipc/stats.rs); NULL without them:
    exact              boolean,           -- the depths above were counted (not read from the statistics)
    sent               bigint,            -- committed sends since stats_reset_at (dlq redrives apart)
    delivered          bigint,            -- deliveries (read, pop), redeliveries included
    archived           bigint,
    deleted            bigint,            -- delete, pop, purge_queue
    nacked             bigint,
    expired            bigint,            -- leases that ran out
    dead_lettered      bigint,
    redriven           bigint,            -- dlq_retry
    wait_p50_sec       double precision,  -- enqueue to first delivery, median (histogram estimate)
    wait_p99_sec       double precision,
    end_to_end_p50_sec double precision,  -- enqueue to archive
    end_to_end_p99_sec double precision,
    stats_reset_at     timestamptz,       -- since when the counters and histograms count
    processing_p50_sec double precision,  -- delivery to archive (when the session that leased it archives it)
    processing_p99_sec double precision,
    oldest_ready_age_sec double precision -- age of the oldest ready message (statistics: as of the worker's last tick)
);

-- What holds back the xmin horizon, as horizon returns it.
CREATE TYPE pgflow.horizon_holder AS (
    holder   text,         -- 'backend', 'standby' (hot_standby_feedback), 'replication slot', 'prepared transaction'
    pid      integer,      -- the process, when there is one
    xmin_age integer,      -- transactions since the horizon it holds
    since    timestamptz,  -- since when (transaction start, or when prepared); NULL for a slot
    detail   text          -- user, state and query; slot name; gid
);

-- A waiting message, as list_pending shows it.
CREATE TYPE pgflow.pending_message AS (
    msg_id      bigint,
    state       text,         -- 'ready', 'delayed', 'in_flight' or 'waiting' (behind its group)
    read_ct     integer,
    enqueued_at timestamptz,
    vt          timestamptz,
    priority    smallint,
    message     jsonb,
    headers     jsonb,
    group_key   text
);

-------------------------------------------------------------------------------------------------
-- Internal helpers
-------------------------------------------------------------------------------------------------

-- _queue: the queue row for a name, or 42704 (22023 when the name could never be valid,
-- 22004 for NULL, and 42704 too for a queue the caller has no grant on and cannot see); then
-- 42501 unless the calling role may `need` on it: 'produce', 'consume',
-- 'admin' (the queue's own administration) or 'see' (its figures: any grant on it, or
-- pg_monitor). Superusers and members of pgflow_admin may do everything. The name check runs
-- only on the miss path, and the grant lookup only for roles outside pgflow_admin, so the hot
-- path of a privileged caller costs one C call more. A verb that writes (`writes`, the
-- default, unless `need` is 'see') is refused on a hot standby with 25006, in that same call.
CREATE FUNCTION pgflow._queue(queue_name text, need text, writes boolean DEFAULT true)
RETURNS pgflow.queue
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    q pgflow.queue;
    v_class integer;
BEGIN
    SELECT * INTO q FROM pgflow.queue WHERE queue.queue_name = _queue.queue_name;
    IF NOT FOUND THEN
        PERFORM pgflow._check_queue_name(queue_name);
        RAISE EXCEPTION 'queue "%" does not exist', queue_name
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create it with pgflow.create_queue(), or see pgflow.list_queues().';
    END IF;
    v_class := pgflow._caller_class(writes AND need <> 'see');
    IF v_class < 2 AND NOT (need = 'see' AND v_class = 1) AND NOT pgflow._may(q.queue_id, need) THEN
        -- A role with no grant on the queue (and outside pg_monitor) learns nothing of it, not
        -- even that it exists: the same error as for a queue that does not exist.
        IF v_class = 0 AND (need = 'see' OR NOT pgflow._may(q.queue_id, 'see')) THEN
            RAISE EXCEPTION 'queue "%" does not exist', queue_name
                USING ERRCODE = 'undefined_object',
                      HINT = 'Create it with pgflow.create_queue(), or see pgflow.list_queues().';
        END IF;
        RAISE EXCEPTION 'permission denied for queue "%": % needs the % privilege on it', queue_name,
            pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(pgflow._caller())),
            CASE need WHEN 'see' THEN 'produce, consume or admin' ELSE need END
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A member of pgflow_admin grants it with pgflow.grant(queue, role, privilege).';
    END IF;
    RETURN q;
END $$;

-- _may: whether the calling role has, through its own grants or a role it is a member of, the
-- privilege `need` on a queue ('admin' includes the other two; 'see' is any of them). Grants
-- of roles dropped since are skipped.
CREATE FUNCTION pgflow._may(p_queue_id integer, need text)
RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN EXISTS (
        SELECT 1 FROM pgflow.queue_grant g
          JOIN pg_catalog.pg_roles r ON r.oid = g.grantee
         WHERE g.queue_id = p_queue_id
           AND (g.privilege = need OR g.privilege = 'admin' OR need = 'see')
           AND pg_catalog.pg_has_role(pgflow._caller(), r.oid, 'USAGE'));
END $$;

-- _visible: whether the calling role sees a queue in list_queues, metrics_all and
-- list_bindings (any grant on it, pg_monitor or pgflow_admin).
CREATE FUNCTION pgflow._visible(p_queue_id integer)
RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN pgflow._caller_class() > 0 OR pgflow._may(p_queue_id, 'see');
END $$;

-- _require: 22004 when a required argument is NULL.
CREATE FUNCTION pgflow._require(value anyelement, arg text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', arg USING ERRCODE = 'null_value_not_allowed';
    END IF;
END $$;

-- _check_interval: 22004 for NULL, 22023 (with the argument's name) for a negative interval,
-- zero unless allow_zero, or one longer than 100 years. The upper limit holds for every
-- interval pgflow takes, settings and arguments alike, so that anything accepted can always be
-- applied: a time 100 years from now, or ago, is always a valid timestamptz, where
-- '1000000 years' overflowed on every later use (docs/api.md, "Limits").
CREATE FUNCTION pgflow._check_interval(value interval, arg text, allow_zero boolean)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', arg USING ERRCODE = 'null_value_not_allowed';
    ELSIF value < interval '0' OR (NOT allow_zero AND value = interval '0') THEN
        RAISE EXCEPTION '% must be %, got %', arg,
            CASE WHEN allow_zero THEN 'zero or positive' ELSE 'positive' END, value
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF value > interval '100 years' THEN
        RAISE EXCEPTION '% must be at most 100 years, got %', arg, value
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $$;

-- _check_key: 22023 for a group_key or dedup_key longer than 512 bytes (both are index keys;
-- a longer one would fail deep in the index with 54000). NULL passes: "no key".
CREATE FUNCTION pgflow._check_key(value text, arg text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF octet_length(value) > 512 THEN
        RAISE EXCEPTION '% must be at most 512 bytes, got %', arg, octet_length(value)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $$;

CREATE FUNCTION pgflow._check_int(value bigint, arg text, min_value bigint)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', arg USING ERRCODE = 'null_value_not_allowed';
    ELSIF value < min_value THEN
        RAISE EXCEPTION '% must be at least %, got %', arg, min_value, value
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $$;

-- _check_max_retries: 22023 past 1000 retries. Each retry is a delivery and a row of
-- retry_schedule(); 2147483647 was accepted, and retry_schedule() on such a queue wrote gigabytes
-- of temporary files (issue #34). With the default 1 s delay doubling up to its 1 hour cap, 1000
-- retries take 41 days. The queue table's CHECK says the same.
CREATE FUNCTION pgflow._check_max_retries(value bigint)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF value > 1000 THEN
        RAISE EXCEPTION 'max_retries must be at most 1000, got %', value
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $$;

-- _check_retry_policy: the parts of a retry policy the interval/int helpers do not cover.
CREATE FUNCTION pgflow._check_retry_policy(backoff float8, delay_max interval, jitter float8)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF backoff IS NULL OR delay_max IS NULL OR jitter IS NULL THEN
        RAISE EXCEPTION 'retry_backoff, retry_delay_max and retry_jitter must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    ELSIF NOT (backoff >= 1 AND backoff <= 100) THEN
        RAISE EXCEPTION 'retry_backoff must be between 1 and 100, got %', backoff
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF delay_max < interval '0' OR delay_max > interval '100 years' THEN
        RAISE EXCEPTION 'retry_delay_max must be between zero and 100 years, got %', delay_max
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF NOT (jitter >= 0 AND jitter <= 1) THEN
        RAISE EXCEPTION 'retry_jitter must be between 0 and 1, got %', jitter
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $$;

-- _check_payload: the message must be a JSON object, headers an object or NULL.
-- _check_priority: 22023 unless the value fits a smallint (NULL passes: "use the default").
CREATE FUNCTION pgflow._check_priority(value integer, arg text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value < -32768 OR value > 32767 THEN
        RAISE EXCEPTION '% must be between -32768 and 32767, got %', arg, value
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $$;

-- _group_state: the state a new message of group key takes: 'g' when the group has a live
-- message (it waits behind it), else first_state. Takes the group's transaction-level advisory
-- lock, which the group-advance trigger takes too, so a send and the removal of the group's
-- head never miss each other: whichever comes second sees what the first committed (READ
-- COMMITTED: each statement takes a new snapshot after the lock).
CREATE FUNCTION pgflow._group_state(p_queue_id integer, key text, first_state "char")
RETURNS "char"
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF key IS NULL THEN
        RETURN first_state;
    END IF;
    PERFORM pg_advisory_xact_lock(p_queue_id, hashtext(key));
    IF EXISTS (SELECT 1 FROM pgflow.message m WHERE m.queue_id = p_queue_id AND m.group_key = key) THEN
        RETURN 'g';
    END IF;
    RETURN first_state;
END $$;

-- _group_advance (trigger): when a grouped message leaves the table (archive, delete, pop,
-- dead-lettered, purge), the group's next message, if it waits, becomes deliverable.
CREATE FUNCTION pgflow._group_advance()
RETURNS trigger
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    nxt record;
    u pgflow.queue;
    v_state "char";
BEGIN
    PERFORM pg_advisory_xact_lock(OLD.queue_id, hashtext(OLD.group_key));
    SELECT m.msg_id, m.state, m.vt, m.priority INTO nxt
      FROM pgflow.message m
     WHERE m.queue_id = OLD.queue_id AND m.group_key = OLD.group_key
     ORDER BY m.msg_id
     LIMIT 1;
    IF FOUND AND nxt.state = 'g' THEN
        UPDATE pgflow.message m
           SET state = CASE WHEN m.vt > clock_timestamp() THEN 'd' ELSE 'r' END
         WHERE m.queue_id = OLD.queue_id AND m.msg_id = nxt.msg_id
        RETURNING m.state INTO v_state;
        SELECT * INTO u FROM pgflow.queue WHERE queue_id = OLD.queue_id;
        IF FOUND THEN
            IF v_state = 'r' THEN
                PERFORM pgflow._ready(u.queue_id, u.msg_seq::oid, nxt.priority, nxt.msg_id);
            ELSE
                PERFORM pgflow._due_at(u.queue_id, u.msg_seq::oid, nxt.vt);
            END IF;
            PERFORM pgflow._announce(u.queue_id, u.queue_name, u.notify);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER message_group_advance
    AFTER DELETE ON pgflow.message
    FOR EACH ROW WHEN (OLD.group_key IS NOT NULL)
    EXECUTE FUNCTION pgflow._group_advance();

CREATE FUNCTION pgflow._check_payload(message jsonb, headers jsonb)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF message IS NULL THEN
        RAISE EXCEPTION 'message must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    ELSIF jsonb_typeof(message) <> 'object' THEN
        RAISE EXCEPTION 'message must be a JSON object, got %', jsonb_typeof(message)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Wrap the value, e.g. jsonb_build_object(''value'', ...).';
    ELSIF headers IS NOT NULL AND jsonb_typeof(headers) <> 'object' THEN
        RAISE EXCEPTION 'headers must be a JSON object or NULL, got %', jsonb_typeof(headers)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $$;

-- _alert_count, _alert_age: an alert threshold as given to create_queue or alter_queue. NULL
-- stays NULL (alter_queue: leave it); -1 (a count) or '0' (an age) means none, returned as
-- the sentinel -1 / '0' for alter_queue to clear; anything else below that, or an age beyond
-- 100 years, is 22023.
CREATE FUNCTION pgflow._alert_count(value bigint, arg text)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF value < -1 THEN
        RAISE EXCEPTION '% must be a count (0 or more), or -1 for none, got %', arg, value
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN value;
END $$;

CREATE FUNCTION pgflow._alert_age(value interval, arg text)
RETURNS interval
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF value IS NOT NULL THEN
        PERFORM pgflow._check_interval(value, arg, true);
    END IF;
    RETURN value;
END $$;
