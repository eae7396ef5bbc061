-- Consuming: read (with long-poll), pop, archive, delete and set_vt. Expired leases and
-- delayed messages that came due are handled on the read path too (see read), so a queue
-- behaves the same with or without the background worker.

-- _promote_queue: at most lim delayed messages of a queue that came due become ready, oldest
-- due first; rows another session holds are skipped. Returns how many. Used by read, pop and
-- the promote_delayed job. Each promoted message is noted for the claim cursor: it keeps its
-- id, so it is usually behind the cursor.
CREATE FUNCTION pgflow._promote_queue(q pgflow.queue, p_now timestamptz, lim integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of sql/internal.sql
AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    WITH due AS (
        SELECT d.msg_id FROM pgflow.message d
         WHERE d.queue_id = q.queue_id AND d.state = 'd' AND d.vt <= p_now
         ORDER BY d.vt
         LIMIT lim
           FOR UPDATE SKIP LOCKED
    ), promoted AS (
        UPDATE pgflow.message m
           SET state = 'r'
         WHERE m.queue_id = q.queue_id
           -- An array, not a join: see read; and the ids' span (sql/internal.sql).
           AND m.msg_id = ANY (ARRAY(SELECT d.msg_id FROM due d))
           AND m.msg_id BETWEEN (SELECT min(d.msg_id) FROM due d) AND (SELECT max(d.msg_id) FROM due d)
        RETURNING m.priority, m.msg_id
    )
    SELECT count(*) INTO n FROM promoted p
     WHERE pgflow._ready(q.queue_id, q.msg_seq::oid, p.priority, p.msg_id);
    IF n > 0 THEN
        -- Waiting readers wake at the commit, as for a send.
        PERFORM pgflow._announce(q.queue_id, q.queue_name, q.notify);
    END IF;
    RETURN n;
END $$;

-- _before_claim: what read and pop do before they claim, so that a queue behaves the same
-- with or without the worker. An expired lease is a failed delivery: the retry policy applies
-- (retry later or dead-letter). Then delayed and retried messages that came due join the
-- ready backlog, so priority and id order hold across all of them. Both probes run only once
-- the queue's due time (shared memory, src/ipc/cursor/) has passed: until then no lease can
-- have run out and no delayed message can have come due, and the probes, whose indexes fill
-- with dead entries while a snapshot is held, stay off the read path. The reader that finds
-- due passed recomputes it after probing (one reader at a time). read and pop call it only
-- when _due_begin said to probe (v_probe 1), or to probe and recompute (2). No SET clause of its own (a
-- SET costs every call a save and restore of the setting): it runs inside read and pop, whose
-- enable_seqscan = off its plans are made under.
CREATE FUNCTION pgflow._before_claim(q pgflow.queue, p_now timestamptz, qty integer,
                                     v_probe integer)
RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pgflow.message m
                WHERE m.queue_id = q.queue_id AND m.state = 'l' AND m.vt <= p_now) THEN
        PERFORM pgflow._expire_queue(q, p_now, 100);
    END IF;
    IF EXISTS (SELECT 1 FROM pgflow.message m
                WHERE m.queue_id = q.queue_id AND m.state = 'd' AND m.vt <= p_now) THEN
        PERFORM pgflow._promote_queue(q, p_now, greatest(qty, 100));
    END IF;
    IF v_probe = 2 THEN
        -- A statement of its own: its snapshot comes after _due_begin.
        PERFORM pgflow._due_end(q.queue_id, q.msg_seq::oid, pgflow._next_due(q.queue_id));
    END IF;
END $$;

-- _next_due: the earliest vt of a leased or delayed message of the queue, NULL when none.
CREATE FUNCTION pgflow._next_due(p_queue_id integer)
RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT min(x.vt)
      FROM (SELECT min(m.vt) AS vt FROM pgflow.message m
             WHERE m.queue_id = p_queue_id AND m.state = 'd'
            UNION ALL
            SELECT min(m.vt) FROM pgflow.message m
             WHERE m.queue_id = p_queue_id AND m.state = 'l') x;
$$;

