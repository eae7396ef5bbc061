-- pgflow SQL API. Every verb resolves its queue through pgflow._queue (one index probe, 42704
-- for an unknown queue), checks its arguments (22004 for a NULL, 22023 for a bad value) and
-- runs static SQL, so PL/pgSQL caches each plan once per session.
--
-- Result columns follow pgmq's names (msg_id, read_ct, enqueued_at, vt, message, headers)
-- so consumers written for pgmq read pgflow rows unchanged.
--
-- The verbs that find messages by id or claim them carry SET enable_seqscan = off. A queue
-- table's statistics are stale by nature (it swings from empty to a backlog between two
-- autoanalyze runs), and PL/pgSQL keeps a plan for the whole session: a plan made while the
-- statistics said "a few rows" used a sequential scan to join claimed ids back to the table,
-- and stayed in use as the table grew, so each read cost O(table) and a steady-state queue
-- fell behind and never caught up (seen in bench W4). Every statement here has an exact index;
-- the setting only removes the plan that is never right, and is restored when the call ends.

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
    headers     jsonb         -- the producer's headers, or NULL
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
    contract_version   text          -- the default contract version; NULL: no contract
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
    waiting            bigint             -- grouped messages waiting behind an earlier one
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
-- 22004 for NULL). The name check runs only on the miss path, so it costs the hot path nothing.
CREATE FUNCTION pgflow._queue(queue_name text)
RETURNS pgflow.queue
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    q pgflow.queue;
BEGIN
    SELECT * INTO q FROM pgflow.queue WHERE queue.queue_name = _queue.queue_name;
    IF NOT FOUND THEN
        PERFORM pgflow._check_queue_name(queue_name);
        RAISE EXCEPTION 'queue "%" does not exist', queue_name
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create it with pgflow.create_queue(), or see pgflow.list_queues().';
    END IF;
    RETURN q;
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

-- _positive_interval / _nonnegative_interval / _positive_int: 22023 with the argument's name.
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
    ELSIF delay_max < interval '0' THEN
        RAISE EXCEPTION 'retry_delay_max must be zero or positive, got %', delay_max
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
BEGIN
    PERFORM pg_advisory_xact_lock(OLD.queue_id, hashtext(OLD.group_key));
    SELECT m.msg_id, m.state, m.vt INTO nxt
      FROM pgflow.message m
     WHERE m.queue_id = OLD.queue_id AND m.group_key = OLD.group_key
     ORDER BY m.msg_id
     LIMIT 1;
    IF FOUND AND nxt.state = 'g' THEN
        UPDATE pgflow.message m
           SET state = CASE WHEN m.vt > clock_timestamp() THEN 'd' ELSE 'r' END
         WHERE m.queue_id = OLD.queue_id AND m.msg_id = nxt.msg_id;
        PERFORM pgflow._announce(u.queue_id, u.queue_name, u.notify)
           FROM pgflow.queue u WHERE u.queue_id = OLD.queue_id;
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

-------------------------------------------------------------------------------------------------
-- Queue management
-------------------------------------------------------------------------------------------------

-- create_queue: a new queue with its policy. A second create of the same name raises 42710,
-- unless if_not_exists, which leaves the existing queue and its settings untouched and returns
-- false. Returns true when the queue was created.
CREATE FUNCTION pgflow.create_queue(
    queue_name         text,
    visibility_timeout interval DEFAULT '30 seconds',
    max_retries        integer  DEFAULT 3,
    retry_delay        interval DEFAULT '1 second',
    archive_retention  interval DEFAULT '7 days',
    if_not_exists      boolean  DEFAULT false,
    retry_backoff      float8   DEFAULT 2,
    retry_delay_max    interval DEFAULT '1 hour',
    retry_jitter       float8   DEFAULT 0.1,
    default_priority   integer  DEFAULT 0,
    dedup_window       interval DEFAULT '5 minutes',
    notify             boolean  DEFAULT false,
    contract           jsonb    DEFAULT NULL    -- a JSON Schema: becomes contract version '1'
)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_id integer;
    v_msg_seq text;
    v_archived_seq text;
