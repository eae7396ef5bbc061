-- Statistics: the triggers that feed the per-queue statistics in shared memory
-- (src/ipc/stats.rs), their rebuild from the tables, stats_reset and metrics_text. metrics()
-- and metrics_all() read them (observe.sql).

-- One C row trigger per table, BEFORE so that it sees each row once and queues nothing: it
-- notes the change in the transaction's statistics, which its commit applies. On message it
-- fires on every UPDATE, not only of the counted columns (state, read_ct), because it also
-- checks the row's invariants there (sql/schema.sql), whether pgflow.stats is on or off.
CREATE TRIGGER message_stats
    BEFORE INSERT OR DELETE OR UPDATE ON pgflow.message
    FOR EACH ROW EXECUTE FUNCTION pgflow._stats_note('message');
CREATE TRIGGER archive_stats
    BEFORE INSERT OR DELETE ON pgflow.archive
    FOR EACH ROW EXECUTE FUNCTION pgflow._stats_note('archive');
CREATE TRIGGER dead_stats
    BEFORE INSERT OR DELETE ON pgflow.dead
    FOR EACH ROW EXECUTE FUNCTION pgflow._stats_note('dead');

-- _stats_rebuild: counts every queue's rows by state, its dead letters and archived rows, and
-- loads them as the gauges (the counters are kept). The SHARE lock waits for every writer in
-- progress to end (their deltas are applied by then) and keeps new ones out until this
-- transaction ends, so no change is counted twice or missed. It blocks producers and
-- consumers for the length of one pass over the three tables; the worker runs it only when
-- shared memory lacks the gauges (after a restart, or pgflow.stats turned back on). False
-- when the lock was not had within lock_wait (a long transaction writing to the tables, or a
-- prepared one): the worker tries again at its next tick.
CREATE FUNCTION pgflow._stats_rebuild(lock_wait interval DEFAULT '1 second')
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_catalog.set_config('lock_timeout', (extract(epoch FROM lock_wait) * 1000)::bigint::text,
                                  true);
    LOCK TABLE pgflow.message, pgflow.dead, pgflow.archive IN SHARE MODE;
    PERFORM pgflow._stats_load(coalesce(array_agg(q.queue_id ORDER BY q.queue_id), '{}'),
                               coalesce(array_agg(q.queue_name ORDER BY q.queue_id), '{}'),
                               coalesce(array_agg(coalesce(m.r, 0) ORDER BY q.queue_id), '{}'),
                               coalesce(array_agg(coalesce(m.d, 0) ORDER BY q.queue_id), '{}'),
                               coalesce(array_agg(coalesce(m.l, 0) ORDER BY q.queue_id), '{}'),
                               coalesce(array_agg(coalesce(m.g, 0) ORDER BY q.queue_id), '{}'),
                               coalesce(array_agg(coalesce(x.n, 0) ORDER BY q.queue_id), '{}'),
                               coalesce(array_agg(coalesce(a.n, 0) ORDER BY q.queue_id), '{}'))
      FROM pgflow.queue q
      LEFT JOIN (SELECT s.queue_id,
                        count(*) FILTER (WHERE s.state = 'r') AS r,
                        count(*) FILTER (WHERE s.state = 'd') AS d,
                        count(*) FILTER (WHERE s.state = 'l') AS l,
                        count(*) FILTER (WHERE s.state = 'g') AS g
                   FROM pgflow.message s GROUP BY s.queue_id) m ON m.queue_id = q.queue_id
      LEFT JOIN (SELECT t.queue_id, count(*) AS n FROM pgflow.dead t GROUP BY t.queue_id) x
             ON x.queue_id = q.queue_id
      LEFT JOIN (SELECT t.queue_id, count(*) AS n FROM pgflow.archive t GROUP BY t.queue_id) a
             ON a.queue_id = q.queue_id;
    RETURN true;
EXCEPTION WHEN lock_not_available THEN
    RETURN false;
END $$;