-- read: lease up to qty deliverable messages for vt (default: the queue's visibility_timeout),
-- by priority (higher first), then id (send order). Delayed and retried messages that came due
-- join the ready backlog first. Concurrent readers skip each other's rows (FOR UPDATE SKIP
-- LOCKED), so no two readers hold the same message while its lease runs.
--
-- wait (long-poll): when nothing is deliverable, sleep until a send to this queue commits, the
-- next delayed or retried message comes due, a lease runs out, or wait has passed, then look
-- again; return as soon as something was leased (or nothing, at the end of wait). The sleep is
-- on this backend's latch (src/ipc/waiters.rs), not a loop of queries; statement_timeout and
-- pg_cancel_backend interrupt it. Needs READ COMMITTED (each look takes a new snapshot).
CREATE FUNCTION pgflow.read(queue_name text, vt interval DEFAULT NULL, qty integer DEFAULT 1,
                            wait interval DEFAULT NULL)
RETURNS SETOF pgflow.message_record
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of sql/internal.sql
AS $$
BEGIN
    RETURN QUERY SELECT * FROM pgflow._read(pgflow._queue(queue_name, 'consume'), vt, qty, wait);
END $$;

-- _read: read's body, for read and archive_read (which call it with their queue row, checked,
-- so a consumer's round trip looks the queue up once and nests no entry point). No SET clause
-- of its own (see _before_claim): both callers set enable_seqscan = off.
CREATE FUNCTION pgflow._read(q pgflow.queue, vt interval, qty integer, wait interval)
RETURNS SETOF pgflow.message_record
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_vt interval := coalesce(_read.vt, q.visibility_timeout);
    v_deadline timestamptz;
    v_woken boolean;
    v_next timestamptz;
    v_from bigint[];
    v_probe integer;
    v_backoff interval;
    n bigint;
BEGIN
    -- The checks' fast path inline; the helpers raise the precise error.
    IF v_vt IS NULL OR v_vt <= interval '0' OR v_vt > interval '100 years' THEN
        PERFORM pgflow._check_interval(v_vt, 'vt', false);
    END IF;
    IF qty IS NULL OR qty < 1 THEN
        PERFORM pgflow._check_int(qty, 'qty', 1);
    END IF;
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
        v_probe := pgflow._due_begin(q.queue_id, q.msg_seq::oid, v_now);
        IF v_probe > 0 THEN
            PERFORM pgflow._before_claim(q, v_now, qty, v_probe);
        END IF;
        -- The claim starts after the queue's claim cursor (a statement of its own, before the
        -- claim's snapshot; src/ipc/cursor/ has the rules that keep it safe).
        v_from := pgflow._claim_begin(q.queue_id, q.msg_seq::oid);
        RETURN QUERY
        WITH picked AS (
            SELECT m.msg_id FROM pgflow.message m
             WHERE m.queue_id = q.queue_id AND m.state = 'r'
               AND (-(m.priority::integer), m.msg_id) > (v_from[1]::integer, v_from[2])
             ORDER BY -(m.priority::integer), m.msg_id
             LIMIT qty
               FOR UPDATE SKIP LOCKED
        ), leased AS (
            -- The picked ids as an array, so both key columns are the index condition: a join
            -- with picked let a plan cached on a near-empty table (a fresh install) scan every
            -- row of the queue on each claim, for the life of the session. The span bounds
            -- the walk whatever the plan (sql/internal.sql, "Id spans").
            UPDATE pgflow.message m
               SET state = 'l', vt = v_now + v_vt, read_ct = m.read_ct + 1,
                   holder = CASE WHEN q.session_leases THEN pgflow._session_key() END
             WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (ARRAY(SELECT p.msg_id FROM picked p))
               AND m.msg_id BETWEEN (SELECT min(p.msg_id) FROM picked p)
                                AND (SELECT max(p.msg_id) FROM picked p)
            RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, m.headers, m.priority
        ), noted AS (
            -- What the claim took, noted for the claim cursor in one call.
            SELECT pgflow._claim_span(min(ARRAY[-(l.priority::bigint), l.msg_id]),
                                      max(ARRAY[-(l.priority::bigint), l.msg_id]), count(*)) AS ok
              FROM leased l
        )
        SELECT l.msg_id, l.read_ct, l.enqueued_at, l.vt, l.message, l.headers,
               pgflow._receipt(l.enqueued_at, l.read_ct)
          FROM leased l, noted
         WHERE noted.ok
         ORDER BY l.priority DESC, l.msg_id;
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM pgflow._claim_end(qty);
        IF n > 0 THEN
            PERFORM pgflow._due_at(q.queue_id, q.msg_seq::oid, v_now + v_vt);
        END IF;
        EXIT WHEN n > 0 OR v_deadline IS NULL OR v_now >= v_deadline;
        -- Sleep at most until the next delayed message or lease comes due: the queue's due
        -- time when shared memory knows it, else from the table. When that has passed and
        -- still nothing could be claimed (another reader is recomputing it, or the due lease
        -- is row-locked by an open transaction, such as a consumer archiving inside a longer
        -- one), back off: 10 ms, doubling up to 1 s, or until a wake-up.
        v_next := pgflow._due(q.queue_id, q.msg_seq::oid);
        IF v_next IS NULL THEN
            v_next := pgflow._next_due(q.queue_id);
        END IF;
        IF v_next <= v_now THEN
            v_backoff := least(coalesce(v_backoff * 2, interval '10 ms'), interval '1 s');
            v_next := v_now + v_backoff;
        END IF;
        -- False when the extension, its schema or the database is being dropped.
        EXIT WHEN NOT pgflow._wait_for(least(v_deadline, v_next), v_woken);
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
SET enable_seqscan = off  -- see the header of sql/internal.sql
AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'consume');
    v_now timestamptz := clock_timestamp();
    v_from bigint[];
    v_probe integer;
