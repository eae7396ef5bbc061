-- After ALTER EXTENSION pgflow UPDATE: the messages fill.sql left are delivered as 0.1.0 would
-- have delivered them, and the whole API works. Each DO block fails the run on a wrong answer.
\set ON_ERROR_STOP 1
DO $$
DECLARE
    got bigint[];
BEGIN
    -- The ready backlog, in priority then id order (17, 20 and 1 were archived before; 26 came
    -- from the publish).
    got := ARRAY(SELECT msg_id FROM pgflow.read('up_jobs', '30 s', 100));
    ASSERT got = '{4,7,10,13,16,19,22,23,26,3,6,9,12,15,18}', format('ready order: %s', got);
    -- archive_read archives them; the group's next message (24) became deliverable, then 25.
    got := ARRAY(SELECT msg_id FROM pgflow.archive_read('up_jobs', got, '30 s', 10));
    ASSERT got = '{24}', format('group head after archive: %s', got);
    got := ARRAY(SELECT msg_id FROM pgflow.archive_read('up_jobs', got, '30 s', 10));
    ASSERT got = '{25}', format('group next: %s', got);
    got := ARRAY(SELECT msg_id FROM pgflow.archive_read('up_jobs', got, '30 s', 10));
    ASSERT got = '{}', format('nothing left ready: %s', got);
END $$;

DO $$
DECLARE
    got bigint[];
    n bigint;
BEGIN
    -- The dedup key is still remembered (before maintain() at +2 hours prunes it): the send
    -- is a no-op returning the first id.
    ASSERT pgflow.send('up_jobs', '{"dedup": 2}', dedup_key => 'k1') = 22, 'dedup key kept';
    -- Two hours on, the 1-hour leases have run out (a failed delivery each, retried 2 s later)
    -- and the delayed message has come due.
    PERFORM pgflow.maintain(now => clock_timestamp() + interval '2 hours');
    got := ARRAY(SELECT msg_id FROM pgflow.read('up_jobs', '30 s', 10));
    ASSERT got = '{21}', format('the delayed message: %s', got);
    PERFORM pgflow.maintain(now => clock_timestamp() + interval '3 hours');
    got := ARRAY(SELECT msg_id FROM pgflow.read('up_jobs', '30 s', 10) WHERE read_ct = 2);
    ASSERT got = '{2,5,8,11,14}', format('the expired leases, delivered again: %s', got);
    SELECT count(*) INTO n FROM pgflow.archive('up_jobs', got || '{21}'::bigint[]);
    ASSERT n = 6;
    -- exact: this transaction's own changes are not in the shared-memory statistics yet.
    ASSERT (SELECT queue_length = 0 AND total_archived = 26 FROM pgflow.metrics('up_jobs', exact => true)),
           'up_jobs drained';
END $$;

DO $$
DECLARE
    st text;
BEGIN
    -- Contracts: version 1 (the default) and 2 survived.
    ASSERT (SELECT count(*) FROM pgflow.list_contracts('up_typed')) = 2, 'two contract versions';
    PERFORM pgflow.send('up_typed', '{"m": 1}', headers => '{"schema_version": "2"}');
    BEGIN
        PERFORM pgflow.send('up_typed', '{"n": "not a number"}');
        st := '00000';
    EXCEPTION WHEN OTHERS THEN
        st := SQLSTATE;
    END;
    ASSERT st = '23514', format('a payload the contract refuses: %s', st);
    -- Bindings: a publish reaches both queues.
    ASSERT (SELECT count(*) FROM pgflow.publish('up.y', '{"n": 3}')) = 2, 'publish to both bindings';
    -- The dead letter, redriven with a new id, delivered with a fresh attempt count.
    ASSERT (SELECT last_error FROM pgflow.dlq_list('up_dlq')) = 'boom', 'dead letter kept';
    ASSERT pgflow.dlq_retry('up_dlq', 1::bigint) = 2, 'redriven as id 2';
    ASSERT (SELECT read_ct FROM pgflow.read('up_dlq', '30 s', 1)) = 1, 'redrive delivered';
    -- What 0.2.0 adds works on the upgraded database too.
    ASSERT (SELECT count(*) FROM pgflow.cursor_status()) >= 1
           OR current_setting('shared_preload_libraries') NOT LIKE '%pgflow%', 'cursor status';
    PERFORM * FROM pgflow.horizon();
    ASSERT (SELECT horizon_age_sec IS NULL OR horizon_age_sec >= 0 FROM pgflow.metrics('up_typed')),
           'horizon columns';
    PERFORM * FROM pgflow.maintain();
    -- The settings 0.1.0 accepted beyond the limits came down to them.
    ASSERT (SELECT (archive_retention, retry_delay_max, max_retries) = (interval '100 years', interval '100 years', 1000)
              FROM pgflow.list_queues() WHERE queue_name = 'up_poison'), 'up_poison clamped';
    ASSERT (SELECT count(*) FROM pgflow.retry_schedule('up_poison')) = 1000, 'retry_schedule bounded';
END $$;
SELECT 'api ok';
