#!/usr/bin/env bash
# Worker lifecycle at the cluster level, which no in-server test can reach:
#  1. on a hot standby the launcher and the Prometheus endpoint wait, the writing verbs refuse
#     with 25006 and the read-only calls work; after promotion they start and the database gets
#     its worker;
#  2. a worker killed with SIGKILL (a crash) makes the postmaster reinitialize, and the launcher
#     and the worker come back by themselves;
#  3. when the postmaster dies, the launcher and the worker exit.
# Usage: worker_lifecycle.sh VERSION. Each wait is a bounded poll on the server's own state.
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

ver=$1
bindir=$("$(pg_config_for "$ver")" --bindir)
primary=/tmp/pgflow-life-primary-$ver
standby=/tmp/pgflow-life-standby-$ver
pport=$(free_port); sport=$(free_port); mport=$(free_port)
trap 'cluster_stop "$ver" "$standby"; cluster_stop "$ver" "$primary"' EXIT

psql_at() { local port=$1; shift; as_postgres "$bindir/psql" -X -At -h 127.0.0.1 -p "$port" -U postgres "$@"; }

# poll PORT DB SQL: until SQL returns t, at most 30 s.
poll() {
  local port=$1 db=$2 sql=$3 i
  for i in $(seq 1 1500); do
    [ "$(psql_at "$port" -d "$db" -c "SELECT pg_stat_clear_snapshot(); $sql" 2>/dev/null | tail -1)" = t ] && return 0
    sleep 0.02
  done
  echo "timed out waiting for: $sql" >&2
  return 1
}

fail() { echo "FAIL: $*" >&2; exit 1; }

workers="SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pgflow%'"

cluster_start "$ver" "$primary" "$pport" "wal_level = replica" "max_wal_senders = 4"
psql_at "$pport" -d postgres -q -c "CREATE DATABASE life" 
psql_at "$pport" -d life -q -c "CREATE EXTENSION pgflow"
poll "$pport" life "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                     WHERE backend_type = 'pgflow worker' AND datname = 'life')"
echo "ok: primary has a worker for database life"

# 1. A hot standby of it.
as_postgres rm -rf "$standby"
as_postgres "$bindir/pg_basebackup" -h 127.0.0.1 -p "$pport" -U postgres -D "$standby" -R -X stream -c fast \
  2> >(grep -v "skipping special file" >&2)
{
  echo "port = $sport"
  echo "unix_socket_directories = '$standby'"
  echo "hot_standby = on"
  # The Prometheus endpoint, which must not run on a standby unless asked to.
  echo "pgflow.metrics_listen = '127.0.0.1:$mport'"
} | as_postgres tee -a "$standby/postgresql.conf" >/dev/null
as_postgres "$bindir/pg_ctl" -D "$standby" -l "$standby/server.log" -w -t 60 start >/dev/null
[ "$(psql_at "$sport" -d life -c 'SELECT pg_is_in_recovery()')" = t ] || fail "standby not in recovery"
# A change replayed after startup proves the standby has been up and streaming a while.
psql_at "$pport" -d life -q -c "SELECT pgflow.create_queue('replayed')" >/dev/null
poll "$sport" life "SELECT EXISTS (SELECT 1 FROM pgflow.queue WHERE queue_name = 'replayed')"
[ "$(psql_at "$sport" -d life -c "$workers")" = 0 ] || fail "a pgflow process runs on the hot standby"
echo "ok: no pgflow process on the hot standby"

# On the standby every writing verb refuses at once with 25006 and says to go to the primary
# (a long-poll read too: it must not wait), and the read-only calls work. A queue with a ready
# message, a dead letter and a binding, made on the primary and replayed.
psql_at "$pport" -d life -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
SELECT pgflow.create_queue('sb', max_retries => 0);
SELECT pgflow.send('sb', '{"n": 1}');
SELECT pgflow.send('sb', '{"n": 2}');
SELECT pgflow.nack('sb', msg_id, 'boom') FROM pgflow.read('sb');
SELECT pgflow.bind('sb.#', 'sb');
SQL
poll "$sport" life "SELECT EXISTS (SELECT 1 FROM pgflow.binding)"
psql_at "$sport" -d life -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL' || fail "a verb on the standby"
DO $$
DECLARE
    s text;
    msg text;
    hint text;
