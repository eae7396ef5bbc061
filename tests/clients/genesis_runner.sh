#!/usr/bin/env bash
# The Rust Genesis job runner (clients/rust/examples/genesis_runner.rs) on a database where the
# evolution scenario ran: 8 new requests, the runner drains them with 4 handlers, SIGTERM stops
# it cleanly (exit 0), and every request has exactly one result.
# Usage: genesis_runner.sh BINDIR PORT DBNAME
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
bindir=$1 port=$2 db=$3
q() { "$bindir/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d "$db" -v ON_ERROR_STOP=1 -c "$1"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

(cd "$ROOT" && cargo build -q -p pgflow-client --example genesis_runner)
log=$(mktemp); trap 'rm -f "$log"' EXIT
before=$(q "SELECT count(*) FROM pgflow.message m JOIN pgflow.queue q USING (queue_id)
             WHERE q.queue_name = 'code_execution_results'")
q "SELECT count(pgflow.send('code_execution_requests', jsonb_build_object(
     'type', 'code_execution_request', 'id', 'rust_' || i, 'code', 'fn main() {}',
     'language', 'rust', 'analysis_type', 'quality'))) FROM generate_series(1, 8) i" >/dev/null

PGFLOW_DSN="host=127.0.0.1 port=$port user=postgres dbname=$db" \
  "$ROOT/target/debug/examples/genesis_runner" 2>"$log" &
runner=$!
# Wait (bounded) until the runner has drained the requests: archived, not just leased.
for _ in $(seq 1 1500); do
  [ "$(q "SELECT queue_length FROM pgflow.metrics('code_execution_requests')")" = 0 ] && break
  sleep 0.02
done
kill -TERM "$runner"
wait "$runner" || fail "the runner did not exit cleanly on SIGTERM: $(cat "$log")"
grep -q "done, 8 archived" "$log" || fail "$(cat "$log")"
after=$(q "SELECT count(DISTINCT message->>'id') FROM pgflow.message m JOIN pgflow.queue q USING (queue_id)
            WHERE q.queue_name = 'code_execution_results' AND message->>'id' LIKE 'rust_%'")
[ "$after" = 8 ] || fail "expected 8 distinct rust_ results, got $after"
total=$(q "SELECT count(*) FROM pgflow.message m JOIN pgflow.queue q USING (queue_id)
            WHERE q.queue_name = 'code_execution_results'")
[ "$total" = $((before + 8)) ] || fail "results duplicated: $before before, $total after"
echo "genesis runner: 8 requests, 8 results, clean SIGTERM"
