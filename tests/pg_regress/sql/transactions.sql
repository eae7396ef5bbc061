-- Everything is transactional: a rolled-back send never appears, a rolled-back archive or
-- read leaves the message where it was.
\set VERBOSITY terse
SELECT pgflow.create_queue('tx');

BEGIN;
SELECT pgflow.send('tx', '{"n": 1}');
SELECT count(*) AS inside_tx FROM pgflow.list_pending('tx');
ROLLBACK;
SELECT count(*) AS after_rollback FROM pgflow.list_pending('tx');

SELECT pgflow.send('tx', '{"n": 2}');
BEGIN;
SELECT msg_id FROM pgflow.read('tx', '30 s', 1);
SELECT pgflow.archive('tx', 2::bigint);
ROLLBACK;
-- The rolled-back read and archive left it ready, never delivered.
SELECT msg_id, state, read_ct FROM pgflow.list_pending('tx');
SELECT count(*) AS archived FROM pgflow.archive;

-- A savepoint rolls back a send_batch alone.
BEGIN;
SELECT count(*) FROM pgflow.send_batch('tx', array_fill('{}'::jsonb, ARRAY[5]));
SAVEPOINT s;
SELECT count(*) FROM pgflow.send_batch('tx', array_fill('{}'::jsonb, ARRAY[7]));
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT queue_length FROM pgflow.metrics('tx');
-- Ids handed out by rolled-back sends are not reused (and count in total_messages).
SELECT pgflow.send('tx', '{"n": 3}') > 2 + 5 + 7 AS ids_not_reused;
SELECT total_messages >= queue_length FROM pgflow.metrics('tx');

SELECT pgflow.drop_queue('tx');
