#!/usr/bin/env bash
# The fuzz layer (issue #14); tests/fuzz/fuzz.sql has what it calls and how. Fails on an
# XX000, a SQLSTATE that docs/api.md's error table does not list, a crash, a call over 10 s, a
# change to what was stored, a canary not delivered, or an internal function an ordinary role
# may call.
#
# Usage: fuzz.sh VERSION PORT (a running cluster of that version with pgflow installed).
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

ver=$1 port=$2
bindir=$("$(pg_config_for "$ver")" --bindir)
db=pgflow_fuzz
fail() { echo "FAIL: $*" >&2; exit 1; }
q() { as_postgres "$bindir/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "${DB:-$db}" "$@"; }

DB=postgres q -c "DROP DATABASE IF EXISTS $db" -c "DROP ROLE IF EXISTS pgflow_fuzz" -c "CREATE DATABASE $db"
# The worker would race the canaries' states; the fuzz runs without it.
DB=postgres q -c "ALTER DATABASE $db SET pgflow.enabled = off"
q -c "CREATE EXTENSION pgflow"
log=/tmp/pgflow-fuzz-$ver.log
start=$(date +%s)
if ! q -f "$(dirname "$0")/fuzz.sql" >"$log" 2>&1; then
  tail -20 "$log" >&2
  last=$(q -c "SELECT fn || ' ' || arg || ' = ' || value FROM fuzz.result ORDER BY ctid DESC LIMIT 1" 2>/dev/null || true)
  fail "the fuzz run stopped (a crash, or a call over 10 s); the call after: $last"
fi
echo "ok: $(q -c "SELECT count(*) || ' calls of ' || count(DISTINCT fn) || ' functions' FROM fuzz.result") in $(( $(date +%s) - start )) s"

# The codes a user can get: the error table of docs/api.md and the Postgres codes it names;
# never XX000, which that section names only as what no input may reach.
allowed=$(sed -n '/^## Conventions and errors/,/^### Limits/p' "$ROOT/docs/api.md" \
            | grep -o '`[0-9A-Z]\{5\}`' | tr -d '`' | grep -v '^XX' | sort -u | paste -sd, -)
[ -n "$allowed" ] || fail "found no SQLSTATE in docs/api.md"
bad=$(q -c "SELECT string_agg(DISTINCT fn || ' ' || arg || ' = ' || value || ': ' || sqlstate || ' ' || message, E'\n')
              FROM fuzz.result WHERE sqlstate <> 'ok' AND sqlstate <> ALL (string_to_array('$allowed', ','))")
[ -z "$bad" ] || fail "SQLSTATEs outside docs/api.md's table ($allowed):
$bad"
echo "ok: every error is one docs/api.md lists ($(q -c "SELECT string_agg(sqlstate || ' ' || n, ', ' ORDER BY sqlstate) FROM (SELECT sqlstate, count(*) n FROM fuzz.result GROUP BY 1) s"))"

changed=$(q -c "SELECT string_agg(t, ', ') FROM fuzz.changed")
[ -z "$changed" ] || fail "stored rows changed: $changed"
want=$(seq -s, 1 20)
got=$(q -c "SELECT got FROM fuzz.canaries")
[ "$got" = "$want" ] || fail "canaries delivered: '$got', want '$want'"
echo "ok: nothing stored changed, and every canary was delivered in order"

open=$(q -c "SELECT string_agg(fn || ': ' || sqlstate, ', ') FROM fuzz.internal WHERE sqlstate <> '42501'")
[ -z "$open" ] || fail "internal functions an ordinary role may call: $open"
echo "ok: all $(q -c "SELECT count(*) FROM fuzz.internal") internal functions refuse an ordinary role (42501)"

[ -n "${FUZZ_KEEP:-}" ] || DB=postgres q -c "DROP DATABASE $db" -c "DROP ROLE pgflow_fuzz"
echo "fuzz: all passed"
