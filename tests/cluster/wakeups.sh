#!/usr/bin/env bash
# Long-poll wake-ups with the worker off (issue #30). A reader asks for 60 s; once it sleeps on
# its latch (pg_stat_activity shows wait_event_type Extension), another session does one thing
# that gives it a message; the reader must return that message within 30 s. Before, each of
# these left it asleep for its whole wait:
# - COMMIT PREPARED of a send (the prepared transaction's callbacks ran at its PREPARE);
# - a delayed send (1 s): the reader had no due time to wake for;
# - a nack's retry (1 s) of a message leased for 10 min: the reader slept until the lease's end.
# And ordering: the wake-up comes after the commit's lowering of the claim cursor is published
# (src/ipc/xact.rs), so each woken reader finds its message on its first look.
# Usage: wakeups.sh VERSION
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"
ver=$1
bindir=$("$(pg_config_for "$ver")" --bindir)
dir=/tmp/pgflow-wake-$ver
port=$(free_port)
out=$(mktemp -d)
chmod 777 "$out"
trap 'cluster_stop "$ver" "$dir"; rm -rf "$out"' EXIT
psql_db() { as_postgres "$bindir/psql" -X -At -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d wk "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
poll() {
  local sql=$1 i
  for i in $(seq 1 3000); do
    [ "$(psql_db -c "$sql" 2>/dev/null | tail -1)" = t ] && return 0
    sleep 0.02
  done
  fail "timed out waiting for: $sql"
}

cluster_start "$ver" "$dir" "$port" "max_prepared_transactions = 4"
as_postgres "$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
  -c "CREATE DATABASE wk" -c "ALTER DATABASE wk SET pgflow.enabled = off"
psql_db -c "CREATE EXTENSION pgflow" >/dev/null

# Starts a long-poll reader in the background and returns once it sleeps on its latch.
reader() {
  psql_db -c "SELECT count(*) || ' ' || (clock_timestamp() - statement_timestamp() < interval '30 s')
                FROM pgflow.read('w', '30 s', 1, wait => '60 s')" >"$out/reader" 2>&1 &
  reader_pid=$!
  poll "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = 'wk' AND wait_event_type = 'Extension'
                        AND query LIKE '%wait =>%')"
}
# The reader's answer: one message, within 30 s of its 60.
check() {
  wait "$reader_pid" || fail "$1: the reader failed: $(cat "$out/reader")"
  [ "$(cat "$out/reader")" = "1 true" ] || fail "$1: the reader returned '$(cat "$out/reader")', not '1 true' (1 message, woken)"
  echo "ok: $1 wakes a long-poll reader"
}
fresh() { psql_db -c "SELECT pgflow.drop_queue('w') FROM pgflow.queue WHERE queue_name = 'w'" \
                  -c "SELECT pgflow.create_queue('w', retry_jitter => 0)" >/dev/null; }

fresh
reader
psql_db -c "BEGIN" -c "SELECT pgflow.send('w', jsonb_build_object('n', 1))" -c "PREPARE TRANSACTION 'wk1'" >/dev/null
psql_db -c "COMMIT PREPARED 'wk1'" >/dev/null
check "COMMIT PREPARED of a send"

fresh
reader
psql_db -c "SELECT pgflow.send('w', jsonb_build_object('n', 2), delay => '1 s')" >/dev/null
check "a delayed send"

fresh
psql_db -c "SELECT pgflow.send('w', jsonb_build_object('n', 3))" \
        -c "SELECT count(*) FROM pgflow.read('w', '10 min', 1)" >/dev/null
reader
psql_db -c "SELECT n.outcome FROM pgflow.queue q JOIN pgflow.message m USING (queue_id),
                   LATERAL pgflow.nack('w', m.msg_id, 'again', retry_after => '1 s') n
             WHERE q.queue_name = 'w'" >/dev/null
check "a nack's retry coming due"

# A plain send, four readers at once: each send wakes one of them with its message.
fresh
pids=()
for i in 1 2 3 4; do
  psql_db -c "SELECT count(*) || ' ' || (clock_timestamp() - statement_timestamp() < interval '30 s')
                FROM pgflow.read('w', '30 s', 1, wait => '60 s')" >"$out/r$i" 2>&1 &
  pids+=($!)
done
poll "SELECT count(*) = 4 FROM pg_stat_activity WHERE datname = 'wk' AND wait_event_type = 'Extension'
        AND query LIKE '%wait =>%'"
for i in 1 2 3 4; do psql_db -c "SELECT pgflow.send('w', jsonb_build_object('n', $i))" >/dev/null; done
for i in 1 2 3 4; do
  wait "${pids[$((i - 1))]}" || fail "reader $i failed: $(cat "$out/r$i")"
  [ "$(cat "$out/r$i")" = "1 true" ] || fail "reader $i returned '$(cat "$out/r$i")'"
done
echo "ok: four sends wake four long-poll readers, each with a message"
