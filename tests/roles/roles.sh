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
# A queue the role has no grant on is, to it, a queue that does not exist (issue #34).
expect_unknown() { expect "$1" "$2" "ERROR 42704"; }

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
# Whatever happens below, the databases go at the end: their workers take background worker
# slots that the other layers sharing this cluster need.
trap 'DB=postgres su_sql -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "DROP DATABASE IF EXISTS ${db}_other WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
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
expect_unknown t_central "SELECT pgflow.send('rollback_triggers_queue', '{}')"
expect t_singularity_1 "SELECT count(*) FROM pgflow.read('consensus_results_queue', qty => 10)" 1
expect t_guardian "SELECT pgflow.send('rollback_triggers_queue', '{\"why\": \"x\"}') > 0" t
expect t_guardian "SELECT count(*) FROM pgflow.publish('safety_profile.bug_fixer', '{\"rate\": 0.9}')" 3
expect t_singularity_1 "SELECT count(*) FROM pgflow.read('safety_profiles_singularity_1', qty => 10)" 1
expect_unknown t_singularity_1 "SELECT count(*) FROM pgflow.read('safety_profiles_singularity_2', qty => 10)"
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
expect_unknown t_singularity_1 "SELECT * FROM pgflow.metrics('code_execution_requests')"
expect t_monitor "SELECT count(*) FROM pgflow.metrics_all()" 17
expect_denied t_monitor "SELECT count(*) FROM pgflow.list_pending('rollback_triggers_queue')"
expect_denied t_monitor "SELECT count(*) FROM pgflow.read('rollback_triggers_queue')"
# A queue the caller has no grant on answers as one that does not exist, with the same text.
unknown=$(as t_central "SELECT pgflow.send('no_such_queue', '{}')")
[ "$unknown" = "ERROR 42704" ] || fail "an unknown queue: $unknown"
msg() { { PGPASSWORD=$pw "$bindir/psql" -X -q -At "host=127.0.0.1 port=$port dbname=$db user=$1" -c "$2" 2>&1 || true; } | sed -n 's/^.*ERROR: *//p' | head -1; }
[ "$(msg t_central "SELECT pgflow.send('rollback_triggers_queue', '{}')")" = 'queue "rollback_triggers_queue" does not exist' ] \
  || fail "a queue without a grant does not read as a missing one"
# A publish that would reach a queue the caller may not produce to names no queue it cannot see.
out=$(msg t_guardian "SELECT count(*) FROM pgflow.publish('genesis.rule_update', '{}')")
grep -q genesis_rule_updates <<<"$out" && fail "publish named a queue the guardian cannot see: $out"
ok "each service reaches only its own queues, and sees only them; the others read as missing (42704)"

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
expect_unknown t_genesis "SELECT count(*) FROM pgflow.read('ops_made')"
expect t_ops "SELECT string_agg(queue_name || ' ' || role || ' ' || privilege, ',') FROM pgflow.list_grants('rollback_triggers_queue')" \
  "rollback_triggers_queue guardian produce,rollback_triggers_queue singularity consume"
expect t_ops "SELECT count(*) FROM pgflow.maintain()" 6
expect t_ops "SELECT pgflow.grant('ops_made', 12345, 'consume')" "ERROR 42704"
expect t_ops "SELECT pgflow.grant('ops_made', 0, 'consume')" "ERROR 42704"
ok "pgflow_admin creates queues and grants; a revoke takes effect at once; grant() refuses unknown role oids (42704)"

# A per-queue admin grant is enough for that queue's administration, without pgflow_admin.
expect t_ops "SELECT pgflow.grant('ops_made', 'genesis', 'admin')" t
expect t_genesis "SELECT count(*) FROM pgflow.dlq_list('ops_made')" 0
expect t_genesis "SELECT count(*) FROM pgflow.dlq_list_all()" 0
expect t_genesis "SELECT count(*) FROM pgflow.alter_queue('ops_made', max_retries => 5)" 1
expect t_genesis "SELECT pgflow.purge_queue('ops_made') >= 0" t
expect_denied t_genesis "SELECT count(*) FROM pgflow.dlq_list('code_execution_requests')"
expect t_genesis "SELECT count(*) FROM pgflow.alter_queue('ops_made', max_retries => 1001)" "ERROR 22023"
ok "a per-queue admin grant administers that queue (dlq_list, alter_queue, purge_queue) and no other"