BEGIN
    FOREACH s IN ARRAY ARRAY[
        $q$SELECT pgflow.send('sb', '{}')$q$,
        $q$SELECT pgflow.send_batch('sb', ARRAY['{}'::jsonb])$q$,
        $q$SELECT pgflow.publish('sb.x', '{}')$q$,
        $q$SELECT * FROM pgflow.read('sb', wait => '60 s')$q$,
        $q$SELECT * FROM pgflow.archive_read('sb', ARRAY[1::bigint])$q$,
        $q$SELECT * FROM pgflow.pop('sb')$q$,
        $q$SELECT pgflow.archive('sb', 2::bigint)$q$,
        $q$SELECT pgflow.delete('sb', ARRAY[2::bigint])$q$,
        $q$SELECT pgflow.set_vt('sb', 2, '1 s')$q$,
        $q$SELECT pgflow.nack('sb', 2)$q$,
        $q$SELECT pgflow.dlq_retry('sb', 1::bigint)$q$,
        $q$SELECT pgflow.dlq_purge('sb')$q$,
        $q$SELECT pgflow.dlq_delete('sb', ARRAY[1::bigint])$q$,
        $q$SELECT pgflow.create_queue('sb2')$q$,
        $q$SELECT pgflow.alter_queue('sb', max_retries => 1)$q$,
        $q$SELECT pgflow.purge_queue('sb')$q$,
        $q$SELECT pgflow.drop_queue('sb')$q$,
        $q$SELECT pgflow.bind('x', 'sb')$q$,
        $q$SELECT pgflow.unbind('sb.#', 'sb')$q$,
        $q$SELECT pgflow.set_contract('sb', '{"type": "object"}')$q$,
        $q$SELECT pgflow.grant('sb', 'postgres', 'consume')$q$,
        $q$SELECT pgflow.stats_reset()$q$,
        $q$SELECT pgflow.stats_reset('sb')$q$,
        $q$SELECT * FROM pgflow.maintain()$q$,
        $q$SELECT pgflow.expire_leases()$q$,
        $q$SELECT pgflow.promote_delayed()$q$,
        $q$SELECT pgflow.prune_archive()$q$,
        $q$SELECT pgflow.prune_dedup()$q$,
        $q$SELECT pgflow.check_cursors()$q$
    ] LOOP
        BEGIN
            EXECUTE s;
            RAISE EXCEPTION 'no error on the standby from: %', s;
        EXCEPTION WHEN read_only_sql_transaction THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
            IF msg NOT LIKE 'this server is a standby%' OR hint NOT LIKE 'Connect to the primary%' THEN
                RAISE EXCEPTION '% gave another 25006: % (%)', s, msg, hint;
            END IF;
        END;
    END LOOP;
    -- The read-only calls, with what the primary wrote.
    ASSERT (SELECT count(*) FROM pgflow.list_queues() WHERE queue_name = 'sb') = 1;
    ASSERT (SELECT (queue_length, visible, dlq_length) = (1::bigint, 1::bigint, 1::bigint)
              FROM pgflow.metrics('sb')), 'metrics';
    ASSERT (SELECT (queue_length, dlq_length) = (1::bigint, 1::bigint)
              FROM pgflow.metrics('sb', exact => true)), 'metrics exact';
    ASSERT (SELECT count(*) FROM pgflow.metrics_all() WHERE queue_name = 'sb') = 1;
    ASSERT (SELECT msg_id FROM pgflow.list_pending('sb')) = 2, 'list_pending';
    ASSERT (SELECT last_error FROM pgflow.dlq_list('sb')) = 'boom', 'dlq_list';
    ASSERT (SELECT count(*) FROM pgflow.dlq_list_all() WHERE queue_name = 'sb') = 1;
    ASSERT (SELECT count(*) FROM pgflow.list_bindings()) = 1;
    ASSERT (SELECT count(*) FROM pgflow.list_contracts('sb')) = 0;
    ASSERT (SELECT count(*) FROM pgflow.list_grants()) >= 0;
    ASSERT (SELECT count(*) FROM pgflow.retry_schedule('sb')) = 0;
    ASSERT (SELECT count(*) FROM pgflow.horizon()) >= 0;
    ASSERT (SELECT count(*) FROM pgflow.cursor_status()) >= 0;
    ASSERT (SELECT count(*) FROM pgflow.alerts()) >= 0;
    ASSERT pgflow.metrics_text() LIKE '%pgflow_%', 'metrics_text';
    ASSERT (SELECT (state, pid IS NULL) = ('standby', true) FROM pgflow.worker_status()), 'worker_status';
END $$;
SQL
echo "ok: on the standby the writing verbs refuse with 25006 (connect to the primary), reads work"
psql_at "$pport" -d life -q -c "SELECT pgflow.drop_queue('sb')" >/dev/null
as_postgres "$bindir/pg_ctl" -D "$standby" -w promote >/dev/null
poll "$sport" life "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                     WHERE backend_type = 'pgflow worker' AND datname = 'life')"
echo "ok: after promotion the former standby runs the launcher and the worker"
poll "$sport" life "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'pgflow exporter')"
python3 - "$mport" <<'PY' || fail "the endpoint does not answer after promotion"
import sys, time, urllib.request
for _ in range(600):
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read()
        sys.exit(0 if b"pgflow_worker_up" in body else 1)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
