-- Queue management: create, list, alter, drop and purge queues.

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
    contract           jsonb    DEFAULT NULL,   -- a JSON Schema: becomes contract version '1'
    alert_dlq          bigint   DEFAULT NULL,   -- alert thresholds (NULL, -1 or '0': none)
    alert_age          interval DEFAULT NULL,
    alert_depth        bigint   DEFAULT NULL,
    session_leases     boolean  DEFAULT false   -- leases also end with the reading session
)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_id integer;
    v_msg_seq text;
    v_archived_seq text;
    v_floor bigint;
BEGIN
    PERFORM pgflow._primary();
    PERFORM pgflow._check_queue_name(queue_name);
    PERFORM pgflow._check_interval(visibility_timeout, 'visibility_timeout', false);
    PERFORM pgflow._check_int(max_retries, 'max_retries', 0);
    PERFORM pgflow._check_max_retries(max_retries);
    PERFORM pgflow._check_interval(retry_delay, 'retry_delay', true);
    PERFORM pgflow._check_interval(archive_retention, 'archive_retention', false);
    PERFORM pgflow._require(if_not_exists, 'if_not_exists');
    PERFORM pgflow._check_retry_policy(retry_backoff, retry_delay_max, retry_jitter);
    PERFORM pgflow._require(default_priority, 'default_priority');
    PERFORM pgflow._check_priority(default_priority, 'default_priority');
    PERFORM pgflow._check_interval(dedup_window, 'dedup_window', false);
    PERFORM pgflow._require(notify, 'notify');
    PERFORM pgflow._require(session_leases, 'session_leases');
    IF contract IS NOT NULL THEN
        PERFORM pgflow._check_contract_schema(contract::text);
    END IF;
    PERFORM pgflow._alert_count(alert_dlq, 'alert_dlq');
    PERFORM pgflow._alert_count(alert_depth, 'alert_depth');
    PERFORM pgflow._alert_age(alert_age, 'alert_age');

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
    -- After a failover, ids start past anything the old timelines issued (_ids_for_timeline);
    -- _primary() above has brought pgflow.id_timeline up to this server's timeline.
    v_floor := (SELECT t.timeline::bigint << 40 FROM pgflow.id_timeline t WHERE t.timeline > 1);
    IF v_floor IS NOT NULL THEN
        PERFORM setval(v_msg_seq::regclass, v_floor);
    END IF;

    INSERT INTO pgflow.queue (queue_id, queue_name, visibility_timeout, max_retries, retry_delay,
                              retry_backoff, retry_delay_max, retry_jitter,
                              archive_retention, msg_seq, archived_seq, default_priority,
                              dedup_window, notify, alert_dlq, alert_age, alert_depth,
                              session_leases, ids_skipped)
    VALUES (v_id, queue_name, visibility_timeout, max_retries, retry_delay,
            retry_backoff, retry_delay_max, retry_jitter,
            archive_retention, v_msg_seq::regclass, v_archived_seq::regclass, default_priority,
            dedup_window, notify, nullif(alert_dlq, -1), nullif(alert_age, interval '0'),
            nullif(alert_depth, -1), session_leases, coalesce(v_floor, 0))
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
    -- Its statistics start empty, and exact, when this commits (src/ipc/stats.rs).
    PERFORM pgflow._stats_created(v_id, queue_name);
    RETURN true;
END $$;

