#!/usr/bin/env bash
# The benchmark (README: `make bench`): pgflow, pgmq and PgQ side by side on one throwaway
# cluster with the same settings. MODE=full (the table in bench/README.md), quick (a few minutes, for
# checking a change) or smoke (seconds; `make test` runs it so the benchmark never rots).
# PG=15 by default; 16, 17 and 18 run without PgQ, which Debian packages for Postgres 15 only.
# BENCH_SETTINGS: more lines for the cluster's postgresql.conf (newline-separated), for
# diagnosis (auto_explain, say); a run with them is not comparable with one without.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

mode=${MODE:-full}
ver=${PG:-15}
build=${BENCH_BUILD:-release}
"$ROOT/scripts/setup.sh" bench "$ver"
cfg=$(pg_config_for "$ver"); bindir=$($cfg --bindir)

# SKIP_INSTALL=1: the caller installed it (make test, which runs versions side by side: two
# installs at once would share pgrx's schema generator).
if [ "${SKIP_INSTALL:-}" != 1 ]; then
  say "bench: installing pgflow ($build) into Postgres $ver"
  if [ "$build" = release ]; then install_pgflow "$ver" --release; else install_pgflow "$ver"; fi
fi
(cd "$ROOT" && cargo build -q --release -p pgflow-bench)

dir=/tmp/pgflow-bench-$ver
port=$(free_port)
# The same server settings for every system; durability on, as in production.
cluster_start "$ver" "$dir" "$port" \
  "synchronous_commit = on" "fsync = on" "shared_buffers = '1GB'" "max_wal_size = '4GB'" \
  "max_connections = 300" ${BENCH_SETTINGS:+"$BENCH_SETTINGS"}
trap 'cluster_stop "$ver" "$dir"' EXIT

psql_b() { "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"; }
as_postgres "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres bench
psql_b -d bench -c 'CREATE EXTENSION pgflow' -c 'SET client_min_messages = warning' -f "$PGMQ_SQL" >/dev/null
systems=pgflow,pgmq
if [ -f "$($cfg --sharedir)/extension/pgq.control" ]; then
  psql_b -d bench -c 'CREATE EXTENSION pgq'
  systems=pgflow,pgmq,pgq
fi

say "bench: $mode mode on Postgres $ver ($systems)"
out=$ROOT/bench/results
[ "$mode" = smoke ] && out=$(mktemp -d)
"$ROOT/target/release/pgflow-bench" \
  --dsn "host=127.0.0.1 port=$port user=postgres dbname=bench" \
  --mode "$mode" --pgbench "$bindir/pgbench" --out "$out" --systems "$systems" \
  --tables "${BENCH_TABLES:-aged}" --python "$PLOT_PYTHON" --bench-dir "$ROOT/bench" \
  ${BENCH_WORKLOADS:+--workloads "$BENCH_WORKLOADS"} | tee "$out/latest-$mode.txt"

# The links workload (issue #29, bench/links.sh): two more clusters, site a forwarding to site
# c, against a client loop. With every workload only (BENCH_WORKLOADS unset); alone:
# `bash bench/links.sh`.
if [ -z "${BENCH_WORKLOADS:-}" ]; then
  SKIP_INSTALL=1 SMOKE=$([ "$mode" = smoke ] && echo 1 || true) PG=$ver bash "$ROOT/bench/links.sh"
fi

# bench/README.md carries the latest full table, between its bench:start and bench:end markers.
if [ "$mode" = full ] && [ -z "${BENCH_WORKLOADS:-}" ]; then
  python3 - "$ROOT/bench/README.md" "$out/latest-$mode.txt" <<'PY'
import re, sys
readme, table = sys.argv[1], open(sys.argv[2]).read().strip()
text = open(readme).read()
new = re.sub(r"(<!-- bench:start -->\n).*?(\n<!-- bench:end -->)", lambda m: m.group(1) + table + m.group(2), text, flags=re.S)
open(readme, "w").write(new)
PY
  say "bench/README.md benchmark table updated"
fi
[ "$mode" = smoke ] && rm -rf "$out"
exit 0
