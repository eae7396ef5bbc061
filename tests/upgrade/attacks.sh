#!/usr/bin/env bash
# The install and the update cannot be hijacked (issue #34, items 2, 3 and 6, and #33's item 9):
#  - a database owner (no superuser) who made schema pgflow before the install, with an
#    operator =(oid, regnamespace) that makes its caller's victim a superuser: CREATE EXTENSION
#    refuses with 42501 and the owner stays an ordinary role;
#  - standard_conforming_strings off for the database: CREATE EXTENSION and ALTER EXTENSION
#    UPDATE refuse with 55000; with it on in the session, the install is whole (every
#    user-facing function SECURITY DEFINER);
#  - another tool's schema called pgflow (owned by a superuser, holding a table): 42P06;
#  - role pgflow_owner with a member: 42501;
#  - from 0.1.0 and from 0.2.0, a role that kept 0.1.0's privileges (CREATE on the schema, the
#    tables) plants the operator and a trigger on pgflow.queue: ALTER EXTENSION pgflow UPDATE
#    refuses with 42501 naming the object; once they are dropped the update goes through, and
#    the role has no privilege left on the schema, its tables or its functions;
#  - the leftovers of DROP EXTENSION (the schema, per-queue sequences) do not stop a new
#    CREATE EXTENSION.
# Usage: attacks.sh VERSION PORT (a running cluster with this version of pgflow installed,
# and the old releases' scripts in the extension directory: upgrade.sh puts them there).
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

ver=$1 port=$2
bindir=$("$(pg_config_for "$ver")" --bindir)

fail() { echo "FAIL: $*" >&2; exit 1; }
# psql_as ROLE DB ARGS...: one session as ROLE (trust on loopback).
psql_as() { local who=$1 db=$2; shift 2; "$bindir/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$who" -d "$db" "$@"; }
# expect_error STATE ROLE DB SQL: the statement fails with SQLSTATE STATE; prints the message.
expect_error() {
  local state=$1 who=$2 db=$3 sql=$4 out
  if out=$(psql_as "$who" "$db" -c '\set VERBOSITY verbose' -c "$sql" 2>&1); then
    fail "$db: '$sql' as $who succeeded; expected $state"
  fi
  grep -q "ERROR:  $state:" <<<"$out" || fail "$db: '$sql' as $who: expected $state, got: $out"
  sed -n "s/^ERROR:  $state: //p" <<<"$out" | head -1
}
superuser() { psql_as postgres postgres -c "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = '$1'"; }
fresh_db() {
  "$bindir/dropdb" --if-exists -h 127.0.0.1 -p "$port" -U postgres "$1"
  "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres ${2:+-O "$2"} "$1"
  psql_as postgres "$1" -c "ALTER DATABASE $1 SET pgflow.enabled = off"
}
# The planted pair: a function that, run by a superuser, makes ROLE one, behind an operator
# whose argument types match `x = 'pgflow'::regnamespace` exactly.
plant() {
  local who=$1 db=$2
  psql_as "$who" "$db" <<SQL
CREATE FUNCTION pgflow.atk_eq(oid, regnamespace) RETURNS boolean LANGUAGE plpgsql AS \$f\$
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE 'ALTER ROLE $who SUPERUSER';
    END IF;
    RETURN \$1 OPERATOR(pg_catalog.=) \$2::oid;
END \$f\$;
CREATE OPERATOR pgflow.= (LEFTARG = oid, RIGHTARG = regnamespace, FUNCTION = pgflow.atk_eq);
SQL
}
cleanup() {
  for db in pgflow_atk_settings pgflow_atk_plain pgflow_atk_schema pgflow_atk_scs pgflow_atk_other pgflow_atk_owner pgflow_atk_0_1_0 pgflow_atk_0_2_0 pgflow_atk_again; do
    "$bindir/dropdb" --if-exists -h 127.0.0.1 -p "$port" -U postgres "$db" 2>/dev/null || true
  done
  psql_as postgres postgres -c "DROP ROLE IF EXISTS atk_dbowner" -c "DROP ROLE IF EXISTS atk_old" \
    -c "DROP ROLE IF EXISTS atk_member" >/dev/null 2>&1 || true
}
tmpd=$(mktemp -d)
trap 'cleanup; rm -rf "$tmpd"' EXIT
cleanup
psql_as postgres postgres -c "CREATE ROLE atk_dbowner LOGIN" -c "CREATE ROLE atk_old LOGIN" \
  -c "CREATE ROLE atk_member LOGIN"

