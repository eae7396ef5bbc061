#!/usr/bin/env bash
# The statistics and the Prometheus endpoint (issue #15), on a cluster of their own (the
# endpoint's address is read at server start, and one check crashes a backend):
#  - after a concurrent workload (commits, rollbacks, savepoint rollbacks, nacks, expired
#    leases, dead letters, redrives, pops, purges), metrics() from shared memory agrees with
#    metrics(exact => true), and the counters with what the clients did;
#  - the endpoint, scraped with a real HTTP client and parsed with prometheus_client's parser,
#    says the same as metrics() and as metrics_text(), and promtool's linter passes it;
#  - an alert threshold fires once and clears once (alerts(), NOTIFY, the log, the endpoint);
#  - the status page at /, loaded in headless Chromium, shows metrics()'s numbers and the alert
#    (a screenshot goes to /tmp/pgflow-out-VERSION/metrics/status-page.png);
#  - examples/prometheus/alerts.yml passes promtool check rules;
#  - bad requests get a short HTTP error and the endpoint keeps serving; a client trickling its
#    request and ten silent ones hold no scrape; of 1,100 queues in one database those up to
#    the statistics table's reserve are served, and a queue of another database still is (the
#    time is printed, not asserted); no database without pgflow is named;
#  - pgflow.metrics_databases narrows what it serves;
#  - pgflow.stats off, then on: metrics() counts rows, then agrees again after the rebuild;
#  - a crashed backend (the postmaster reinitializes shared memory): the worker rebuilds the
#    gauges from the tables, and the counters start again;
#  - restarted without shared_preload_libraries: metrics() counts rows and metrics_text()
#    refuses with 55000;
#  - on a second cluster with max_worker_processes = 4 (slots.py): databases that get no worker
#    say so in worker_status(), on the endpoint, on the status page and once in the log; the
#    page's summary, order by trouble and alerts (value, threshold, since); it fits 1280 px.
# Usage: metrics.sh VERSION. Every wait is a bounded poll on the server's own state.
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

ver=$1
bindir=$("$(pg_config_for "$ver")" --bindir)
dir=/tmp/pgflow-metrics-$ver
port=$(free_port)
mport=$(free_port)
while [ "$mport" = "$port" ]; do mport=$(free_port); done
trap 'cluster_stop "$ver" "$dir"' EXIT

cluster_start "$ver" "$dir" "$port" \
  "pgflow.metrics_listen = '127.0.0.1:$mport'" "pgflow.tick = 200ms" "max_prepared_transactions = 4" \
  "pgflow.alerts_channel = 'pgflow_alerts'"
"$PROMTOOL" check rules "$ROOT/examples/prometheus/alerts.yml"
out=/tmp/pgflow-out-$ver/metrics
rm -rf "$out"; mkdir -p "$out"
PSQL="$bindir/psql" PGPORT=$port METRICS_PORT=$mport PROMTOOL=$PROMTOOL PGDATA_DIR=$dir OUT_DIR=$out \
  "$PLOT_PYTHON" "$(dirname "$0")/check.py"

# Without the library preloaded there is no shared memory: metrics() counts rows (exact), and
# metrics_text(), which has nothing to print, says why with 55000.
as_postgres "$bindir/pg_ctl" -D "$dir" -m fast -w -t 60 -o "-c shared_preload_libraries=''" restart >/dev/null
q() { "$bindir/psql" -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d pgflow_metrics "$@"; }
depths="queue_length, visible, in_flight, delayed, waiting, archive_length, dlq_length"
got=$(q -c "SHOW shared_preload_libraries" -c "SELECT m.exact, (SELECT ($depths) FROM pgflow.metrics('work', exact => true)) = ($depths) FROM pgflow.metrics('work') m")
[ "$got" = $'\nt|t' ] || die "without preload, metrics('work') is not the exact count: '$got'"
err=$(q -c '\set VERBOSITY sqlstate' -c "SELECT pgflow.metrics_text()" 2>&1) && die "metrics_text() worked without preload"
[ "$err" = "ERROR:  55000" ] || die "without preload, metrics_text(): '$err' (want ERROR:  55000)"
echo "ok: without preload, metrics() counts rows and metrics_text() refuses with 55000"
cluster_stop "$ver" "$dir"

# A cluster whose background worker slots run out (max_worker_processes = 4), with its own
# endpoint: what a database without a worker looks like everywhere, and the status page as an
# operator's first screen (tests/metrics/slots.py).
sdir=/tmp/pgflow-slots-$ver
sport=$(free_port)
smport=$(free_port)
while [ "$smport" = "$sport" ]; do smport=$(free_port); done
trap 'cluster_stop "$ver" "$dir"; cluster_stop "$ver" "$sdir"' EXIT
# RUST_BACKTRACE in the server's environment: a failing DDL statement must not gain a Rust
# backtrace from the utility hook (slots.py checks).
CLUSTER_ENV="RUST_BACKTRACE=1" cluster_start "$ver" "$sdir" "$sport" \
  "pgflow.metrics_listen = '127.0.0.1:$smport'" "pgflow.tick = 200ms" "max_worker_processes = 4"
PSQL="$bindir/psql" PGPORT=$sport METRICS_PORT=$smport OUT_DIR=$out SERVER_LOG=$sdir/server.log \
  "$PLOT_PYTHON" "$(dirname "$0")/slots.py"
