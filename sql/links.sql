-- Sites and links (docs/operations.md, "Sites and links"; the design in docs/design.md).
--
-- Each site is a database with its own pgflow. A link names another site; a forwarding rule
-- (forward) sends what arrives in a local queue to a queue at the link's site, a topic rule
-- (forward_topic) what a publish routes there. The transport is Postgres's logical
-- replication:
--   * at the source, a forwarded send inserts a row into pgflow.link_outbox (instead of
--     pgflow.message), in the sender's transaction; each link has a publication of its own
--     rows of that table (pgflow_link_<id>, inserts only);
--   * the destination subscribes to it; the apply of each row fires link_arrive there, which
--     sends the message to the target queue, or stores it in pgflow.link_refused with the
--     reason when the target refuses it (so an apply never fails), and returns NULL: nothing
--     is stored in the destination's outbox;
--   * the subscription's replication origin commits the applied position with the applied
--     messages, so a row is applied once; the slot at the source keeps the WAL until the
--     destination confirms it has flushed it;
--   * the worker's round (pgflow.maintain, job confirm_forwarded) deletes a link's outbox rows
--     once the slot's confirmed position has passed their commit: the outbox is the backlog
--     the operator sees, and a row leaves it only once the destination holds the message.

-- _site: this site's name; 55000 when it has none.
CREATE FUNCTION pgflow._site()
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v text;
BEGIN
    SELECT s.site_name INTO v FROM pgflow.site s;
    IF v IS NULL THEN
        RAISE EXCEPTION 'this database has no pgflow site name'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'A member of pgflow_admin names it with pgflow.set_site(name).';
    END IF;
    RETURN v;
END $$;

