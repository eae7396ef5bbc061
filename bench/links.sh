#!/usr/bin/env bash
# The links workload (issue #29; bench/links.py says what it measures): two sites on one
# machine, each its own cluster with durable settings (fsync and synchronous_commit on), site a
# forwarding queue `out` over a link to site c's `inbox`. Writes bench/results/<UTC>-links.csv
# (SMOKE=1: a small backlog, results to a temporary directory).
# Usage: PG=15 bash bench/links.sh (make bench runs it after the other workloads)
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
ver=${PG:-15}
bindir=$("$(pg_config_for "$ver")" --bindir)
[ "${SKIP_INSTALL:-}" = 1 ] || { say "bench links: installing pgflow (release) into Postgres $ver"; install_pgflow "$ver" --release; }
# The client loop in Rust (clients/rust/examples/forward_loop.rs): built here in release, or
# (SMOKE=1, make test) the debug build make test made beforehand.
if [ "${SMOKE:-}" = 1 ]; then
  FORWARD_LOOP=$ROOT/target/debug/examples/forward_loop
else
  (cd "$ROOT" && cargo build -q --release -p pgflow-client --example forward_loop)
  FORWARD_LOOP=$ROOT/target/release/examples/forward_loop
fi
[ -x "$FORWARD_LOOP" ] || die "no $FORWARD_LOOP (cargo build -p pgflow-client --example forward_loop)"
export FORWARD_LOOP
a=/tmp/pgflow-blinks-$ver-a c=/tmp/pgflow-blinks-$ver-c
trap 'cluster_stop "$ver" "$a"; cluster_stop "$ver" "$c"' EXIT
aport=$(free_port)
cluster_start "$ver" "$a" "$aport" "wal_level = logical" "synchronous_commit = on" "fsync = on" \
  "shared_buffers = '512MB'" "max_wal_size = '4GB'" "wal_retrieve_retry_interval = '1s'"
cport=$(free_port)
cluster_start "$ver" "$c" "$cport" "wal_level = logical" "synchronous_commit = on" "fsync = on" \
  "shared_buffers = '512MB'" "max_wal_size = '4GB'" "wal_retrieve_retry_interval = '1s'"
psql_p() { local port=$1; shift; "$bindir/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"; }
psql_p "$cport" -c 'CREATE EXTENSION pgflow' -c "SELECT pgflow.set_site('c')" \
  -c "SELECT pgflow.create_queue('inbox')" >/dev/null
psql_p "$aport" -c 'CREATE EXTENSION pgflow' -c "SELECT pgflow.set_site('a')" \
  -c "GRANT CREATE ON DATABASE postgres TO pgflow_owner" \
  -c "SELECT pgflow.create_queue(n) FROM unnest(ARRAY['local', 'out']) n" >/dev/null
sub=$(psql_p "$aport" -c "SELECT pgflow.link_create('central', 'c')")
psql_p "$cport" -c "${sub/host=... port=... dbname=postgres user=.../host=127.0.0.1 port=$aport dbname=postgres user=postgres}"
for _ in $(seq 1 600); do
  [ "$(psql_p "$aport" -c "SELECT state FROM pgflow.links()")" = connected ] && break
  sleep 0.1
done
psql_p "$aport" -c "SELECT pgflow.forward('out', 'central', 'inbox')" >/dev/null
if [ "${SMOKE:-}" = 1 ]; then out=$(mktemp -d)/links.csv; n=5000
else out=$ROOT/bench/results/$(date -u +%Y%m%dT%H%M)-links-pg$ver.csv; n=100000; fi
say "bench links: Postgres $ver, backlog $n"
"$PY_PYTHON" -u "$ROOT/bench/links.py" "$bindir" "$aport" "$a" "$cport" "$c" "$out" "$n"
echo "wrote $out"
