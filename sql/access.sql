-- Roles and per-queue grants (docs/operations.md, "Roles and grants"). The roles, the owner and
-- the EXECUTE grants are set at the end of the install script (sql/finalize.sql); these
-- functions manage which queues a role reaches. Only pgflow_admin (and superusers) may call
-- them.

-- _check_privilege: 22023 unless one of the per-queue privileges, 22004 for NULL.
CREATE FUNCTION pgflow._check_privilege(privilege text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF privilege IS NULL THEN
        RAISE EXCEPTION 'privilege must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    ELSIF privilege NOT IN ('produce', 'consume', 'admin') THEN
        RAISE EXCEPTION 'privilege must be produce, consume or admin, got "%"', privilege
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END $$;

-- grant: let a role, and every role that is a member of it, produce to ('produce': send,
-- send_batch, publish), consume from ('consume': read, pop, archive, archive_read, delete,
-- set_vt, nack, list_pending) or administer ('admin': both, plus alter_queue, purge_queue,
-- drop_queue, the dead-letter queue, contracts and bindings) one queue. The role also needs
-- the functions: membership in pgflow_producer, pgflow_consumer or pgflow_admin. Returns true
-- when the grant is new. An unknown role raises 42704.
CREATE FUNCTION pgflow.grant(queue_name text, role regrole, privilege text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
BEGIN
    PERFORM pgflow._require(role, 'role');
    -- A regrole given as a number is not checked by the cast (grant(q, 12345, ...)).
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = role) THEN
        RAISE EXCEPTION 'role with oid % does not exist', role::oid
            USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM pgflow._check_privilege(privilege);
    INSERT INTO pgflow.queue_grant (queue_id, grantee, privilege)
    VALUES (q.queue_id, role, privilege)
    ON CONFLICT ON CONSTRAINT queue_grant_pkey DO NOTHING;
    RETURN FOUND;
END $$;

-- revoke: take back a role's grant on a queue (every privilege when privilege is NULL).
-- Returns how many grants it removed. Roles keep what they have through other roles.
CREATE FUNCTION pgflow.revoke(queue_name text, role regrole, privilege text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
    n bigint;
BEGIN
    PERFORM pgflow._require(role, 'role');
    IF privilege IS NOT NULL THEN
        PERFORM pgflow._check_privilege(privilege);
    END IF;
    DELETE FROM pgflow.queue_grant g
     WHERE g.queue_id = q.queue_id AND g.grantee = role
       AND (revoke.privilege IS NULL OR g.privilege = revoke.privilege);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- list_grants: the grants of one queue, or of every queue (NULL), by queue, role and privilege.
-- A grant of a role dropped since shows the role's former oid.
CREATE TYPE pgflow.grant_info AS (
    queue_name text,
    role       regrole,
    privilege  text,         -- produce, consume or admin
    granted_at timestamptz
);

CREATE FUNCTION pgflow.list_grants(queue_name text DEFAULT NULL)
RETURNS SETOF pgflow.grant_info
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_id integer;
BEGIN
    IF list_grants.queue_name IS NOT NULL THEN
        v_id := (pgflow._queue(list_grants.queue_name, 'admin', writes => false)).queue_id;
    END IF;
    RETURN QUERY
    SELECT q.queue_name, g.grantee, g.privilege, g.granted_at
      FROM pgflow.queue_grant g JOIN pgflow.queue q USING (queue_id)
     WHERE v_id IS NULL OR g.queue_id = v_id
     ORDER BY q.queue_name, g.grantee::text, g.privilege;
END $$;