BEGIN
    PERFORM pgflow._check_queue_name(queue_name);
    PERFORM pgflow._check_interval(visibility_timeout, 'visibility_timeout', false);
    PERFORM pgflow._check_int(max_retries, 'max_retries', 0);
    PERFORM pgflow._check_interval(retry_delay, 'retry_delay', true);
    PERFORM pgflow._check_interval(archive_retention, 'archive_retention', false);
    PERFORM pgflow._require(if_not_exists, 'if_not_exists');
    PERFORM pgflow._check_retry_policy(retry_backoff, retry_delay_max, retry_jitter);
    PERFORM pgflow._check_priority(default_priority, 'default_priority');
    PERFORM pgflow._check_interval(dedup_window, 'dedup_window', false);
    PERFORM pgflow._require(notify, 'notify');
    IF contract IS NOT NULL THEN
        PERFORM pgflow._check_contract_schema(contract);
    END IF;

    IF EXISTS (SELECT 1 FROM pgflow.queue q WHERE q.queue_name = create_queue.queue_name) THEN
        IF if_not_exists THEN
            RETURN false;
        END IF;
        RAISE EXCEPTION 'queue "%" already exists', queue_name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Pass if_not_exists => true to make creation idempotent.';
    END IF;

    -- The sequences are named after the numeric id, never after the user's string.
    v_id := nextval('pgflow.queue_queue_id_seq');
    v_msg_seq := 'pgflow.q' || v_id || '_msg_seq';
    v_archived_seq := 'pgflow.q' || v_id || '_archived_seq';
    EXECUTE 'CREATE SEQUENCE ' || v_msg_seq || ' AS bigint';
    EXECUTE 'CREATE SEQUENCE ' || v_archived_seq || ' AS bigint';

    INSERT INTO pgflow.queue (queue_id, queue_name, visibility_timeout, max_retries, retry_delay,
                              retry_backoff, retry_delay_max, retry_jitter,
                              archive_retention, msg_seq, archived_seq, default_priority,
                              dedup_window, notify)
    VALUES (v_id, queue_name, visibility_timeout, max_retries, retry_delay,
            retry_backoff, retry_delay_max, retry_jitter,
            archive_retention, v_msg_seq::regclass, v_archived_seq::regclass, default_priority,
            dedup_window, notify)
    ON CONFLICT ON CONSTRAINT queue_queue_name_key DO NOTHING;

    IF NOT FOUND THEN
        -- A concurrent create of the same name committed first.
        EXECUTE 'DROP SEQUENCE ' || v_msg_seq || ', ' || v_archived_seq;
        IF if_not_exists THEN
            RETURN false;
        END IF;
        RAISE EXCEPTION 'queue "%" already exists', queue_name USING ERRCODE = 'duplicate_object';
    END IF;
    IF contract IS NOT NULL THEN
        PERFORM pgflow.set_contract(queue_name, contract);
    END IF;
    RETURN true;
END $$;

-- list_queues: every queue with its settings, by name.
CREATE FUNCTION pgflow.list_queues()
RETURNS SETOF pgflow.queue_info
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT q.queue_name, q.visibility_timeout, q.max_retries, q.retry_delay, q.retry_backoff,
           q.retry_delay_max, q.retry_jitter, q.archive_retention, q.created_at,
           q.default_priority, q.dedup_window, q.notify, q.contract_version
      FROM pgflow.queue q
     ORDER BY q.queue_name;
$$;

