-- Observing: metrics, metrics_all, list_pending and horizon.

-- horizon: what holds back the xmin horizon of this database, oldest first. While anything here
-- holds an old snapshot, VACUUM cannot remove the dead rows that claims and archives leave, and
-- every read walks over more of them (docs/operations.md says what to do). Sources: backends of
-- this database and walsenders (a standby's hot_standby_feedback), replication slots, and
-- prepared transactions of this database. The caller's own backend is left out.
CREATE FUNCTION pgflow.horizon()
RETURNS SETOF pgflow.horizon_holder
LANGUAGE sql STABLE AS $$
    SELECT h.* FROM (
        SELECT CASE WHEN a.backend_type = 'walsender' THEN 'standby' ELSE 'backend' END,
               a.pid,
               greatest(pg_catalog.age(a.backend_xmin), pg_catalog.age(a.backend_xid)),
               a.xact_start,
               -- The query's start only for a role that pg_stat_activity shows it to (a
               -- member of pg_read_all_stats, or of the backend's role): metrics() shows this
               -- to every role that sees the queue.
               pg_catalog.concat_ws(' ', a.usename, '(' || a.state || ')',
                                    CASE WHEN pgflow._sees_activity_of(a.usesysid)
                                         THEN pg_catalog.left(a.query, 80) END)
          FROM pg_catalog.pg_stat_activity a
         WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
           AND a.pid <> pg_catalog.pg_backend_pid()
           -- pgflow's own processes hold a snapshot for the length of a round: not worth
           -- naming unless one lasts (a stuck round, an index rebuild).
           AND NOT (a.backend_type LIKE 'pgflow %'
                    AND a.xact_start > pg_catalog.clock_timestamp() - interval '10 seconds')
           AND (a.datname = pg_catalog.current_database() OR a.backend_type = 'walsender')
        UNION ALL
        SELECT 'replication slot', s.active_pid, pg_catalog.age(s.xmin), NULL::timestamptz,
               s.slot_name || ' (' || s.slot_type || CASE WHEN s.active THEN ', active)'
                                                     ELSE ', inactive)' END
          FROM pg_catalog.pg_replication_slots s
         WHERE s.xmin IS NOT NULL
        UNION ALL
        SELECT 'prepared transaction', NULL::integer, pg_catalog.age(p.transaction), p.prepared,
               p.gid || ' (' || p.owner || ')'
          FROM pg_catalog.pg_prepared_xacts p
         WHERE p.database = pg_catalog.current_database()
    ) AS h(holder, pid, xmin_age, since, detail)
     ORDER BY h.xmin_age DESC, h.since;
$$;

-- _metrics: one row per queue (all queues the caller sees when queue_id is NULL). The depths
-- come from the statistics in shared memory when they are exact for the queue (O(1)), else,
-- or with p_exact, from counting the queue's rows; the ages from the ends of the queue's
-- primary key; the totals from the per-queue sequences.
CREATE FUNCTION pgflow._metrics(p_queue_id integer, p_now timestamptz, p_exact boolean)
RETURNS SETOF pgflow.queue_metrics
LANGUAGE sql VOLATILE AS $$
    SELECT q.queue_name,
           coalesce(st.ready + st.delayed + st.in_flight + st.waiting, s.length, 0),
           coalesce(st.ready, s.visible, 0),
           coalesce(st.in_flight, s.in_flight, 0),
           coalesce(st.delayed, s.delayed, 0),
           extract(epoch FROM p_now - coalesce(s.oldest, o.oldest))::double precision,
           extract(epoch FROM p_now - coalesce(s.newest, o.newest))::double precision,
           coalesce(pg_catalog.pg_sequence_last_value(q.msg_seq) - q.ids_skipped, 0),
           coalesce(pg_catalog.pg_sequence_last_value(q.archived_seq), 0),
           coalesce(st.archived_rows, (SELECT count(*) FROM pgflow.archive a WHERE a.queue_id = q.queue_id)),
           coalesce(st.dead, (SELECT count(*) FROM pgflow.dead d WHERE d.queue_id = q.queue_id)),
           p_now,
           coalesce(st.waiting, s.waiting, 0),
           -- A holder whose transaction began after p_now (it started during this call) has
           -- held for no time yet: never a negative age.
           greatest(extract(epoch FROM p_now - h.since), 0)::double precision,
           h.holder || coalesce(' ' || h.pid, '') || ': ' || h.detail,
           st.ready IS NULL,
           c.sent, c.delivered, c.archived, c.deleted, c.nacked, c.expired, c.dead_lettered,
           c.redriven, c.wait_p50, c.wait_p99, c.end_to_end_p50, c.end_to_end_p99, c.reset_at,
           c.processing_p50, c.processing_p99,
           extract(epoch FROM p_now - coalesce(s.oldest_ready, st.oldest_ready_at))::double precision
      FROM pgflow.queue q
      -- The oldest holder of the horizon, looked up once for all queues.
      LEFT JOIN (SELECT * FROM pgflow.horizon() LIMIT 1) h ON true
      LEFT JOIN LATERAL (SELECT * FROM pgflow._stats(q.queue_id)) c ON true
      -- The gauges, when they are exact and wanted.
      LEFT JOIN LATERAL (SELECT c.ready, c.delayed, c.in_flight, c.waiting, c.dead, c.archived_rows,
                                c.oldest_ready_at
                          WHERE c.valid AND NOT p_exact) st ON true
      -- Otherwise the rows, counted (the WHERE on st is a one-time filter: no scan when the
      -- gauges are used).
      LEFT JOIN LATERAL (
        SELECT count(*) AS length,
               count(*) FILTER (WHERE m.state = 'r' OR (m.state = 'd' AND m.vt <= p_now)) AS visible,
               -- A lease that ran out stays in flight until the retry policy has run on it.
               count(*) FILTER (WHERE m.state = 'l') AS in_flight,
               count(*) FILTER (WHERE m.state = 'd' AND m.vt > p_now) AS delayed,
               count(*) FILTER (WHERE m.state = 'g') AS waiting,
               min(m.enqueued_at) AS oldest,
               max(m.enqueued_at) AS newest,
               min(m.enqueued_at) FILTER (WHERE m.state = 'r') AS oldest_ready
          FROM pgflow.message m
         WHERE m.queue_id = q.queue_id AND st.ready IS NULL
      ) s ON true
      -- With the gauges: the oldest and newest live message by id, one index probe each.
      LEFT JOIN LATERAL (
        SELECT (SELECT m.enqueued_at FROM pgflow.message m WHERE m.queue_id = q.queue_id
                 ORDER BY m.msg_id LIMIT 1) AS oldest,
               (SELECT m.enqueued_at FROM pgflow.message m WHERE m.queue_id = q.queue_id
                 ORDER BY m.msg_id DESC LIMIT 1) AS newest
         WHERE st.ready IS NOT NULL
      ) o ON true
     -- Every queue the caller sees (metrics_all), or the one metrics checked.
     WHERE (p_queue_id IS NULL AND pgflow._visible(q.queue_id)) OR q.queue_id = p_queue_id
     ORDER BY q.queue_name;
$$;

-- metrics: depth and counters of one queue; exact counts its rows instead of reading the
-- statistics.
-- No JIT: the plan's cost counts the rows the exact branch would scan (also when the statistics
-- are used and it does not run), and compiling it took 400 ms on a 1M backlog to answer in 1.
CREATE FUNCTION pgflow.metrics(queue_name text, exact boolean DEFAULT false)
RETURNS SETOF pgflow.queue_metrics
LANGUAGE plpgsql VOLATILE
SET jit = off
AS $$
BEGIN
    RETURN QUERY SELECT * FROM pgflow._metrics((pgflow._queue(queue_name, 'see')).queue_id,
                                               clock_timestamp(), coalesce(exact, false));