PY
echo "ok: the endpoint, not started on the hot standby, serves after promotion"
cluster_stop "$ver" "$standby"

# A round that waits for a synchronous standby (none is connected) shows in worker_status;
# once synchronous_standby_names is emptied the round ends and what it did becomes visible.
psql_at "$pport" -d life -q -c "ALTER SYSTEM SET synchronous_standby_names = 'nobody'" \
  -c "SELECT pg_reload_conf()" >/dev/null
# Commits wait only once the checkpointer has processed the reload too (sessions see the setting
# first): until a probe commit waits (its own wait event), and is cancelled, nothing is tested.
# A commit waits only if its transaction has an xid and wrote WAL: a transactional logical
# message does both, and touches no table.
probed=
for _ in $(seq 1 1000); do
  psql_at "$pport" -d "dbname=life application_name=syncprobe" \
    -c "SELECT pg_logical_emit_message(true, 'pgflow-test', 'probe')" \
    >/dev/null 2>&1 &
  probe=$!
  while kill -0 "$probe" 2>/dev/null; do
    if [ "$(psql_at "$pport" -d life -c "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = 'syncprobe' AND wait_event = 'SyncRep'")" = 1 ]; then
      psql_at "$pport" -d life -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
                                   WHERE application_name = 'syncprobe'" >/dev/null
      probed=1
      break
    fi
    sleep 0.01
  done
  wait "$probe" || true
  [ -n "$probed" ] && break
done
[ -n "$probed" ] || fail "commits never waited for the synchronous standby"
# This session's own commits do not wait (synchronous_commit = local); the worker's do.
psql_at "$pport" -d life -q -v ON_ERROR_STOP=1 -c "SET synchronous_commit = local" \
  -c "SELECT pgflow.create_queue('syncrep')" \
  -c "SELECT pgflow.send('syncrep', '{}', delay => '100 ms')" >/dev/null
poll "$pport" life "SELECT detail LIKE '%waits for synchronous replication%' FROM pgflow.worker_status()
                     WHERE datname = 'life'"
mstate="SELECT m.state FROM pgflow.message m JOIN pgflow.queue USING (queue_id) WHERE queue_name = 'syncrep'"
[ "$(psql_at "$pport" -d life -c "$mstate")" = d ] \
  || fail "the waiting round's promotion is visible before the standby confirmed it"
psql_at "$pport" -d life -q -c "ALTER SYSTEM RESET synchronous_standby_names" \
  -c "SELECT pg_reload_conf()" >/dev/null
poll "$pport" life "SELECT state = 'r' FROM ($mstate) s"
poll "$pport" life "SELECT detail IS NULL FROM pgflow.worker_status() WHERE datname = 'life'"
psql_at "$pport" -d life -q -c "SELECT pgflow.drop_queue('syncrep')" >/dev/null
echo "ok: a round waiting for a synchronous standby shows in worker_status, and ends when released"

# A read-only primary (default_transaction_read_only, as pg_auto_failover fences a promoted
# standby until the old primary is known to be down): the worker pauses its rounds and says
# so; a writing call gets pgflow's 25006 with the reason; after the setting goes off, the
# rounds resume (a delayed message comes due and is promoted).
psql_at "$pport" -d life -q -v ON_ERROR_STOP=1 -c "SELECT pgflow.create_queue('fenced')" \
  -c "SELECT pgflow.send('fenced', '{}', delay => '100 ms')" >/dev/null
psql_at "$pport" -d life -q -c "ALTER SYSTEM SET default_transaction_read_only = on" \
  -c "SELECT pg_reload_conf()" >/dev/null
poll "$pport" life "SELECT detail LIKE 'paused: default_transaction_read_only is on%'
                     FROM pgflow.worker_status() WHERE datname = 'life'"
out=$(psql_at "$pport" -d life -v VERBOSITY=verbose -c "SELECT pgflow.send('fenced', '{}')" 2>&1 || true)
grep -q "25006: this transaction is read-only: pgflow's writing calls need a read-write transaction" <<<"$out" \
  || fail "a writing call on a read-only server: $out"
grep -q "HINT:  default_transaction_read_only is on" <<<"$out" || fail "no hint: $out"
fstate="SELECT m.state FROM pgflow.message m JOIN pgflow.queue USING (queue_id) WHERE queue_name = 'fenced'"
psql_at "$pport" -d life -q -c "ALTER SYSTEM RESET default_transaction_read_only" \
  -c "SELECT pg_reload_conf()" >/dev/null