-- alter_queue: change some settings; a NULL (the default) leaves a setting as it is.
-- Returns the queue's settings after the change.
CREATE FUNCTION pgflow.alter_queue(
    queue_name         text,
    visibility_timeout interval DEFAULT NULL,
    max_retries        integer  DEFAULT NULL,
    retry_delay        interval DEFAULT NULL,
    archive_retention  interval DEFAULT NULL,
    retry_backoff      float8   DEFAULT NULL,
    retry_delay_max    interval DEFAULT NULL,
    retry_jitter       float8   DEFAULT NULL,
    default_priority   integer  DEFAULT NULL,
    dedup_window       interval DEFAULT NULL,
    notify             boolean  DEFAULT NULL,
    contract           jsonb    DEFAULT NULL    -- replaces the default contract version (or makes '1')
)
RETURNS SETOF pgflow.queue_info
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(alter_queue.queue_name);
BEGIN
    IF alter_queue.visibility_timeout IS NOT NULL THEN
        PERFORM pgflow._check_interval(alter_queue.visibility_timeout, 'visibility_timeout', false);
    END IF;
    IF alter_queue.max_retries IS NOT NULL THEN
        PERFORM pgflow._check_int(alter_queue.max_retries, 'max_retries', 0);
    END IF;
    IF alter_queue.retry_delay IS NOT NULL THEN
        PERFORM pgflow._check_interval(alter_queue.retry_delay, 'retry_delay', true);
    END IF;
    IF alter_queue.archive_retention IS NOT NULL THEN
        PERFORM pgflow._check_interval(alter_queue.archive_retention, 'archive_retention', false);
    END IF;
    IF alter_queue.default_priority IS NOT NULL THEN
        PERFORM pgflow._check_priority(alter_queue.default_priority, 'default_priority');
    END IF;
    IF alter_queue.dedup_window IS NOT NULL THEN
        PERFORM pgflow._check_interval(alter_queue.dedup_window, 'dedup_window', false);
    END IF;
    IF alter_queue.contract IS NOT NULL THEN
        PERFORM pgflow.set_contract(alter_queue.queue_name, alter_queue.contract,
                                    coalesce(q.contract_version, '1'));
    END IF;
    PERFORM pgflow._check_retry_policy(coalesce(alter_queue.retry_backoff, q.retry_backoff),
                                       coalesce(alter_queue.retry_delay_max, q.retry_delay_max),
                                       coalesce(alter_queue.retry_jitter, q.retry_jitter));

    RETURN QUERY
    UPDATE pgflow.queue u
       SET visibility_timeout = coalesce(alter_queue.visibility_timeout, u.visibility_timeout),
           max_retries        = coalesce(alter_queue.max_retries, u.max_retries),
           retry_delay        = coalesce(alter_queue.retry_delay, u.retry_delay),
           archive_retention  = coalesce(alter_queue.archive_retention, u.archive_retention),
           retry_backoff      = coalesce(alter_queue.retry_backoff, u.retry_backoff),
           retry_delay_max    = coalesce(alter_queue.retry_delay_max, u.retry_delay_max),
           retry_jitter       = coalesce(alter_queue.retry_jitter, u.retry_jitter),
           default_priority   = coalesce(alter_queue.default_priority, u.default_priority),
           dedup_window       = coalesce(alter_queue.dedup_window, u.dedup_window),
           notify             = coalesce(alter_queue.notify, u.notify)
     WHERE u.queue_id = q.queue_id
    RETURNING u.queue_name, u.visibility_timeout, u.max_retries, u.retry_delay, u.retry_backoff,
              u.retry_delay_max, u.retry_jitter, u.archive_retention, u.created_at,
              u.default_priority, u.dedup_window, u.notify, u.contract_version;
END $$;

-- drop_queue: the queue, its live messages, its archive, its dead letters and its sequences. An unknown queue
-- raises 42704 unless if_exists, which returns false. Returns true when a queue was dropped.
CREATE FUNCTION pgflow.drop_queue(queue_name text, if_exists boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue;
BEGIN
    PERFORM pgflow._require(queue_name, 'queue_name');
    -- Lock the queue row: a concurrent drop of the same queue waits, then finds nothing.
    SELECT * INTO q FROM pgflow.queue u WHERE u.queue_name = drop_queue.queue_name FOR UPDATE;
    IF NOT FOUND THEN
        IF coalesce(if_exists, false) THEN
            RETURN false;
        END IF;
        q := pgflow._queue(queue_name);  -- raises the right error
    END IF;
    DELETE FROM pgflow.message m WHERE m.queue_id = q.queue_id;
    DELETE FROM pgflow.archive a WHERE a.queue_id = q.queue_id;
    DELETE FROM pgflow.dead d WHERE d.queue_id = q.queue_id;
    DELETE FROM pgflow.dedup k WHERE k.queue_id = q.queue_id;
    DELETE FROM pgflow.binding b WHERE b.queue_id = q.queue_id;
    DELETE FROM pgflow.contract c WHERE c.queue_id = q.queue_id;
    DELETE FROM pgflow.queue u WHERE u.queue_id = q.queue_id;
    PERFORM pgflow._notify_forget(q.queue_id);
    -- regclass values print as qualified, quoted names: safe to splice.
    EXECUTE 'DROP SEQUENCE ' || q.msg_seq::text || ', ' || q.archived_seq::text;
    RETURN true;
END $$;

-- purge_queue: delete every live message of the queue (the archive is kept).
-- Returns how many were deleted.
CREATE FUNCTION pgflow.purge_queue(queue_name text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name);
    n bigint;
BEGIN
    DELETE FROM pgflow.message m WHERE m.queue_id = q.queue_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-------------------------------------------------------------------------------------------------
-- Producing
-------------------------------------------------------------------------------------------------

-- send: enqueue one message, deliverable after delay. Returns its id, unique within the queue
-- and increasing in the order sends call this function.
CREATE FUNCTION pgflow.send(
    queue_name text,
    message    jsonb,
    headers    jsonb       DEFAULT NULL,
    delay      interval    DEFAULT '0',
    priority   integer     DEFAULT NULL,   -- NULL: the queue's default_priority
    group_key  text        DEFAULT NULL,   -- ordering key: one message of a group at a time
    dedup_key  text        DEFAULT NULL,   -- a repeat within the queue's dedup_window is a no-op
    deliver_at timestamptz DEFAULT NULL    -- instead of delay: deliverable from this time on
)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name);
    v_now timestamptz := clock_timestamp();
    v_id bigint;
    v_vt timestamptz;
    v_first bigint;
