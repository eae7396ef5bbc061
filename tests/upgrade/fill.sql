-- Fills a 0.1.0 database with every kind of state an upgrade must keep, through the 0.1.0 API:
-- queue policies, ready messages of several priorities, a delayed one, leases, a group with
-- waiting messages, a dedup key, archived and dead-lettered messages, contracts and bindings.
\set ON_ERROR_STOP 1
SELECT pgflow.create_queue('up_jobs', visibility_timeout => '45 s', max_retries => 2,
                           retry_delay => '2 s', retry_backoff => 3, retry_delay_max => '10 min',
                           retry_jitter => 0, archive_retention => '3 days', default_priority => 1,
                           dedup_window => '1 hour', notify => true);
SELECT pgflow.create_queue('up_typed',
       contract => '{"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}');
SELECT pgflow.set_contract('up_typed', '{"type": "object", "required": ["m"]}', '2', false);
SELECT pgflow.create_queue('up_dlq', max_retries => 0, retry_jitter => 0);
SELECT pgflow.bind('up.*', 'up_jobs');
SELECT pgflow.bind('up.#', 'up_typed');

-- Ids 1-20 ready (priorities 0, 1, 2), 21 delayed an hour, 22 with a dedup key, 23-25 a group.
SELECT count(*) FROM (SELECT pgflow.send('up_jobs', jsonb_build_object('n', i), priority => i % 3)
                        FROM generate_series(1, 20) i) s;
SELECT pgflow.send('up_jobs', '{"late": true}', delay => '1 hour');
SELECT pgflow.send('up_jobs', '{"dedup": 1}', dedup_key => 'k1');
SELECT count(*) FROM (SELECT pgflow.send('up_jobs', jsonb_build_object('g', i), group_key => 'grp')
                        FROM generate_series(1, 3) i) s;
-- Five leased for an hour (the highest priorities first), three archived.
SELECT count(*) FROM pgflow.read('up_jobs', '1 hour', 5);
SELECT count(*) FROM pgflow.archive('up_jobs', ARRAY(SELECT msg_id FROM pgflow.read('up_jobs', '30 s', 3)));
-- A contract-checked send, a publish to both bound queues, a dead letter.
SELECT pgflow.send('up_typed', '{"n": 1}');
SELECT count(*) FROM pgflow.publish('up.x', '{"n": 2}');
SELECT pgflow.send('up_dlq', '{"bad": 1}');
SELECT count(*) FROM pgflow.nack('up_dlq', (SELECT msg_id FROM pgflow.read('up_dlq', '30 s', 1)), 'boom');
-- Settings 0.1.0 accepted but could never apply (every maintenance round of the database
-- failed on them): the update brings them down to 0.2.0's limit. rows.sql leaves this queue
-- out (its row changes, on purpose); api.sql checks it.
-- (A 0.2.0 install refuses those: upgrade.sh gives it 100 years.) And 2147483647 retries, which
-- 0.1.0 and 0.2.0 accepted and 0.3.0 bounds at 1000 (retry_schedule filled the disk).
SELECT pgflow.create_queue('up_poison', archive_retention => '10000 years',
                           retry_delay_max => '1000000 years', max_retries => 2147483647);