BEGIN
    PERFORM pgflow._check_int(qty, 'qty', 1);
    v_probe := pgflow._due_begin(q.queue_id, q.msg_seq::oid, v_now);
    IF v_probe > 0 THEN
        PERFORM pgflow._before_claim(q, v_now, qty, v_probe);
    END IF;
    v_from := pgflow._claim_begin(q.queue_id, q.msg_seq::oid);
    -- The statistics count what the delete removes as delivered (src/ipc/stats.rs).
    PERFORM pgflow._stats_mode('pop');
    RETURN QUERY
    WITH picked AS (
        SELECT m.msg_id FROM pgflow.message m
         WHERE m.queue_id = q.queue_id AND m.state = 'r'
           AND (-(m.priority::integer), m.msg_id) > (v_from[1]::integer, v_from[2])
         ORDER BY -(m.priority::integer), m.msg_id
         LIMIT qty
           FOR UPDATE SKIP LOCKED
    ), popped AS (
        -- An array, not a join, and the span: see read.
        DELETE FROM pgflow.message m
         WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (ARRAY(SELECT p.msg_id FROM picked p))
           AND m.msg_id BETWEEN (SELECT min(p.msg_id) FROM picked p)
                            AND (SELECT max(p.msg_id) FROM picked p)
        RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, m.headers, m.priority
    ), noted AS (
        SELECT pgflow._claim_span(min(ARRAY[-(p.priority::bigint), p.msg_id]),
                                  max(ARRAY[-(p.priority::bigint), p.msg_id]), count(*)) AS ok
          FROM popped p
    )
    SELECT p.msg_id, p.read_ct + 1, p.enqueued_at, v_now, p.message, p.headers,
           pgflow._receipt(p.enqueued_at, p.read_ct + 1)
      FROM popped p, noted
     WHERE noted.ok
     ORDER BY p.priority DESC, p.msg_id;
    PERFORM pgflow._stats_mode('plain');
    PERFORM pgflow._claim_end(qty);
END $$;

-- archive: move messages into the queue's archive (the audit trail). Returns the ids that were
-- archived; an id that is not in the queue (never sent, already archived or deleted) is skipped.
--
-- receipts (optional, one per id, in the same order): the receipts read returned. An id whose
-- receipt does not match is skipped too: the message was delivered again since (its lease ran
-- out and another consumer holds it), or it is another message with the same id (after a
-- failover that lost sends). A NULL element checks nothing for its id.
CREATE FUNCTION pgflow.archive(queue_name text, msg_ids bigint[], receipts bigint[] DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of sql/internal.sql
AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'consume');
BEGIN
    IF msg_ids IS NULL OR receipts IS NOT NULL THEN
        PERFORM pgflow._check_receipts(msg_ids, receipts);
    END IF;
    RETURN QUERY SELECT * FROM pgflow._archive(q, msg_ids, receipts);
