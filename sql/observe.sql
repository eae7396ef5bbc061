-- Observing: metrics, metrics_all and list_pending.

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

-- list_pending: look at what waits in a queue without leasing anything: deliverable messages
-- first, in the order read would take them, then the rest (delayed, in flight, waiting behind
-- their group) in the same priority and id order. state is 'ready', 'delayed', 'in_flight' or
-- 'waiting'.
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
