-- Failure handling: nack, lease expiry as a failed delivery, the retry schedule, and the
-- dead-letter queue with its redrive. The bounded maintenance jobs that apply these without a
-- reader are in maintenance.sql.

-- A nack's outcome, as nack returns it.
CREATE TYPE pgflow.nack_result AS (
    msg_id   bigint,
    outcome  text,          -- 'retry' (deliverable again at retry_at) or 'dead' (in the DLQ)
    read_ct  integer,       -- deliveries made so far
    retry_at timestamptz    -- when it will be delivered again; NULL when dead
);

-- A dead letter, as dlq_list returns it.
CREATE TYPE pgflow.dead_message AS (
    msg_id      bigint,       -- the id it had in the queue
    read_ct     integer,      -- deliveries made
    enqueued_at timestamptz,
    died_at     timestamptz,
    reason      text,
    first_error text,
    last_error  text,
    errors      jsonb,        -- every recorded failure: [{"at", "attempt", "error"}, ...]
    message     jsonb,
    headers     jsonb
);

-- _retry_interval: the policy's delay before retry number `attempt`, for the jitter draw u in
-- [0, 1) (callers pass random(); u = 0 gives the longest delay, u = 1 the shortest).
CREATE FUNCTION pgflow._retry_interval(q pgflow.queue, attempt integer, u float8)
RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT make_interval(secs => pgflow._retry_delay(
        extract(epoch FROM q.retry_delay)::float8, q.retry_backoff,
        extract(epoch FROM q.retry_delay_max)::float8, q.retry_jitter, attempt, u));
$$;

-- _fail: the core of every failed delivery (nack and lease expiry). For the given leased
-- messages of one queue: record the error; dead-letter those whose deliveries used up the
-- policy (read_ct > max_retries); schedule the others for their next delivery after the
-- backoff delay (or after retry_after, when the consumer named one). Rows must be locked by
-- the caller or are locked here. Returns one row per message it acted on.
CREATE FUNCTION pgflow._fail(q pgflow.queue, ids bigint[], err text, retry_after interval,
                             p_now timestamptz, dead_reason text)
RETURNS SETOF pgflow.nack_result
LANGUAGE sql VOLATILE AS $$
    WITH target AS (
        SELECT m.msg_id, m.read_ct, m.errors
          FROM pgflow.message m
         WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (ids) AND m.state = 'l'
           -- The ids' span bounds the walk whatever the plan (sql/internal.sql, "Id spans").
           AND m.msg_id BETWEEN (SELECT min(i) FROM unnest(ids) i) AND (SELECT max(i) FROM unnest(ids) i)
           FOR UPDATE
    ), noted AS (
        SELECT t.msg_id, t.read_ct, t.read_ct > q.max_retries AS dead,
               -- Keep the first error and the last 19.
               (SELECT CASE WHEN jsonb_array_length(e) > 20
                            THEN jsonb_build_array(e -> 0) || jsonb_path_query_array(e, '$[last - 18 to last]')
                            ELSE e END
                  FROM (SELECT coalesce(t.errors, '[]'::jsonb)
                               || jsonb_build_array(jsonb_build_object(
                                      'at', p_now, 'attempt', t.read_ct, 'error', coalesce(err, '')))) AS x(e)
               ) AS errors
          FROM target t
    ), died AS (
        DELETE FROM pgflow.message m
         USING noted n
         -- msg_id = ANY (ids) and the span keep both key columns in the index condition
         -- whatever the plan (see read in consume.sql).
         WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (ids) AND m.msg_id = n.msg_id AND n.dead
           AND m.msg_id BETWEEN (SELECT min(t.msg_id) FROM target t) AND (SELECT max(t.msg_id) FROM target t)
        RETURNING m.*, n.errors AS all_errors
    ), buried AS (
        INSERT INTO pgflow.dead (queue_id, read_ct, msg_id, enqueued_at, died_at, priority, reason,
                                 errors, message, headers, group_key)
        SELECT d.queue_id, d.read_ct, d.msg_id, d.enqueued_at, p_now, d.priority,
               dead_reason || ' after ' || d.read_ct || ' deliveries (max_retries ' || q.max_retries || ')',
               d.all_errors, d.message, d.headers, d.group_key
          FROM died d
        RETURNING dead.msg_id
    ), retried AS (
        UPDATE pgflow.message m
           SET state = 'd',
               vt = p_now + coalesce(retry_after, pgflow._retry_interval(q, n.read_ct, random())),
               errors = n.errors
          FROM noted n
         WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (ids) AND m.msg_id = n.msg_id AND NOT n.dead
           AND m.msg_id BETWEEN (SELECT min(t.msg_id) FROM target t) AND (SELECT max(t.msg_id) FROM target t)
        RETURNING m.msg_id, m.read_ct, m.vt
    )
    SELECT r.msg_id, 'retry', r.read_ct, r.vt FROM retried r
     WHERE pgflow._due_at(q.queue_id, q.msg_seq::oid, r.vt)
    UNION ALL
    SELECT d.msg_id, 'dead', d.read_ct, NULL::timestamptz FROM died d
     WHERE d.msg_id IN (SELECT b.msg_id FROM buried b);