-- list_queues: every queue the caller sees (any grant on it; every queue for pg_monitor and
-- pgflow_admin) with its settings, by name.
CREATE FUNCTION pgflow.list_queues()
RETURNS SETOF pgflow.queue_info
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT q.queue_name, q.visibility_timeout, q.max_retries, q.retry_delay, q.retry_backoff,
           q.retry_delay_max, q.retry_jitter, q.archive_retention, q.created_at,
           q.default_priority, q.dedup_window, q.notify, q.contract_version,
           q.alert_dlq, q.alert_age, q.alert_depth, q.session_leases
      FROM pgflow.queue q
     WHERE pgflow._visible(q.queue_id)
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
    contract           jsonb    DEFAULT NULL,   -- replaces the default contract version (or makes '1')
    alert_dlq          bigint   DEFAULT NULL,   -- alert thresholds; -1 or '0' removes one
    alert_age          interval DEFAULT NULL,
    alert_depth        bigint   DEFAULT NULL,
    session_leases     boolean  DEFAULT NULL    -- for the leases read from now on
)
RETURNS SETOF pgflow.queue_info
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(alter_queue.queue_name, 'admin');
BEGIN
    IF alter_queue.visibility_timeout IS NOT NULL THEN
        PERFORM pgflow._check_interval(alter_queue.visibility_timeout, 'visibility_timeout', false);
    END IF;
    IF alter_queue.max_retries IS NOT NULL THEN
        PERFORM pgflow._check_int(alter_queue.max_retries, 'max_retries', 0);
        PERFORM pgflow._check_max_retries(alter_queue.max_retries);
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
    PERFORM pgflow._alert_count(alter_queue.alert_dlq, 'alert_dlq');
    PERFORM pgflow._alert_count(alter_queue.alert_depth, 'alert_depth');
    PERFORM pgflow._alert_age(alter_queue.alert_age, 'alert_age');
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
           notify             = coalesce(alter_queue.notify, u.notify),
           alert_dlq          = CASE WHEN alter_queue.alert_dlq IS NULL THEN u.alert_dlq
                                     ELSE nullif(alter_queue.alert_dlq, -1) END,
           alert_age          = CASE WHEN alter_queue.alert_age IS NULL THEN u.alert_age
                                     ELSE nullif(alter_queue.alert_age, interval '0') END,
           alert_depth        = CASE WHEN alter_queue.alert_depth IS NULL THEN u.alert_depth
                                     ELSE nullif(alter_queue.alert_depth, -1) END,
           session_leases     = coalesce(alter_queue.session_leases, u.session_leases)
     WHERE u.queue_id = q.queue_id
    RETURNING u.queue_name, u.visibility_timeout, u.max_retries, u.retry_delay, u.retry_backoff,
              u.retry_delay_max, u.retry_jitter, u.archive_retention, u.created_at,
              u.default_priority, u.dedup_window, u.notify, u.contract_version,
              u.alert_dlq, u.alert_age, u.alert_depth, u.session_leases;
END $$;

-- drop_queue: the queue, its live messages, its archive, its dead letters and its sequences. An unknown queue
-- raises 42704 unless if_exists, which returns false. Returns true when a queue was dropped.
CREATE FUNCTION pgflow.drop_queue(queue_name text, if_exists boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue;
BEGIN
    PERFORM pgflow._primary();
    PERFORM pgflow._require(queue_name, 'queue_name');
    -- Lock the queue row: a concurrent drop of the same queue waits, then finds nothing.
    SELECT * INTO q FROM pgflow.queue u WHERE u.queue_name = drop_queue.queue_name FOR UPDATE;
    IF NOT FOUND THEN
        IF coalesce(if_exists, false) THEN
            RETURN false;
        END IF;
        q := pgflow._queue(queue_name, 'admin');  -- raises the right error
    END IF;
    PERFORM pgflow._queue(queue_name, 'admin');  -- 42501 unless the caller may

    -- The deletes lock every message, ready ones included: should this transaction abort, the
    -- queue's claim cursor must start over (src/ipc/cursor/).
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    DELETE FROM pgflow.message m WHERE m.queue_id = q.queue_id;
    DELETE FROM pgflow.archive a WHERE a.queue_id = q.queue_id;
    DELETE FROM pgflow.dead d WHERE d.queue_id = q.queue_id;
    DELETE FROM pgflow.dedup k WHERE k.queue_id = q.queue_id;
    DELETE FROM pgflow.binding b WHERE b.queue_id = q.queue_id;
    DELETE FROM pgflow.queue_grant g WHERE g.queue_id = q.queue_id;
    DELETE FROM pgflow.contract c WHERE c.queue_id = q.queue_id;
    DELETE FROM pgflow.alert x WHERE x.queue_id = q.queue_id;
    DELETE FROM pgflow.queue u WHERE u.queue_id = q.queue_id;
    PERFORM pgflow._notify_forget(q.queue_id);
    PERFORM pgflow._cursor_forget(q.queue_id);
    PERFORM pgflow._stats_dropped(q.queue_id);
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
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
    n bigint;
BEGIN
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    DELETE FROM pgflow.message m WHERE m.queue_id = q.queue_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