-- _check_link_admin: 42501 unless the caller is a superuser or a member of pgflow_admin.
-- Links reach other databases: no per-queue grant allows them.
CREATE FUNCTION pgflow._check_link_admin(what text, writes boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF pgflow._caller_class(writes) < 2 THEN
        RAISE EXCEPTION 'permission denied to %: only pgflow_admin members manage links', what
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END $$;

-- _link: a link by name, 42704 when there is none.
CREATE FUNCTION pgflow._link(link_name text)
RETURNS pgflow.link
LANGUAGE plpgsql STABLE AS $$
DECLARE
    l pgflow.link;
BEGIN
    PERFORM pgflow._require(link_name, 'link_name');
    SELECT * INTO l FROM pgflow.link k WHERE k.link_name = _link.link_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'link "%" does not exist', link_name
            USING ERRCODE = 'undefined_object', HINT = 'See pgflow.links().';
    END IF;
    RETURN l;
END $$;

-- _check_subscribed: 55000 until the worker has seen the link's replication slot: a message
-- put in the outbox before the remote subscribed would reach it only when the worker inserts
-- it again, after the others (see _links_confirm).
CREATE FUNCTION pgflow._check_subscribed(l pgflow.link)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF l.subscribed_at IS NULL THEN
        RAISE EXCEPTION 'link "%" has no subscriber yet', l.link_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('Run the CREATE SUBSCRIPTION that link_create returned at site "%s" (slot pgflow_link_%s); pgflow.links() shows the link connected within a worker tick.', l.remote_site, l.link_id);
    END IF;
END $$;

-- set_site: name this site (lower-case letters, digits and _, at most 40). Returns the former
-- name, or NULL. Refused while links exist: the other sites know it by that name.
CREATE FUNCTION pgflow.set_site(site_name text)
RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_old text;
BEGIN
    PERFORM pgflow._check_link_admin('set the site name');
    PERFORM pgflow._require(site_name, 'site_name');
    IF site_name !~ '^[a-z0-9][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'site_name must be 1 to 40 lower-case letters, digits and _, starting with a letter or digit, got "%"', site_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT s.site_name INTO v_old FROM pgflow.site s FOR UPDATE;
    IF v_old IS DISTINCT FROM site_name AND EXISTS (SELECT 1 FROM pgflow.link) THEN
        RAISE EXCEPTION 'this site has links: its name "%" cannot change', v_old
            USING ERRCODE = 'object_in_use', HINT = 'Drop its links first (pgflow.link_drop).';
    END IF;
    INSERT INTO pgflow.site AS s (site_name) VALUES (set_site.site_name)
    ON CONFLICT (only_row) DO UPDATE SET site_name = EXCLUDED.site_name, set_at = now();
    RETURN v_old;
END $$;

-- link_create: a link named link_name to the site remote_site, and its publication. Returns
-- the statement to run at the remote site to subscribe (the connection string's password,
-- if any, is the remote operator's to add: pgflow never holds one). failover: the statement
-- asks for a failover slot (Postgres 17 and later at both sites), which a standby of this site
-- with sync_replication_slots keeps, so that the link goes on from it after a promotion.
CREATE FUNCTION pgflow.link_create(link_name text, remote_site text, alert_age interval DEFAULT NULL,
                                   failover boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_site text;
    v_id integer;
BEGIN
    PERFORM pgflow._check_link_admin('create a link');
    v_site := pgflow._site();
    PERFORM pgflow._require(link_name, 'link_name');
    PERFORM pgflow._require(remote_site, 'remote_site');
    IF link_name !~ '^[a-z0-9][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'link_name must be 1 to 40 lower-case letters, digits and _, starting with a letter or digit, got "%"', link_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF remote_site !~ '^[a-z0-9][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'remote_site must be 1 to 40 lower-case letters, digits and _, starting with a letter or digit, got "%"', remote_site
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF remote_site = v_site THEN
        RAISE EXCEPTION 'a link to this site itself ("%") would forward in a loop', v_site
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF alert_age IS NOT NULL AND (alert_age <= interval '0' OR alert_age > interval '100 years') THEN
        RAISE EXCEPTION 'alert_age must be positive and at most 100 years, got %', alert_age
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF failover IS NULL THEN
        RAISE EXCEPTION 'failover must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF failover AND current_setting('server_version_num')::integer < 170000 THEN
        RAISE EXCEPTION 'failover slots need Postgres 17 or later (this site runs %)', current_setting('server_version')
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF current_setting('wal_level') <> 'logical' THEN
        RAISE EXCEPTION 'links need wal_level = logical (it is %)', current_setting('wal_level')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Set wal_level = logical in postgresql.conf and restart the server (docs/operations.md, "Sites and links").';
    END IF;
    BEGIN
        INSERT INTO pgflow.link (link_name, remote_site, alert_age)
        VALUES (link_create.link_name, link_create.remote_site, link_create.alert_age)
        RETURNING link_id INTO v_id;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'link "%" already exists', link_name USING ERRCODE = 'duplicate_object';
    END;
    -- Built from the link's id (an integer) only.
    BEGIN
        EXECUTE pg_catalog.format(
            'CREATE PUBLICATION pgflow_link_%s FOR TABLE pgflow.link_outbox WHERE (link_id = %s) WITH (publish = ''insert'')',
            v_id, v_id);
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'pgflow_owner may not create the link''s publication in this database'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = pg_catalog.format('A superuser grants it once: GRANT CREATE ON DATABASE %I TO pgflow_owner;', current_database());
    END;
    RETURN pg_catalog.format(
        'CREATE SUBSCRIPTION pgflow_from_%s_%s CONNECTION ''host=... port=... dbname=%s user=...'' '
        'PUBLICATION pgflow_link_%s WITH (slot_name = ''pgflow_link_%s'', copy_data = false%s)',
        v_site, link_create.link_name, current_database(), v_id, v_id,
        CASE WHEN failover THEN ', failover = true' ELSE '' END);
END $$;

-- link_alter: change a link's alert threshold (NULL: none).
CREATE FUNCTION pgflow.link_alter(link_name text, alert_age interval)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    l pgflow.link;
BEGIN
    PERFORM pgflow._check_link_admin('alter a link');
    l := pgflow._link(link_name);
    IF alert_age IS NOT NULL AND (alert_age <= interval '0' OR alert_age > interval '100 years') THEN
        RAISE EXCEPTION 'alert_age must be positive and at most 100 years, got %', alert_age
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE pgflow.link k SET alert_age = link_alter.alert_age WHERE k.link_id = l.link_id;
END $$;

-- link_drop: drop a link and its publication. Refused (55006) while a rule uses it, while its
-- outbox holds messages the remote has not confirmed, or while the remote's replication slot
-- exists (drop the subscription at the remote first): nothing is lost by a drop.
CREATE FUNCTION pgflow.link_drop(link_name text)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    l pgflow.link;
    v_n bigint;
BEGIN
    PERFORM pgflow._check_link_admin('drop a link');
    l := pgflow._link(link_name);
    PERFORM 1 FROM pgflow.link k WHERE k.link_id = l.link_id FOR UPDATE;
    SELECT count(*) INTO v_n FROM pgflow.queue q WHERE q.forward_link = l.link_id;
    v_n := v_n + (SELECT count(*) FROM pgflow.link_rule r WHERE r.link_id = l.link_id);
    IF v_n > 0 THEN
        RAISE EXCEPTION 'link "%" is used by % forwarding rule(s)', link_name, v_n
            USING ERRCODE = 'object_in_use', HINT = 'Remove them first: pgflow.unforward(), pgflow.unforward_topic(); see pgflow.link_rules().';
    END IF;
    SELECT count(*) INTO v_n FROM pgflow.link_outbox o WHERE o.link_id = l.link_id;
    IF v_n > 0 THEN
        RAISE EXCEPTION 'link "%" still has % message(s) the remote has not confirmed', link_name, v_n
            USING ERRCODE = 'object_in_use', HINT = 'Wait until pgflow.links() shows a backlog of 0.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots s
                WHERE s.slot_name = 'pgflow_link_' || l.link_id AND s.database = current_database()) THEN
        RAISE EXCEPTION 'link "%": the remote site''s subscription (slot pgflow_link_%) still exists', link_name, l.link_id
            USING ERRCODE = 'object_in_use', HINT = 'DROP SUBSCRIPTION at the remote site first.';
    END IF;
    EXECUTE pg_catalog.format('DROP PUBLICATION IF EXISTS pgflow_link_%s', l.link_id);
    DELETE FROM pgflow.link k WHERE k.link_id = l.link_id;
END $$;

-- forward: from now on, what is sent to queue_name goes to remote_queue at the link's site
-- (messages already in the queue stay). Returns false when that rule was already there. A
-- queue has at most one forwarding rule: a new one replaces the old.
CREATE FUNCTION pgflow.forward(queue_name text, link_name text, remote_queue text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
    l pgflow.link;
BEGIN
    PERFORM pgflow._check_link_admin('forward a queue');
    l := pgflow._link(link_name);
    PERFORM pgflow._require(remote_queue, 'remote_queue');
    PERFORM pgflow._check_queue_name(remote_queue);
    PERFORM pgflow._check_subscribed(l);
    IF q.forward_link IS NOT DISTINCT FROM l.link_id AND q.forward_to IS NOT DISTINCT FROM remote_queue THEN
        RETURN false;
    END IF;
    UPDATE pgflow.queue u SET forward_link = l.link_id, forward_to = forward.remote_queue
     WHERE u.queue_id = q.queue_id;
    RETURN true;
END $$;

-- unforward: sends to queue_name stay local again. True when it had a rule.
CREATE FUNCTION pgflow.unforward(queue_name text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
BEGIN
    PERFORM pgflow._check_link_admin('unforward a queue');
    UPDATE pgflow.queue u SET forward_link = NULL, forward_to = NULL
     WHERE u.queue_id = q.queue_id AND u.forward_link IS NOT NULL;
    RETURN FOUND;
END $$;

-- forward_topic: a publish whose topic matches pattern is also sent to remote_queue over the
-- link, or over every link when link_name is NULL (a broadcast). True when the rule is new.
CREATE FUNCTION pgflow.forward_topic(pattern text, link_name text, remote_queue text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_link integer;
BEGIN
    PERFORM pgflow._check_link_admin('add a topic rule');
    PERFORM pgflow._check_topic_pattern(pattern);
    IF link_name IS NOT NULL THEN
        v_link := (pgflow._link(link_name)).link_id;
        PERFORM pgflow._check_subscribed(pgflow._link(link_name));
    END IF;
    PERFORM pgflow._require(remote_queue, 'remote_queue');
    PERFORM pgflow._check_queue_name(remote_queue);
    INSERT INTO pgflow.link_rule (pattern, link_id, remote_queue)
    VALUES (forward_topic.pattern, v_link, forward_topic.remote_queue)
    ON CONFLICT DO NOTHING;
    RETURN FOUND;
END $$;

-- unforward_topic: remove a topic rule. True when it existed.
CREATE FUNCTION pgflow.unforward_topic(pattern text, link_name text, remote_queue text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_link integer;
BEGIN
    PERFORM pgflow._check_link_admin('remove a topic rule');
    PERFORM pgflow._require(pattern, 'pattern');
    IF link_name IS NOT NULL THEN
        v_link := (pgflow._link(link_name)).link_id;
    END IF;
    DELETE FROM pgflow.link_rule r
     WHERE r.pattern = unforward_topic.pattern AND r.link_id IS NOT DISTINCT FROM v_link
       AND r.remote_queue = unforward_topic.remote_queue;
    RETURN FOUND;
END $$;

-- link_rules: every forwarding rule (kind 'queue': its queue; 'topic': its pattern), by link.
CREATE FUNCTION pgflow.link_rules()
RETURNS TABLE (kind text, source text, link_name text, remote_queue text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM pgflow._check_link_admin('list link rules', writes => false);
    RETURN QUERY
    SELECT 'queue', q.queue_name, l.link_name, q.forward_to
      FROM pgflow.queue q JOIN pgflow.link l ON l.link_id = q.forward_link
    UNION ALL
    SELECT 'topic', r.pattern, l.link_name, r.remote_queue
      FROM pgflow.link_rule r LEFT JOIN pgflow.link l USING (link_id)
     ORDER BY 3 NULLS FIRST, 1, 2, 4;
END $$;

-- _forward_to: put one message in a link's outbox: its origin is (this site, from_queue,
-- from_id), or (this site, topic) for a publish, unless its headers carry one already (it came
-- over a link); via: the sites it has been at (its headers' pgflow_via), this one added.
-- Raises 22023 when the link's site is one of them (a loop). One query for the site and the
-- link: this is every forwarded send's cost over an insert.
CREATE FUNCTION pgflow._forward_to(
    p_link integer, p_remote_queue text, p_from_queue text, p_from_id bigint, p_topic text,
    message jsonb, headers jsonb, priority integer, group_key text, dedup_key text,
    deliver_at timestamptz, now timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_site text;
    v_remote text;
    v_via text[];
    v_origin jsonb;
    v_seq bigint;
BEGIN
    SELECT s.site_name, k.remote_site INTO v_site, v_remote
      FROM pgflow.link k LEFT JOIN pgflow.site s ON true
     WHERE k.link_id = p_link;
    IF v_site IS NULL THEN
        v_site := pgflow._site();  -- raises 55000
    END IF;
    IF headers ? 'pgflow_via' OR headers ? 'pgflow_origin' THEN
        IF jsonb_typeof(headers -> 'pgflow_via') = 'array' THEN
            v_via := ARRAY(SELECT jsonb_array_elements_text(headers -> 'pgflow_via'));
        END IF;
        v_origin := headers -> 'pgflow_origin';
        headers := headers - 'pgflow_origin' - 'pgflow_via';
    END IF;
    v_via := coalesce(v_via, '{}');
    IF v_remote = ANY (v_via) OR v_remote = v_site THEN
        RAISE EXCEPTION 'forwarding loop: the message has been at site "%" already (via %)', v_remote, v_via
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_origin IS NULL THEN
        v_origin := CASE WHEN p_topic IS NULL
                         THEN jsonb_build_object('site', v_site, 'queue', p_from_queue, 'id', p_from_id)
                         ELSE jsonb_build_object('site', v_site, 'topic', p_topic) END;
    END IF;
    INSERT INTO pgflow.link_outbox (link_id, sent_at, origin, via, remote_queue, message, headers,
                                    priority, group_key, dedup_key, deliver_at)
    VALUES (p_link, now, v_origin, v_via || v_site, p_remote_queue, message, headers, priority,
            group_key, dedup_key, deliver_at)
    RETURNING seq INTO v_seq;
    RETURN v_seq;
END $$;

-- _send_forwarded: send_batch's path for a queue with a forwarding rule: one message.
CREATE FUNCTION pgflow._send_forwarded(q pgflow.queue, message jsonb, headers jsonb,
                                       priority integer, now timestamptz, delay interval)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_id bigint := nextval(q.msg_seq);
BEGIN
    PERFORM pgflow._forward_to(q.forward_link, q.forward_to, q.queue_name, v_id, NULL, message,
                               headers, priority, NULL, NULL,
                               CASE WHEN delay > interval '0' THEN now + delay END, now);
    RETURN v_id;
END $$;

-- _forward_topic: publish's path to the topic rules that match topic. Returns each link and
-- remote queue ('link:queue') with the message's outbox sequence number.
CREATE FUNCTION pgflow._forward_topic(topic text, message jsonb, headers jsonb, delay interval,
                                      priority integer)
RETURNS TABLE (target text, seq bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r record;
    v_now timestamptz := clock_timestamp();
BEGIN
    FOR r IN SELECT DISTINCT l.link_id, l.link_name, x.remote_queue
               FROM pgflow.link_rule x
               JOIN pgflow.link l ON x.link_id IS NULL OR l.link_id = x.link_id
              -- A broadcast skips a link no one has subscribed to yet.
              WHERE pgflow._topic_matches(x.pattern, topic)
                AND (x.link_id IS NOT NULL OR l.subscribed_at IS NOT NULL)
              ORDER BY l.link_name, x.remote_queue LOOP
        target := r.link_name || ':' || r.remote_queue;
        seq := pgflow._forward_to(r.link_id, r.remote_queue, NULL, NULL, topic, message, headers,
            priority, NULL, NULL, CASE WHEN delay > interval '0' THEN v_now + delay END, v_now);
        RETURN NEXT;
    END LOOP;
END $$;

-- _link_arrive: the apply of a forwarded message at this site (a REPLICA trigger on
-- pgflow.link_outbox: it fires only in a subscription's apply). Sends it to its queue as the
-- subscription's owner, with its origin and path in the headers, or keeps it in
-- pgflow.link_refused with the reason. SECURITY DEFINER (sql/finalize.sql), unlike the other
-- internal functions: an apply that runs as a subscription owner without superuser
-- (run_as_owner) reaches pgflow only through it; the send still checks that owner's grants.
-- Never raises: an error would stop the subscription and every message behind this one.
-- Returns NULL: the row itself is not stored.
CREATE FUNCTION pgflow._link_arrive()
RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_headers jsonb;
BEGIN
    v_headers := coalesce(NEW.headers, '{}'::jsonb)
                 || jsonb_build_object('pgflow_origin', NEW.origin, 'pgflow_via', to_jsonb(NEW.via));
    IF NEW.resent THEN
        v_headers := v_headers || '{"pgflow_resent": true}'::jsonb;
    END IF;
    BEGIN
        IF pgflow._site() = ANY (NEW.via) THEN
            RAISE EXCEPTION 'forwarding loop: the message has been at this site ("%") already (via %)',
                pgflow._site(), NEW.via USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- The send runs with the subscription owner's rights (src/api/access.rs, arriving).
        PERFORM pgflow._arriving(true);
        PERFORM pgflow.send(NEW.remote_queue, NEW.message, v_headers, interval '0', NEW.priority,
                            NEW.group_key, NEW.dedup_key, NEW.deliver_at);
        PERFORM pgflow._arriving(false);
    EXCEPTION WHEN OTHERS THEN
        PERFORM pgflow._arriving(false);
        INSERT INTO pgflow.link_refused (origin, via, remote_queue, message, headers, priority,
                                         group_key, dedup_key, deliver_at, sqlstate, reason)
        VALUES (NEW.origin, NEW.via, NEW.remote_queue, NEW.message, NEW.headers, NEW.priority,
                NEW.group_key, NEW.dedup_key, NEW.deliver_at, SQLSTATE, SQLERRM);
    END;
    RETURN NULL;
END $$;
CREATE TRIGGER link_arrive BEFORE INSERT ON pgflow.link_outbox
    FOR EACH ROW EXECUTE FUNCTION pgflow._link_arrive();
ALTER TABLE pgflow.link_outbox ENABLE REPLICA TRIGGER link_arrive;

-- _link_outbox_guard: only pgflow writes a link's outbox outside an apply. pgflow_link_receiver
-- has INSERT on it so that a subscription owned by a role without superuser (Postgres 16 and
-- later, run_as_owner = true) can apply into it, where link_arrive sends each row to its queue
-- with that role's grants and stores nothing. In any other session such an insert would store
-- a row that this site then forwards as its own: refused (42501). pgflow's own inserts run as
-- pgflow_owner (its functions and its worker); a superuser's (a restore) pass. It does not fire
-- in an apply (session_replication_role = replica, which only a superuser can set).
CREATE FUNCTION pgflow._link_outbox_guard()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_user <> 'pgflow_owner'
       AND NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'permission denied to insert into a link''s outbox: only pgflow writes it'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Send to a forwarded queue or publish on a forwarded topic instead.';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER link_outbox_guard BEFORE INSERT ON pgflow.link_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION pgflow._link_outbox_guard();

-- The triggers of pgflow's own tables fire in a subscription's apply too (ALWAYS), since
-- link_arrive sends there: by default a trigger does not fire under session_replication_role
-- = replica, and pgflow.message's would then miss its statistics and its row checks.
ALTER TABLE pgflow.message ENABLE ALWAYS TRIGGER message_stats;
ALTER TABLE pgflow.message ENABLE ALWAYS TRIGGER message_group_advance;
ALTER TABLE pgflow.archive ENABLE ALWAYS TRIGGER archive_stats;
ALTER TABLE pgflow.dead ENABLE ALWAYS TRIGGER dead_stats;

-- link_refused_list: the messages links brought that this site refused, newest first.
CREATE FUNCTION pgflow.link_refused_list(max_rows integer DEFAULT 100)
RETURNS SETOF pgflow.link_refused
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM pgflow._check_link_admin('list refused messages', writes => false);
    PERFORM pgflow._check_int(max_rows, 'max_rows', 1);
    RETURN QUERY SELECT * FROM pgflow.link_refused r ORDER BY r.refused_id DESC LIMIT max_rows;
END $$;

-- link_refused_retry: send a refused message again, to its queue or to queue_name, with its
-- origin headers; it leaves link_refused in the same transaction. Returns the new id.
CREATE FUNCTION pgflow.link_refused_retry(refused_id bigint, queue_name text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r pgflow.link_refused;
    v_id bigint;
BEGIN
    PERFORM pgflow._check_link_admin('retry a refused message');
    PERFORM pgflow._require(refused_id, 'refused_id');
    DELETE FROM pgflow.link_refused x WHERE x.refused_id = link_refused_retry.refused_id RETURNING * INTO r;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no refused message %', refused_id USING ERRCODE = 'undefined_object';
    END IF;
    v_id := pgflow.send(coalesce(queue_name, r.remote_queue), r.message,
                        coalesce(r.headers, '{}'::jsonb)
                        || jsonb_build_object('pgflow_origin', r.origin, 'pgflow_via', to_jsonb(r.via)),
                        interval '0', r.priority, r.group_key, r.dedup_key, r.deliver_at);
    RETURN v_id;
END $$;

-- link_refused_delete: forget a refused message. True when it existed.
CREATE FUNCTION pgflow.link_refused_delete(refused_id bigint)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pgflow._check_link_admin('delete a refused message');
    DELETE FROM pgflow.link_refused x WHERE x.refused_id = link_refused_delete.refused_id;
    RETURN FOUND;
END $$;

-- _links_confirm: the worker's step (pgflow.maintain, job confirm_forwarded). For each link
-- whose seal the remote has confirmed, deletes the sealed outbox rows; then seals what is
-- left. Returns how many rows it deleted. A link whose slot is gone (the remote dropped its
-- subscription) keeps its rows.
CREATE FUNCTION pgflow._links_confirm()
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    l record;
    v_conf pg_lsn;
    v_active boolean;
    v_wal text;
    v_found boolean;
    v_err text;
    v_n bigint;
    v_total bigint := 0;
BEGIN
    FOR l IN SELECT k.link_id, k.seal_lsn, k.seal_snap, k.slot_seen_at, k.subscribed_at,
                    k.down_since, k.last_error
               FROM pgflow.link k
              ORDER BY k.link_id FOR UPDATE SKIP LOCKED LOOP
        SELECT s.confirmed_flush_lsn, s.active, s.wal_status INTO v_conf, v_active, v_wal
          FROM pg_catalog.pg_replication_slots s
         WHERE s.slot_name = 'pgflow_link_' || l.link_id AND s.database = current_database()
           AND s.slot_type = 'logical';
        v_found := FOUND;
        -- The link's trouble, as links() names its state; written only when it changes. No
        -- connection string, host or role goes into it: only what this site sees of its slot.
        v_err := CASE
            WHEN NOT v_found AND l.subscribed_at IS NOT NULL THEN
                'slot lost: the remote''s subscription (slot pgflow_link_' || l.link_id
                || ') is gone; the outbox goes again once the remote subscribes again'
            WHEN NOT v_found THEN NULL  -- not subscribed yet
            WHEN v_wal = 'lost' THEN
                'wal lost: slot pgflow_link_' || l.link_id || ' lost WAL it needed '
                || '(max_slot_wal_keep_size); the remote must subscribe again'
            WHEN l.slot_seen_at IS NOT NULL AND NOT v_active THEN
                'disconnected: no connection from the remote''s subscription on slot pgflow_link_'
                || l.link_id
            END;
        IF v_err IS NULL AND l.down_since IS NOT NULL THEN
            UPDATE pgflow.link k SET down_since = NULL WHERE k.link_id = l.link_id;
        ELSIF v_err IS NOT NULL AND (l.down_since IS NULL OR l.last_error IS DISTINCT FROM v_err) THEN
            UPDATE pgflow.link k SET down_since = coalesce(k.down_since, clock_timestamp()),
                                     last_error = v_err, last_error_at = clock_timestamp()
             WHERE k.link_id = l.link_id;
        END IF;
        IF NOT v_found THEN
            -- No slot (never subscribed, or the subscription was dropped): rows wait, and a
            -- seal made under a former slot no longer counts.
            IF l.slot_seen_at IS NOT NULL OR l.seal_lsn IS NOT NULL THEN
                UPDATE pgflow.link k SET slot_seen_at = NULL, slot_lost_at = clock_timestamp(),
                                         seal_lsn = NULL, seal_snap = NULL
                 WHERE k.link_id = l.link_id;
            END IF;
            CONTINUE;
        END IF;
        IF l.slot_seen_at IS NULL THEN
            -- First sight of this slot: what the outbox held before it existed is not in its
            -- stream, so it goes in again (the same rows, new inserts). The first slot of a
            -- link has nothing to send again (forward() waits for its first sight). A slot made
            -- again after a loss (the remote dropped its subscription, or the slot lost its WAL
            -- past max_slot_wal_keep_size) may have had some of these rows applied under the
            -- former one, which never confirmed them: they are marked resent and arrive with
            -- the header pgflow_resent (docs/operations.md, "Sites and links").
            WITH gone AS (
                DELETE FROM pgflow.link_outbox o WHERE o.link_id = l.link_id RETURNING o.*
            )
            INSERT INTO pgflow.link_outbox
            SELECT g.link_id, g.seq, pg_current_xact_id(), g.sent_at, g.origin, g.via, g.remote_queue,
                   g.message, g.headers, g.priority, g.group_key, g.dedup_key, g.deliver_at,
                   l.subscribed_at IS NOT NULL
              FROM gone g ORDER BY g.seq;
            UPDATE pgflow.link k SET slot_seen_at = clock_timestamp(),
                                     subscribed_at = coalesce(k.subscribed_at, clock_timestamp()),
                                     seal_lsn = NULL, seal_snap = NULL
             WHERE k.link_id = l.link_id;
            CONTINUE;
        END IF;
        IF l.seal_lsn IS NOT NULL AND v_conf >= l.seal_lsn THEN
            DELETE FROM pgflow.link_outbox o
             WHERE o.link_id = l.link_id AND pg_visible_in_snapshot(o.xid, l.seal_snap);
            GET DIAGNOSTICS v_n = ROW_COUNT;
            v_total := v_total + v_n;
            UPDATE pgflow.link k SET forwarded = k.forwarded + v_n, confirmed_at = clock_timestamp(),
                                     seal_lsn = NULL, seal_snap = NULL
             WHERE k.link_id = l.link_id;
            l.seal_lsn := NULL;
        END IF;
        IF l.seal_lsn IS NULL AND EXISTS (SELECT 1 FROM pgflow.link_outbox o WHERE o.link_id = l.link_id) THEN
            -- One statement: its snapshot is taken before the insert position is read.
            UPDATE pgflow.link k SET seal_snap = pg_current_snapshot(),
                                     seal_lsn = pg_current_wal_insert_lsn()
             WHERE k.link_id = l.link_id;
        END IF;
    END LOOP;
    RETURN v_total;
END $$;

-- links: each link's state. connected: the remote's subscription is streaming now; backlog
-- and oldest_age: what waits in the outbox (confirmed rows leave it within a worker tick or
-- two); wal_kept_bytes: the WAL the slot keeps from removal (max_slot_wal_keep_size bounds
-- it; wal_status 'lost' means the remote can no longer catch up); lag: the round trip of the
-- latest forwarded commit, from its WAL being flushed here to the remote confirming it had it
-- flushed (the walsender's flush_lag; NULL once caught up and idle, or when not connected);
-- feedback_at: when the remote last answered (a cut network shows as an old time);
-- down_since, last_error, last_error_at: as the worker last saw the link change (pgflow.link).
CREATE FUNCTION pgflow.links()
RETURNS TABLE (link_name text, remote_site text, state text, connected boolean, backlog bigint,
               oldest_age double precision, forwarded bigint, confirmed_at timestamptz,
               slot_name text, wal_kept_bytes numeric, wal_status text,
               alert_age interval, alerting boolean, lag interval, feedback_at timestamptz,
               down_since timestamptz, last_error text, last_error_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF pgflow._caller_class() < 1 THEN
        RAISE EXCEPTION 'permission denied to see links: pgflow_admin or pg_monitor members only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN QUERY SELECT * FROM pgflow._links_state();
END $$;

-- _links_state: links()'s rows, for the worker's count too (src/worker/maintainer.rs).
CREATE FUNCTION pgflow._links_state()
RETURNS TABLE (link_name text, remote_site text, state text, connected boolean, backlog bigint,
               oldest_age double precision, forwarded bigint, confirmed_at timestamptz,
               slot_name text, wal_kept_bytes numeric, wal_status text,
               alert_age interval, alerting boolean, lag interval, feedback_at timestamptz,
               down_since timestamptz, last_error text, last_error_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT k.link_name, k.remote_site,
           CASE WHEN s.slot_name IS NULL AND k.subscribed_at IS NULL THEN 'not subscribed'
                WHEN s.slot_name IS NULL THEN 'slot lost'
                WHEN s.wal_status = 'lost' THEN 'wal lost'
                WHEN k.slot_seen_at IS NULL THEN 'starting'
                WHEN s.active THEN 'connected' ELSE 'disconnected' END,
           coalesce(s.active, false),
           coalesce(o.n, 0), extract(epoch FROM clock_timestamp() - o.oldest)::float8,
           k.forwarded, k.confirmed_at, 'pgflow_link_' || k.link_id,
           CASE WHEN s.restart_lsn IS NOT NULL AND NOT pg_is_in_recovery()
                THEN pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn) END,
           coalesce(s.wal_status, 'no subscription'),
           k.alert_age, coalesce(clock_timestamp() - o.oldest > k.alert_age, false),
           r.flush_lag, r.reply_time, k.down_since, k.last_error, k.last_error_at
      FROM pgflow.link k
      LEFT JOIN pg_catalog.pg_replication_slots s
             ON s.slot_name = 'pgflow_link_' || k.link_id AND s.database = current_database()
      LEFT JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid
      LEFT JOIN LATERAL (SELECT count(*) AS n, min(x.sent_at) AS oldest
                           FROM pgflow.link_outbox x WHERE x.link_id = k.link_id) o ON true
     ORDER BY k.link_name;
END $$;

-- _ids_for_timeline: brings every id sequence past what earlier timelines may have issued,
-- once per timeline, before this server's first pgflow write on it (src/api/access.rs calls it
-- from the writing verbs' primary check, once per session and timeline). A standby promoted
-- after an asynchronous failover may lack sends the old primary acknowledged; without this it
-- would issue their ids again, and an archive or delete by id (a psql user's, a link's) would
-- hit a message nobody read. Timeline t's ids start at t << 40 (1.1e12 per timeline); the ids a
-- queue skips are counted in pgflow.queue.ids_skipped, so that its total stays the number sent.
CREATE FUNCTION pgflow._ids_for_timeline(tli integer)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_done integer;
    v_floor bigint := tli::bigint << 40;
    v_last bigint;
    q record;
BEGIN
    -- Timeline 1 has nothing before it: no row, no lock (a session's first write takes none).
    IF tli <= 1 THEN
        RETURN;
    END IF;
    SELECT t.timeline INTO v_done FROM pgflow.id_timeline t;
    IF v_done >= tli THEN
        RETURN;
    END IF;
    -- One session at a time, until its transaction ends: a second one that read a sequence
    -- before the first moved it would move it back.
    LOCK TABLE pgflow.id_timeline IN EXCLUSIVE MODE;
    SELECT t.timeline INTO v_done FROM pgflow.id_timeline t;
    IF v_done >= tli THEN
        RETURN;
    END IF;
    FOR q IN SELECT u.queue_id, u.msg_seq FROM pgflow.queue u ORDER BY u.queue_id LOOP
        v_last := coalesce(pg_sequence_last_value(q.msg_seq), 0);
        IF v_last < v_floor THEN
            PERFORM setval(q.msg_seq, v_floor);
            UPDATE pgflow.queue u SET ids_skipped = u.ids_skipped + (v_floor - v_last)
             WHERE u.queue_id = q.queue_id;
        END IF;
    END LOOP;
    IF coalesce(pg_sequence_last_value('pgflow.link_outbox_seq'), 0) < v_floor THEN
        PERFORM setval('pgflow.link_outbox_seq', v_floor);
    END IF;
    INSERT INTO pgflow.id_timeline AS t (timeline) VALUES (tli)
    ON CONFLICT (only_row) DO UPDATE SET timeline = EXCLUDED.timeline, set_at = now();
END $$;