$$;

-- nack: the consumer reports that it failed to handle a leased message. The message is
-- delivered again after the policy's backoff delay (or after retry_after, e.g. from a
-- Retry-After), or goes to the dead-letter queue when its deliveries are used up. The error
-- and the attempt count stay with the message.
--
-- read_ct, when given, is the read_ct the consumer received: if the message was delivered
-- again since (its lease ran out and another consumer has it), the nack is refused with 55000
-- instead of disturbing the new lease. receipt, when given (the one read returned), is the
-- stronger check: it also refuses, with 55000, another message given the same id after a
-- failover. A nack of a message that is not leased is 55000 too. Returns the outcome, or no row
-- when the message is not in the queue.
CREATE FUNCTION pgflow.nack(
    queue_name  text,
    msg_id      bigint,
    error       text        DEFAULT NULL,
    retry_after interval    DEFAULT NULL,
    read_ct     integer     DEFAULT NULL,
    now         timestamptz DEFAULT NULL,
    receipt     bigint      DEFAULT NULL
)
RETURNS SETOF pgflow.nack_result
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of sql/internal.sql
AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'consume');
    v_now timestamptz := coalesce(nack.now, clock_timestamp());
    m record;
BEGIN
    PERFORM pgflow._require(nack.msg_id, 'msg_id');
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    IF retry_after IS NOT NULL THEN
        PERFORM pgflow._check_interval(retry_after, 'retry_after', true);
    END IF;
    SELECT s.state, s.read_ct, s.enqueued_at INTO m
      FROM pgflow.message s
     WHERE s.queue_id = q.queue_id AND s.msg_id = nack.msg_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF nack.receipt IS NOT NULL AND nack.receipt <> pgflow._receipt(m.enqueued_at, m.read_ct) THEN
        PERFORM pgflow._check_receipt(q, nack.msg_id, nack.receipt);
    END IF;
    IF m.state <> 'l' THEN
        RAISE EXCEPTION 'message % of queue "%" is not in flight', nack.msg_id, queue_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Only a leased message (one returned by read) can be nacked.';
    END IF;
    IF nack.read_ct IS NOT NULL AND nack.read_ct <> m.read_ct THEN
        RAISE EXCEPTION 'lease lost: message % of queue "%" was delivered again (read_ct %, yours %)',
                nack.msg_id, queue_name, m.read_ct, nack.read_ct
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN QUERY SELECT * FROM pgflow._fail(q, ARRAY[nack.msg_id], error, retry_after, v_now,
                                            'max_retries exceeded');
END $$;