END $$;

-- _check_receipts: 22004 for NULL ids, 22023 unless receipts (when given) pair with them.
CREATE FUNCTION pgflow._check_receipts(msg_ids bigint[], receipts bigint[])
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM pgflow._require(msg_ids, 'msg_ids');
    IF receipts IS NOT NULL
       AND coalesce(cardinality(receipts), 0) <> coalesce(cardinality(msg_ids), 0) THEN
        RAISE EXCEPTION 'receipts has % elements and msg_ids %: give one receipt per id',
                cardinality(receipts), cardinality(msg_ids)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $$;

-- _archive: archive's body, for both archives and archive_read (with their checked queue row).
-- No SET clause of its own: every caller sets enable_seqscan = off.
CREATE FUNCTION pgflow._archive(q pgflow.queue, msg_ids bigint[], receipts bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    RETURN QUERY
    WITH moved AS (
        -- Each row's receipts, paired with the ids by position (whatever the arrays' bounds),
        -- in two uncorrelated subqueries that are hashed once per statement; the index
        -- condition stays the plain (queue_id, msg_id = ANY) one. An id given twice is
        -- archived if either pair matches; a NULL receipt checks nothing. The ids' span
        -- bounds the walk whatever the plan (sql/internal.sql, "Id spans").
        DELETE FROM pgflow.message m
         WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (msg_ids)
           AND m.msg_id BETWEEN (SELECT min(i) FROM unnest(msg_ids) i)
                            AND (SELECT max(i) FROM unnest(msg_ids) i)
           AND (receipts IS NULL
                OR (m.msg_id, pgflow._receipt(m.enqueued_at, m.read_ct))
                   IN (SELECT r.id, r.receipt FROM unnest(msg_ids, receipts) AS r(id, receipt)
                        WHERE r.receipt IS NOT NULL)
                OR m.msg_id IN (SELECT r.id FROM unnest(msg_ids, receipts) AS r(id, receipt)
                                 WHERE r.receipt IS NULL))
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

-- archive (one id): true when the message was archived; false when it is not in the queue, or
-- when receipt is given and does not match (see archive above).
CREATE FUNCTION pgflow.archive(queue_name text, msg_id bigint, receipt bigint DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of sql/internal.sql
AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'consume');
BEGIN
    PERFORM pgflow._require(msg_id, 'msg_id');
    RETURN EXISTS (SELECT 1 FROM pgflow._archive(q, ARRAY[msg_id],
                                                  CASE WHEN receipt IS NOT NULL THEN ARRAY[receipt] END));
END $$;

-- delete: remove messages without keeping them. Returns the ids that were deleted. receipts
-- as for archive: an id whose receipt does not match is skipped.
CREATE FUNCTION pgflow.delete(queue_name text, msg_ids bigint[], receipts bigint[] DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of sql/internal.sql
AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'consume');
BEGIN
    PERFORM pgflow._check_receipts(msg_ids, receipts);
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    RETURN QUERY
    DELETE FROM pgflow.message m
     WHERE m.queue_id = q.queue_id AND m.msg_id = ANY (msg_ids)
       AND m.msg_id BETWEEN (SELECT min(i) FROM unnest(msg_ids) i)
                        AND (SELECT max(i) FROM unnest(msg_ids) i)
       AND (receipts IS NULL  -- paired as in _archive
            OR (m.msg_id, pgflow._receipt(m.enqueued_at, m.read_ct))
               IN (SELECT r.id, r.receipt FROM unnest(msg_ids, receipts) AS r(id, receipt)
                    WHERE r.receipt IS NOT NULL)
            OR m.msg_id IN (SELECT r.id FROM unnest(msg_ids, receipts) AS r(id, receipt)
                             WHERE r.receipt IS NULL))
    RETURNING m.msg_id;
END $$;

-- delete (one id): true when the message was deleted (receipt as for archive).
CREATE FUNCTION pgflow.delete(queue_name text, msg_id bigint, receipt bigint DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pgflow._require(msg_id, 'msg_id');
    RETURN EXISTS (SELECT 1 FROM pgflow.delete(queue_name, ARRAY[msg_id],
                                               CASE WHEN receipt IS NOT NULL THEN ARRAY[receipt] END));
END $$;

-- set_vt: make a message invisible until now + vt. On a leased message it renews (or, with a
-- short vt, shortens) the lease: a consumer's heartbeat; a lease that then runs out is a
-- failed delivery. On a ready or delayed message it (re)schedules delivery. vt = 0 makes any
-- message deliverable at once, and hands a lease back without counting a failure. Returns the
-- message, or no row when it is not in the queue. With receipt (the one read returned), a call
-- whose lease is gone fails with 55000 and changes nothing: the message is no longer leased
-- (its lease ran out, or it was nacked or handed back), it was delivered again since, or it is
-- another message with the same id after a failover. A heartbeat learns that it lost its lease.
CREATE FUNCTION pgflow.set_vt(queue_name text, msg_id bigint, vt interval,
                              receipt bigint DEFAULT NULL)
RETURNS SETOF pgflow.message_record
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of sql/internal.sql
AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'consume');
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM pgflow._require(set_vt.msg_id, 'msg_id');
    PERFORM pgflow._check_interval(set_vt.vt, 'vt', true);
    PERFORM pgflow._touch(q.queue_id, q.msg_seq::oid);
    IF set_vt.receipt IS NOT NULL THEN
        PERFORM pgflow._check_receipt(q, set_vt.msg_id, set_vt.receipt, leased => true);
    END IF;
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
    RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, m.headers,
              pgflow._receipt(m.enqueued_at, m.read_ct);
    IF set_vt.vt = interval '0' THEN
        PERFORM pgflow._ready(q.queue_id, q.msg_seq::oid, m.priority, m.msg_id)
           FROM pgflow.message m
          WHERE m.queue_id = q.queue_id AND m.msg_id = set_vt.msg_id AND m.state = 'r';
        PERFORM pgflow._announce(q.queue_id, q.queue_name, q.notify);
    ELSE
        PERFORM pgflow._due_at(q.queue_id, q.msg_seq::oid, v_now + set_vt.vt);
    END IF;
END $$;

-- archive_read: archive what the caller finished and lease what it handles next, in one
-- statement and one commit: a consumer loop's round trip. msg_ids are archived as by archive
-- (ids not in the queue are skipped; an empty array archives nothing), then the read runs as
-- read(queue_name, vt, qty, wait) does. Bad arguments are refused before anything changes.
-- With wait, the archive commits when the read returns: until then it holds the archived
-- messages' row locks (nobody else can have them: they are this consumer's leases), and an
-- error or a crash while waiting rolls it back, so those messages are delivered again (at
-- least once, as with any lost archive). receipts as for archive.
CREATE FUNCTION pgflow.archive_read(queue_name text, msg_ids bigint[], vt interval DEFAULT NULL,
                                    qty integer DEFAULT 1, wait interval DEFAULT NULL,
                                    receipts bigint[] DEFAULT NULL)
RETURNS SETOF pgflow.message_record
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of sql/internal.sql
AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'consume');
BEGIN
    PERFORM pgflow._check_receipts(msg_ids, receipts);
    IF vt IS NOT NULL THEN
        PERFORM pgflow._check_interval(vt, 'vt', false);
    END IF;
    PERFORM pgflow._check_int(qty, 'qty', 1);
    IF wait IS NOT NULL THEN
        PERFORM pgflow._check_interval(wait, 'wait', true);
    END IF;
    -- The bodies, not the entry points: one queue lookup and no nested SET per round trip.
    IF cardinality(msg_ids) > 0 THEN
        PERFORM pgflow._archive(q, msg_ids, receipts);
    END IF;
    RETURN QUERY SELECT * FROM pgflow._read(q, vt, qty, wait);
END $$;
