# pgflow: the two commands a new machine needs (each installs what is missing first).
#   make demo   build pgflow, start a throwaway Postgres with it preloaded, run the demo scenario
#   make test   the whole test suite on Postgres 15, 16, 17 and 18
# PG=17 make demo picks the demo's Postgres version. make test takes PG="15 17", LAYER=isolation
# and TEST=name to run a part of the suite (CONTRIBUTING.md).

.PHONY: demo demo-stop test setup lint bench bench-quick

demo:
	@bash scripts/demo.sh

demo-stop:
	@bash scripts/demo.sh stop

test:
	@bash scripts/test.sh

setup:
	@bash scripts/setup.sh test

# cargo fmt --check and clippy with warnings denied, for every crate of the workspace and every
# Postgres major (.ci/run runs it after the suite).
lint:
	@bash scripts/lint.sh

# pgflow vs pgmq vs PgQ on one throwaway cluster; the full run writes bench/results/ and the
# table in bench/README.md (about 110 minutes on 2 cores). bench-quick takes a few minutes, for checking a change.
bench:
	@MODE=full bash bench/run.sh

bench-quick:
	@MODE=quick bash bench/run.sh
