-- The fuzz layer (issue #14): every user-facing function called with NULLs, empty, huge,
-- negative and odd-bound arrays, deep or extreme JSON, huge intervals and hostile names, one
-- argument at a time (the others keep a good value), each call in a subtransaction that is
-- always rolled back. It fails on an XX000, a SQLSTATE docs/api.md does not list, a crash
-- (psql loses the connection), a call over 10 s (statement_timeout), or a change to what
-- was stored (the canary messages must all be delivered afterwards, in order). Then every
-- internal `_` function is called as an ordinary role, and each must refuse with 42501.
-- Run by tests/fuzz/fuzz.sh in a database of its own.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
CREATE SCHEMA fuzz;
CREATE TABLE fuzz.result (fn text, arg text, value text, sqlstate text, message text);

-- The queues the good values name: one plain, one with a contract; canaries in the plain one.
SELECT pgflow.create_queue('fz_q', retry_jitter => 0);
SELECT pgflow.create_queue('fz_c', contract => '{"type": "object", "properties": {"a": {"type": "number"}}}');
SELECT pgflow.bind('fz.#', 'fz_q');
SELECT count(*) FROM pgflow.send_batch('fz_q', ARRAY(SELECT jsonb_build_object('canary', i) FROM generate_series(1, 20) i));
SELECT pgflow.send('fz_q', '{"canary": "delayed"}', delay => '1 hour');
CREATE ROLE pgflow_fuzz NOLOGIN;
CREATE TABLE fuzz.before AS
SELECT 'message' AS t, md5(string_agg(m::text, ',' ORDER BY queue_id, msg_id)) AS h FROM pgflow.message m
UNION ALL SELECT 'queue', md5(string_agg(q::text, ',' ORDER BY queue_id)) FROM pgflow.queue q
UNION ALL SELECT 'contract', md5(string_agg(c::text, ',' ORDER BY queue_id, version)) FROM pgflow.contract c
UNION ALL SELECT 'binding', md5(string_agg(b::text, ',' ORDER BY pattern, queue_id)) FROM pgflow.binding b;

-- Values per argument: by name first, then by type. The first is the good one.
CREATE FUNCTION fuzz.pool(p_name text, p_type regtype, p_queue text) RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
      WHEN p_name = 'queue_name' THEN ARRAY[quote_literal(p_queue), 'NULL', '''''', '''nope''',
            'repeat(''q'', 100000)', '''x"; DROP TABLE pgflow.message; --''', 'E''a\\x01b''']
      WHEN p_name = 'topic' THEN ARRAY['''fz.t''', 'NULL', '''''', '''#''', 'repeat(''a.'', 99999) || ''a''', '''a..b''']
      WHEN p_name = 'pattern' THEN ARRAY['''fz.#''', 'NULL', '''''', '''*.*.#.#''', 'repeat(''#.'', 200) || ''a''', '''a b''']
      WHEN p_name = 'privilege' THEN ARRAY['''consume''', 'NULL', '''''', '''all''']
      WHEN p_name = 'version' THEN ARRAY['''1''', 'NULL', '''''', '''../x''', 'repeat(''v'', 100000)']
      WHEN p_name = 'wait' THEN ARRAY['NULL', '''-1 s''', '''0''', '''10 ms''', '''1000000 years''']
      WHEN p_name IN ('message', 'contract') THEN ARRAY['''{"a": 1}''', 'NULL', '''{}''', '''[]''', '''null''', '''"s"''',
            '''{"a": 1e400}''', '''{"a": -1e400}''', '(repeat(''['', 5000) || repeat('']'', 5000))::jsonb',
            '(''{"a": '' || repeat(''['', 200) || repeat('']'', 200) || ''}'')::jsonb',
            'jsonb_build_object(''k'', repeat(''x'', 1000000))', '''{"type": "nope"}''', '''{"maximum": "x"}''']
      WHEN p_type = 'text'::regtype THEN ARRAY['''x''', 'NULL', '''''', 'repeat(''k'', 1000000)', '''x"; DROP TABLE pgflow.message; --''', 'E''\\x01''']
      WHEN p_type = 'jsonb'::regtype THEN ARRAY['NULL', '''{}''', '''[]''', '''{"schema_version": "nope"}''',
            '''{"schema_version": 1}''', '''{"a": 1e400}''', '(repeat(''['', 5000) || repeat('']'', 5000))::jsonb']
      WHEN p_type = 'jsonb[]'::regtype THEN ARRAY['ARRAY[''{"a": 1}'']::jsonb[]', 'NULL', '''{}''::jsonb[]', '''{NULL}''::jsonb[]',
            '''[0:1]={"{}","{}"}''::jsonb[]', '''{{"{}"},{"{}"}}''::jsonb[]', 'ARRAY[''{"a": 1e400}'']::jsonb[]',
            'ARRAY[''[]'']::jsonb[]', 'ARRAY(SELECT ''{}''::jsonb FROM generate_series(1, 10000))']
      WHEN p_type = 'interval'::regtype THEN ARRAY['''1 second''', 'NULL', '''-1 s''', '''0''', '''100 years''',
            '''1000000 years''', '''-1000000 years''', '''1 mon -30 days''']
      WHEN p_type IN ('integer'::regtype, 'smallint'::regtype) THEN ARRAY['1', 'NULL', '0', '-1', '2147483647', '(-2147483648)']
      WHEN p_type = 'bigint'::regtype THEN ARRAY['1', 'NULL', '0', '-1', '9223372036854775807', '(-9223372036854775808)']
      WHEN p_type = 'bigint[]'::regtype THEN ARRAY['''{1}''::bigint[]', 'NULL', '''{}''::bigint[]', '''{NULL}''::bigint[]',
            '''{-1}''::bigint[]', '''[0:1]={1,2}''::bigint[]', '''{{1},{2}}''::bigint[]',
            'ARRAY(SELECT generate_series(1, 100000)::bigint)']
      WHEN p_type = 'boolean'::regtype THEN ARRAY['false', 'NULL', 'true']
      WHEN p_type = 'timestamptz'::regtype THEN ARRAY['NULL', 'now()', '''infinity''', '''-infinity''',
            '''294276-12-31 23:59:59+00''', '''4713-01-01 00:00:00+00 BC''']
      WHEN p_type = 'double precision'::regtype THEN ARRAY['1', 'NULL', '''NaN''', '''Infinity''', '''-Infinity''', '-1', '0', '1e308']
      WHEN p_type = 'regrole'::regtype THEN ARRAY['''pgflow_fuzz''', 'NULL', '''postgres''']
      ELSE ARRAY['NULL'] END;
$$;

-- The calls: for each user-facing function and each of its arguments, every value of the
-- argument's pool, the others at their good value; named arguments, cast to the declared type.
-- Twice: with the plain queue, then with the one that has a contract.
CREATE FUNCTION fuzz.calls(p_queue text) RETURNS TABLE (fn text, arg text, value text, call text)
LANGUAGE plpgsql AS $$
DECLARE
    f record;
    names text[];
    types regtype[];
    i integer;
    v text;
BEGIN
    FOR f IN SELECT p.oid, p.proname, p.pronargs, p.proargnames, p.proargtypes::regtype[] AS argtypes
               FROM pg_proc p
              WHERE p.pronamespace = 'pgflow'::regnamespace AND p.proname NOT LIKE '\_%'
              ORDER BY p.proname, p.oid LOOP
        names := f.proargnames[1:f.pronargs];
        types := ARRAY(SELECT unnest(f.argtypes));  -- from 1 (an oidvector starts at 0)
        IF f.pronargs = 0 THEN
            fn := f.proname; arg := ''; value := '';
            call := format('SELECT count(*) FROM pgflow.%I()', f.proname);
            RETURN NEXT;
            CONTINUE;
        END IF;
        FOR i IN 1 .. f.pronargs LOOP
            FOREACH v IN ARRAY fuzz.pool(names[i], types[i], p_queue) LOOP
                fn := f.proname || '(' || array_to_string(types::text[], ', ') || ')';
                arg := names[i] || CASE WHEN p_queue = 'fz_q' THEN '' ELSE ' (' || p_queue || ')' END;
                value := left(v, 60);
                call := format('SELECT count(*) FROM pgflow.%I(%s)', f.proname,
                    (SELECT string_agg(format('%I => (%s)::%s', names[j],
                                              CASE WHEN j = i THEN v ELSE (fuzz.pool(names[j], types[j], p_queue))[1] END,
                                              types[j]), ', ' ORDER BY j)
                       FROM generate_series(1, f.pronargs) j));
                RETURN NEXT;
            END LOOP;
        END LOOP;
    END LOOP;
END $$;

-- One call in a subtransaction that is always rolled back; what it raised is recorded.
CREATE FUNCTION fuzz.try(p_fn text, p_arg text, p_value text, p_call text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_state text := 'ok';
    v_msg text;
BEGIN
    BEGIN
        EXECUTE p_call;
        RAISE EXCEPTION USING ERRCODE = 'P0099';  -- undo what it did
    EXCEPTION
        WHEN SQLSTATE 'P0099' THEN NULL;
        WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
    END;
    INSERT INTO fuzz.result VALUES (p_fn, p_arg, p_value, v_state, left(v_msg, 200));
END $$;

SET statement_timeout = '10s';
SELECT format('SELECT fuzz.try(%L, %L, %L, %L)', fn, arg, value, call)
  FROM unnest(ARRAY['fz_q', 'fz_c']) q, fuzz.calls(q) \gexec
RESET statement_timeout;

-- Nothing stored changed, and the claim cursor still delivers every canary, in order.
CREATE TABLE fuzz.changed AS
SELECT b.t FROM fuzz.before b
  JOIN (SELECT 'message' AS t, md5(string_agg(m::text, ',' ORDER BY queue_id, msg_id)) AS h FROM pgflow.message m
        UNION ALL SELECT 'queue', md5(string_agg(q::text, ',' ORDER BY queue_id)) FROM pgflow.queue q
        UNION ALL SELECT 'contract', md5(string_agg(c::text, ',' ORDER BY queue_id, version)) FROM pgflow.contract c
        UNION ALL SELECT 'binding', md5(string_agg(b::text, ',' ORDER BY pattern, queue_id)) FROM pgflow.binding b) a
    USING (t)
 WHERE a.h IS DISTINCT FROM b.h;
CREATE TABLE fuzz.canaries AS
SELECT string_agg(message ->> 'canary', ',' ORDER BY msg_id) AS got FROM pgflow.read('fz_q', qty => 100);

-- Every internal function, called as an ordinary role with pgflow's roles (NULL arguments):
-- 42501, each one.
GRANT pgflow_producer, pgflow_consumer TO pgflow_fuzz;
CREATE TABLE fuzz.internal (fn text, sqlstate text);
GRANT INSERT ON fuzz.internal TO pgflow_fuzz;
GRANT USAGE ON SCHEMA fuzz TO pgflow_fuzz;
SET ROLE pgflow_fuzz;
DO $$
DECLARE
    f record;
    v_state text;
BEGIN
    FOR f IN SELECT p.oid::regprocedure AS sig, p.proname, p.pronargs, p.prorettype = 'trigger'::regtype AS trig
               FROM pg_proc p
              WHERE p.pronamespace = 'pgflow'::regnamespace AND p.proname LIKE '\_%'
              ORDER BY 1 LOOP
        v_state := 'ok';
        BEGIN
            EXECUTE format('SELECT pgflow.%I(%s)', f.proname,
                           -- A subquery each, so that no call is folded away as a strict
                           -- function of NULL constants (which skips the privilege check).
                           (SELECT string_agg(format('(SELECT NULL::%s)',
                                                     CASE WHEN t = 'anyelement'::regtype THEN 'text'::regtype ELSE t END), ', ')
                              FROM unnest((SELECT proargtypes::regtype[] FROM pg_proc WHERE oid = f.sig)) t));
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE;
        END;
        INSERT INTO fuzz.internal VALUES (f.sig::text, v_state);
    END LOOP;
END $$;
RESET ROLE;
