#!/usr/bin/env bash
# `make lint` (and .ci/run): released migrations unchanged (scripts/released.sh), then rustfmt
# and clippy, warnings denied, over every crate of the workspace (the extension, clients/rust,
# tests/e2e, tests/docs/rust, bench) with all their targets. The
# extension is linted for Postgres 15 (the default feature) and again for 18, the one major whose
# code differs (pqsignal_be); 16 and 17 compile the same lines as 15.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
"$ROOT/scripts/setup.sh" build pg15 pg18
cd "$ROOT"
say "released migrations"
bash "$ROOT/scripts/released.sh"
say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy (workspace, pg15)"
cargo clippy -q --workspace --all-targets -- -D warnings
say "cargo clippy (extension, pg18)"
cargo clippy -q -p pgflow --all-targets --no-default-features --features pg18 -- -D warnings
say "lint passed"
