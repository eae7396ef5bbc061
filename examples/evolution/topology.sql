-- The queues of the evolution system (../shared/seeds/000_*), with their policies. Idempotent.
-- Every queue: 3 retries with exponential backoff from 1 s (the defaults), then the DLQ;
-- the archive (audit trail) is kept 30 days. Rollback triggers outrank everything.
SELECT q.name, pgflow.create_queue(q.name, if_not_exists => true,
                                   archive_retention => '30 days',
                                   default_priority => q.priority,
                                   visibility_timeout => q.lease) AS created
  FROM (VALUES ('proposals_for_consensus_queue',  0, interval '30 seconds'),
               ('consensus_results_queue',        0, interval '30 seconds'),
               ('proposals_for_execution_queue',  0, interval '5 minutes'),
               ('metrics_to_guardian_queue',      0, interval '30 seconds'),
               ('patterns_for_aggregator_queue',  0, interval '30 seconds'),
               ('rollback_triggers_queue',      100, interval '30 seconds'),
               ('guardian_safety_profiles_queue', 0, interval '30 seconds'),
               ('learning_loop_completed_queue',  0, interval '30 seconds'),
               -- Genesis (../shared/seeds/004_*): three request queues, each with results.
               ('genesis_rule_updates',               0, interval '30 seconds'),
               ('genesis_rule_updates_results',       0, interval '30 seconds'),
               ('genesis_llm_config_updates',         0, interval '30 seconds'),
               ('genesis_llm_config_updates_results', 0, interval '30 seconds'),
               ('code_execution_requests',            0, interval '30 seconds'),
               ('code_execution_results',             0, interval '30 seconds'),
               -- The guardian's safety profiles, broadcast: one queue per instance.
               ('safety_profiles_singularity_1',      0, interval '30 seconds'),
               ('safety_profiles_singularity_2',      0, interval '30 seconds'),
               ('safety_profiles_singularity_3',      0, interval '30 seconds'))
       AS q(name, priority, lease)
 ORDER BY q.name;

-- Broadcast: a safety profile published on topic safety_profile.<agent> reaches every instance.
SELECT pgflow.bind('safety_profile.#', q)
  FROM unnest(ARRAY['safety_profiles_singularity_1', 'safety_profiles_singularity_2',
                    'safety_profiles_singularity_3']) q;
-- Requests sent with the learning loop's results go to Genesis as rule updates too.
SELECT pgflow.bind('genesis.rule_update', 'genesis_rule_updates');