-- _check_receipt: 55000 unless the message's current delivery is the one receipt names, and,
-- with leased, unless that delivery's lease still runs (the message must exist: callers
-- return no row for a missing one). Locks the row.
CREATE FUNCTION pgflow._check_receipt(q pgflow.queue, p_msg_id bigint, p_receipt bigint,
                                      leased boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    m record;
BEGIN
    SELECT s.read_ct, s.enqueued_at, s.state INTO m
      FROM pgflow.message s
     WHERE s.queue_id = q.queue_id AND s.msg_id = p_msg_id
       FOR UPDATE;
    IF FOUND AND leased AND m.state <> 'l'
       AND pgflow._receipt(m.enqueued_at, m.read_ct) = p_receipt THEN
        RAISE EXCEPTION 'lease lost: message % of queue "%" is not leased any more', p_msg_id, q.queue_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Its lease ran out, or it was nacked or handed back; it will be delivered again.',
                  HINT = 'Do not act on it: its next delivery will.';
    END IF;
    IF FOUND AND pgflow._receipt(m.enqueued_at, m.read_ct) <> p_receipt THEN
        RAISE EXCEPTION 'lease lost: message % of queue "%" is not the delivery this receipt names',
                p_msg_id, q.queue_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('It was delivered again since (read_ct is now %s), or it is another message given the same id after a failover.', m.read_ct),
                  HINT = 'Do not act on it: whoever holds the current delivery will.';
    END IF;
END $$;

-- _fail_lost: leases lost without a nack (run out, or their session ended), failed with
-- reason and counted by the statistics as expired, not nacked (src/ipc/stats.rs). The caller
-- holds the rows (FOR UPDATE). Returns how many.
CREATE FUNCTION pgflow._fail_lost(q pgflow.queue, ids bigint[], reason text, p_now timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM pgflow._stats_mode('expire');
    n := (SELECT count(*) FROM pgflow._fail(q, ids, reason, NULL, p_now, reason));
    PERFORM pgflow._stats_mode('plain');
    RETURN n;
END $$;

-- _expire_queue: expired leases of one queue, oldest first, at most lim: each is a failed
-- delivery ("visibility timeout expired"). Rows another session holds are skipped, so two
-- callers never process the same message. Returns how many it processed.
CREATE FUNCTION pgflow._expire_queue(q pgflow.queue, p_now timestamptz, lim integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of sql/internal.sql
AS $$
DECLARE
    ids bigint[];
BEGIN
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    SELECT array_agg(e.msg_id) INTO ids
      FROM (SELECT m.msg_id FROM pgflow.message m
             WHERE m.queue_id = q.queue_id AND m.state = 'l' AND m.vt <= p_now
             ORDER BY m.vt
             LIMIT lim
               FOR UPDATE SKIP LOCKED) e;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    RETURN pgflow._fail_lost(q, ids, 'visibility timeout expired', p_now);
END $$;

-- _release_orphans: the session leases of one queue (session_leases) whose reading session
-- has ended, oldest lease first, at most lim: each is a failed delivery ("lease holder
-- disconnected"), as an expired lease is. The worker's expire_leases job calls it each tick,
-- so a crashed consumer's messages come back within a tick plus the retry delay, not at the
-- end of their visibility timeout. Returns how many it processed.
--
-- Which sessions still run comes from pg_stat_activity, read after the leases: a holder seen
-- with a lease and missing from the later list has ended, and its key (pid and start second)
-- is never reused. A session that claimed after the leases were read is not judged this
-- round. If any session is hidden from this role (pgflow_owner has pg_read_all_stats; without
-- it backend_start is NULL), nothing is judged: a live session's lease is never given away.
CREATE FUNCTION pgflow._release_orphans(q pgflow.queue, p_now timestamptz, lim integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of sql/internal.sql
AS $$
DECLARE
    v_held bigint[];
    v_live bigint[];
    ids bigint[];
BEGIN
    SELECT array_agg(DISTINCT m.holder) INTO v_held
      FROM pgflow.message m
     WHERE m.queue_id = q.queue_id AND m.state = 'l' AND m.holder IS NOT NULL;
    IF v_held IS NULL THEN
        RETURN 0;
    END IF;
    -- A fresh list: pg_stat_activity is read once per transaction unless cleared.
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    SELECT CASE WHEN bool_and(a.backend_start IS NOT NULL)
                THEN coalesce(array_agg(pgflow._session_key_of(a.pid, a.backend_start)), '{}')
           END
      INTO v_live
      FROM pg_catalog.pg_stat_get_activity(NULL) a
     WHERE a.pid IS NOT NULL;
    IF v_live IS NULL THEN
        RETURN 0;
    END IF;
    SELECT array_agg(e.msg_id) INTO ids
      FROM (SELECT m.msg_id FROM pgflow.message m
             WHERE m.queue_id = q.queue_id AND m.state = 'l'
               AND m.holder = ANY (v_held) AND NOT (m.holder = ANY (v_live))
             ORDER BY m.vt
             LIMIT lim
               FOR UPDATE SKIP LOCKED) e;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    RETURN pgflow._fail_lost(q, ids, 'lease holder disconnected', p_now);
END $$;

-------------------------------------------------------------------------------------------------
-- The dead-letter queue
-------------------------------------------------------------------------------------------------

-- dlq_list: a queue's dead letters, oldest death first.
CREATE FUNCTION pgflow.dlq_list(queue_name text, qty integer DEFAULT 100)
RETURNS SETOF pgflow.dead_message
LANGUAGE plpgsql STABLE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin', writes => false);
BEGIN
    PERFORM pgflow._check_int(qty, 'qty', 1);
    RETURN QUERY
    SELECT d.msg_id, d.read_ct, d.enqueued_at, d.died_at, d.reason,
           d.errors -> 0 ->> 'error', d.errors -> -1 ->> 'error', d.errors, d.message, d.headers
      FROM pgflow.dead d
     WHERE d.queue_id = q.queue_id
     ORDER BY d.died_at, d.msg_id
     LIMIT qty;
END $$;

-- dlq_list_all: the dead letters of every queue the caller administers (every queue for
-- pgflow_admin), with their queue's name, oldest death first: an operator's view across
-- queues.
CREATE FUNCTION pgflow.dlq_list_all(qty integer DEFAULT 100)
RETURNS TABLE (queue_name text, msg_id bigint, read_ct integer, enqueued_at timestamptz,
               died_at timestamptz, reason text, first_error text, last_error text,
               errors jsonb, message jsonb, headers jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_all boolean := pgflow._caller_class() = 2;
BEGIN
    PERFORM pgflow._check_int(qty, 'qty', 1);
    RETURN QUERY
    SELECT q.queue_name, d.msg_id, d.read_ct, d.enqueued_at, d.died_at, d.reason,
           d.errors -> 0 ->> 'error', d.errors -> -1 ->> 'error', d.errors, d.message, d.headers
      FROM pgflow.dead d
      JOIN pgflow.queue q ON q.queue_id = d.queue_id
     WHERE v_all OR pgflow._may(q.queue_id, 'admin')
     ORDER BY d.died_at, q.queue_name, d.msg_id
     LIMIT qty;
END $$;

-- dlq_delete: remove dead letters by id, without redriving them. Returns the ids removed; an
-- id not in the queue's dead-letter queue is skipped.
CREATE FUNCTION pgflow.dlq_delete(queue_name text, msg_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
BEGIN
    PERFORM pgflow._require(msg_ids, 'msg_ids');
    RETURN QUERY
    DELETE FROM pgflow.dead d
     WHERE d.queue_id = q.queue_id AND d.msg_id = ANY (msg_ids)
       AND d.msg_id BETWEEN (SELECT min(i) FROM unnest(msg_ids) i)
                        AND (SELECT max(i) FROM unnest(msg_ids) i)
    RETURNING d.msg_id;
END $$;

-- dlq_retry (a set): move dead letters back into their queue as new messages (new ids, read_ct
-- 0, deliverable at once), in the caller's transaction. msg_ids NULL means all, died_before
-- narrows to older deaths. Returns each dead letter's id and its new id. Two concurrent
-- redrives of the same dead letter: the second waits for the first and then finds nothing.
CREATE FUNCTION pgflow.dlq_retry(queue_name text, msg_ids bigint[] DEFAULT NULL,
                                 died_before timestamptz DEFAULT NULL)
RETURNS TABLE (dead_msg_id bigint, msg_id bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
    v_now timestamptz := clock_timestamp();
    d record;
    v_state "char";
BEGIN
    -- The statistics count the new messages as redriven, not sent (src/ipc/stats.rs).
    PERFORM pgflow._stats_mode('redrive');
    -- One insert per dead letter, in id order: a grouped one goes back behind its group's live
    -- messages, and each sees the one redriven before it.
    FOR d IN
        WITH moved AS (
            DELETE FROM pgflow.dead x
             WHERE x.queue_id = q.queue_id
               AND (msg_ids IS NULL OR x.msg_id = ANY (msg_ids))
               AND (died_before IS NULL OR x.died_at < died_before)
            RETURNING x.*
        )
        SELECT * FROM moved ORDER BY moved.msg_id
    LOOP
        dead_msg_id := d.msg_id;
        msg_id := nextval(q.msg_seq);
        v_state := pgflow._group_state(q.queue_id, d.group_key, 'r'::"char");
        INSERT INTO pgflow.message (queue_id, msg_id, enqueued_at, vt, priority, state, message,
                                    headers, group_key)
        VALUES (q.queue_id, dlq_retry.msg_id, v_now, v_now, d.priority, v_state, d.message,
                d.headers, d.group_key);
        IF v_state = 'r' THEN
            PERFORM pgflow._ready(q.queue_id, q.msg_seq::oid, d.priority, dlq_retry.msg_id);
        END IF;
        PERFORM pgflow._announce(q.queue_id, q.queue_name, q.notify);
        RETURN NEXT;
    END LOOP;
    PERFORM pgflow._stats_mode('plain');
END $$;

-- dlq_retry (one): the new id, or NULL when the message is not in the dead-letter queue.
CREATE FUNCTION pgflow.dlq_retry(queue_name text, msg_id bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pgflow._require(msg_id, 'msg_id');
    RETURN (SELECT r.msg_id FROM pgflow.dlq_retry(queue_name, ARRAY[msg_id]) r);
END $$;

-- dlq_purge: delete a queue's dead letters, all or only those that died before older_than.
-- Returns how many were deleted.
CREATE FUNCTION pgflow.dlq_purge(queue_name text, older_than timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
    n bigint;
BEGIN
    DELETE FROM pgflow.dead d
     WHERE d.queue_id = q.queue_id AND (older_than IS NULL OR d.died_at < older_than);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- retry_schedule: the delays a queue's policy gives each retry, as a range (jitter only ever
-- shortens a delay): what an operator checks after alter_queue.
CREATE FUNCTION pgflow.retry_schedule(queue_name text)
RETURNS TABLE (attempt integer, min_delay interval, max_delay interval)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'see');
BEGIN
    RETURN QUERY
    SELECT n, pgflow._retry_interval(q, n, 1.0), pgflow._retry_interval(q, n, 0.0)
      FROM generate_series(1, least(q.max_retries, 1000)) AS n;  -- the CHECK's bound, again
END $$;