BEGIN
    PERFORM pgflow._check_payload(message, headers);
    PERFORM pgflow._check_interval(delay, 'delay', true);
    PERFORM pgflow._check_priority(priority, 'priority');
    IF q.contract_version IS NOT NULL THEN
        PERFORM pgflow._check_contract(q, message, headers);
    END IF;
    IF deliver_at IS NOT NULL AND delay <> interval '0' THEN
        RAISE EXCEPTION 'give delay or deliver_at, not both' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_vt := greatest(v_now, coalesce(deliver_at, v_now + delay));
    v_id := nextval(q.msg_seq);
    IF dedup_key IS NOT NULL THEN
        -- A concurrent send with the same key waits here for the first one's transaction: if it
        -- commits, this send returns its id; if it rolls back, this send goes ahead.
        INSERT INTO pgflow.dedup AS k (queue_id, dedup_key, msg_id, expires_at)
        VALUES (q.queue_id, send.dedup_key, v_id, v_now + q.dedup_window)
        ON CONFLICT ON CONSTRAINT dedup_pkey DO UPDATE
           SET msg_id = EXCLUDED.msg_id, expires_at = EXCLUDED.expires_at
         WHERE k.expires_at <= v_now
        RETURNING k.msg_id INTO v_first;
        IF NOT FOUND THEN
            SELECT k.msg_id INTO v_first FROM pgflow.dedup k
             WHERE k.queue_id = q.queue_id AND k.dedup_key = send.dedup_key;
            RETURN v_first;
        END IF;
    END IF;
    INSERT INTO pgflow.message (queue_id, msg_id, enqueued_at, vt, priority, state, message,
                                headers, group_key)
    VALUES (q.queue_id, v_id, v_now, v_vt, coalesce(priority, q.default_priority),
            pgflow._group_state(q.queue_id, send.group_key,
                                CASE WHEN v_vt > v_now THEN 'd' ELSE 'r' END::"char"),
            send.message, send.headers, send.group_key);
    PERFORM pgflow._announce(q.queue_id, q.queue_name, q.notify);
    RETURN v_id;
END $$;

-- send_batch: enqueue many messages in one statement. headers, when given, pairs with
-- messages by position and must have the same length. Returns the ids in input order.
CREATE FUNCTION pgflow.send_batch(
    queue_name text,
    messages   jsonb[],
    headers    jsonb[]  DEFAULT NULL,
    delay      interval DEFAULT '0',
    priority   integer  DEFAULT NULL   -- for every message; NULL: the queue's default_priority
)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name);
    v_now timestamptz := clock_timestamp();
    v_bad record;
