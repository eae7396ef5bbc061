-- One Genesis job runner worker (scripts/evolution.sh starts 4 at once): lease a request for
-- 30 s, run the analysis, publish the result and archive the request in one transaction,
-- until the queue stays empty for 200 ms. psql -v worker=N names it.
\set ON_ERROR_STOP on
SET client_min_messages = notice;
SELECT set_config('genesis.worker', :'worker', false) IS NOT NULL AS ok \gset
DO $$
DECLARE
    m record;
    n integer := 0;
    t0 timestamptz;
BEGIN
    LOOP
        -- Long-poll: woken by a new request's commit; gives up after 200 ms of nothing.
        SELECT * INTO m FROM pgflow.read('code_execution_requests', '30 s', 1, wait => '200 ms');
        EXIT WHEN NOT FOUND;
        t0 := clock_timestamp();
        -- "Analysis": a stand-in that derives a score and an issue count from the code.
        PERFORM pgflow.send('code_execution_results', jsonb_build_object(
            'type', 'code_execution_result', 'id', m.message->>'id', 'status', 'succeeded',
            'output', (m.message->>'analysis_type') || ' ok (worker ' || current_setting('genesis.worker') || ')',
            'metrics', jsonb_build_object(
                'execution_ms', round(extract(epoch FROM clock_timestamp() - t0) * 1000, 3),
                'quality_score', 5 + length(m.message->>'code') % 5,
                'issues_count', length(m.message->>'code') % 3),
            'timestamp', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')));
        PERFORM pgflow.archive('code_execution_requests', m.msg_id);
        COMMIT;
        n := n + 1;
    END LOOP;
    RAISE NOTICE 'genesis worker % handled % requests', current_setting('genesis.worker'), n;
END $$;
