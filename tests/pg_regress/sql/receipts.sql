-- Lease receipts: read returns one per delivery; archive, delete, set_vt, nack and archive_read
-- check it when given, so that a stale call touches neither a later delivery of its message nor
-- another message given the same id after a failover (#17's defect: 40 of 40 messages nobody
-- had read were archived by consumers of the old primary).
\set VERBOSITY terse
CREATE FUNCTION pg_temp.err(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE stmt; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
SELECT pgflow.create_queue('votes', retry_delay => '0', retry_jitter => 0);

-------------------------------------------------------------------------------------------------
-- Two deliveries of one message get different receipts; the first one's calls are stale.
-------------------------------------------------------------------------------------------------
SELECT pgflow.send('votes', '{"vote": "yes"}') AS id \gset
SELECT receipt AS r1, read_ct FROM pgflow.read('votes', '30 s') \gset
-- The lease given back (as when it runs out): the next read is the message's second delivery.
SELECT count(*) FROM pgflow.set_vt('votes', :id, '0');
-- The first delivery's lease is gone, though nobody read the message again: its heartbeat is
-- refused (it would move the next delivery), its archive still works for it (not tried here).
SELECT pg_temp.err(format($$SELECT pgflow.set_vt('votes', %s, '60 s', receipt => %s)$$, :id, :r1));
SELECT receipt AS r2, read_ct FROM pgflow.read('votes', '30 s') \gset
SELECT :r1 <> :r2 AS receipts_differ, :read_ct AS read_ct;
-- The same delivery keeps its receipt: set_vt and list calls return the current one.
SELECT receipt = :r2 AS same, vt AS kept_vt
  FROM pgflow.set_vt('votes', :id, '60 s', receipt => :r2) \gset
SELECT :'same' AS same;
SELECT pgflow.archive('votes', :id, :r1) AS stale_archive;
SELECT * FROM pgflow.archive('votes', ARRAY[:id], ARRAY[:r1]) AS stale_batch_archive;
SELECT pgflow.delete('votes', :id, :r1) AS stale_delete;
SELECT * FROM pgflow.delete('votes', ARRAY[:id], ARRAY[:r1]) AS stale_batch_delete;
SELECT pg_temp.err(format($$SELECT pgflow.set_vt('votes', %s, '1 s', receipt => %s)$$, :id, :r1));
SELECT pg_temp.err(format($$SELECT pgflow.nack('votes', %s, 'boom', receipt => %s)$$, :id, :r1));
SELECT msg_id = :id AS still_leased, read_ct, vt = :'kept_vt' AS lease_kept
  FROM pgflow.list_pending('votes');
-- The current receipt works; a NULL element checks nothing; no receipt checks nothing.
SELECT outcome, read_ct FROM pgflow.nack('votes', :id, 'boom', receipt => :r2);
SELECT receipt AS r3 FROM pgflow.read('votes', '30 s') \gset
SELECT * FROM pgflow.archive('votes', ARRAY[:id], ARRAY[:r3]) AS archived;
SELECT pgflow.send('votes', '{"vote": "no"}') AS id \gset
SELECT count(*) FROM pgflow.read('votes', '30 s');
SELECT * FROM pgflow.delete('votes', ARRAY[:id], ARRAY[NULL::bigint]) AS deleted_unchecked;

-- Receipts pair with ids by position: swapped, neither matches; an id given twice is archived
-- once if either of its pairs matches; the arrays' bounds do not matter.
SELECT pgflow.send('votes', '{"n": 1}') AS a, pgflow.send('votes', '{"n": 2}') AS b \gset
SELECT string_agg(receipt::text, ',' ORDER BY msg_id) AS rs FROM pgflow.read('votes', '30 s', 2) \gset
SELECT split_part(:'rs', ',', 1)::bigint AS ra, split_part(:'rs', ',', 2)::bigint AS rb \gset
SELECT count(*) AS swapped FROM pgflow.archive('votes', ARRAY[:a, :b], ARRAY[:rb, :ra]);
SELECT count(*) AS swapped_deleted FROM pgflow.delete('votes', ARRAY[:a, :b], ARRAY[:rb, :ra]);
SELECT array_agg(x ORDER BY x) = ARRAY[:a]::bigint[] AS twice_once
  FROM pgflow.archive('votes', ARRAY[:a, :a], ARRAY[:rb, :ra]) x;
SELECT array_agg(x) = ARRAY[:b]::bigint[] AS odd_bounds
  FROM pgflow.archive('votes', format('[0:1]={%s,%s}', :b, :a)::bigint[],
                      format('[5:6]={%s,%s}', :rb, :ra)::bigint[]) x;

-------------------------------------------------------------------------------------------------
-- A failover that lost sends: the new primary hands the same id to another message. Simulated
-- here by removing the read message and setting the queue's sequence back, as the promoted
-- standby's sequence would be. The old lease's receipt touches nothing of the new message.
-------------------------------------------------------------------------------------------------
SELECT pgflow.send('votes', '{"proposal": "old, lost in the failover"}') AS id \gset
SELECT receipt AS old_receipt FROM pgflow.read('votes', '30 s') \gset
DELETE FROM pgflow.message m USING pgflow.queue q
 WHERE q.queue_name = 'votes' AND m.queue_id = q.queue_id AND m.msg_id = :id;
SELECT setval(msg_seq, :id - 1) > 0 AS sequence_set_back FROM pgflow.queue WHERE queue_name = 'votes';
SELECT pgflow.send('votes', '{"proposal": "new, nobody read it"}') = :id AS id_reused;
SELECT pgflow.archive('votes', :id, :old_receipt) AS stale_archive;
SELECT * FROM pgflow.archive_read('votes', ARRAY[:id], '30 s', 1, receipts => ARRAY[:old_receipt])
    \gset new_
SELECT :new_msg_id = :id AS reads_the_new_one, :new_read_ct AS read_ct,
       :new_receipt <> :old_receipt AS new_receipt, :'new_message' AS message;
SELECT pg_temp.err(format($$SELECT pgflow.set_vt('votes', %s, '1 s', receipt => %s)$$, :id, :old_receipt));
SELECT pg_temp.err(format($$SELECT pgflow.nack('votes', %s, 'x', receipt => %s)$$, :id, :old_receipt));
SELECT pgflow.delete('votes', :id, :old_receipt) AS stale_delete;
SELECT pgflow.archive('votes', :id, :new_receipt) AS current_archive;
SELECT msg_id = :id AS archived_once, message ->> 'proposal' AS proposal
  FROM pgflow.archive a JOIN pgflow.queue q USING (queue_id)
 WHERE q.queue_name = 'votes' AND a.msg_id = :id;

-------------------------------------------------------------------------------------------------
-- pop returns the receipt of the delivery it made; bad receipts arguments are 22023/22004 and
-- change nothing.
-------------------------------------------------------------------------------------------------
SELECT pgflow.send('votes', '{"n": 1}') AS id \gset
SELECT receipt IS NOT NULL AS has_receipt, read_ct FROM pgflow.pop('votes');
SELECT pgflow.send('votes', '{"n": 2}') AS id \gset
SELECT receipt AS r FROM pgflow.read('votes', '30 s') \gset
SELECT pg_temp.err(format($$SELECT pgflow.archive('votes', ARRAY[%s], ARRAY[1, 2]::bigint[])$$, :id));
SELECT pg_temp.err(format($$SELECT pgflow.archive('votes', ARRAY[%s], '{}'::bigint[])$$, :id));
SELECT pg_temp.err(format($$SELECT pgflow.delete('votes', ARRAY[%s], ARRAY[1, 2]::bigint[])$$, :id));
SELECT pg_temp.err(format($$SELECT * FROM pgflow.archive_read('votes', ARRAY[%s], receipts => ARRAY[1, 2]::bigint[])$$, :id));
SELECT pg_temp.err($$SELECT pgflow.archive('votes', NULL::bigint[], ARRAY[1]::bigint[])$$);
SELECT count(*) AS still_there FROM pgflow.list_pending('votes') WHERE msg_id = :id;
SELECT pgflow.archive('votes', :id, :r) AS archived;
SELECT pgflow.drop_queue('votes');
