#!/usr/bin/env bash
# The whole test suite, on every supported Postgres version (README command 2: `make test`).
#
# Per version: plain #[test]s and #[pg_test]s (cargo pgrx test), then against a throwaway
# cluster with pgflow preloaded: pg_regress golden tests, isolation specs, the worker lifecycle
# (hot standby, crash) on clusters of its own, the evolution scenario, and the client
# tests over real connections (Rust and Elixir); then the benchmark in smoke mode. PG_VERSIONS="15" narrows
# the run.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

"$ROOT/scripts/setup.sh"

versions=${PG_VERSIONS:-15 17 18}
failed=()
passed=0

run_layer() {  # run_layer NAME COMMAND...
  local name=$1; shift
  say "$name"
  if "$@"; then passed=$((passed + 1)); else failed+=("$name"); fi
}

# pg_regress leaves regression.diffs only when a test failed.
show_diffs() { if [ -s "$1" ]; then head -200 "$1" >&2; fi; }

regress_layers() {
  local ver=$1
  local cfg bindir pgxs regress isolation dir port
  cfg=$(pg_config_for "$ver"); bindir=$($cfg --bindir)
  pgxs=$(pgxs_root "$cfg")
  regress=$pgxs/src/test/regress/pg_regress
  isolation=$pgxs/src/test/isolation/pg_isolation_regress

  dir=/tmp/pgflow-test-$ver
  port=$(free_port)
  cluster_start "$ver" "$dir" "$port"
  trap 'cluster_stop '"$ver"' '"$dir" RETURN
  local out=/tmp/pgflow-out-$ver
  rm -rf "$out"; mkdir -p "$out"; chmod 777 "$out"

  local regress_tests isolation_tests
  regress_tests=$(cd "$ROOT/tests/pg_regress/sql" && ls ./*.sql | sed 's|^\./||; s|\.sql$||' | sort)
  isolation_tests=$(cd "$ROOT/tests/isolation/specs" && ls ./*.spec | sed 's|^\./||; s|\.spec$||' | sort)

  # --use-existing makes pg_regress skip creating the database (and --load-extension).
  # The golden files pin states at chosen `now`s; the worker, running on the real clock, would
  # race them, so it is off in these two databases (the client tests run with it).
  for db in pgflow_regress pgflow_isolation; do
    as_postgres "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db"
    as_postgres "$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d "$db" \
      -c "ALTER DATABASE $db SET pgflow.enabled = off"
    as_postgres "$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d "$db" -c 'CREATE EXTENSION pgflow'
  done
  run_layer "pg$ver: pg_regress" \
    "$regress" --use-existing --host=127.0.0.1 --port="$port" --user=postgres \
      --bindir="$bindir" --inputdir="$ROOT/tests/pg_regress" --outputdir="$out/regress" \
      --dbname=pgflow_regress $regress_tests
  show_diffs "$out/regress/regression.diffs"

  run_layer "pg$ver: isolation" \
    "$isolation" --use-existing --host=127.0.0.1 --port="$port" --user=postgres \
      --bindir="$bindir" --inputdir="$ROOT/tests/isolation" --outputdir="$out/isolation" \
      --dbname=pgflow_isolation $isolation_tests
  show_diffs "$out/isolation/regression.diffs"

  run_layer "pg$ver: worker lifecycle (hot standby, crash)" \
    bash "$ROOT/tests/cluster/worker_lifecycle.sh" "$ver"

  run_layer "pg$ver: evolution scenario, Genesis runner, operator scripts" bash -c "
    set -e
    '$bindir/createdb' -h 127.0.0.1 -p $port -U postgres pgflow_evolution
    bash '$ROOT/scripts/evolution.sh' '$bindir' $port pgflow_evolution >'$out/evolution.log' 2>&1 \\
      || { tail -40 '$out/evolution.log' >&2; exit 1; }
    grep -q 'every hop checked' '$out/evolution.log'
    bash '$ROOT/tests/cluster/genesis_runner.sh' '$bindir' $port pgflow_evolution
    for f in queues dlq; do
      '$bindir/psql' -X -q -h 127.0.0.1 -p $port -U postgres -d pgflow_evolution \\
        -v ON_ERROR_STOP=1 -f '$ROOT/examples/psql/'\$f.sql >/dev/null
    done
  "

  run_layer "pg$ver: client tests" \
    env PGFLOW_TEST_DSN="host=127.0.0.1 port=$port user=postgres dbname=postgres" \
      cargo test -q -p pgflow-client-tests

  run_layer "pg$ver: Rust client crate" \
    env PGFLOW_TEST_DSN="host=127.0.0.1 port=$port user=postgres dbname=postgres" \
      cargo test -q -p pgflow-client

  run_layer "pg$ver: Elixir client" \
    bash "$ROOT/tests/cluster/elixir_client.sh" "$bindir" "$port" "$dir"

  if [ ${#failed[@]} -gt 0 ] && [ -f "$dir/server.log" ]; then
    grep -E 'PANIC|TRAP|terminated by signal' "$dir/server.log" >&2 || true
  fi
}

for ver in $versions; do
  cfg=$(pg_config_for "$ver")
  run_layer "pg$ver: cargo pgrx test (#[test] + #[pg_test])" \
    bash -c "cd '$ROOT' && cargo pgrx test pg$ver"
  say "pg$ver: install"
  install_pgflow "$ver"
  regress_layers "$ver"
  # The benchmark in smoke mode (seconds, tiny sizes), so it never rots.
  run_layer "pg$ver: bench smoke" \
    env MODE=smoke BENCH_BUILD=debug PG="$ver" bash "$ROOT/bench/run.sh"
done

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED layers: ${failed[*]}"
  echo "suites: ${passed} passed, ${#failed[@]} failed"
  exit 1
fi
echo "all layers passed on Postgres ${versions// /, }"
echo "suites: ${passed} passed, 0 failed"
