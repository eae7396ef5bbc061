-- Maintenance jobs. Every job is a plain SQL function that does one bounded batch, takes an
-- optional `now` and returns a count, so the queue works without the background worker (call
-- pgflow.maintain() from pg_cron or a client) and every step can be tested from psql without
-- sleeping.

-- _each_queue: runs one job on every queue that has work for it, at most batch per queue so a
-- busy queue never starves the others, and returns how much it processed. The one loop over
-- queues every job shares: which queues have work is one probe of the job's index per queue,
-- in one statement, so an idle round over many queues stays cheap (bench W8).
CREATE FUNCTION pgflow._each_queue(job text, p_now timestamptz, batch integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of sql/internal.sql
AS $$
DECLARE
    q pgflow.queue;
    n bigint := 0;
BEGIN
    -- A name no branch below knows would match no queue and quietly do nothing.
    IF job IS NULL OR job NOT IN ('expire_leases', 'promote_delayed', 'prune_archive', 'prune_dedup') THEN
        RAISE EXCEPTION 'unknown maintenance job "%"', job USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pgflow._primary();
    PERFORM pgflow._check_int(batch, 'batch', 1);
    FOR q IN SELECT * FROM pgflow.queue qq
              WHERE CASE job
                    WHEN 'expire_leases' THEN
                        -- vt <= p_now is the index condition, so the probe stops at the first
                        -- lease not yet due instead of walking every lease in flight (as it
                        -- did while the session_leases test shared vt's condition).
                        -- A queue with session leases also looks for any lease: its holder
                        -- may have exited.
                        EXISTS (SELECT 1 FROM pgflow.message m
                                 WHERE m.queue_id = qq.queue_id AND m.state = 'l'
                                   AND m.vt <= p_now)
                        OR (qq.session_leases
                            AND EXISTS (SELECT 1 FROM pgflow.message m
                                         WHERE m.queue_id = qq.queue_id AND m.state = 'l'))
                    WHEN 'promote_delayed' THEN
                        EXISTS (SELECT 1 FROM pgflow.message m
                                 WHERE m.queue_id = qq.queue_id AND m.state = 'd' AND m.vt <= p_now)
                    WHEN 'prune_archive' THEN
                        EXISTS (SELECT 1 FROM pgflow.archive o
                                 WHERE o.queue_id = qq.queue_id
                                   AND o.archived_at < p_now - qq.archive_retention)
                    WHEN 'prune_dedup' THEN
                        EXISTS (SELECT 1 FROM pgflow.dedup o
                                 WHERE o.queue_id = qq.queue_id AND o.expires_at <= p_now)
                    END
              ORDER BY qq.queue_id LOOP
        -- One queue's failure is logged with its name and skipped (its work is rolled back
        -- to here): the other queues keep their maintenance. A block with an exception
        -- handler is a subtransaction, paid only by the queues that have work.
        BEGIN
            n := n + CASE job
                     WHEN 'expire_leases'   THEN pgflow._expire_queue(q, p_now, batch)
                                                 + CASE WHEN q.session_leases
                                                        THEN pgflow._release_orphans(q, p_now, batch)
                                                        ELSE 0 END
                     WHEN 'promote_delayed' THEN pgflow._promote_queue(q, p_now, batch)
                     WHEN 'prune_archive'   THEN pgflow._prune_archive_queue(q, p_now, batch)
                     WHEN 'prune_dedup'     THEN pgflow._prune_dedup_queue(q.queue_id, p_now, batch)
                     END;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pgflow: % of queue "%" failed and was skipped: % (SQLSTATE %)',
                          job, q.queue_name, SQLERRM, SQLSTATE;
        END;
    END LOOP;
    RETURN n;
END $$;

-- _prune_archive_queue: at most lim archived messages of a queue older than its
-- archive_retention, oldest first. Returns how many it deleted.
CREATE FUNCTION pgflow._prune_archive_queue(q pgflow.queue, p_now timestamptz, lim integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of sql/internal.sql
AS $$
DECLARE
    n bigint;
BEGIN
    DELETE FROM pgflow.archive a
     WHERE a.queue_id = q.queue_id
       AND a.msg_id IN (SELECT o.msg_id FROM pgflow.archive o
                         WHERE o.queue_id = q.queue_id
                           AND o.archived_at < p_now - q.archive_retention
                         ORDER BY o.archived_at
                         LIMIT lim
                           FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- _prune_dedup_queue: at most lim deduplication keys of a queue past their window. Returns how
-- many it deleted.
CREATE FUNCTION pgflow._prune_dedup_queue(p_queue_id integer, p_now timestamptz, lim integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of sql/internal.sql
AS $$
DECLARE
    n bigint;
BEGIN
    DELETE FROM pgflow.dedup d
     WHERE d.queue_id = p_queue_id
       AND d.dedup_key IN (SELECT o.dedup_key FROM pgflow.dedup o
                            WHERE o.queue_id = p_queue_id AND o.expires_at <= p_now
                            ORDER BY o.expires_at
                            LIMIT lim
                              FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- expire_leases (maintenance job): every queue's expired leases are failed deliveries (retried
-- with backoff, or dead-lettered). Returns how many messages it processed.
CREATE FUNCTION pgflow.expire_leases(now timestamptz DEFAULT NULL, batch integer DEFAULT 1000)
RETURNS bigint
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT pgflow._each_queue('expire_leases', coalesce(expire_leases.now, clock_timestamp()), batch);
END;

-- promote_delayed (maintenance job): delayed and retried messages whose time has come become
-- ready, oldest due first. Reads do not depend on it (they take due messages themselves); it
-- keeps the ready index the one place a consumer looks, and metrics' delayed count exact.
CREATE FUNCTION pgflow.promote_delayed(now timestamptz DEFAULT NULL, batch integer DEFAULT 1000)
RETURNS bigint
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT pgflow._each_queue('promote_delayed', coalesce(promote_delayed.now, clock_timestamp()), batch);
END;

-- prune_archive (maintenance job): archived messages older than each queue's
-- archive_retention. Returns how many rows it deleted.
CREATE FUNCTION pgflow.prune_archive(now timestamptz DEFAULT NULL, batch integer DEFAULT 10000)
RETURNS bigint
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT pgflow._each_queue('prune_archive', coalesce(prune_archive.now, clock_timestamp()), batch);
END;

-- prune_dedup (maintenance job): deduplication keys past their window. Expired keys no longer
-- deduplicate even before they are deleted (send checks expires_at); this only keeps the table
-- small.
CREATE FUNCTION pgflow.prune_dedup(now timestamptz DEFAULT NULL, batch integer DEFAULT 10000)
RETURNS bigint
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT pgflow._each_queue('prune_dedup', coalesce(prune_dedup.now, clock_timestamp()), batch);
END;

-- check_cursors (maintenance job): the safety net under the claim cursor (src/ipc/cursor/).
-- Every verb notes the messages it makes ready, so the cursor never passes one; what bypasses
-- the verbs (a restore, a user's own UPDATE of pgflow.message, a logical replication apply)
-- does not. Every 10 seconds per queue this looks for a ready message at or below the queue's
-- cursor and lowers the cursor below it; it also thaws the cursors a PREPARE TRANSACTION froze
-- once no prepared transaction is left in the database. Returns how many cursors it lowered.
CREATE FUNCTION pgflow.check_cursors(now timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off  -- see the header of sql/internal.sql
AS $$
DECLARE
    v_now timestamptz := coalesce(check_cursors.now, clock_timestamp());
    q record;
    v_mark bigint[];
    r record;
    v_seen bigint;
    n bigint := 0;
BEGIN
    PERFORM pgflow._primary();
    FOR q IN SELECT u.queue_id, u.msg_seq FROM pgflow.queue u ORDER BY u.queue_id LOOP
        v_mark := pgflow._cursor_check(q.queue_id, q.msg_seq::oid, v_now);
        CONTINUE WHEN v_mark IS NULL;
        SELECT m.priority, m.msg_id INTO r
          FROM pgflow.message m
         WHERE m.queue_id = q.queue_id AND m.state = 'r'
           AND (-(m.priority::integer), m.msg_id) <= (v_mark[1]::integer, v_mark[2])
         ORDER BY -(m.priority::integer), m.msg_id
         LIMIT 1;
        IF FOUND THEN
            PERFORM pgflow._cursor_lower(q.queue_id, q.msg_seq::oid, r.priority, r.msg_id);
            n := n + 1;
        END IF;
    END LOOP;
    -- Read the freeze count first: a PREPARE after it keeps its queues frozen.
    v_seen := pgflow._cursor_freezes();
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_xacts p
                    WHERE p.database = pg_catalog.current_database()) THEN
        PERFORM pgflow._cursor_thaw(v_seen);
    END IF;
    RETURN n;
END $$;

-- maintain: one round of every maintenance job, each a bounded batch per queue; what the
-- background worker runs each tick (with pgflow.batch_size and pgflow.prune_batch_size), and
-- what pg_cron or a client can run when the worker is not loaded.
CREATE FUNCTION pgflow.maintain(now timestamptz DEFAULT NULL, batch integer DEFAULT 1000,
                                prune_batch integer DEFAULT 10000)
RETURNS TABLE (job text, processed bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_now timestamptz := coalesce(maintain.now, clock_timestamp());
BEGIN
    PERFORM pgflow._primary();
    PERFORM pgflow._check_int(batch, 'batch', 1);
    PERFORM pgflow._check_int(prune_batch, 'prune_batch', 1);
    job := 'expire_leases';   processed := pgflow.expire_leases(v_now, batch);         RETURN NEXT;
    job := 'promote_delayed'; processed := pgflow.promote_delayed(v_now, batch);       RETURN NEXT;
    job := 'prune_archive';   processed := pgflow.prune_archive(v_now, prune_batch);   RETURN NEXT;
    job := 'prune_dedup';     processed := pgflow.prune_dedup(v_now, prune_batch);     RETURN NEXT;
    job := 'check_cursors';   processed := pgflow.check_cursors(v_now);               RETURN NEXT;
    job := 'confirm_forwarded'; processed := pgflow._links_confirm();                 RETURN NEXT;
END $$;
