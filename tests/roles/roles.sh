#!/usr/bin/env bash
# The role model over real logins (issue #14): each of the evolution system's services logs in
# over SCRAM as a role of examples/evolution/roles.sql and reaches only its own queues; a role
# outside pgflow's reaches nothing; no `_` function and no table is open to any of them;
# worker_status shows other databases only to pg_monitor; and a database owner who is not a
# superuser cannot make the worker run a function planted in public.
#
# Usage: roles.sh VERSION PORT DATADIR. PORT: a running cluster of that version with pgflow
# installed and preloaded, DATADIR its data directory (pg_hba.conf gets SCRAM lines for the
# test roles, at the top).
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

ver=$1 port=$2 dir=$3
bindir=$("$(pg_config_for "$ver")" --bindir)
db=pgflow_roles
pw='Sécret-7!'
logins="t_singularity_1 t_singularity_2 t_central t_guardian t_genesis t_ops t_monitor t_nobody t_dbowner"

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
su_sql() { as_postgres "$bindir/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "${DB:-$db}" "$@"; }
# as ROLE SQL: the SQL run by ROLE, logged in over TCP with its password; prints the result, or
# "ERROR <sqlstate>" for an error.
as() {
  local role=$1 sql=$2 out
  if out=$(PGPASSWORD=$pw "$bindir/psql" -X -q -At -v ON_ERROR_STOP=1 -v VERBOSITY=sqlstate \
             "host=127.0.0.1 port=$port dbname=$db user=$role" -c "$sql" 2>&1); then
    printf '%s\n' "$out"
  else
    printf 'ERROR %s\n' "$(sed -n 's/^.*ERROR: *\([0-9A-Z]\{5\}\).*$/\1/p' <<<"$out" | head -1)"
  fi
}
expect() {  # expect ROLE SQL WANT
  local got; got=$(as "$1" "$2")
  [ "$got" = "$3" ] || fail "$1: $2: got '$got', want '$3'"
}
expect_denied() { expect "$1" "$2" "ERROR 42501"; }

# Setup, as the superuser: the roles, a database owned by a role that is no superuser, the
# evolution system's queues and grants.
DB=postgres su_sql <<SQL
DROP DATABASE IF EXISTS $db;
DROP DATABASE IF EXISTS ${db}_other;
DO \$\$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY string_to_array('$logins', ' ') LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('DROP OWNED BY %I', r);
            EXECUTE format('DROP ROLE %I', r);
        END IF;
    END LOOP;
END \$\$;
SET password_encryption = 'scram-sha-256';
CREATE ROLE t_dbowner LOGIN PASSWORD '$pw';
CREATE DATABASE $db OWNER t_dbowner;
CREATE DATABASE ${db}_other;
SQL
DB=${db}_other su_sql -c "CREATE EXTENSION pgflow"
su_sql -c "CREATE EXTENSION pgflow" >/dev/null
su_sql -f "$ROOT/examples/evolution/topology.sql" >/dev/null
su_sql -f "$ROOT/examples/evolution/roles.sql" >/dev/null
su_sql <<SQL
SET password_encryption = 'scram-sha-256';
CREATE ROLE t_singularity_1 LOGIN PASSWORD '$pw' IN ROLE singularity_1;
CREATE ROLE t_singularity_2 LOGIN PASSWORD '$pw' IN ROLE singularity_2;
CREATE ROLE t_central LOGIN PASSWORD '$pw' IN ROLE centralcloud;
CREATE ROLE t_guardian LOGIN PASSWORD '$pw' IN ROLE guardian;
CREATE ROLE t_genesis LOGIN PASSWORD '$pw' IN ROLE genesis;
CREATE ROLE t_ops LOGIN PASSWORD '$pw' IN ROLE pgflow_admin;
CREATE ROLE t_monitor LOGIN PASSWORD '$pw' IN ROLE pg_monitor;
CREATE ROLE t_nobody LOGIN PASSWORD '$pw';
SQL
# SCRAM for the test roles, ahead of initdb's trust lines.
{ echo "host $db ${logins// /,} 127.0.0.1/32 scram-sha-256"; as_postgres cat "$dir/pg_hba.conf"; } >/tmp/pgflow-hba.$$
as_postgres cp /tmp/pgflow-hba.$$ "$dir/pg_hba.conf"; rm -f /tmp/pgflow-hba.$$
su_sql -c "SELECT pg_reload_conf()" >/dev/null
[ "$(su_sql -c "SELECT count(*) FROM pg_authid WHERE rolname LIKE 't\_%' AND rolpassword LIKE 'SCRAM-SHA-256\$%'")" = 9 ] \
  || fail "the test roles' passwords are not SCRAM verifiers"
if PGPASSWORD=wrong "$bindir/psql" -X -q -At "host=127.0.0.1 port=$port dbname=$db user=t_central" -c "SELECT 1" >/dev/null 2>&1; then
  fail "a wrong password logged in: pg_hba.conf is not asking for SCRAM"
fi
expect t_central "SELECT current_user" t_central
ok "every service logs in over SCRAM (a wrong password is refused)"

# Each service on its own queues.
expect t_singularity_1 "SELECT pgflow.send('proposals_for_consensus_queue', '{\"p\": 1}') > 0" t
expect_denied t_singularity_1 "SELECT pgflow.send('consensus_results_queue', '{}')"
expect_denied t_singularity_1 "SELECT count(*) FROM pgflow.read('proposals_for_consensus_queue')"
expect t_central "SELECT count(*) FROM pgflow.archive_read('proposals_for_consensus_queue', '{}', qty => 10)" 1
expect t_central "SELECT pgflow.send('consensus_results_queue', '{\"r\": 1}') > 0" t
expect_denied t_central "SELECT pgflow.send('rollback_triggers_queue', '{}')"
expect t_singularity_1 "SELECT count(*) FROM pgflow.read('consensus_results_queue', qty => 10)" 1
expect t_guardian "SELECT pgflow.send('rollback_triggers_queue', '{\"why\": \"x\"}') > 0" t
expect t_guardian "SELECT count(*) FROM pgflow.publish('safety_profile.bug_fixer', '{\"rate\": 0.9}')" 3
expect t_singularity_1 "SELECT count(*) FROM pgflow.read('safety_profiles_singularity_1', qty => 10)" 1
expect_denied t_singularity_1 "SELECT count(*) FROM pgflow.read('safety_profiles_singularity_2', qty => 10)"
expect t_singularity_2 "SELECT count(*) FROM pgflow.read('safety_profiles_singularity_2', qty => 10)" 1
expect_denied t_singularity_1 "SELECT pgflow.create_queue('mine')"
expect_denied t_singularity_1 "SELECT pgflow.purge_queue('consensus_results_queue')"
expect_denied t_singularity_1 "SELECT count(*) FROM pgflow.dlq_list('consensus_results_queue')"
expect_denied t_singularity_1 "SELECT pgflow.grant('consensus_results_queue', 't_singularity_1', 'produce')"
expect_denied t_guardian "SELECT count(*) FROM pgflow.publish('genesis.rule_update', '{}')"
expect t_genesis "SELECT pgflow.send('code_execution_results', '{}') > 0" t
expect_denied t_genesis "SELECT pgflow.send('code_execution_requests', '{}')"
# What each sees: its own queues only; pg_monitor and pgflow_admin every queue.
expect t_singularity_1 "SELECT string_agg(queue_name, ',' ORDER BY queue_name) FROM pgflow.list_queues()" \
  "consensus_results_queue,metrics_to_guardian_queue,patterns_for_aggregator_queue,proposals_for_consensus_queue,proposals_for_execution_queue,rollback_triggers_queue,safety_profiles_singularity_1"
expect t_singularity_1 "SELECT count(*) FROM pgflow.metrics_all()" 7
expect_denied t_singularity_1 "SELECT * FROM pgflow.metrics('code_execution_requests')"
expect t_monitor "SELECT count(*) FROM pgflow.metrics_all()" 17
expect_denied t_monitor "SELECT count(*) FROM pgflow.list_pending('rollback_triggers_queue')"
expect_denied t_monitor "SELECT count(*) FROM pgflow.read('rollback_triggers_queue')"
ok "each service reaches only its own queues, and sees only them"

# Nobody outside pgflow's roles reaches anything.
expect_denied t_nobody "SELECT pgflow.send('proposals_for_consensus_queue', '{}')"
expect_denied t_nobody "SELECT count(*) FROM pgflow.list_queues()"
ok "a role outside pgflow's roles reaches nothing"

# No table and no internal function is open to any of them; every one of them is refused on a
# direct call of _announce (a NOTIFY with any payload) and _topic_matches.
leaks=$(su_sql -c "
  SELECT string_agg(r.rolname || ' ' || x.what, ', ')
    FROM pg_roles r,
         LATERAL (SELECT p.oid::regprocedure::text AS what FROM pg_proc p
                   WHERE p.pronamespace = 'pgflow'::regnamespace AND p.proname LIKE '\_%'
                     AND has_function_privilege(r.oid, p.oid, 'EXECUTE')
                  UNION ALL
                  SELECT c.oid::regclass::text FROM pg_class c
                   WHERE c.relnamespace = 'pgflow'::regnamespace AND c.relkind IN ('r', 'S')
                     AND (has_table_privilege(r.oid, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')
                          OR (c.relkind = 'S' AND has_sequence_privilege(r.oid, c.oid, 'USAGE, UPDATE')))) x
   WHERE r.rolname LIKE 't\_%' AND r.rolname <> 't_dbowner'")
[ -z "$leaks" ] || fail "open to the test roles: $leaks"
for role in t_singularity_1 t_ops t_monitor t_nobody; do
  expect_denied "$role" "SELECT pgflow._announce(1, 'proposals_for_consensus_queue', true)"
  expect_denied "$role" "SELECT pgflow._topic_matches('#', 'a')"
  expect_denied "$role" "SELECT count(*) FROM pgflow.message"
done
ok "no table, sequence or internal function is open to any test role"

# pgflow_admin manages queues and grants; a grant takes effect at once, a revoke too.
expect t_ops "SELECT pgflow.create_queue('ops_made')" t
expect t_ops "SELECT pgflow.grant('ops_made', 'genesis', 'consume')" t
expect t_ops "SELECT pgflow.send('ops_made', '{}') > 0" t
expect t_genesis "SELECT count(*) FROM pgflow.read('ops_made')" 1
expect t_ops "SELECT pgflow.revoke('ops_made', 'genesis')" 1
expect_denied t_genesis "SELECT count(*) FROM pgflow.read('ops_made')"
expect t_ops "SELECT string_agg(queue_name || ' ' || role || ' ' || privilege, ',') FROM pgflow.list_grants('rollback_triggers_queue')" \
  "rollback_triggers_queue guardian produce,rollback_triggers_queue singularity consume"
expect t_ops "SELECT count(*) FROM pgflow.maintain()" 5
ok "pgflow_admin creates queues and grants; a revoke takes effect at once"

# worker_status: the caller's database, other databases too for pg_monitor.
workers=$(su_sql -c "SELECT count(*) FROM pgflow.worker_status()")
[ "$workers" -ge 2 ] || fail "expected workers in at least 2 databases, got $workers"
expect t_singularity_1 "SELECT string_agg(datname, ',') FROM pgflow.worker_status()" "$db"
expect t_monitor "SELECT count(*) FROM pgflow.worker_status()" "$workers"
ok "worker_status shows other databases only to pg_monitor"

# The database owner, no superuser, plants an exact-type jsonb_build_object in public (which
# it owns on 15; granted on 16+) and puts public first on the database's path, then waits for
# the worker to expire a lease (which calls jsonb_build_object in _fail).
su_sql -c "GRANT CREATE ON SCHEMA public TO t_dbowner" >/dev/null
as t_dbowner "ALTER DATABASE $db SET search_path = public, pg_catalog" >/dev/null
# The worker reads the database's settings when it connects: make it start again, and wait
# (up to 60 s on the server's clock) for the new one.
restarted=$(su_sql -c "
  CREATE TEMP TABLE old AS SELECT pid FROM pg_stat_activity
   WHERE backend_type = 'pgflow worker' AND datname = current_database();
  SELECT count(*) FROM old, pg_terminate_backend(old.pid) t WHERE t;
  DO \$\$
  BEGIN
      FOR i IN 1 .. 300 LOOP
          PERFORM pg_stat_clear_snapshot();
          EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_activity a
                             WHERE a.backend_type = 'pgflow worker' AND a.datname = current_database()
                               AND a.pid NOT IN (SELECT pid FROM old));
          PERFORM pg_sleep(0.2);
      END LOOP;
  END \$\$;
  SELECT count(*) FROM pg_stat_activity a
   WHERE a.backend_type = 'pgflow worker' AND a.datname = current_database()
     AND a.pid NOT IN (SELECT pid FROM old)")
[ "$(tail -1 <<<"$restarted")" = 1 ] || fail "the worker did not start again after ALTER DATABASE: $restarted"
out=$(as t_dbowner "
  CREATE TABLE public.shadow_calls (who text, at timestamptz DEFAULT now());
  GRANT INSERT ON public.shadow_calls TO PUBLIC;
  CREATE FUNCTION public.jsonb_build_object(text, timestamptz, text, integer, text, text)
  RETURNS jsonb LANGUAGE plpgsql AS \$f\$
  BEGIN
      INSERT INTO public.shadow_calls (who) VALUES (current_user);
      BEGIN
          EXECUTE 'ALTER ROLE t_dbowner SUPERUSER';
      EXCEPTION WHEN OTHERS THEN NULL;
      END;
      RETURN '{}';
  END \$f\$;
  SELECT 'planted'")
[ "$out" = planted ] || fail "could not plant the shadow: $out"
expect t_ops "SELECT pgflow.create_queue('escalate', max_retries => 0)" t
expect t_ops "SELECT pgflow.send('escalate', '{}') > 0" t
expect t_ops "SELECT count(*) FROM pgflow.read('escalate', vt => '1 second')" 1
# Wait (on the server's clock, up to 60 s) until the worker has dead-lettered it.
dead=$(su_sql -c "
  DO \$\$
  BEGIN
      FOR i IN 1 .. 300 LOOP
          EXIT WHEN EXISTS (SELECT 1 FROM pgflow.dead d JOIN pgflow.queue q USING (queue_id)
                             WHERE q.queue_name = 'escalate');
          PERFORM pg_sleep(0.2);
      END LOOP;
  END \$\$;
  SELECT count(*) FROM pgflow.dead d JOIN pgflow.queue q USING (queue_id) WHERE q.queue_name = 'escalate'")
[ "$dead" = 1 ] || fail "the worker did not dead-letter the expired lease (dead: $dead)"
[ "$(su_sql -c "SELECT count(*) FROM public.shadow_calls")" = 0 ] || fail "the worker called the planted function"
[ "$(su_sql -c "SELECT rolsuper FROM pg_roles WHERE rolname = 't_dbowner'")" = f ] || fail "t_dbowner became a superuser"
# The same shadow is called by the owner's own code: the test can see it when it happens.
expect t_dbowner "SELECT public.jsonb_build_object('a', now(), 'b', 1, 'c', 'd')::text" "{}"
[ "$(su_sql -c "SELECT count(*) FROM public.shadow_calls")" = 1 ] || fail "the shadow did not record its own call"
ok "a database owner's planted function is never run by the worker; it stays no superuser"

# The databases go (their workers with them: the other layers share this cluster's worker
# processes); the roles stay until the next run.
DB=postgres su_sql -c "DROP DATABASE $db" -c "DROP DATABASE ${db}_other"
echo "roles: all passed"
