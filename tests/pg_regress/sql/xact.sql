-- Transaction ends (src/ipc/xact.rs): pgflow's commit, abort, prepare and subtransaction-abort
-- sides may not fail, since an ERROR there becomes a PANIC that restarts the whole server.
-- pgflow.test_xact_fault injects a failure (a Rust panic, or an ERROR raised inside Postgres)
-- into each phase in turn: the server stays up (same start time, the session goes on), each
-- caught failure is a WARNING and counts in pgflow_xact_faults_total, interrupts still work
-- afterwards (a caught ERROR zeroes their holdoff count), and what the transaction did stands.
-- Before the commit, at PRE_COMMIT, an ERROR is still legal: the transaction rolls back.
SELECT pgflow.create_queue('xact_q');
SELECT pg_postmaster_start_time() AS started \gset
CREATE FUNCTION xact_faults() RETURNS bigint LANGUAGE sql AS $$
    SELECT (regexp_match(pgflow.metrics_text(), '\npgflow_xact_faults_total (\d+)'))[1]::bigint
$$;
SELECT xact_faults() AS faults_before \gset
-- Interrupts are processed: a statement timeout cancels a sleep (each check below is the
-- three statements: SET, the sleep that must be cancelled, RESET).

-- Before the commit: the commit fails and the send is gone.
BEGIN;
SET LOCAL pgflow.test_xact_fault = 'pre_commit_error';
SELECT pgflow.send('xact_q', '{"n": 1}') AS id \gset
COMMIT;
SELECT count(*) AS kept FROM pgflow.list_pending('xact_q');

-- The commit side: the send commits and is readable.
BEGIN;
SET LOCAL pgflow.test_xact_fault = 'commit_panic';
SELECT pgflow.send('xact_q', '{"n": 2}') > 0 AS sent;
COMMIT;
SET statement_timeout = '100ms';
SELECT pg_sleep(5);
RESET statement_timeout;
BEGIN;
SET LOCAL pgflow.test_xact_fault = 'commit_error';
SELECT pgflow.send('xact_q', '{"n": 3}') > 0 AS sent;
COMMIT;
SET statement_timeout = '100ms';
SELECT pg_sleep(5);
RESET statement_timeout;
SELECT message->>'n' AS n FROM pgflow.read('xact_q', qty => 10) ORDER BY msg_id;

-- The abort side: the send is rolled back.
BEGIN;
SET LOCAL pgflow.test_xact_fault = 'abort_panic';
SELECT pgflow.send('xact_q', '{"n": 4}') > 0 AS sent;
ROLLBACK;
SET statement_timeout = '100ms';
SELECT pg_sleep(5);
RESET statement_timeout;
BEGIN;
SET LOCAL pgflow.test_xact_fault = 'abort_error';
SELECT pgflow.send('xact_q', '{"n": 5}') > 0 AS sent;
ROLLBACK;
SET statement_timeout = '100ms';
SELECT pg_sleep(5);
RESET statement_timeout;

-- PREPARE: the prepared send commits later, elsewhere.
BEGIN;
SET LOCAL pgflow.test_xact_fault = 'prepare_panic';
SELECT pgflow.send('xact_q', '{"n": 6}') > 0 AS sent;
PREPARE TRANSACTION 'pgflow_xact_1';
BEGIN;
SET LOCAL pgflow.test_xact_fault = 'prepare_error';
SELECT pgflow.send('xact_q', '{"n": 7}') > 0 AS sent;
PREPARE TRANSACTION 'pgflow_xact_2';
SET statement_timeout = '100ms';
SELECT pg_sleep(5);
RESET statement_timeout;
COMMIT PREPARED 'pgflow_xact_1';
COMMIT PREPARED 'pgflow_xact_2';

-- A subtransaction's abort: the savepoint's send is gone, the rest commits.
BEGIN;
SELECT pgflow.send('xact_q', '{"n": 8}') > 0 AS sent;
SAVEPOINT s;
SET LOCAL pgflow.test_xact_fault = 'subabort_panic';
SELECT pgflow.send('xact_q', '{"n": 9}') > 0 AS sent;
ROLLBACK TO SAVEPOINT s;
SAVEPOINT t;
SET LOCAL pgflow.test_xact_fault = 'subabort_error';
SELECT pgflow.send('xact_q', '{"n": 10}') > 0 AS sent;
ROLLBACK TO SAVEPOINT t;
COMMIT;
SET statement_timeout = '100ms';
SELECT pg_sleep(5);
RESET statement_timeout;
SELECT message->>'n' AS n FROM pgflow.read('xact_q', qty => 10) ORDER BY msg_id;

-- Eight failures caught, none escaped: the server never restarted.
SELECT xact_faults() - :faults_before AS caught;
SELECT pg_postmaster_start_time() = :'started' AS same_server;
-- Only superusers set it.
CREATE ROLE xact_nobody;
SET ROLE xact_nobody;
SET pgflow.test_xact_fault = 'commit_panic';
-- Nor the claim pause of the isolation specs (src/api/cursor.rs, pause_at).
SET pgflow.test_pause = 'claim_noted';
RESET ROLE;
DROP ROLE xact_nobody;
DROP FUNCTION xact_faults();
SELECT pgflow.drop_queue('xact_q');
