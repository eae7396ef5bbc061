#!/usr/bin/env bash
# Sharding throughput (#17): W1 (sends) and W3 (drains) through a PL/Proxy router
# (examples/sharding/router.sql) to 1, 2 and 4 pgflow servers on this machine, with pgbench
# as the load (4 clients, 16 queues placed by name). Writes bench/results/<time>-sharding.md.
#
# On a machine with few cores every shard competes for the same CPUs, so the totals cannot
# grow the way separate machines would make them: read the per-shard column, and the CPU note
# the report prints. SECONDS_PER_RUN (default 15) sets each measurement's length.
#
#   bash bench/sharding.sh        (make test runs it in smoke mode: SMOKE=1, 2 s runs, 1 and 2 shards)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib.sh"
"$ROOT/scripts/setup.sh" build pg15 sharding >/dev/null
ver=15
bindir=$("$(pg_config_for "$ver")" --bindir)
secs=${SECONDS_PER_RUN:-15}
counts="1 2 4"
if [ -n "${SMOKE:-}" ]; then secs=2; counts="1 2"; fi
clients=4 queues=16 backlog=4000
base=/tmp/pgflow-bshard
psql_() { "$bindir/psql" -X -q -At -h 127.0.0.1 -v ON_ERROR_STOP=1 -U postgres -d postgres "$@"; }
stop_all() { for d in "$base"-*; do [ -d "$d" ] && cluster_stop "$ver" "$d"; done; return 0; }
trap stop_all EXIT
[ -n "${SKIP_INSTALL:-}" ] || install_pgflow "$ver" --release

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=$ROOT/bench/results/$stamp-sharding.md
[ -n "${SMOKE:-}" ] && out=$(mktemp)
rows=()
for n in $counts; do
  stop_all
  opts=""
  for i in $(seq 0 $((n - 1))); do
    port=$(free_port)
    cluster_start "$ver" "$base-$i" "$port" "fsync = off" "synchronous_commit = off"
    psql_ -p "$port" -c 'CREATE EXTENSION pgflow'
    opts+="${opts:+, }partition_$i 'host=127.0.0.1 port=$port user=postgres dbname=postgres'"
  done
  rport=$(free_port)
  cluster_start "$ver" "$base-router" "$rport" "shared_preload_libraries = ''" "max_connections = 50"
  {
  psql_ -p "$rport" <<SQL
CREATE EXTENSION plproxy;
CREATE SERVER pgflow_shards FOREIGN DATA WRAPPER plproxy OPTIONS ($opts);
CREATE USER MAPPING FOR PUBLIC SERVER pgflow_shards;
\i $ROOT/examples/sharding/router.sql
-- The bench's own: a backlog filled on the queue's shard, and a consumer's round trip (read 10,
-- archive them) in one statement there.
CREATE FUNCTION pgflow_router.fill(queue_name text, n integer) RETURNS bigint AS \$\$
    CLUSTER 'pgflow_shards'; RUN ON hashtext(queue_name);
    SELECT count(*) FROM pgflow.send_batch(queue_name,
        ARRAY(SELECT jsonb_build_object('n', i) FROM generate_series(1, n) i));
\$\$ LANGUAGE plproxy;
CREATE FUNCTION pgflow_router.drain(queue_name text, qty integer) RETURNS bigint AS \$\$
    CLUSTER 'pgflow_shards'; RUN ON hashtext(queue_name);
    SELECT count(*) FROM pgflow.archive(queue_name,
        ARRAY(SELECT msg_id FROM pgflow.read(queue_name, interval '30 s', qty)));
\$\$ LANGUAGE plproxy;
CREATE FUNCTION pgflow_router.archived() RETURNS SETOF bigint AS \$\$
    CLUSTER 'pgflow_shards'; RUN ON ALL;
    SELECT coalesce(sum(archived), 0)::bigint FROM pgflow.metrics_all(exact => true);
\$\$ LANGUAGE plproxy;
SELECT pgflow_router.create_queue('bench_' || q) FROM generate_series(0, $queues - 1) q;
SQL
  } >/dev/null
  script=$(mktemp)
  echo "\\set q random(0, $((queues - 1)))" > "$script"
  echo "SELECT pgflow_router.send('bench_' || :q, '{\"payload\": \"x\"}');" >> "$script"
  sent=$("$bindir/pgbench" -n -h 127.0.0.1 -p "$rport" -U postgres -c $clients -j 2 -T "$secs" \
    -f "$script" postgres 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  psql_ -p "$rport" -c "SELECT pgflow_router.fill('bench_' || q, $backlog) FROM generate_series(0, $queues - 1) q" >/dev/null
  before=$(psql_ -p "$rport" -c 'SELECT sum(a) FROM pgflow_router.archived() a')
  echo "\\set q random(0, $((queues - 1)))" > "$script"
  echo "SELECT pgflow_router.drain('bench_' || :q, 10);" >> "$script"
  t0=$(date +%s.%N)
  "$bindir/pgbench" -n -h 127.0.0.1 -p "$rport" -U postgres -c $clients -j 2 -T "$secs" \
    -f "$script" postgres >/dev/null 2>&1
  t1=$(date +%s.%N)
  after=$(psql_ -p "$rport" -c 'SELECT sum(a) FROM pgflow_router.archived() a')
  drained=$(python3 -c "print(round(($after - $before) / ($t1 - $t0)))")
  rm -f "$script"
  rows+=("$(python3 -c "
n, s, d = $n, float('$sent' or 0), float('$drained')
print(f'| {n} | {s:,.0f} | {s / n:,.0f} | {d:,.0f} | {d / n:,.0f} |')")")
done
stop_all
{
  echo "# Sharding through PL/Proxy: W1 sends and W3 drains ($stamp)"
  echo
  echo "Postgres 15, pgflow $(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -1), $clients pgbench clients through one router, $queues queues placed by name,"
  echo "$secs s per measurement, W3 reads 10 and archives them in one statement on the shard."
  echo "All shards run on this machine: $(nproc) cores, so the shards share the same CPUs and the"
  echo "totals are CPU-bound; the per-shard columns show what each server does."
  echo
  echo "| shards | W1 sends/s | per shard | W3 messages drained/s | per shard |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} > "$out"
cat "$out"
