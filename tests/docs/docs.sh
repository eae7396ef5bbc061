#!/usr/bin/env bash
# The docs layer, on a cluster of its own (the documents create roles, such as the evolution
# system's, that other layers of the shared cluster leave behind, and change settings with
# ALTER SYSTEM): every Rust block of the docs compiles (tests/docs/rust), then every SQL block
# of the README and docs/ runs as written (tests/docs/docs.py says how).
# Usage: docs.sh VERSION
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

ver=$1
dir=/tmp/pgflow-docs-$ver
port=$(free_port)
trap 'cluster_stop "$ver" "$dir"' EXIT
(cd "$ROOT" && cargo build -q -p pgflow-docs)
cluster_start "$ver" "$dir" "$port"
# shellcheck disable=SC2046
"$PY_PYTHON" "$ROOT/tests/docs/docs.py" "host=127.0.0.1 port=$port user=postgres dbname=postgres" \
  "$ROOT/README.md" $(ls "$ROOT"/docs/*.md | sort)