END $$;

-- metrics_all: metrics of every queue, by name.
CREATE FUNCTION pgflow.metrics_all(exact boolean DEFAULT false)
RETURNS SETOF pgflow.queue_metrics
LANGUAGE sql VOLATILE
SET jit = off  -- see metrics
AS $$
    SELECT * FROM pgflow._metrics(NULL, clock_timestamp(), coalesce(exact, false));
$$;

-- list_pending: look at what waits in a queue without leasing anything: deliverable messages
-- first, in the order read would take them, then the rest (delayed, in flight, waiting behind
-- their group) in the same priority and id order. state is 'ready', 'delayed', 'in_flight' or
-- 'waiting'.
CREATE FUNCTION pgflow.list_pending(queue_name text, qty integer DEFAULT 100)
RETURNS SETOF pgflow.pending_message
LANGUAGE plpgsql STABLE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'consume', writes => false);
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

-- cursor_status: each queue's claim cursor and due time (src/ipc/cursor/): the key below
-- which nothing is ready (NULL: scan from the start, or nothing ready at all when
-- nothing_ready), the earliest time a lease can run out or a delayed message come due, how
-- many lowering events the cursor has seen, and whether a PREPARE TRANSACTION froze it. Empty
-- without shared_preload_libraries. For operators and tests; no verb needs it.
CREATE FUNCTION pgflow.cursor_status()
RETURNS TABLE (queue_name text, mark_priority integer, mark_msg_id bigint, due timestamptz,
               events bigint, frozen boolean)
LANGUAGE sql VOLATILE AS $$
    SELECT q.queue_name, c.mark_priority, c.mark_msg_id, c.due, c.events, c.frozen
      FROM pgflow._cursor_status() c
      JOIN pgflow.queue q ON q.queue_id = c.queue_id AND q.msg_seq::oid = c.seq
     ORDER BY q.queue_name;
$$;