# An index expression of a table a consumer owns calls pgflow; a superuser's ANALYZE (as
# autovacuum's) evaluates it as the table's owner, with the superuser's session: pgflow refuses
# every call there, so nothing is forged, listed or read (issue #34).
su_sql -c "CREATE SCHEMA atk AUTHORIZATION t_singularity_1" >/dev/null
out=$(as t_singularity_1 "
  CREATE TABLE atk.seen (what text, n bigint);
  CREATE FUNCTION atk.rec(what text, n bigint) RETURNS void LANGUAGE sql VOLATILE AS
    \$f\$ INSERT INTO atk.seen VALUES (what, n) \$f\$;
  CREATE FUNCTION atk.f(x int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS \$f\$
  BEGIN
      BEGIN PERFORM atk.rec('send', pgflow.send('rollback_triggers_queue', '{\"forged\": true}'));
      EXCEPTION WHEN OTHERS THEN PERFORM atk.rec('send refused ' || SQLSTATE, 0); END;
      BEGIN PERFORM atk.rec('pending', (SELECT count(*) FROM pgflow.list_pending('safety_profiles_singularity_2')));
      EXCEPTION WHEN OTHERS THEN PERFORM atk.rec('pending refused ' || SQLSTATE, 0); END;
      BEGIN PERFORM atk.rec('queues', (SELECT count(*) FROM pgflow.list_queues()));
      EXCEPTION WHEN OTHERS THEN PERFORM atk.rec('queues refused ' || SQLSTATE, 0); END;
      RETURN x;
  END \$f\$;
  CREATE TABLE atk.t (x int);
  INSERT INTO atk.t SELECT generate_series(1, 3);
  CREATE INDEX t_f ON atk.t (atk.f(x));
  SELECT 'planted'")
[ "$(tail -1 <<<"$out")" = planted ] || fail "could not plant the index: $out"
su_sql -c "TRUNCATE atk.seen" -c "ANALYZE atk.t" >/dev/null
forged=$(su_sql -c "SELECT count(*) FROM pgflow.message m JOIN pgflow.queue q USING (queue_id)
                     WHERE q.queue_name = 'rollback_triggers_queue' AND m.message ? 'forged'")
seen=$(su_sql -c "SELECT string_agg(DISTINCT what, ', ' ORDER BY what) FROM atk.seen")
[ "$forged" = 0 ] || fail "an index expression run by a superuser's ANALYZE forged $forged messages"
[ "$seen" = "pending refused 42501, queues refused 42501, send refused 42501" ] \
  || fail "inside ANALYZE's index expression pgflow answered: $seen"
su_sql -c "DROP SCHEMA atk CASCADE" >/dev/null
ok "an index expression run by a superuser's ANALYZE is refused (42501): nothing forged, listed or read"

# NOTIFY leaks nothing by default: a role outside pgflow listening on pgflow_alerts hears no
# alert (pgflow.alerts_channel is empty unless an administrator names a channel).
listener=$(mktemp)
sleeps=(); for i in $(seq 1 40); do sleeps+=(-c "SELECT pg_sleep(0.25)"); done
PGPASSWORD=$pw "$bindir/psql" -X -q -At "host=127.0.0.1 port=$port dbname=$db user=t_nobody" \
  -c "LISTEN pgflow_alerts" -c "LISTEN pgflow" "${sleeps[@]}" >"$listener" 2>&1 &
lpid=$!
# Once it listens (its session is past LISTEN, on the server's clock, up to 60 s).
su_sql -c "DO \$\$ BEGIN
             FOR i IN 1 .. 600 LOOP
                 PERFORM pg_stat_clear_snapshot();
                 EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_activity WHERE usename = 't_nobody' AND query LIKE '%pg_sleep%');
                 PERFORM pg_sleep(0.1);
             END LOOP;
           END \$\$" >/dev/null
su_sql -c "SELECT pgflow.alter_queue('ops_made', alert_depth => 0, notify => true)" \
       -c "SELECT pgflow.send('ops_made', '{}')" -c "SELECT * FROM pgflow._alerts_check()" >/dev/null
wait $lpid || true
heard=$(grep -c 'Asynchronous notification "pgflow_alerts"' "$listener" || true)
# The control: the queue's own NOTIFY, which its administrator turned on, is heard.
control=$(grep -c 'Asynchronous notification "pgflow" with payload "ops_made"' "$listener" || true)
rm -f "$listener"
[ "$control" -ge 1 ] || fail "the listener heard nothing at all (not even the queue's own notify)"
[ "$heard" = 0 ] || fail "an unprivileged listener heard $heard alert notifications"
ok "with pgflow.alerts_channel unset, an unprivileged LISTEN on pgflow_alerts hears no alert"

# The utility hook acts only on a command Postgres allows: a role with no privilege repeating
# DROP DATABASE (42501 every time) leaves the other database's worker alone (issue #34; before,
# each attempt stopped it).
worker_pid() {
  DB=postgres su_sql -c "SELECT pg_stat_clear_snapshot()" -c "SELECT pid FROM pg_stat_activity
                          WHERE backend_type = 'pgflow worker' AND datname = '${db}_other'" | tail -1
}
DB=postgres su_sql -c "DO \$\$ BEGIN
    FOR i IN 1 .. 300 LOOP
        PERFORM pg_stat_clear_snapshot();
        EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'pgflow worker' AND datname = '${db}_other');
        PERFORM pg_sleep(0.2);
    END LOOP; END \$\$" >/dev/null
victim=$(worker_pid)
[ -n "$victim" ] || fail "no worker in ${db}_other"
for i in $(seq 1 20); do
  expect_denied t_nobody "DROP DATABASE ${db}_other"
  expect_denied t_nobody "ALTER DATABASE ${db}_other RENAME TO stolen"
done
[ "$(worker_pid)" = "$victim" ] || fail "a refused DROP DATABASE stopped ${db}_other's worker ($victim, now $(worker_pid))"
ok "40 refused DROP/ALTER DATABASE by a role without privileges left the other database's worker running"

# The hook hands a failing statement's error on untouched: schema, table, constraint, position.
out=$(su_sql -c '\set VERBOSITY verbose' -c "CREATE TABLE public.hook_err (a int)" -c "INSERT INTO public.hook_err VALUES (-1)" \
             -c "ALTER TABLE public.hook_err ADD CONSTRAINT hook_err_pos CHECK (a > 0)" 2>&1 || true)
for field in "SCHEMA NAME:  public" "TABLE NAME:  hook_err" "CONSTRAINT NAME:  hook_err_pos" "LOCATION:  "; do
  grep -qF "$field" <<<"$out" || fail "the hook lost '$field' from a DDL error: $out"
done
grep -q "pgflow\|backtrace\|panicked" <<<"$out" && fail "the hook added to a DDL error: $out"
out=$(su_sql -c '\set VERBOSITY verbose' -c "CREATE TABLE public.hook_err2 (a no_such_type)" 2>&1 || true)
grep -q "^LINE 1: CREATE TABLE public.hook_err2 (a no_such_type)" <<<"$out" \
  || fail "the hook lost the statement position of a DDL error: $out"
su_sql -c "DROP TABLE public.hook_err" >/dev/null
ok "a failing DDL statement's error keeps its schema, table, constraint, position and location"

# horizon() shows another session's query only to a role pg_stat_activity shows it to: not to a
# pgflow_admin member (before 0.3.0 it did), but to pg_monitor.
# (application_name in the connection string: sudo does not pass PGAPPNAME on.)
as_postgres "$bindir/psql" -X -q "host=127.0.0.1 port=$port user=postgres dbname=$db application_name=pgflow_roles_holder" \
  -c "BEGIN ISOLATION LEVEL REPEATABLE READ" -c "SELECT 1" -c "SELECT pg_sleep(120) /* secret_query_text */" >/dev/null 2>&1 &
holder=$!
su_sql -c "DO \$\$ BEGIN
             FOR i IN 1 .. 600 LOOP
                 PERFORM pg_stat_clear_snapshot();
                 EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'pgflow_roles_holder'
                                      AND query LIKE '%secret_query_text%' AND backend_xmin IS NOT NULL);
                 PERFORM pg_sleep(0.1);
             END LOOP;
           END \$\$" >/dev/null
ops_sees=$(as t_ops "SELECT count(*) FROM pgflow.horizon() WHERE detail LIKE '%secret_query_text%'")
monitor_sees=$(as t_monitor "SELECT count(*) FROM pgflow.horizon() WHERE detail LIKE '%secret_query_text%'")
su_sql -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgflow_roles_holder'" >/dev/null
wait $holder || true
[ "$ops_sees" = 0 ] || fail "a pgflow_admin member read another session's query through horizon()"
[ "$monitor_sees" = 1 ] || fail "pg_monitor did not see the holder's query in horizon(): $monitor_sees"
ok "horizon() shows another session's query to pg_monitor, not to a pgflow_admin member"

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
