-- Message contracts: an optional JSON Schema per queue, in versions, checked at send.
--
-- A queue with a contract checks every payload sent to it against one version: the one named
-- in the message's "schema_version" header, or the queue's default version. A payload that
-- does not match raises 23514 naming the failing field and rule; an unknown version 22023.
-- The supported subset of JSON Schema is documented in src/queue/contract.rs.

-- set_contract: register (or replace) a version of a queue's contract; with make_default it
-- becomes the version used when a message names none.
CREATE FUNCTION pgflow.set_contract(queue_name text, contract jsonb, version text DEFAULT '1',
                                    make_default boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
BEGIN
    PERFORM pgflow._check_contract_schema(contract::text);
    PERFORM pgflow._require(version, 'version');
    PERFORM pgflow._require(make_default, 'make_default');
    IF version !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$' THEN
        RAISE EXCEPTION 'invalid contract version "%": 1 to 64 of A-Z a-z 0-9 _ . -', version
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO pgflow.contract AS c (queue_id, version, schema)
    VALUES (q.queue_id, set_contract.version, contract)
    ON CONFLICT ON CONSTRAINT contract_pkey
    DO UPDATE SET schema = EXCLUDED.schema, created_at = now(),
                  revision = nextval('pgflow.contract_revision');
    IF make_default OR q.contract_version IS NULL THEN
        UPDATE pgflow.queue u SET contract_version = set_contract.version WHERE u.queue_id = q.queue_id;
    END IF;
END $$;

-- drop_contract: remove one version. If it was the default, the newest remaining version
-- becomes the default; with none left the queue has no contract. True when it existed.
CREATE FUNCTION pgflow.drop_contract(queue_name text, version text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'admin');
BEGIN
    PERFORM pgflow._require(version, 'version');
    DELETE FROM pgflow.contract c WHERE c.queue_id = q.queue_id AND c.version = drop_contract.version;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF q.contract_version = drop_contract.version THEN
        UPDATE pgflow.queue u
           SET contract_version = (SELECT c.version FROM pgflow.contract c WHERE c.queue_id = q.queue_id
                                    ORDER BY c.created_at DESC, c.version DESC LIMIT 1)
         WHERE u.queue_id = q.queue_id;
    END IF;
    RETURN true;
END $$;

-- list_contracts: a queue's contract versions, the default first.
CREATE FUNCTION pgflow.list_contracts(queue_name text)
RETURNS TABLE (version text, is_default boolean, contract jsonb, created_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    q pgflow.queue := pgflow._queue(queue_name, 'see');
BEGIN
    RETURN QUERY
    SELECT c.version, c.version = q.contract_version, c.schema, c.created_at
      FROM pgflow.contract c WHERE c.queue_id = q.queue_id
     ORDER BY c.version = q.contract_version DESC, c.version;
END $$;

-- _check_contract: the payload against the version its headers name (or the default).
-- pos, when given, names the element in errors (send_batch).
CREATE FUNCTION pgflow._check_contract(q pgflow.queue, message jsonb, headers jsonb,
                                       pos integer DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_version text := coalesce(headers ->> 'schema_version', q.contract_version);
    v_revision bigint;
BEGIN
    -- The revision only: _validate_contract keeps parsed schemas per backend and reads the
    -- schema itself when its copy is missing or stale.
    SELECT c.revision INTO v_revision FROM pgflow.contract c
     WHERE c.queue_id = q.queue_id AND c.version = v_version;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%queue "%" has no contract version "%" (it has: %)',
            CASE WHEN pos IS NULL THEN '' ELSE 'messages[' || pos || ']: ' END,
            q.queue_name, v_version,
            (SELECT string_agg(c.version, ', ' ORDER BY c.version) FROM pgflow.contract c
              WHERE c.queue_id = q.queue_id)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pgflow._validate_contract(q.queue_id, q.queue_name, v_version, v_revision,
                                      message::text, pos);
END $$;
