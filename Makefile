# pgflow: the two commands a new machine needs (each installs what is missing first).
#   make demo   build pgflow, start a throwaway Postgres with it preloaded, run the demo scenario
#   make test   the whole test suite on Postgres 15, 17 and 18
# PG=17 make demo picks the demo's Postgres version; PG_VERSIONS="15" make test narrows the suite.

.PHONY: demo demo-stop test setup bench bench-quick

demo:
	@bash scripts/demo.sh

demo-stop:
	@bash scripts/demo.sh stop

test:
	@bash scripts/test.sh

setup:
	@bash scripts/setup.sh

# pgflow vs pgmq vs PgQ on one throwaway cluster; the full run writes bench/results/ and the
# README table (about 80 minutes on 2 cores). bench-quick takes a few minutes, for checking a change.
bench:
	@MODE=full bash bench/run.sh

bench-quick:
	@MODE=quick bash bench/run.sh