BEGIN
    PERFORM pgflow._require(messages, 'messages');
    PERFORM pgflow._check_interval(delay, 'delay', true);
    PERFORM pgflow._check_priority(priority, 'priority');
    IF headers IS NOT NULL AND cardinality(headers) <> cardinality(messages) THEN
        RAISE EXCEPTION 'headers has % elements but messages has %',
            cardinality(headers), cardinality(messages)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT m.ord, m.msg, h.hdr INTO v_bad
      FROM unnest(messages) WITH ORDINALITY AS m(msg, ord)
      LEFT JOIN unnest(headers) WITH ORDINALITY AS h(hdr, ord) USING (ord)
     WHERE m.msg IS NULL OR jsonb_typeof(m.msg) <> 'object'
        OR (h.hdr IS NOT NULL AND jsonb_typeof(h.hdr) <> 'object')
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'messages[%]: %', v_bad.ord,
            CASE WHEN v_bad.msg IS NULL THEN 'message must not be NULL'
                 WHEN jsonb_typeof(v_bad.msg) <> 'object' THEN 'message must be a JSON object, got ' || jsonb_typeof(v_bad.msg)
                 ELSE 'headers must be a JSON object or NULL, got ' || jsonb_typeof(v_bad.hdr) END
            USING ERRCODE = CASE WHEN v_bad.msg IS NULL THEN 'null_value_not_allowed'
                                 ELSE 'invalid_parameter_value' END;
    END IF;

    IF q.contract_version IS NOT NULL THEN
        FOR i IN 1 .. cardinality(messages) LOOP
            PERFORM pgflow._check_contract(q, messages[i], headers[i], i);
        END LOOP;
    END IF;
    PERFORM pgflow._announce(q.queue_id, q.queue_name, q.notify);
    -- Ids are drawn in input order (ORDER BY ord before nextval), then returned in that order.
    RETURN QUERY
    WITH input AS (
        SELECT m.msg, h.hdr, m.ord
          FROM unnest(messages) WITH ORDINALITY AS m(msg, ord)
          LEFT JOIN unnest(headers) WITH ORDINALITY AS h(hdr, ord) USING (ord)
         ORDER BY m.ord
    ), numbered AS (
        SELECT nextval(q.msg_seq) AS id, i.* FROM input i
    ), inserted AS (
        INSERT INTO pgflow.message (queue_id, msg_id, enqueued_at, vt, priority, state, message,
                                    headers)
        SELECT q.queue_id, n.id, v_now, v_now + delay, coalesce(priority, q.default_priority),
               CASE WHEN delay > interval '0' THEN 'd' ELSE 'r' END, n.msg, n.hdr
          FROM numbered n
        RETURNING msg_id
    )
    SELECT n.id FROM numbered n ORDER BY n.ord;
END $$;

-------------------------------------------------------------------------------------------------
-- Consuming
-------------------------------------------------------------------------------------------------