# A schema made before the install by the database's owner.
fresh_db pgflow_atk_schema atk_dbowner
psql_as atk_dbowner pgflow_atk_schema -c "CREATE SCHEMA pgflow"
plant atk_dbowner pgflow_atk_schema
msg=$(expect_error 42501 postgres pgflow_atk_schema "CREATE EXTENSION pgflow")
[ "$(superuser atk_dbowner)" = f ] || fail "the database owner became superuser through its schema"
echo "ok: a schema pgflow made by the database owner is refused (42501: $msg); the owner is no superuser"

# standard_conforming_strings off, set by the database's owner.
fresh_db pgflow_atk_scs atk_dbowner
psql_as atk_dbowner pgflow_atk_scs -c "ALTER DATABASE pgflow_atk_scs SET standard_conforming_strings = off"
msg=$(expect_error 55000 postgres pgflow_atk_scs "CREATE EXTENSION pgflow")
echo "ok: CREATE EXTENSION with standard_conforming_strings off is refused (55000: $msg)"
psql_as postgres pgflow_atk_scs -c "SET standard_conforming_strings = on" -c "CREATE EXTENSION pgflow VERSION '0.2.0'"
msg=$(expect_error 55000 postgres pgflow_atk_scs "ALTER EXTENSION pgflow UPDATE")
echo "ok: ALTER EXTENSION UPDATE with it off is refused too (55000)"
psql_as postgres pgflow_atk_scs -c "SET standard_conforming_strings = on" -c "ALTER EXTENSION pgflow UPDATE" \
  -c "DROP EXTENSION pgflow" -c "CREATE EXTENSION pgflow"
got=$(psql_as postgres pgflow_atk_scs -c "SELECT count(*) FILTER (WHERE NOT p.prosecdef) FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'pgflow'::regnamespace AND left(p.proname, 1) <> '_' AND p.proname <> 'worker_status'")
[ "$got" = 0 ] || fail "with standard_conforming_strings on in the session, $got user-facing functions are not SECURITY DEFINER"
echo "ok: with it on in the session, the update and the install are whole"

# The other settings a database owner controls that could change how the script reads or runs
# (literals' styles, NULL comparison, array NULLs, function body checks, timeouts, isolation,
# path; PL/pgSQL's own settings are for superusers only): the install is object for object a
# plain one's.
fresh_db pgflow_atk_settings atk_dbowner
for setting in "DateStyle = 'SQL, DMY'" "IntervalStyle = 'sql_standard'" "TimeZone = 'Pacific/Chatham'" \
  "array_nulls = off" "transform_null_equals = on" \
  "check_function_bodies = off" "extra_float_digits = -15" \
  "lock_timeout = '1ms'" "default_transaction_isolation = 'serializable'" "search_path = 'public'" \
  "xmloption = 'document'" "row_security = off" "default_toast_compression = 'pglz'"; do
  psql_as atk_dbowner pgflow_atk_settings -c "ALTER DATABASE pgflow_atk_settings SET $setting"
done
fresh_db pgflow_atk_plain
psql_as postgres pgflow_atk_settings -c "CREATE EXTENSION pgflow"
psql_as postgres pgflow_atk_plain -c "CREATE EXTENSION pgflow"
neutral="-c IntervalStyle=postgres -c DateStyle=ISO,MDY -c TimeZone=UTC -c extra_float_digits=1"
PGOPTIONS=$neutral psql_as postgres pgflow_atk_settings -z -0 -f "$(dirname "$0")/catalog.sql" >"$tmpd/settings.catalog"
PGOPTIONS=$neutral psql_as postgres pgflow_atk_plain -z -0 -f "$(dirname "$0")/catalog.sql" >"$tmpd/plain.catalog"
cmp -s "$tmpd/settings.catalog" "$tmpd/plain.catalog" || {
  diff <(tr '\0' '\n' <"$tmpd/plain.catalog") <(tr '\0' '\n' <"$tmpd/settings.catalog") | head -20 >&2
  fail "an install under the database owner's settings differs from a plain one"; }
echo "ok: 13 settings a database owner controls leave the install identical to a plain one"

# Another tool's schema of the same name, owned by a superuser.
fresh_db pgflow_atk_other
psql_as postgres pgflow_atk_other -c "CREATE SCHEMA pgflow" -c "CREATE TABLE pgflow.flows (id int)"
msg=$(expect_error 42P06 postgres pgflow_atk_other "CREATE EXTENSION pgflow")
echo "ok: another tool's schema pgflow is not adopted (42P06: $msg)"

