#!/usr/bin/env bash
# A released migration never changes (CONTRIBUTING.md, Releasing): a database that ran it would
# never see the change. `make lint` runs this; it fails when a released migration file or a
# released version's install script (kept in tests/upgrade/ for the upgrade layer) differs from
# what was released.
#
# sql/released.sha256 pins them: one "sha256  path" line per file, added when a version is
# tagged. Where the release's commit is in the clone (tests/upgrade/releases/MANIFEST names it;
# the tags need not be there), each pinned file is also compared with what that commit released.
#   released.sh           check
#   released.sh add TAG   pin the upgrade scripts that end at TAG's version (at release time)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
pins=sql/released.sha256

if [ "${1:-}" = add ]; then
  tag=$2 v=${2#v}
  for f in sql/pgflow--*--"$v".sql tests/upgrade/pgflow--"$v".sql; do
    [ -f "$f" ] || continue
    grep -q "  $f\$" "$pins" 2>/dev/null || sha256sum "$f" >>"$pins"
  done
  sort -k2 -o "$pins" "$pins"
  exit 0
fi

sha256sum --quiet -c "$pins" || die "a released migration or install script changed (sql/released.sha256): fix forward in the next release's upgrade script instead"
n=$(wc -l <"$pins")
tagged=0
while read -r _ f; do
  v=$(sed -n 's/.*--\([0-9.]*\)\.sql$/\1/p' <<<"$f")
  c=$(awk -v t="v$v" '$1 == t {print $2}' tests/upgrade/releases/MANIFEST)
  if [ -n "$c" ] && git cat-file -e "$c:$f" 2>/dev/null; then
    git diff --quiet "$c" -- "$f" || die "$f differs from what v$v released ($c)"
    tagged=$((tagged + 1))
  fi
done <"$pins"
say "released migrations unchanged ($n pinned, $tagged compared with their releases)"
