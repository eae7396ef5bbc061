-- Delivery semantics: priority and FIFO, delay as an interval or a time, message groups,
-- deduplication, topics, and read's wait argument (its wake-ups are client-tested).
\set VERBOSITY terse
CREATE FUNCTION pg_temp.err(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE stmt; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;

-------------------------------------------------------------------------------------------------
-- Priority: higher first, FIFO (send order) within a priority; the queue's default applies
-- when a send names none.
-------------------------------------------------------------------------------------------------
SELECT pgflow.create_queue('rollback_triggers', default_priority => 5);
SELECT pgflow.send('rollback_triggers', jsonb_build_object('n', 1));
SELECT pgflow.send('rollback_triggers', jsonb_build_object('n', 2), priority => 0);
SELECT pgflow.send('rollback_triggers', jsonb_build_object('n', 3), priority => 100);
SELECT pgflow.send('rollback_triggers', jsonb_build_object('n', 4));
SELECT pgflow.send('rollback_triggers', jsonb_build_object('n', 5), priority => -3);
SELECT * FROM pgflow.send_batch('rollback_triggers', ARRAY['{"n": 6}', '{"n": 7}']::jsonb[], priority => 100);
SELECT msg_id, priority, state FROM pgflow.list_pending('rollback_triggers');
SELECT msg_id, message ->> 'n' AS n FROM pgflow.read('rollback_triggers', '30 s', 3);
SELECT msg_id, message ->> 'n' AS n FROM pgflow.read('rollback_triggers', '30 s', 10);
-- A delayed message that came due joins by its priority and id, ahead of later lower ones.
SELECT pgflow.purge_queue('rollback_triggers');
SELECT pgflow.send('rollback_triggers', jsonb_build_object('n', 'low'), priority => 1);
SELECT pgflow.send('rollback_triggers', jsonb_build_object('n', 'urgent, was delayed'), priority => 9,
                   deliver_at => clock_timestamp() - interval '1 second');
SELECT message ->> 'n' AS n FROM pgflow.read('rollback_triggers', '30 s', 2);
-- Out of range or contradictory arguments: 22023, nothing stored.
SELECT pg_temp.err($$SELECT pgflow.send('rollback_triggers', '{}', priority => 40000)$$);
SELECT pg_temp.err($$SELECT pgflow.create_queue('p2', default_priority => -40000)$$);
SELECT pg_temp.err($$SELECT pgflow.alter_queue('rollback_triggers', default_priority => 32768)$$);
SELECT pg_temp.err($$SELECT pgflow.send('rollback_triggers', '{}', delay => '1 s', deliver_at => now())$$);
SELECT queue_length FROM pgflow.metrics('rollback_triggers');
SELECT default_priority FROM pgflow.alter_queue('rollback_triggers', default_priority => 7);

-------------------------------------------------------------------------------------------------
-- Delay as a time: invisible until deliver_at; a time in the past delivers at once.
-------------------------------------------------------------------------------------------------
SELECT pgflow.create_queue('scheduled');
SELECT pgflow.send('scheduled', '{"at": "later"}', deliver_at => '2099-01-01+00');
SELECT pgflow.send('scheduled', '{"at": "past"}', deliver_at => '2000-01-01+00');
SELECT msg_id, state, vt FROM pgflow.list_pending('scheduled') WHERE state = 'delayed';
SELECT message FROM pgflow.read('scheduled', '30 s', 10);
SELECT pgflow.promote_delayed(now => '2099-01-01+00');
SELECT message FROM pgflow.read('scheduled', '30 s', 10);

-------------------------------------------------------------------------------------------------
-- Message groups: one message of a group is live at a time, in send order; the next becomes
-- deliverable when the previous is archived, deleted or dead. Other groups are not held up.
-------------------------------------------------------------------------------------------------
SELECT pgflow.create_queue('code_execution', max_retries => 0);
SELECT pgflow.send('code_execution', jsonb_build_object('job', g || i), group_key => g)
  FROM unnest(ARRAY['a', 'b']) g, generate_series(1, 3) i ORDER BY g, i;
SELECT pgflow.send('code_execution', '{"job": "free"}');
SELECT msg_id, state, group_key FROM pgflow.list_pending('code_execution');
SELECT waiting, visible FROM pgflow.metrics('code_execution');
-- A consumer gets each group's head and the ungrouped message, nothing else.
SELECT msg_id, message ->> 'job' AS job FROM pgflow.read('code_execution', '30 s', 10);
SELECT count(*) FROM pgflow.read('code_execution', '30 s', 10);
-- Archive a1: a2 is next. Delete b1: b2 is next. a1's successor is not b's.
SELECT pgflow.archive('code_execution', 1::bigint);
SELECT pgflow.delete('code_execution', 4::bigint);
SELECT msg_id, message ->> 'job' AS job FROM pgflow.read('code_execution', '30 s', 10);
-- a2 fails and is dead-lettered (max_retries 0): a3 is next.
SELECT outcome FROM pgflow.nack('code_execution', 2, 'boom');
SELECT msg_id, state FROM pgflow.list_pending('code_execution') WHERE group_key = 'a';
-- A redriven dead letter goes back behind its group's live messages.
SELECT pgflow.dlq_retry('code_execution', 2::bigint);
SELECT msg_id, state FROM pgflow.list_pending('code_execution') WHERE group_key = 'a';
-- set_vt on a waiting message keeps it waiting.
SELECT msg_id FROM pgflow.set_vt('code_execution', 8, '0');
SELECT msg_id, state FROM pgflow.list_pending('code_execution') WHERE msg_id = 8;
-- It keeps its place: a3, then the redriven a2.
-- A stuck group (its head leased for an hour) holds only itself.
SELECT pgflow.send('code_execution', '{"job": "c1"}', group_key => 'c');
SELECT msg_id, message ->> 'job' AS job FROM pgflow.read('code_execution', '30 s', 10);
-- Archiving a3 makes the redriven a2 the head; pop takes each group's head and advances it too.
SELECT count(*) FROM pgflow.archive('code_execution', ARRAY[3, 5]::bigint[]);
SELECT msg_id, message ->> 'job' AS job FROM pgflow.pop('code_execution', 10);
SELECT msg_id, message ->> 'job' AS job FROM pgflow.pop('code_execution', 10);
SELECT msg_id, state, group_key FROM pgflow.list_pending('code_execution');
SELECT group_key, msg_id FROM pgflow.archive a JOIN pgflow.queue q USING (queue_id)
 WHERE q.queue_name = 'code_execution' ORDER BY msg_id;

-------------------------------------------------------------------------------------------------
-- Deduplication: a repeat of a key inside the queue's window returns the first id and
-- enqueues nothing; after the window the key is new again.
-------------------------------------------------------------------------------------------------
SELECT pgflow.create_queue('proposals', dedup_window => '10 minutes');
SELECT pgflow.send('proposals', '{"proposal_id": "p-1"}', dedup_key => 'p-1');
SELECT pgflow.send('proposals', '{"proposal_id": "p-1", "retry": true}', dedup_key => 'p-1');
SELECT pgflow.send('proposals', '{"proposal_id": "p-2"}', dedup_key => 'p-2');
SELECT msg_id, message FROM pgflow.list_pending('proposals');
-- Keys are per queue.
SELECT pgflow.send('scheduled', '{"proposal_id": "p-1"}', dedup_key => 'p-1') > 0 AS new_in_other_queue;
-- The window passes (moved back by hand here); pruning deletes the expired key.
UPDATE pgflow.dedup SET expires_at = expires_at - interval '1 hour'
 WHERE dedup_key = 'p-1' AND queue_id = (SELECT queue_id FROM pgflow.queue WHERE queue_name = 'proposals');
SELECT pgflow.send('proposals', '{"proposal_id": "p-1", "again": true}', dedup_key => 'p-1');
SELECT pgflow.prune_dedup(now => clock_timestamp() + interval '1 hour');
SELECT count(*) FROM pgflow.dedup;
SELECT pg_temp.err($$SELECT pgflow.alter_queue('proposals', dedup_window => '0')$$);

-------------------------------------------------------------------------------------------------
-- Topics: publish fans out to every queue bound to a matching pattern, once per queue.
-------------------------------------------------------------------------------------------------
SELECT pgflow.create_queue(q) FROM unnest(ARRAY['safety_instance_1', 'safety_instance_2',
                                                'safety_instance_3', 'audit_all']) q;
SELECT pgflow.bind('safety_profile.*', q) FROM unnest(ARRAY['safety_instance_1', 'safety_instance_2',
                                                            'safety_instance_3']) q;
SELECT pgflow.bind('#', 'audit_all');
SELECT pgflow.bind('safety_profile.#', 'audit_all');
SELECT pgflow.bind('#', 'audit_all') AS again;
SELECT pattern, queue_name FROM pgflow.list_bindings();
SELECT * FROM pgflow.publish('safety_profile.update', '{"max_risk": 0.2}', priority => 9);
SELECT q.queue_name, m.priority, m.message, m.headers
  FROM pgflow.message m JOIN pgflow.queue q USING (queue_id)
 WHERE q.queue_name LIKE 'safety_instance_%' OR q.queue_name = 'audit_all' ORDER BY 1;
SELECT * FROM pgflow.publish('learning_loop.completed', '{}');
SELECT pgflow.unbind('#', 'audit_all'), pgflow.unbind('#', 'audit_all') AS again;
SELECT count(*) FROM pgflow.publish('nobody.listens', '{}');
SELECT pg_temp.err($$SELECT pgflow.bind('safety..x', 'audit_all')$$);
SELECT pg_temp.err($$SELECT pgflow.bind('a.b*', 'audit_all')$$);
SELECT pg_temp.err($$SELECT pgflow.publish('a.*', '{}')$$);
SELECT pg_temp.err($$SELECT pgflow.publish(NULL, '{}')$$);
SELECT pg_temp.err($$SELECT pgflow.bind('#', 'no_such_queue')$$);
-- Dropping a queue drops its bindings.
SELECT pgflow.drop_queue('safety_instance_3');
SELECT count(*) FROM pgflow.list_bindings() WHERE queue_name = 'safety_instance_3';

-------------------------------------------------------------------------------------------------
-- read's wait: 0 or NULL does not wait; a negative wait is 22023; waiting needs READ COMMITTED.
-------------------------------------------------------------------------------------------------
SELECT count(*) FROM pgflow.read('proposals', '30 s', 10, wait => '0');
SELECT count(*) FROM pgflow.read('proposals', '30 s', 10, wait => NULL);
SELECT pg_temp.err($$SELECT pgflow.read('proposals', '30 s', 1, wait => '-1 s')$$);
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT pg_temp.err($$SELECT pgflow.read('proposals', '30 s', 1, wait => '1 s')$$);
ROLLBACK;
-- A message available at once returns at once, wait or not.
SELECT pgflow.send('proposals', '{"now": true}');
SELECT message FROM pgflow.read('proposals', '30 s', 10, wait => '1 hour');

-- Leave the database as found.
SELECT count(pgflow.drop_queue(queue_name)) FROM pgflow.list_queues();
SELECT (SELECT count(*) FROM pgflow.dedup) + (SELECT count(*) FROM pgflow.binding) AS leftovers;
