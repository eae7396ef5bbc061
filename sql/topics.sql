-- Topics: bind queues to patterns, publish once to every bound queue.
--
-- publish(topic, ...) sends the message to each queue with a binding whose pattern matches
-- the topic (src/queue/topic.rs: `*` one word, `#` zero or more), in the caller's transaction:
-- every bound queue gets it, or none does. A topic nothing matches is dropped (no row).

-- bind: route topics matching pattern to queue. True when the binding is new.
CREATE FUNCTION pgflow.bind(pattern text, queue_name text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
BEGIN
    PERFORM pgflow._check_topic_pattern(pattern);
    INSERT INTO pgflow.binding (pattern, queue_id) VALUES (bind.pattern, q.queue_id)
    ON CONFLICT DO NOTHING;
    RETURN FOUND;
END $$;

-- unbind: remove a binding. True when it existed.
CREATE FUNCTION pgflow.unbind(pattern text, queue_name text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
BEGIN
    PERFORM pgflow._require(pattern, 'pattern');
    DELETE FROM pgflow.binding b WHERE b.pattern = unbind.pattern AND b.queue_id = q.queue_id;
    RETURN FOUND;
END $$;

-- list_bindings: every binding of a queue the caller sees, by pattern and queue.
CREATE FUNCTION pgflow.list_bindings()
RETURNS TABLE (pattern text, queue_name text, created_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT b.pattern, q.queue_name, b.created_at
      FROM pgflow.binding b JOIN pgflow.queue q USING (queue_id)
     WHERE pgflow._visible(q.queue_id)
     ORDER BY b.pattern, q.queue_name;
$$;

-- publish: send one message to every queue bound to a pattern the topic matches (each queue
-- once, however many of its patterns match), in queue-name order. Returns each queue and the
-- new message's id there. The topic is added to the headers as "topic".
CREATE FUNCTION pgflow.publish(
    topic     text,
    message   jsonb,
    headers   jsonb    DEFAULT NULL,
    delay     interval DEFAULT '0',
    priority  integer  DEFAULT NULL
)
RETURNS TABLE (queue_name text, msg_id bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_headers jsonb;
    v_denied  text;
    v_seen    boolean;
BEGIN
    PERFORM pgflow._primary();
    PERFORM pgflow._check_topic(topic);
    PERFORM pgflow._check_payload(message, headers);
    v_headers := coalesce(headers, '{}'::jsonb) || jsonb_build_object('topic', topic);
    -- Refuse before sending anything, and without naming a queue the caller cannot see: send's
    -- own error would name it (issue #34).
    IF pgflow._caller_class() < 2 THEN
        SELECT q.queue_name, pgflow._visible(q.queue_id) INTO v_denied, v_seen
          FROM pgflow.queue q
         WHERE EXISTS (SELECT 1 FROM pgflow.binding b
                        WHERE b.queue_id = q.queue_id AND pgflow._topic_matches(b.pattern, topic))
           AND NOT pgflow._may(q.queue_id, 'produce')
         ORDER BY NOT pgflow._visible(q.queue_id), q.queue_name
         LIMIT 1;
        IF FOUND AND v_seen THEN
            RAISE EXCEPTION 'permission denied for queue "%": % needs the produce privilege on it to publish "%"',
                v_denied, pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(pgflow._caller())), topic
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'A member of pgflow_admin grants it with pgflow.grant(queue, role, ''produce'').';
        ELSIF FOUND THEN
            RAISE EXCEPTION 'permission denied to publish "%": it routes to a queue % may not produce to', topic,
                pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(pgflow._caller()))
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'A member of pgflow_admin sees the bindings (pgflow.list_bindings()) and grants produce.';
        END IF;
    END IF;
    FOR queue_name IN
        SELECT q.queue_name FROM pgflow.queue q
         WHERE EXISTS (SELECT 1 FROM pgflow.binding b
                        WHERE b.queue_id = q.queue_id AND pgflow._topic_matches(b.pattern, topic))
         ORDER BY q.queue_name
    LOOP
        msg_id := pgflow.send(queue_name, message, v_headers, delay, priority);
        RETURN NEXT;
    END LOOP;
    -- Topic rules to other sites (sql/links.sql): 'link:remote_queue' and the outbox number.
    IF EXISTS (SELECT 1 FROM pgflow.link_rule) THEN
        RETURN QUERY SELECT f.target, f.seq FROM pgflow._forward_topic(topic, message, v_headers, delay, priority) f;
    END IF;
END $$;
