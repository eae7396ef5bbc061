#!/usr/bin/env bash
# The test suite (README command 2: `make test`), on every supported Postgres major.
#
# Per version: plain #[test]s and #[pg_test]s (cargo pgrx test), then against a throwaway
# cluster with pgflow preloaded: pg_regress golden tests, isolation specs, the upgrade from
# 0.1.0 and 0.2.0 (also through every release built from its released sources, scripts/releases.sh),
# the role model over SCRAM logins, the fuzz layer, the worker lifecycle (hot standby,
# crash) and the statistics with their Prometheus endpoint on clusters of their own, the evolution
# scenario, the end-to-end tests over real connections, the Rust, Elixir and Python clients; then the
# benchmark in smoke mode.
#
# Narrowing (CONTRIBUTING.md has examples):
#   PG="15 17"        the versions (default: all of 15 16 17 18; PG_VERSIONS is the old name)
#   LAYER=a,b         the layers: pgrx regress isolation upgrade roles docs fuzz lifecycle metrics
#                     evolution e2e rust elixir python pooling links ha sharding bench (ha and sharding
#                     need Debian's packages for Postgres 15, so they run on 15 only)
#   TEST=name         with one LAYER: one test of it (a pg_regress file or isolation spec name,
#                     a cargo test filter, or an ExUnit path such as test/consumer_test.exs:42)
#   JOBS=n            how many versions run their cluster layers at once (default 4; 1: one
#                     after the other, with the output as it comes)
#
# Where the time goes: the builds (cargo pgrx test, one per version) run one after the other,
# since the machine has two cores and they are CPU-bound; the cluster layers mostly wait (on
# servers, sockets, timeouts and the clients' own sleeps), so the versions run them side by side,
# JOBS at a time, each on its own clusters, ports and directories, its output kept in a file and
# printed whole when it ends. Every layer says how long it took.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