-- _oldest_ready: when the oldest ready message of a queue was enqueued (NULL: none). One
-- probe of the ready index per priority that has ready messages (a loose index scan), the
-- first starting at the queue's claim cursor (p_from, p_from_id: cursor_status's mark), so it
-- does not walk the entries of messages claimed while a snapshot is held. Within a priority
-- the lowest id is the oldest (ids follow enqueue order, and a promoted message keeps its
-- id). A lower priority's head may still hold such entries.
CREATE FUNCTION pgflow._oldest_ready(p_queue_id integer, p_from integer, p_from_id bigint)
RETURNS timestamptz
LANGUAGE sql STABLE
SET enable_seqscan = off  -- see the header of sql/internal.sql
AS $$
    WITH RECURSIVE heads AS (
        (SELECT -(m.priority::integer) AS k, m.enqueued_at
           FROM pgflow.message m
          WHERE m.queue_id = p_queue_id AND m.state = 'r'
            AND (-(m.priority::integer), m.msg_id)
                > (coalesce(-p_from, -2147483648), coalesce(p_from_id, -9223372036854775808))
          ORDER BY -(m.priority::integer), m.msg_id
          LIMIT 1)
        UNION ALL
        SELECT n.k, n.enqueued_at
          FROM heads h
          CROSS JOIN LATERAL (SELECT -(m.priority::integer) AS k, m.enqueued_at
                                FROM pgflow.message m
                               WHERE m.queue_id = p_queue_id AND m.state = 'r'
                                 AND -(m.priority::integer) > h.k
                               ORDER BY -(m.priority::integer), m.msg_id
                               LIMIT 1) n
    )
    SELECT min(h.enqueued_at) FROM heads h;
$$;

-- _stats_tick: the worker's statistics step, once per tick. Rebuilds the gauges when shared
-- memory lacks them (none while pgflow.stats is off), checks the alerts, notes each queue's
-- oldest ready message, and returns what holds back the horizon (for the endpoint; 0 when
-- nothing does).
CREATE FUNCTION pgflow._stats_tick(OUT rebuilt boolean, OUT horizon_age float8,
                                   OUT horizon_xmin_age integer)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    rebuilt := false;
    horizon_age := 0;
    horizon_xmin_age := 0;
    -- A failure here (a statement_timeout set on the database, say) is a WARNING: it must not
    -- end the worker, whose maintenance round comes next.
    BEGIN
        IF pgflow._stats_enabled()
           AND pgflow._stats_needs_rebuild(ARRAY(SELECT q.queue_id FROM pgflow.queue q)) THEN
            rebuilt := pgflow._stats_rebuild();
        END IF;
        PERFORM pgflow._alerts_check();
        -- The oldest ready message of every queue with ready messages, for the endpoint.
        PERFORM pgflow._stats_oldest(coalesce(array_agg(o.queue_id), '{}'),
                                     coalesce(array_agg(o.oldest), '{}'))
          FROM (SELECT q.queue_id, pgflow._oldest_ready(q.queue_id, c.mark_priority, c.mark_msg_id) AS oldest
                  FROM pgflow.queue q
                  -- The queues with ready messages, from shared memory in one call: an idle
                  -- database's tick then costs nothing per queue (bench W8).
                  JOIN pgflow._stats_ready() r(queue_id) ON r.queue_id = q.queue_id
                  LEFT JOIN pgflow._cursor_status() c ON c.queue_id = q.queue_id AND c.seq = q.msg_seq::oid
               ) o
         WHERE o.oldest IS NOT NULL;
    EXCEPTION WHEN query_canceled OR OTHERS THEN
        RAISE WARNING 'pgflow: the statistics and alerts step failed, the maintenance goes on: % (%)',
            SQLERRM, SQLSTATE;
    END;
    SELECT coalesce(extract(epoch FROM clock_timestamp() - h.since)::float8, 0),
           coalesce(h.xmin_age, 0)
      INTO horizon_age, horizon_xmin_age
      FROM pgflow.horizon() h
     LIMIT 1;
    horizon_age := coalesce(horizon_age, 0);
    horizon_xmin_age := coalesce(horizon_xmin_age, 0);