# pgflow_owner with a member.
fresh_db pgflow_atk_owner
psql_as postgres pgflow_atk_owner -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgflow_owner') THEN CREATE ROLE pgflow_owner NOLOGIN; END IF; END \$\$" \
  -c "GRANT pgflow_owner TO atk_member"
msg=$(expect_error 42501 postgres pgflow_atk_owner "CREATE EXTENSION pgflow")
psql_as postgres pgflow_atk_owner -c "REVOKE pgflow_owner FROM atk_member" -c "CREATE EXTENSION pgflow"
echo "ok: role pgflow_owner with a member is refused (42501: $msg), and accepted once it has none"

# A role that kept 0.1.0's privileges plants an operator and a trigger, then the update.
for from in 0.1.0 0.2.0; do
  db=pgflow_atk_${from//./_}
  fresh_db "$db"
  psql_as postgres "$db" -c "CREATE EXTENSION pgflow VERSION '$from'" \
    -c "SELECT pgflow.create_queue('atk_tenant')" -c "SELECT pgflow.send('atk_tenant', '{\"secret\": 1}')" >/dev/null
  # What 0.1.0's users granted (its create_queue needed CREATE on the schema).
  psql_as postgres "$db" -c "GRANT USAGE, CREATE ON SCHEMA pgflow TO atk_old" \
    -c "GRANT SELECT, INSERT, UPDATE, DELETE, TRIGGER ON ALL TABLES IN SCHEMA pgflow TO atk_old" \
    -c "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA pgflow TO atk_old" \
    -c "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgflow TO atk_old" -c "CREATE SCHEMA atk AUTHORIZATION atk_old"
  plant atk_old "$db"
  psql_as atk_old "$db" <<'SQL'
CREATE FUNCTION atk.atk_trg() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE 'ALTER ROLE atk_old SUPERUSER';
    END IF;
    RETURN NEW;
END $f$;
CREATE TRIGGER atk_trg BEFORE UPDATE ON pgflow.queue FOR EACH ROW EXECUTE FUNCTION atk.atk_trg();
SQL
  msg=$(expect_error 42501 postgres "$db" "ALTER EXTENSION pgflow UPDATE")
  [ "$(superuser atk_old)" = f ] || fail "from $from: the role with 0.1.0's grants became superuser during the update"
  psql_as postgres "$db" -c "DROP OPERATOR pgflow.= (oid, regnamespace)" -c "DROP FUNCTION pgflow.atk_eq(oid, regnamespace)"
  msg2=$(expect_error 42501 postgres "$db" "ALTER EXTENSION pgflow UPDATE")
  grep -q trigger <<<"$msg2" || fail "from $from: the planted trigger was not named: $msg2"
  psql_as postgres "$db" -c "DROP TRIGGER atk_trg ON pgflow.queue" -c "ALTER EXTENSION pgflow UPDATE"
  [ "$(superuser atk_old)" = f ] || fail "from $from: the role with 0.1.0's grants became superuser"
  left=$(psql_as postgres "$db" -c "SELECT concat_ws(',',
      CASE WHEN has_schema_privilege('atk_old', 'pgflow', 'CREATE') THEN 'schema create' END,
      CASE WHEN has_schema_privilege('atk_old', 'pgflow', 'USAGE') THEN 'schema usage' END,
      (SELECT string_agg(c.relname, ' ') FROM pg_class c WHERE c.relnamespace = 'pgflow'::regnamespace AND c.relkind IN ('r', 'S')
          AND (has_table_privilege('atk_old', c.oid, 'SELECT') OR has_table_privilege('atk_old', c.oid, 'UPDATE'))),
      (SELECT string_agg(p.proname, ' ') FROM pg_proc p WHERE p.pronamespace = 'pgflow'::regnamespace
          AND has_function_privilege('atk_old', p.oid, 'EXECUTE')))")
  [ -z "$left" ] || fail "from $from: after the update atk_old still has: $left"
  expect_error 42501 atk_old "$db" "SELECT * FROM pgflow.message" >/dev/null
  echo "ok: from $from, the update refuses a planted operator ($msg) and trigger ($msg2); then no privilege is left to the old role"
done

# What DROP EXTENSION leaves (the schema, per-queue sequences) is no obstacle.
fresh_db pgflow_atk_again
psql_as postgres pgflow_atk_again -c "CREATE EXTENSION pgflow" -c "SELECT pgflow.create_queue('again')" \
  -c "DROP EXTENSION pgflow" -c "CREATE EXTENSION pgflow" -c "SELECT pgflow.create_queue('again')" >/dev/null
echo "ok: CREATE EXTENSION after DROP EXTENSION (leftover schema and sequences) works"
echo "attacks on the install and the update: all refused"
