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
# cpu DIR...: CPU seconds used so far by the clusters' processes: each postmaster's own and its
# reaped children's (backends that have exited), plus its live children's.
cpu() {
  python3 - "$@" <<'PY'
import os, subprocess, sys
hz = os.sysconf("SC_CLK_TCK")
def stat(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
t = 0
for d in sys.argv[1:]:
    pm = open(f"{d}/postmaster.pid").readline().strip()
    f = stat(pm)
    t += sum(int(x) for x in f[11:15]) if f else 0
    kids = subprocess.run(["pgrep", "-P", pm], capture_output=True, text=True).stdout.split()
    for k in kids:
        f = stat(k)
        t += int(f[11]) + int(f[12]) if f else 0
print(t / hz)
PY
}
stop_all() { for d in "$base"-*; do [ -d "$d" ] && cluster_stop "$ver" "$d"; done; return 0; }
trap stop_all EXIT
[ -n "${SKIP_INSTALL:-}" ] || install_pgflow "$ver" --release

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=$ROOT/bench/results/$stamp-sharding.md
[ -n "${SMOKE:-}" ] && out=$(mktemp)
rows=() direct=""
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
  shard_dirs=(); for i in $(seq 0 $((n - 1))); do shard_dirs+=("$base-$i"); done
  c0=$(cpu "${shard_dirs[@]}"); r0=$(cpu "$base-router")
  sent=$("$bindir/pgbench" -n -h 127.0.0.1 -p "$rport" -U postgres -c $clients -j 2 -T "$secs" \
    -f "$script" postgres 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  sleep 0.5  # the postmasters reap the exited backends
  c1=$(cpu "${shard_dirs[@]}"); r1=$(cpu "$base-router")
  psql_ -p "$rport" -c "SELECT pgflow_router.fill('bench_' || q, $backlog) FROM generate_series(0, $queues - 1) q" >/dev/null
  before=$(psql_ -p "$rport" -c 'SELECT sum(a) FROM pgflow_router.archived() a')
  echo "\\set q random(0, $((queues - 1)))" > "$script"
  echo "SELECT pgflow_router.drain('bench_' || :q, 10);" >> "$script"
  c2=$(cpu "${shard_dirs[@]}"); r2=$(cpu "$base-router")
  t0=$(date +%s.%N)
  "$bindir/pgbench" -n -h 127.0.0.1 -p "$rport" -U postgres -c $clients -j 2 -T "$secs" \
    -f "$script" postgres >/dev/null 2>&1
  t1=$(date +%s.%N)
  sleep 0.5
  c3=$(cpu "${shard_dirs[@]}"); r3=$(cpu "$base-router")
  after=$(psql_ -p "$rport" -c 'SELECT sum(a) FROM pgflow_router.archived() a')
  drained=$(python3 -c "print(round(($after - $before) / ($t1 - $t0)))")
  python3 -c "import sys; sys.exit(0 if float('${sent:-0}') > 0 and $drained > 0 else 1)" \
    || die "sharding bench: nothing sent or drained with $n shards (sent/s '${sent}', drained/s $drained)"
  rows+=("$(python3 -c "
n, s, d, secs = $n, float('$sent' or 0), float('$drained'), $secs
t1 = $t1 - $t0
# messages per CPU-second of the shard servers, and the router's CPU per message
ws, wr = s * secs / max($c1 - $c0, 1e-9), ($r1 - $r0) / max(s * secs, 1) * 1e6
ds, dr = d * t1 / max($c3 - $c2, 1e-9), ($r3 - $r2) / max(d * t1, 1) * 1e6
print(f'| {n} | {s:,.0f} | {s / n:,.0f} | {ws:,.0f} | {wr:.0f} | {d:,.0f} | {d / n:,.0f} | {ds:,.0f} | {dr:.0f} |')")")
  if [ "$n" = 1 ]; then
    # The same two workloads on the one shard directly: what the router costs.
    sport=${opts#*port=}; sport=${sport%% *}
    echo "\set q random(0, $((queues - 1)))" > "$script"
    echo "SELECT pgflow.send('bench_' || :q, '{\"payload\": \"x\"}');" >> "$script"
    dsent=$("$bindir/pgbench" -n -h 127.0.0.1 -p "$sport" -U postgres -c $clients -j 2 -T "$secs" \
      -f "$script" postgres 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    psql_ -p "$rport" -c "SELECT pgflow_router.fill('bench_' || q, $backlog) FROM generate_series(0, $queues - 1) q" >/dev/null
    before=$(psql_ -p "$rport" -c 'SELECT sum(a) FROM pgflow_router.archived() a')
    echo "\set q random(0, $((queues - 1)))" > "$script"
    echo "SELECT count(*) FROM pgflow.archive('bench_' || :q, ARRAY(SELECT msg_id FROM pgflow.read('bench_' || :q, interval '30 s', 10)));" >> "$script"
    t0=$(date +%s.%N)
    "$bindir/pgbench" -n -h 127.0.0.1 -p "$sport" -U postgres -c $clients -j 2 -T "$secs" \
      -f "$script" postgres >/dev/null 2>&1
    t1=$(date +%s.%N)
    after=$(psql_ -p "$rport" -c 'SELECT sum(a) FROM pgflow_router.archived() a')
    ddrained=$(python3 -c "print(round(($after - $before) / ($t1 - $t0)))")
    direct=$(python3 -c "
s, d = float('$dsent' or 0), float('$ddrained')
print(f'| 1, no router (pgbench on the shard) | {s:,.0f} | {s:,.0f} | | | {d:,.0f} | {d:,.0f} | | |')")
  fi
  rm -f "$script"
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
  echo "Per CPU-second: messages for each second of CPU the shard servers used (all their"
  echo "processes, the workers included); if it holds as shards are added, each shard on a machine of"
  echo "its own would add its full rate. Router µs/msg: the router's CPU per message."
  echo
  echo "| shards | W1 sends/s | per shard | W1 sends per shard CPU-s | router µs/send | W3 drained/s | per shard | W3 per shard CPU-s | router µs/msg |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo "$direct"
} > "$out"
cat "$out"
