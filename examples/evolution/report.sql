-- The end of the scenario: what each worker did, every queue's metrics, and checks that fail
-- loudly if any hop lost, duplicated or misrouted a message.
\set ON_ERROR_STOP on
\set QUIET on
\pset footer off
\echo '== 8. results: who ran what'
SELECT regexp_replace(message->>'output', '.*\(worker (\d+)\)', '\1') AS worker, count(*) AS jobs,
       string_agg(message->>'id', ', ' ORDER BY msg_id) AS requests
  FROM pgflow.message m JOIN pgflow.queue q USING (queue_id)
 WHERE q.queue_name = 'code_execution_results' GROUP BY 1 ORDER BY 1;
\echo '== final metrics of every queue'
SELECT queue_name, queue_length, visible, in_flight, delayed, waiting, dlq_length, total_messages,
       total_archived
  FROM pgflow.metrics_all();

DO $$
DECLARE
    bad text := '';
BEGIN
    IF (SELECT count(*) FROM pgflow.archive a JOIN pgflow.queue q USING (queue_id)
         WHERE q.queue_name = 'code_execution_requests') <> 12 THEN
        bad := bad || ' requests not all archived;';
    END IF;
    IF (SELECT count(DISTINCT message->>'id') FROM pgflow.message m JOIN pgflow.queue q USING (queue_id)
         WHERE q.queue_name = 'code_execution_results') <> 12
       OR (SELECT count(*) FROM pgflow.message m JOIN pgflow.queue q USING (queue_id)
            WHERE q.queue_name = 'code_execution_results') <> 12 THEN
        bad := bad || ' results missing or duplicated;';
    END IF;
    IF (SELECT sum(dlq_length) FROM pgflow.metrics_all()) <> 0 THEN
        bad := bad || ' dead letters left;';
    END IF;
    IF (SELECT sum(queue_length) FROM pgflow.metrics_all()
         WHERE queue_name NOT IN ('code_execution_results', 'genesis_rule_updates_results',
                                  'genesis_llm_config_updates_results')) <> 0 THEN
        bad := bad || ' messages left in request queues;';
    END IF;
    IF (SELECT total_archived FROM pgflow.metrics('patterns_for_aggregator_queue')) <> 1 THEN
        bad := bad || ' the redriven pattern was not archived once;';
    END IF;
    IF (SELECT count(*) FROM pgflow.archive a JOIN pgflow.queue q USING (queue_id)
         WHERE q.queue_name LIKE 'safety_profiles_singularity_%') <> 3 THEN
        bad := bad || ' the safety profile did not reach all 3 instances;';
    END IF;
    IF (SELECT count(*) FROM pgflow.message m JOIN pgflow.queue q USING (queue_id)
         WHERE q.queue_name IN ('genesis_rule_updates_results', 'genesis_llm_config_updates_results')
           AND m.message->>'status' = 'applied') <> 2 THEN
        bad := bad || ' Genesis did not publish one result per rule and LLM-config update;';
    END IF;
    IF bad <> '' THEN
        RAISE EXCEPTION 'evolution scenario check failed:%', bad;
    END IF;
    RAISE NOTICE 'evolution scenario: every hop checked, nothing lost, nothing duplicated';
END $$;
