#!/usr/bin/env bash
# Earlier releases, built from their git tags, for the upgrade layer (tests/upgrade/from_tags.sh).
#   releases.sh build VERSION   build every tagged release for Postgres VERSION (once: a release
#                               already built from the same commit is kept)
#   releases.sh dir TAG VERSION print the directory holding TAG's pgflow.so and install script
#                               for VERSION; exit 2 when TAG was not released for VERSION
#
# Each tag's tree comes from `git archive` (no work tree is touched) and is built with
# `cargo pgrx package --debug` against VERSION's pg_config, in a target directory of its own
# (target/releases/build), so that nothing of the current build's artifacts is overwritten.
# The library goes to target/releases/TAG/pgVERSION/pgflow.so, written under a temporary name and
# renamed, so a server that has the old file loaded keeps it. A release is loaded from there by
# `dynamic_library_path` (pgflow's control file names the module 'pgflow', no directory), never
# installed over the current one.
#
# Tags come with a clone (git clone fetches them); the releases are the tags v0.1.0, v0.2.0, ...
# below the version in Cargo.toml.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

base=$ROOT/target/releases

# The tagged releases before the current version, oldest first.
releases() {
  local cur; cur=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
  git -C "$ROOT" tag --list 'v[0-9]*.[0-9]*.[0-9]*' | sort -V | while read -r t; do
    [ "$(printf '%s\n%s\n' "${t#v}" "$cur" | sort -V | head -1)" = "${t#v}" ] && [ "${t#v}" != "$cur" ] && echo "$t"
  done
}

released_for() {  # released_for TAG VERSION: whether TAG's Cargo.toml has the pgVERSION feature
  git -C "$ROOT" show "$1:Cargo.toml" | grep -q "^pg$2 = "
}

build_one() {  # build_one TAG VERSION
  local tag=$1 ver=$2 out=$base/$1/pg$2
  local commit; commit=$(git -C "$ROOT" rev-parse "$tag^{commit}")
  if [ -f "$out/pgflow.so" ] && [ "$(cat "$out/commit" 2>/dev/null)" = "$commit" ]; then
    return 0
  fi
  say "building release $tag for Postgres $ver (from its tag, once)"
  local src=$base/src/$tag pkg=$base/pkg/$tag-pg$ver
  rm -rf "$src" "$pkg"
  mkdir -p "$src" "$out"
  git -C "$ROOT" archive "$tag" | tar -x -C "$src"
  local log=$base/build-$tag-pg$ver.log
  (cd "$src" && CARGO_TARGET_DIR=$base/build cargo pgrx package --debug \
    --pg-config "$(pg_config_for "$ver")" --features "pg$ver" --no-default-features \
    --out-dir "$pkg" >"$log" 2>&1) || { tail -40 "$log" >&2; die "release $tag for Postgres $ver did not build (log: $log)"; }
  local so sql
  so=$(find "$pkg" -name pgflow.so | head -1)
  sql=$(find "$pkg" -name "pgflow--${tag#v}.sql" | head -1)
  [ -n "$so" ] && [ -n "$sql" ] || die "release $tag for Postgres $ver: the package has no pgflow.so or install script"
  cp "$so" "$out/pgflow.so.new" && mv -f "$out/pgflow.so.new" "$out/pgflow.so"
  cp "$sql" "$out/"
  echo "$commit" >"$out/commit"
  rm -rf "$src" "$pkg"
}

case "${1:-}" in
  build)
    ver=$2
    for tag in $(releases); do
      if released_for "$tag" "$ver"; then build_one "$tag" "$ver"; fi
    done
    ;;
  dir)
    tag=$2 ver=$3
    released_for "$tag" "$ver" || exit 2
    [ -f "$base/$tag/pg$ver/pgflow.so" ] || die "release $tag for Postgres $ver is not built (scripts/releases.sh build $ver)"
    echo "$base/$tag/pg$ver"
    ;;
  list) releases ;;
  *) die "usage: releases.sh build VERSION | dir TAG VERSION | list" ;;
esac