-- _promote_queue: at most lim delayed messages of a queue that came due become ready, oldest
-- due first; rows another session holds are skipped. Returns how many. Used by read, pop and
-- the promote_delayed job.
CREATE FUNCTION pgflow._promote_queue(p_queue_id integer, p_now timestamptz, lim integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of this file
AS $$
DECLARE
    n bigint;
BEGIN
    UPDATE pgflow.message m
       SET state = 'r'
     WHERE m.queue_id = p_queue_id
       AND m.msg_id IN (SELECT d.msg_id FROM pgflow.message d
                         WHERE d.queue_id = p_queue_id AND d.state = 'd' AND d.vt <= p_now
                         ORDER BY d.vt
                         LIMIT lim
                           FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- read: lease up to qty deliverable messages for vt (default: the queue's visibility_timeout),
-- by priority (higher first), then id (send order). Delayed and retried messages that came due
-- join the ready backlog first. Concurrent readers skip each other's rows (FOR UPDATE SKIP
-- LOCKED), so no two readers hold the same message while its lease runs.
--
-- wait (long-poll): when nothing is deliverable, sleep until a send to this queue commits, the
-- next delayed or retried message comes due, a lease runs out, or wait has passed, then look
-- again; return as soon as something was leased (or nothing, at the end of wait). The sleep is
-- on this backend's latch (src/wakeup.rs), not a loop of queries; statement_timeout and
-- pg_cancel_backend interrupt it. Needs READ COMMITTED (each look takes a new snapshot).
CREATE FUNCTION pgflow.read(queue_name text, vt interval DEFAULT NULL, qty integer DEFAULT 1,
                            wait interval DEFAULT NULL)
RETURNS SETOF pgflow.message_record
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of this file
AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name);
    v_now timestamptz := clock_timestamp();
    v_vt interval := coalesce(read.vt, q.visibility_timeout);
    v_deadline timestamptz;
    v_woken boolean;
    v_next timestamptz;
    n bigint;
BEGIN
    PERFORM pgflow._check_interval(v_vt, 'vt', false);
    PERFORM pgflow._check_int(qty, 'qty', 1);
    IF wait IS NOT NULL AND wait > interval '0' THEN
        PERFORM pgflow._check_interval(wait, 'wait', true);
        IF current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'read with wait needs READ COMMITTED, not %',
                            current_setting('transaction_isolation')
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'A snapshot that never changes would never see a new message.';
        END IF;
        v_deadline := v_now + wait;
        -- Register before the first look, so a send that commits after it wakes us.
        v_woken := pgflow._wait_begin(q.queue_id);
    ELSIF wait IS NOT NULL THEN
        PERFORM pgflow._check_interval(wait, 'wait', true);
    END IF;
    LOOP
        -- An expired lease is a failed delivery: apply the retry policy (retry later or
        -- dead-letter) before claiming, so the queue behaves the same with or without the
        -- worker. The probe is one descent of the timer index when nothing has expired.
        IF EXISTS (SELECT 1 FROM pgflow.message m
                    WHERE m.queue_id = q.queue_id AND m.state = 'l' AND m.vt <= v_now) THEN
            PERFORM pgflow._expire_queue(q, v_now, 100);
        END IF;
        -- Delayed and retried messages that came due join the ready backlog first, so
        -- priority and id order hold across all of them (one probe when none is due).
        IF EXISTS (SELECT 1 FROM pgflow.message m
                    WHERE m.queue_id = q.queue_id AND m.state = 'd' AND m.vt <= v_now) THEN
            PERFORM pgflow._promote_queue(q.queue_id, v_now, greatest(qty, 100));
        END IF;
        RETURN QUERY
        WITH picked AS (
            SELECT m.msg_id FROM pgflow.message m
             WHERE m.queue_id = q.queue_id AND m.state = 'r'
             ORDER BY m.priority DESC, m.msg_id
             LIMIT qty
               FOR UPDATE SKIP LOCKED
        ), leased AS (
            UPDATE pgflow.message m
               SET state = 'l', vt = v_now + v_vt, read_ct = m.read_ct + 1
              FROM picked p
             WHERE m.queue_id = q.queue_id AND m.msg_id = p.msg_id
            RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, m.headers, m.priority
        )
        SELECT l.msg_id, l.read_ct, l.enqueued_at, l.vt, l.message, l.headers
          FROM leased l
         ORDER BY l.priority DESC, l.msg_id;
        GET DIAGNOSTICS n = ROW_COUNT;
        EXIT WHEN n > 0 OR v_deadline IS NULL OR v_now >= v_deadline;
        -- Sleep at most until the next delayed message or lease comes due.
        SELECT min(x.vt) INTO v_next
          FROM (SELECT min(m.vt) AS vt FROM pgflow.message m
                 WHERE m.queue_id = q.queue_id AND m.state = 'd'
                UNION ALL
                SELECT min(m.vt) FROM pgflow.message m
                 WHERE m.queue_id = q.queue_id AND m.state = 'l') x;
        PERFORM pgflow._wait_sleep(least(v_deadline, v_next), v_woken);
        v_now := clock_timestamp();
    END LOOP;
    IF v_deadline IS NOT NULL THEN
        PERFORM pgflow._wait_end();
    END IF;
END $$;

-- pop: read and delete at once (at-most-once delivery): up to qty messages in read's order.
CREATE FUNCTION pgflow.pop(queue_name text, qty integer DEFAULT 1)
RETURNS SETOF pgflow.message_record
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of this file
AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name);
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM pgflow._check_int(qty, 'qty', 1);
    -- An expired lease is a failed delivery: apply the retry policy (retry later or
    -- dead-letter) before claiming, so the queue behaves the same with or without the worker.
    -- The probe is one descent of the timer index when nothing has expired.
    IF EXISTS (SELECT 1 FROM pgflow.message m
                WHERE m.queue_id = q.queue_id AND m.state = 'l' AND m.vt <= v_now) THEN
        PERFORM pgflow._expire_queue(q, v_now, 100);
    END IF;
    -- Delayed and retried messages that came due join the ready backlog first, so priority
    -- and id order hold across all of them (one probe of the delayed index when none is due).
    IF EXISTS (SELECT 1 FROM pgflow.message m
                WHERE m.queue_id = q.queue_id AND m.state = 'd' AND m.vt <= v_now) THEN
        PERFORM pgflow._promote_queue(q.queue_id, v_now, greatest(qty, 100));
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT m.msg_id FROM pgflow.message m
         WHERE m.queue_id = q.queue_id AND m.state = 'r'
         ORDER BY m.priority DESC, m.msg_id
         LIMIT qty
           FOR UPDATE SKIP LOCKED
    ), popped AS (
        DELETE FROM pgflow.message m
         USING picked p
         WHERE m.queue_id = q.queue_id AND m.msg_id = p.msg_id
        RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, m.headers, m.priority
    )
    SELECT p.msg_id, p.read_ct + 1, p.enqueued_at, v_now, p.message, p.headers
      FROM popped p
     ORDER BY p.priority DESC, p.msg_id;
