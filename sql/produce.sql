-- Producing: send and send_batch. Both check the payload and the queue's contract, apply the
-- queue's priority and dedup rules, and announce the queue (wake-ups and NOTIFY) at commit.

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
    q pgflow.queue := pgflow._queue(queue_name, 'produce');
    v_now timestamptz := clock_timestamp();
    v_id bigint;
    v_vt timestamptz;
    v_first bigint;
    v_state "char";
    v_priority smallint;
BEGIN
    -- The checks' fast path inline (a PL/pgSQL call each costs more than the send's INSERT);
    -- the helpers raise the precise error.
    IF message IS NULL OR jsonb_typeof(message) <> 'object'
       OR (headers IS NOT NULL AND jsonb_typeof(headers) <> 'object') THEN
        PERFORM pgflow._check_payload(message, headers);
    END IF;
    IF delay IS NULL OR delay < interval '0' OR delay > interval '100 years' THEN
        PERFORM pgflow._check_interval(delay, 'delay', true);
    END IF;
    IF octet_length(group_key) > 512 OR octet_length(dedup_key) > 512 THEN
        PERFORM pgflow._check_key(group_key, 'group_key');
        PERFORM pgflow._check_key(dedup_key, 'dedup_key');
    END IF;
    IF deliver_at > v_now + interval '100 years' THEN
        RAISE EXCEPTION 'deliver_at must be at most 100 years from now, got %', deliver_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF priority < -32768 OR priority > 32767 THEN
        PERFORM pgflow._check_priority(priority, 'priority');
    END IF;
    IF q.contract_version IS NOT NULL THEN
        PERFORM pgflow._check_contract(q, message, headers);
    END IF;
    IF deliver_at IS NOT NULL AND delay <> interval '0' THEN
        RAISE EXCEPTION 'give delay or deliver_at, not both' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_vt := greatest(v_now, coalesce(deliver_at, v_now + delay));
    v_priority := coalesce(send.priority, q.default_priority);
    v_id := nextval(q.msg_seq);
    IF q.forward_link IS NOT NULL THEN
        -- A forwarding rule (sql/links.sql): the message goes to the link's outbox, with what
        -- the remote queue needs to apply its own rules (priority, group, dedup, due time).
        PERFORM pgflow._forward_to(q.forward_link, q.forward_to, q.queue_name, v_id, NULL,
                                   send.message, send.headers, send.priority, send.group_key,
                                   send.dedup_key, CASE WHEN v_vt > v_now THEN v_vt END, v_now);
        RETURN v_id;
    END IF;
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
    v_state := CASE WHEN v_vt > v_now THEN 'd' ELSE 'r' END;
    IF send.group_key IS NOT NULL THEN
        v_state := pgflow._group_state(q.queue_id, send.group_key, v_state);
    END IF;
    INSERT INTO pgflow.message (queue_id, msg_id, enqueued_at, vt, priority, state, message,
                                headers, group_key)
    VALUES (q.queue_id, v_id, v_now, v_vt, v_priority, v_state, send.message, send.headers,
            send.group_key);
    IF v_state = 'r' THEN
        PERFORM pgflow._ready(q.queue_id, q.msg_seq::oid, v_priority, v_id);
    ELSIF v_state = 'd' THEN
        PERFORM pgflow._due_at(q.queue_id, q.msg_seq::oid, v_vt);
    END IF;
    PERFORM pgflow._announce(q.queue_id, q.queue_name, q.notify);
    RETURN v_id;
END $$;

-- send_batch: enqueue many messages in one statement. headers, when given, pairs with
-- messages by position (whatever index each array starts at) and must have the same length.
-- Returns the ids in input order.
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
    q pgflow.queue := pgflow._queue(queue_name, 'produce');
    v_now timestamptz := clock_timestamp();
    v_bad record;
    v_ids bigint[];
    v_priority smallint;
BEGIN
    PERFORM pgflow._require(messages, 'messages');
    IF array_ndims(messages) > 1 OR array_ndims(headers) > 1 THEN
        RAISE EXCEPTION 'messages and headers must be one-dimensional arrays'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pgflow._check_interval(delay, 'delay', true);
    PERFORM pgflow._check_priority(priority, 'priority');
    v_priority := coalesce(send_batch.priority, q.default_priority);
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
        -- Paired by position, as they are stored (not by subscript: an array may start at any
        -- index); messages[n] in an error is the n-th element.
        FOR v_bad IN SELECT m.ord, m.msg, h.hdr
                       FROM unnest(messages) WITH ORDINALITY AS m(msg, ord)
                       LEFT JOIN unnest(headers) WITH ORDINALITY AS h(hdr, ord) USING (ord)
                      ORDER BY m.ord LOOP
            PERFORM pgflow._check_contract(q, v_bad.msg, v_bad.hdr, v_bad.ord::integer);
        END LOOP;
    END IF;
    IF q.forward_link IS NOT NULL THEN
        -- A forwarding rule (sql/links.sql): each message to the link's outbox, in input order.
        RETURN QUERY
        SELECT pgflow._send_forwarded(q, m.msg, h.hdr, send_batch.priority, v_now, delay)
          FROM unnest(messages) WITH ORDINALITY AS m(msg, ord)
          LEFT JOIN unnest(headers) WITH ORDINALITY AS h(hdr, ord) USING (ord)
         ORDER BY m.ord;
        RETURN;
    END IF;
    PERFORM pgflow._announce(q.queue_id, q.queue_name, q.notify);
    -- Ids are drawn in input order (ORDER BY ord before nextval), then returned in that order.
    WITH input AS (
        SELECT m.msg, h.hdr, m.ord
          FROM unnest(messages) WITH ORDINALITY AS m(msg, ord)
          LEFT JOIN unnest(headers) WITH ORDINALITY AS h(hdr, ord) USING (ord)
         ORDER BY m.ord
    ), numbered AS (
        SELECT nextval(q.msg_seq) AS id, i.* FROM input i
    ), inserted AS (
        INSERT INTO pgflow.message (queue_id, msg_id, enqueued_at, vt, priority, state,
                                    message, headers)
        SELECT q.queue_id, n.id, v_now, v_now + delay, v_priority,
               CASE WHEN delay > interval '0' THEN 'd' ELSE 'r' END, n.msg, n.hdr
          FROM numbered n
        RETURNING msg_id
    )
    SELECT array_agg(n.id ORDER BY n.ord) INTO v_ids FROM numbered n;
    -- One note for the whole batch, for the claim cursor (its lowest key: every message has
    -- the same priority) or the due time (the same for all); see src/ipc/cursor/.
    IF cardinality(v_ids) > 0 THEN
        IF delay > interval '0' THEN
            PERFORM pgflow._due_at(q.queue_id, q.msg_seq::oid, v_now + delay);
        ELSE
            PERFORM pgflow._ready(q.queue_id, q.msg_seq::oid, v_priority, v_ids[1]);
        END IF;
    END IF;
    RETURN QUERY SELECT unnest(v_ids);
END $$;
