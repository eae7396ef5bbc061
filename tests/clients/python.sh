#!/usr/bin/env bash
# The Python client (clients/python): installed into the layer's venv the way a user installs
# it (pip install ./clients/python), type-checked with mypy --strict (the package and its
# tests), then its pytest suite against the cluster DSN names.
# Usage: python.sh DSN [TEST] (TEST: a pytest node id or -k expression, e.g. test_consumer.py)
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

dsn=$1
one=${2:-}
# One Python layer at a time (make test runs versions side by side): the install rewrites the
# venv's copy of the package that another run's tests import, and builds in the source tree.
mkdir -p "$ROOT/target"
exec 9>"$ROOT/target/python-layer.lock"
flock 9
cd "$ROOT/clients/python"
# No build isolation: the venv has setuptools (scripts/setup.sh python), so nothing is fetched.
"$PY_PYTHON" -m pip install -q --no-deps --no-build-isolation --force-reinstall . >/dev/null
"$PY_PYTHON" -m mypy --strict --no-incremental src/pgflow_mq tests
# The installed package, not the source tree, is what the tests import.
cd tests
if [ -n "$one" ]; then
  PGFLOW_TEST_DSN=$dsn "$PY_PYTHON" -m pytest -q -p no:cacheprovider "$one"
else
  PGFLOW_TEST_DSN=$dsn "$PY_PYTHON" -m pytest -q -p no:cacheprovider .
fi