END $$;

-- archive: move messages into the queue's archive (the audit trail). Returns the ids that were
-- archived; an id that is not in the queue (never sent, already archived or deleted) is skipped.
CREATE FUNCTION pgflow.archive(queue_name text, msg_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of this file
AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name);
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM pgflow._require(msg_ids, 'msg_ids');
    RETURN QUERY
    WITH moved AS (
        DELETE FROM pgflow.message m
         WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (msg_ids)
        RETURNING m.*
    ), archived AS (
        INSERT INTO pgflow.archive (queue_id, read_ct, msg_id, enqueued_at, archived_at,
                                    priority, message, headers, group_key)
        SELECT mv.queue_id, mv.read_ct, mv.msg_id, mv.enqueued_at, v_now,
               mv.priority, mv.message, mv.headers, mv.group_key
          FROM moved mv
        RETURNING archive.msg_id
    )
    -- nextval once per archived row keeps the archived total without a shared counter row.
    SELECT a.msg_id FROM archived a WHERE nextval(q.archived_seq) > 0;
END $$;

-- archive (one id): true when the message was archived.
CREATE FUNCTION pgflow.archive(queue_name text, msg_id bigint)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pgflow._require(msg_id, 'msg_id');
    RETURN EXISTS (SELECT 1 FROM pgflow.archive(queue_name, ARRAY[msg_id]));
END $$;

-- delete: remove messages without keeping them. Returns the ids that were deleted.
CREATE FUNCTION pgflow.delete(queue_name text, msg_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of this file
AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name);
BEGIN
    PERFORM pgflow._require(msg_ids, 'msg_ids');
    RETURN QUERY
    DELETE FROM pgflow.message m
     WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (msg_ids)
    RETURNING m.msg_id;
END $$;

-- delete (one id): true when the message was deleted.
CREATE FUNCTION pgflow.delete(queue_name text, msg_id bigint)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pgflow._require(msg_id, 'msg_id');
    RETURN EXISTS (SELECT 1 FROM pgflow.delete(queue_name, ARRAY[msg_id]));
END $$;

-- set_vt: make a message invisible until now + vt. On a leased message it renews (or, with a
-- short vt, shortens) the lease: a consumer's heartbeat; a lease that then runs out is a
-- failed delivery. On a ready or delayed message it (re)schedules delivery. vt = 0 makes any
-- message deliverable at once, and hands a lease back without counting a failure. Returns the message, or no row
-- when it is not in the queue.
CREATE FUNCTION pgflow.set_vt(queue_name text, msg_id bigint, vt interval)
RETURNS SETOF pgflow.message_record
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of this file
AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name);
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM pgflow._require(set_vt.msg_id, 'msg_id');
    PERFORM pgflow._check_interval(set_vt.vt, 'vt', true);
    RETURN QUERY
    UPDATE pgflow.message m
       SET vt = v_now + set_vt.vt,
           -- vt 0 hands the message back at once, without counting a failure (SQS's
           -- ChangeMessageVisibility 0); a positive vt renews a lease or schedules delivery.
           -- A message waiting behind its group keeps waiting; vt applies once it is its turn.
           state = CASE WHEN m.state = 'g' THEN 'g'
                        WHEN set_vt.vt = interval '0' THEN 'r'
                        WHEN m.state = 'l' THEN 'l'
                        ELSE 'd' END
     WHERE m.queue_id = q.queue_id AND m.msg_id = set_vt.msg_id
    RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, m.headers;
    IF set_vt.vt = interval '0' THEN
        PERFORM pgflow._announce(q.queue_id, q.queue_name, q.notify);
    END IF;