poll "$pport" life "SELECT detail IS NULL FROM pgflow.worker_status() WHERE datname = 'life'"
poll "$pport" life "SELECT state = 'r' FROM ($fstate) s"
psql_at "$pport" -d life -q -c "SELECT pgflow.drop_queue('fenced')" >/dev/null
grep -q "pgflow: pausing rounds: default_transaction_read_only is on" "$primary/server.log" \
  || fail "the pause is not in the server log"
echo "ok: a read-only primary pauses the worker's rounds (worker_status says why), writing calls say why, and the rounds resume"

# 2. A crash under load: SIGKILL the worker while producers and consumers run; the postmaster
#    restarts everything (shared memory too: every claim cursor and due time starts over); the
#    worker comes back, and every acknowledged send is archived exactly once.
load=$(mktemp -d); chmod 777 "$load"
psql_at "$pport" -d life -q -c "SELECT pgflow.create_queue('load', retry_jitter => 0, retry_delay => '0')" >/dev/null
psql_at "$pport" -d life -c "SELECT pgflow.send_batch('load', array_fill('{}'::jsonb, ARRAY[2000]))" >"$load/acked.0"
consume() {  # until the stop file appears; errors (the crash) are retried
  while [ ! -e "$load/stop" ]; do
    psql_at "$pport" -d life -c "SELECT count(*) FROM pgflow.archive('load',
               (SELECT coalesce(array_agg(msg_id), '{}') FROM pgflow.read('load', '1 s', 10)))" \
      >/dev/null 2>&1 || sleep 0.05
  done
}
produce() {  # 300 single sends; an id is acknowledged when psql printed it
  local i
  for i in $(seq 1 300); do
    psql_at "$pport" -d life -c "SELECT pgflow.send('load', '{}')" 2>/dev/null >>"$load/acked.1" || sleep 0.05
  done
  touch "$load/produced"
}
consume & c1=$!; consume & c2=$!; consume & c3=$!; produce & p1=$!
poll "$pport" life "SELECT count(*) >= 500 FROM pgflow.archive"
pid=$(psql_at "$pport" -d life -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgflow worker' AND datname = 'life'")
[ -n "$pid" ] || fail "no worker pid"
kill -9 "$pid"
poll "$pport" life "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                     WHERE backend_type = 'pgflow worker' AND datname = 'life' AND pid <> $pid)"
grep -q "terminated by signal 9" "$primary/server.log" || fail "the kill was not seen as a crash"
echo "ok: after a crash the worker is back"
for i in $(seq 1 3000); do [ -e "$load/produced" ] && break; sleep 0.02; done
[ -e "$load/produced" ] || fail "the producer did not finish"
acked=$(cat "$load/acked.0" "$load/acked.1" | grep -E '^[0-9]+$' | paste -sd, -)
nacked=$(tr ',' '\n' <<<"$acked" | wc -l)
# Drained: nothing live, and every acknowledged id in the archive (a lease held at the crash
# comes back after its 1 s lease).
poll "$pport" life "SELECT NOT EXISTS (SELECT 1 FROM pgflow.message)
                       AND NOT EXISTS (SELECT 1 FROM unnest('{$acked}'::bigint[]) a(id)
                                        WHERE NOT EXISTS (SELECT 1 FROM pgflow.archive r WHERE r.msg_id = a.id))"
touch "$load/stop"; wait "$c1" "$c2" "$c3" "$p1"
[ "$(psql_at "$pport" -d life -c "SELECT count(*) FROM pgflow.dead")" = 0 ] || fail "dead letters after the crash"
[ "$nacked" -ge 2100 ] || fail "only $nacked sends were acknowledged"
echo "ok: under load across the crash, all $nacked acknowledged sends archived once, none left"
rm -rf "$load"

# 3. Postmaster death: the launcher and the worker exit by themselves (WL_EXIT_ON_PM_DEATH).
pids=$(psql_at "$pport" -d life -c "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE backend_type LIKE 'pgflow%'")
[ "$(wc -w <<<"$pids")" = 2 ] || fail "expected a launcher and a worker, got: $pids"
postmaster=$(head -1 "$primary/postmaster.pid")
kill -9 "$postmaster"
for i in $(seq 1 1500); do
  alive=0
  for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  sleep 0.02
done
[ $alive = 0 ] || fail "pgflow processes outlived the postmaster: $pids"
echo "ok: the launcher and the worker exit when the postmaster dies"
# The cluster is gone; nothing for the EXIT trap to stop.
as_postgres rm -f "$primary/postmaster.pid"
echo "worker lifecycle: all passed"