versions=${PG:-${PG_VERSIONS:-$PG_MAJORS}}
versions=${versions//,/ }
all_layers="pgrx regress isolation upgrade roles docs fuzz lifecycle metrics evolution e2e rust elixir python pooling links ha sharding bench"
layers=${LAYER:-$all_layers}
layers=${layers//,/ }
one=${TEST:-}
for l in $layers; do
  [[ " $all_layers " == *" $l "* ]] || die "unknown LAYER '$l' (one or more of: $all_layers)"
done
if [ -n "$one" ] && [ "$(wc -w <<<"$layers")" != 1 ]; then
  die "TEST needs exactly one LAYER (one of: $all_layers)"
fi
want() { [[ " $layers " == *" $1 "* ]]; }

parts=(build)
for v in $versions; do parts+=("pg$v"); done
want elixir && parts+=(elixir)
want python && parts+=(python)
want bench && parts+=(peers plot)
want metrics && parts+=(plot promtool chromium)
want pooling && parts+=(pooling python elixir)
want ha && parts+=(ha python)
want sharding && parts+=(sharding python)
"$ROOT/scripts/setup.sh" "${parts[@]}"

failed=()
passed=0

# Results of the layers that ran in the background (one file per version).
results=$(mktemp -d); chmod 755 "$results"
trap 'rm -rf "$results"' EXIT

run_layer() {  # run_layer NAME COMMAND...
  local name=$1 t0=$SECONDS; shift
  say "$name"
  if "$@"; then
    passed=$((passed + 1)); echo "pass $name" >>"$results/layers"
    echo "   ($name: $((SECONDS - t0)) s)" >&2
  else
    failed+=("$name"); echo "fail $name" >>"$results/layers"
    echo "   ($name: FAILED after $((SECONDS - t0)) s)" >&2
  fi
}

# pg_regress leaves regression.diffs only when a test failed.
show_diffs() { if [ -s "$1" ]; then head -200 "$1" >&2; fi; }

# The test names of a pg_regress-style directory (DIR EXT), or TEST alone.
names_in() {
  if [ -n "$one" ]; then
    [ -f "$1/$one.$2" ] || die "no test '$one' in $1"
    echo "$one"
  else
    (cd "$1" && ls ./*."$2" | sed "s|^\./||; s|\.$2\$||" | sort)
  fi
}

cluster_layers() {
  local ver=$1
  local cfg bindir pgxs dir port out dsn
  cfg=$(pg_config_for "$ver"); bindir=$($cfg --bindir)
  pgxs=$(pgxs_root "$cfg")
  dir=/tmp/pgflow-test-$ver
  port=$(free_port)
  # Prepared transactions for the horizon test (tests/e2e/tests/observe.rs). Background worker
  # slots for a worker in each database the layers keep at once (docs/operations.md, Sizing):
  # with the default 8, databases another layer left behind starve the e2e layer's workers.
  cluster_start "$ver" "$dir" "$port" "max_prepared_transactions = 8" "max_worker_processes = 24"
  trap 'cluster_stop '"$ver"' '"$dir" RETURN
  out=/tmp/pgflow-out-$ver
  rm -rf "$out"; mkdir -p "$out"; chmod 777 "$out"
  dsn="host=127.0.0.1 port=$port user=postgres dbname=postgres"

  # --use-existing makes pg_regress skip creating the database (and --load-extension).
  # The golden files pin states at chosen `now`s; the worker, running on the real clock, would
  # race them, so it is off in these two databases (the other layers run with it).
  local db
  for db in pgflow_regress pgflow_isolation; do
    as_postgres "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db"
    as_postgres "$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d "$db" \
      -c "ALTER DATABASE $db SET pgflow.enabled = off"
    as_postgres "$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d "$db" -c 'CREATE EXTENSION pgflow'
  done
  if want regress; then
    # shellcheck disable=SC2046
    run_layer "pg$ver: pg_regress" \
      "$pgxs/src/test/regress/pg_regress" --use-existing --host=127.0.0.1 --port="$port" \
        --user=postgres --bindir="$bindir" --inputdir="$ROOT/tests/pg_regress" \
        --outputdir="$out/regress" --dbname=pgflow_regress \
        $(names_in "$ROOT/tests/pg_regress/sql" sql)
    show_diffs "$out/regress/regression.diffs"
  fi

  if want isolation; then
    # shellcheck disable=SC2046
    run_layer "pg$ver: isolation" \
      "$pgxs/src/test/isolation/pg_isolation_regress" --use-existing --host=127.0.0.1 \
        --port="$port" --user=postgres --bindir="$bindir" --inputdir="$ROOT/tests/isolation" \
        --outputdir="$out/isolation" --dbname=pgflow_isolation \
        $(names_in "$ROOT/tests/isolation/specs" spec)
    show_diffs "$out/isolation/regression.diffs"
  fi

  want upgrade && run_layer "pg$ver: upgrade from 0.1.0 (rows, catalog, API)" \
    bash "$ROOT/tests/upgrade/upgrade.sh" "$ver" "$port"
  want upgrade && run_layer "pg$ver: upgrade through every release, each built from its released sources with messages in flight" \
    bash "$ROOT/tests/upgrade/from_tags.sh" "$ver"

  want roles && run_layer "pg$ver: roles and grants (SCRAM logins, planted shadow)" \
    bash "$ROOT/tests/roles/roles.sh" "$ver" "$port" "$dir"

  # Every SQL block of the README and docs/ runs as written; every Rust block of the docs
  # compiles (tests/docs/rust). The Elixir and Python blocks run in their clients' layers.
  want docs && run_layer "pg$ver: docs (every SQL block run, every Rust block compiled)" \
    bash "$ROOT/tests/docs/docs.sh" "$ver"

  want fuzz && run_layer "pg$ver: fuzz (bad input to every function, _ functions refused)" \
    bash "$ROOT/tests/fuzz/fuzz.sh" "$ver" "$port"

  want lifecycle && run_layer "pg$ver: worker lifecycle (hot standby, crash)" \
    bash "$ROOT/tests/cluster/worker_lifecycle.sh" "$ver"
  want lifecycle && run_layer "pg$ver: ids after a failover that lost acknowledged sends" \
    bash "$ROOT/tests/cluster/failover_ids.sh" "$ver"
  want lifecycle && run_layer "pg$ver: long-poll wake-ups without the worker" \
    bash "$ROOT/tests/cluster/wakeups.sh" "$ver"
  want lifecycle && run_layer "pg$ver: shared memory given back (1,500 queues in 10 databases; a swept database; a full table)" \
    bash "$ROOT/tests/cluster/leak.sh" "$ver"

  want metrics && run_layer "pg$ver: statistics and the Prometheus endpoint" \
    bash "$ROOT/tests/metrics/metrics.sh" "$ver"

  want evolution && run_layer "pg$ver: evolution scenario, Genesis runner, operator scripts" bash -c "
    set -e
    '$bindir/createdb' -h 127.0.0.1 -p $port -U postgres pgflow_evolution
    bash '$ROOT/scripts/evolution.sh' '$bindir' $port pgflow_evolution >'$out/evolution.log' 2>&1 \\
      || { tail -40 '$out/evolution.log' >&2; exit 1; }
    grep -q 'every hop checked' '$out/evolution.log'
    bash '$ROOT/tests/clients/genesis_runner.sh' '$bindir' $port pgflow_evolution
    for f in queues dlq; do
      '$bindir/psql' -X -q -h 127.0.0.1 -p $port -U postgres -d pgflow_evolution \\
        -v ON_ERROR_STOP=1 -f '$ROOT/examples/psql/'\$f.sql >/dev/null
    done
  "
  # The same system across sites (issue #29): three clusters wired by links, CentralCloud
  # killed mid-scenario.
  want evolution && run_layer "pg$ver: evolution across sites (2 instances and CentralCloud, CentralCloud killed mid-scenario)" bash -c "
    bash '$ROOT/scripts/evolution_sites.sh' $ver >'$out/evolution_sites.log' 2>&1 \\
      || { tail -60 '$out/evolution_sites.log' >&2; exit 1; }
    grep -q 'evolution across sites: every hop checked' '$out/evolution_sites.log'
    sed -n '/^== 5/,\$p' '$out/evolution_sites.log'
  "

  want e2e && run_layer "pg$ver: end-to-end tests" \
    env PGFLOW_TEST_DSN="$dsn" cargo test -q -p pgflow-e2e ${one:+-- "$one"}

  want rust && run_layer "pg$ver: Rust client crate" \
    env PGFLOW_TEST_DSN="$dsn" cargo test -q -p pgflow-client ${one:+-- "$one"}

  want elixir && run_layer "pg$ver: Elixir client" \
    bash "$ROOT/tests/clients/elixir.sh" "$bindir" "$port" "$dir" ${one:+"$one"}

  want python && run_layer "pg$ver: Python client (pytest, mypy --strict)" \
    bash "$ROOT/tests/clients/python.sh" "$dsn" ${one:+"$one"}

  want pooling && run_layer "pg$ver: the clients through PgBouncer in transaction mode" \
    bash "$ROOT/tests/cluster/pooling.sh" "$ver" "$port" "$dir"

  # Three sites on their own clusters, wired by links (logical replication): issue #29.
  want links && run_layer "pg$ver: links between sites (3 clusters: kills, an outage, refusals, roles)" \
    bash "$ROOT/tests/cluster/links.sh" "$ver"
  want links && run_layer "pg$ver: links: a network cut (site a in a network namespace, its veth pair set down)" \
    bash "$ROOT/tests/cluster/links_cut.sh" "$ver"
  if [ "$ver" -ge 17 ]; then
    want links && run_layer "pg$ver: links: the sending site's failover (failover slots, a synchronous standby promoted)" \
      bash "$ROOT/tests/cluster/links_failover.sh" "$ver"
  fi

  if [ "$ver" = 15 ]; then
    want ha && run_layer "pg$ver: failover under pg_auto_failover (monitor, primary, secondary)" \
      bash "$ROOT/tests/cluster/ha.sh"
    want ha && run_layer "pg$ver: links: the receiving site's failover under pg_auto_failover" \
      bash "$ROOT/tests/cluster/ha_links.sh"
    want sharding && run_layer "pg$ver: sharding with PL/Proxy (router, 2 shards; bench smoke)" \
      bash -c "bash '$ROOT/tests/cluster/sharding.sh' && SMOKE=1 SKIP_INSTALL=1 bash '$ROOT/bench/sharding.sh'"
  fi

  if [ ${#failed[@]} -gt 0 ] && [ -f "$dir/server.log" ]; then
    grep -E 'PANIC|TRAP|terminated by signal' "$dir/server.log" >&2 || true
  fi
  return 0
}

# The builds, one version after the other: the pgrx layer, the install, and what the cluster
# layers build, so that they find it built when they run side by side.
for ver in $versions; do
  want pgrx && run_layer "pg$ver: cargo pgrx test (#[test] + #[pg_test])" \
    bash -c "cd '$ROOT' && cargo pgrx test pg$ver ${one:+'$one'}"
  if [ -n "$(printf '%s\n' $layers | grep -vx pgrx)" ]; then
    say "pg$ver: install"
    install_pgflow "$ver"
  fi
  # The earlier releases, built from their released sources once (target/releases), for the upgrade layer.
  if want upgrade; then
    bash "$ROOT/scripts/releases.sh" build "$ver"
  fi
done
if [ -n "$(printf '%s\n' $layers | grep -vxE 'pgrx|regress|isolation|upgrade|roles|fuzz|lifecycle|metrics|links|ha|sharding|python|pooling')" ]; then
  say "building the clients, the docs' Rust blocks and the benchmark"
  (cd "$ROOT" && cargo build -q -p pgflow-client --example genesis_runner --example forward_loop && cargo build -q -p pgflow-docs \
    && cargo test -q --no-run -p pgflow-e2e -p pgflow-client \
    && { ! want bench || cargo build -q --release -p pgflow-bench; }) || true
fi

# One version's cluster layers and benchmark smoke run.
cluster_pipeline() {
  local ver=$1
  if [ -n "$(printf '%s\n' $layers | grep -vxE 'pgrx|bench')" ]; then
    cluster_layers "$ver"
  fi
  # The benchmark in smoke mode (seconds, tiny sizes), so it never rots.
  if want bench; then
    run_layer "pg$ver: bench smoke" env MODE=smoke BENCH_BUILD=debug SKIP_INSTALL=1 PG="$ver" bash "$ROOT/bench/run.sh"
  fi
}

jobs_max=${JOBS:-4}
if [ "$(wc -w <<<"$versions")" -le 1 ] || [ "$jobs_max" -le 1 ]; then
  for ver in $versions; do cluster_pipeline "$ver"; done
else
  # Side by side: each version's output goes to its own file, printed whole, in version order,
  # once that version is done; its layers' results come back through $results/layers.
  pids=()
  for ver in $versions; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || true; done
    ( failed=(); passed=0; cluster_pipeline "$ver" ) >"$results/pg$ver.log" 2>&1 &
    pids+=("$!")
  done
  i=0
  stopped=()
  for ver in $versions; do
    # A version whose pipeline stopped early (a cluster that did not start: `die`) must not
    # pass for the layers it never ran.
    status=0
    wait "${pids[$i]}" || status=$?
    i=$((i + 1))
    cat "$results/pg$ver.log"
    [ "$status" = 0 ] || stopped+=("pg$ver: its layers stopped early (exit status $status)")
  done
  while read -r status name; do
    if [ "$status" = pass ]; then passed=$((passed + 1)); else failed+=("$name"); fi
  done < <(grep -v "cargo pgrx test" "$results/layers" || true)
  failed+=("${stopped[@]}")
fi

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED layers: ${failed[*]}"
  echo "suites: ${passed} passed, ${#failed[@]} failed"
  exit 1
fi
echo "all layers (${layers// /, }) passed on Postgres ${versions// /, }"
echo "suites: ${passed} passed, 0 failed"