END $$;

-------------------------------------------------------------------------------------------------
-- Observing
-------------------------------------------------------------------------------------------------

-- _metrics: one row per queue (all queues when queue_id is NULL). Counts scan the queue's
-- rows; totals come from the per-queue sequences (no count on any hot path).
CREATE FUNCTION pgflow._metrics(p_queue_id integer, p_now timestamptz)
RETURNS SETOF pgflow.queue_metrics
LANGUAGE sql STABLE AS $$
    SELECT q.queue_name,
           coalesce(s.length, 0),
           coalesce(s.visible, 0),
           coalesce(s.in_flight, 0),
           coalesce(s.delayed, 0),
           extract(epoch FROM p_now - s.oldest)::double precision,
           extract(epoch FROM p_now - s.newest)::double precision,
           coalesce(pg_catalog.pg_sequence_last_value(q.msg_seq), 0),
           coalesce(pg_catalog.pg_sequence_last_value(q.archived_seq), 0),
           (SELECT count(*) FROM pgflow.archive a WHERE a.queue_id = q.queue_id),
           (SELECT count(*) FROM pgflow.dead d WHERE d.queue_id = q.queue_id),
           p_now,
           coalesce(s.waiting, 0)
      FROM pgflow.queue q
      LEFT JOIN LATERAL (
        SELECT count(*) AS length,
               count(*) FILTER (WHERE m.state = 'r' OR (m.state = 'd' AND m.vt <= p_now)) AS visible,
               -- A lease that ran out stays in flight until the retry policy has run on it.
               count(*) FILTER (WHERE m.state = 'l') AS in_flight,
               count(*) FILTER (WHERE m.state = 'd' AND m.vt > p_now) AS delayed,
               count(*) FILTER (WHERE m.state = 'g') AS waiting,
               min(m.enqueued_at) AS oldest,
               max(m.enqueued_at) AS newest
          FROM pgflow.message m
         WHERE m.queue_id = q.queue_id
      ) s ON true
     WHERE p_queue_id IS NULL OR q.queue_id = p_queue_id
     ORDER BY q.queue_name;
$$;

-- metrics: depth and counters of one queue.
CREATE FUNCTION pgflow.metrics(queue_name text)
RETURNS SETOF pgflow.queue_metrics
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY SELECT * FROM pgflow._metrics((pgflow._queue(queue_name)).queue_id, clock_timestamp());
END $$;

-- metrics_all: metrics of every queue, by name.
CREATE FUNCTION pgflow.metrics_all()
RETURNS SETOF pgflow.queue_metrics
LANGUAGE sql STABLE AS $$
    SELECT * FROM pgflow._metrics(NULL, clock_timestamp());
$$;

-- list_pending: look at what waits in a queue without leasing anything, in delivery order:
-- deliverable messages first (as read would take them), then delayed and in-flight ones by
-- the time they become deliverable. state is 'ready', 'delayed' or 'in_flight'.
CREATE FUNCTION pgflow.list_pending(queue_name text, qty integer DEFAULT 100)
RETURNS SETOF pgflow.pending_message
LANGUAGE plpgsql STABLE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name);
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM pgflow._check_int(qty, 'qty', 1);
    RETURN QUERY
    SELECT m.msg_id,
           CASE WHEN m.state = 'r' OR (m.state = 'd' AND m.vt <= v_now) THEN 'ready'
                WHEN m.state = 'd' THEN 'delayed'
                WHEN m.state = 'g' THEN 'waiting'
                ELSE 'in_flight' END,
           m.read_ct, m.enqueued_at, m.vt, m.priority, m.message, m.headers, m.group_key
      FROM pgflow.message m
     WHERE m.queue_id = q.queue_id
     -- Deliverable first, in read's order (due messages join the ready ones), then the rest.
     ORDER BY NOT (m.state = 'r' OR (m.state = 'd' AND m.vt <= v_now)),
              m.priority DESC, m.msg_id
     LIMIT qty;
END $$;
