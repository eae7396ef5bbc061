-- The evolution system's services, each in a role that reaches only its own queues
-- (docs/operations.md, "Roles and grants"). Run as a superuser or a member of pgflow_admin,
-- after topology.sql. Idempotent. The roles are NOLOGIN groups: give each service a login role
-- of its own in one of them, e.g.
--   CREATE ROLE singularity_1_app LOGIN PASSWORD '...' IN ROLE singularity_1;

-- Roles (cluster-wide): the three Singularity instances share a group for the queues they all
-- use; each has its own safety-profile queue.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM (VALUES ('singularity', 'pgflow_producer'),
                                   ('singularity_1', NULL), ('singularity_2', NULL),
                                   ('singularity_3', NULL),
                                   ('centralcloud', 'pgflow_producer'),
                                   ('guardian', 'pgflow_producer'),
                                   ('learning_loop', 'pgflow_producer'),
                                   ('genesis', 'pgflow_producer')) AS v(name, also) LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r.name);
        END IF;
        IF r.also IS NOT NULL THEN
            -- Every service produces and consumes: the functions for both.
            EXECUTE format('GRANT pgflow_producer, pgflow_consumer TO %I', r.name);
        END IF;
    END LOOP;
END $$;
GRANT singularity TO singularity_1, singularity_2, singularity_3;

-- Which queues each reaches, and how.
SELECT count(*) FILTER (WHERE pgflow.grant(g.queue, g.role::regrole, g.privilege)) AS new_grants
  FROM (VALUES
    -- Instances propose changes, report metrics and patterns, and apply what was decided;
    -- they obey rollbacks and their own safety profile.
    ('proposals_for_consensus_queue',  'singularity',   'produce'),
    ('metrics_to_guardian_queue',      'singularity',   'produce'),
    ('patterns_for_aggregator_queue',  'singularity',   'produce'),
    ('consensus_results_queue',        'singularity',   'consume'),
    ('proposals_for_execution_queue',  'singularity',   'consume'),
    ('rollback_triggers_queue',        'singularity',   'consume'),
    ('safety_profiles_singularity_1',  'singularity_1', 'consume'),
    ('safety_profiles_singularity_2',  'singularity_2', 'consume'),
    ('safety_profiles_singularity_3',  'singularity_3', 'consume'),
    -- CentralCloud votes on proposals and aggregates patterns.
    ('proposals_for_consensus_queue',  'centralcloud',  'consume'),
    ('patterns_for_aggregator_queue',  'centralcloud',  'consume'),
    ('consensus_results_queue',        'centralcloud',  'produce'),
    ('proposals_for_execution_queue',  'centralcloud',  'produce'),
    -- The guardian watches metrics, sends rollbacks and broadcasts safety profiles.
    ('metrics_to_guardian_queue',      'guardian',      'consume'),
    ('rollback_triggers_queue',        'guardian',      'produce'),
    ('guardian_safety_profiles_queue', 'guardian',      'produce'),
    ('safety_profiles_singularity_1',  'guardian',      'produce'),
    ('safety_profiles_singularity_2',  'guardian',      'produce'),
    ('safety_profiles_singularity_3',  'guardian',      'produce'),
    -- The learning loop reports and asks Genesis for rule updates.
    ('learning_loop_completed_queue',  'learning_loop', 'produce'),
    ('genesis_rule_updates',           'learning_loop', 'produce'),
    ('genesis_rule_updates_results',   'learning_loop', 'consume'),
    -- Genesis runs the requests and publishes the results.
    ('genesis_rule_updates',               'genesis', 'consume'),
    ('genesis_llm_config_updates',         'genesis', 'consume'),
    ('code_execution_requests',            'genesis', 'consume'),
    ('genesis_rule_updates_results',       'genesis', 'produce'),
    ('genesis_llm_config_updates_results', 'genesis', 'produce'),
    ('code_execution_results',             'genesis', 'produce'))
    AS g(queue, role, privilege);