END $$;

-- stats_reset: zero the counters and histograms of one queue, or of every queue of the
-- database (NULL). The gauges are not touched: they are what the tables hold. metrics() shows
-- since when they count (stats_reset_at). Returns how many queues were reset.
CREATE FUNCTION pgflow.stats_reset(queue_name text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue;
BEGIN
    IF queue_name IS NULL THEN
        IF pgflow._caller_class(writes => true) < 2 THEN
            RAISE EXCEPTION 'permission denied to reset the statistics of every queue'
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Name a queue you administer, or be a member of pgflow_admin.';
        END IF;
        PERFORM pgflow._stats_reset(NULL);
        RETURN (SELECT count(*) FROM pgflow.queue);
    END IF;
    q := pgflow._queue(queue_name, 'admin');
    PERFORM pgflow._stats_reset(q.queue_id);
    RETURN 1;
END $$;

-- metrics_text: this database's statistics in the Prometheus text format, as the endpoint
-- (pgflow.metrics_listen) serves them, for the queues the caller sees; for a scrape through
-- a sidecar or postgres_exporter where no port may be opened. Raises 55000 without
-- shared_preload_libraries (there are no statistics then).
CREATE FUNCTION pgflow.metrics_text()
RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT pgflow._metrics_text(ARRAY(SELECT q.queue_id FROM pgflow.queue q
                                       WHERE pgflow._visible(q.queue_id)),
                                h.age, h.xmin_age)
      FROM (SELECT NULL::float8 AS age, NULL::integer AS xmin_age) n
      LEFT JOIN LATERAL (SELECT coalesce(extract(epoch FROM clock_timestamp() - x.since)::float8, 0) AS age,
                                x.xmin_age
                           FROM pgflow.horizon() x LIMIT 1) h ON true;
$$;

-------------------------------------------------------------------------------------------------
-- Alerts: per-queue thresholds (create_queue/alter_queue: alert_dlq, alert_age, alert_depth),
-- checked by the worker every tick. Each alert is announced once when it starts firing and once
-- when it clears: a line in the server log and, when pgflow.alerts_channel names a channel, a
-- NOTIFY on it (a JSON payload; off by default, as any role may LISTEN). pgflow.alerts() lists those firing, since when.
-------------------------------------------------------------------------------------------------

-- _alert_values: every configured threshold of every queue with its current value: dead
-- letters (dlq), deliverable messages (depth), and the age in seconds of the oldest
-- deliverable message by id (age). From the statistics when they are exact (O(1)), else
-- counted; the age is one index probe.
CREATE FUNCTION pgflow._alert_values(p_now timestamptz)
RETURNS TABLE (queue_id integer, queue_name text, alert text, value double precision,
               threshold double precision)
LANGUAGE sql VOLATILE
SET jit = off  -- see metrics: the count branches' cost would make every tick compile
AS $$
    SELECT q.queue_id, q.queue_name, a.alert, a.value, a.threshold
      FROM pgflow.queue q
      LEFT JOIN LATERAL (SELECT * FROM pgflow._stats(q.queue_id) s WHERE s.valid) st ON true
      CROSS JOIN LATERAL (
        SELECT 'dlq' AS alert,
               coalesce(st.dead, (SELECT count(*) FROM pgflow.dead d WHERE d.queue_id = q.queue_id))::float8 AS value,
               q.alert_dlq::float8 AS threshold
         WHERE q.alert_dlq IS NOT NULL
        UNION ALL
        SELECT 'depth',
               coalesce(st.ready, (SELECT count(*) FROM pgflow.message m
                                    WHERE m.queue_id = q.queue_id AND m.state = 'r'))::float8,
               q.alert_depth::float8
         WHERE q.alert_depth IS NOT NULL
        UNION ALL
        SELECT 'age',
               coalesce(extract(epoch FROM p_now - (SELECT m.enqueued_at FROM pgflow.message m
                                                     WHERE m.queue_id = q.queue_id AND m.state = 'r'
                                                     ORDER BY m.msg_id LIMIT 1))::float8, 0),
               extract(epoch FROM q.alert_age)::float8
         WHERE q.alert_age IS NOT NULL
      ) a
     WHERE q.alert_dlq IS NOT NULL OR q.alert_age IS NOT NULL OR q.alert_depth IS NOT NULL;
$$;

-- _alerts_check: the worker's alert step. Starts the alerts whose value is over its threshold,
-- clears the others, announces each change, and hands the firing ones to shared memory for
-- the endpoint. Returns how many started and cleared.
CREATE FUNCTION pgflow._alerts_check(p_now timestamptz DEFAULT NULL)
RETURNS TABLE (started bigint, cleared bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    v_channel text := coalesce(pg_catalog.current_setting('pgflow.alerts_channel', true), '');
    r record;
BEGIN
    started := 0;
    cleared := 0;
    FOR r IN
        WITH cur AS (
            SELECT * FROM pgflow._alert_values(v_now) v WHERE v.value > v.threshold
        ), ins AS (
            INSERT INTO pgflow.alert AS x (queue_id, alert, since, threshold)
            SELECT c.queue_id, c.alert, v_now, c.threshold FROM cur c
            ON CONFLICT ON CONSTRAINT alert_pkey DO NOTHING
            RETURNING x.queue_id, x.alert, x.since
        ), del AS (
            DELETE FROM pgflow.alert x
             WHERE NOT EXISTS (SELECT 1 FROM cur c WHERE c.queue_id = x.queue_id AND c.alert = x.alert)
            RETURNING x.queue_id, x.alert, x.since, x.threshold
        )
        SELECT 'firing' AS state, c.queue_name, c.alert, c.value, c.threshold, i.since
          FROM ins i JOIN cur c USING (queue_id, alert)
        UNION ALL
        SELECT 'resolved', q.queue_name, d.alert, v.value, d.threshold, d.since
          FROM del d
          JOIN pgflow.queue q ON q.queue_id = d.queue_id
          LEFT JOIN pgflow._alert_values(v_now) v ON v.queue_id = d.queue_id AND v.alert = d.alert
    LOOP
        IF r.state = 'firing' THEN started := started + 1; ELSE cleared := cleared + 1; END IF;
        IF v_channel <> '' THEN
            PERFORM pg_catalog.pg_notify(v_channel, pg_catalog.json_build_object(
            'state', r.state, 'queue', r.queue_name, 'alert', r.alert, 'value', r.value,
                'threshold', r.threshold, 'since', r.since)::text);
        END IF;
        RAISE LOG 'pgflow alert %: queue "%" %: % (threshold %, since %)',
            r.state, r.queue_name, r.alert, r.value, r.threshold, r.since;
    END LOOP;
    PERFORM pgflow._stats_alerts_at(coalesce(array_agg(a.queue_id), '{}'),
                                    coalesce(array_agg(a.alert), '{}'),
                                    coalesce(array_agg(a.since), '{}'),
                                    coalesce(array_agg(v.value), '{}'),
                                    coalesce(array_agg(a.threshold), '{}'))
      FROM pgflow.alert a
      LEFT JOIN pgflow._alert_values(v_now) v ON v.queue_id = a.queue_id AND v.alert = a.alert;
    RETURN NEXT;
END $$;

-- alerts: the alerts firing on the queues the caller sees, oldest first, with the value now.
CREATE FUNCTION pgflow.alerts()
RETURNS TABLE (queue_name text, alert text, since timestamptz, value double precision,
               threshold double precision)
LANGUAGE sql VOLATILE AS $$
    SELECT q.queue_name, a.alert, a.since, v.value, a.threshold
      FROM pgflow.alert a
      JOIN pgflow.queue q ON q.queue_id = a.queue_id
      LEFT JOIN pgflow._alert_values(clock_timestamp()) v
             ON v.queue_id = a.queue_id AND v.alert = a.alert
     WHERE pgflow._visible(q.queue_id)
     ORDER BY a.since, q.queue_name, a.alert;
$$;
