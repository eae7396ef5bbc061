#!/usr/bin/env bash
# Earlier releases, built from their released sources, for the upgrade layer
# (tests/upgrade/from_tags.sh).
#   releases.sh build VERSION   build every earlier release for Postgres VERSION (once: a release
#                               already built from the same commit is kept)
#   releases.sh dir TAG VERSION print the directory holding TAG's pgflow.so and install script
#                               for VERSION; exit 2 when TAG was not released for VERSION
#   releases.sh list            the earlier releases, oldest first
#   releases.sh freeze TAG      at release time: keep TAG's build tree in tests/upgrade/releases/
#
# A clone need not carry the tags, nor even the history (CI's clone of main has no tags): each
# release's build tree (Cargo.toml, Cargo.lock, .cargo, pgflow.control, src, sql and the
# workspace members; what `git archive TAG` gives for them) is kept in tests/upgrade/releases/TAG.tar.gz, and
# tests/upgrade/releases/MANIFEST names its tag, commit and SHA-256. A build checks the SHA-256
# and, where the commit is in the clone, that the archive holds exactly that commit's files.
#
# Each release is built with `cargo pgrx package --debug` against VERSION's pg_config, in a
# target directory of its own (target/releases/build), so that nothing of the current build's
# artifacts is overwritten. The library goes to target/releases/TAG/pgVERSION/pgflow.so,
# written under a temporary name and renamed, so a server that has the old file loaded keeps
# it. A release is loaded from there by `dynamic_library_path` (pgflow's control file names the
# module 'pgflow', no directory), never installed over the current one.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

base=$ROOT/target/releases

kept=$ROOT/tests/upgrade/releases
manifest=$kept/MANIFEST
# What a release's build needs: the extension's tree and its workspace members (cargo reads
# every member's manifest), less the benchmark's stored results.
paths=(.cargo Cargo.lock Cargo.toml pgflow.control sql src)
pathspecs() {  # pathspecs CARGO_TOML_TEXT
  local m
  printf '%s\n' "${paths[@]}"
  for m in $(sed -n 's/^members = \[\(.*\)\]/\1/p' <<<"$1" | tr -d '",'); do
    [ "$m" = . ] || printf '%s\n' "$m"
  done
  echo ':(exclude)bench/results'
}

# The kept releases before the current version, oldest first.
releases() {
  local cur; cur=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
  awk '!/^#/ && NF {print $1}' "$manifest" | sort -V | while read -r t; do
    [ "$(printf '%s\n%s\n' "${t#v}" "$cur" | sort -V | head -1)" = "${t#v}" ] && [ "${t#v}" != "$cur" ] && echo "$t"
  done
}

field() {  # field TAG N: the manifest's Nth field for TAG
  awk -v t="$1" -v n="$2" '$1 == t {print $n}' "$manifest"
}

released_for() {  # released_for TAG VERSION: whether TAG's Cargo.toml has the pgVERSION feature
  local toml; toml=$(tar -xzOf "$kept/$1.tar.gz" Cargo.toml)  # (grep -q in a pipe: SIGPIPE)
  grep -q "^pg$2 = " <<<"$toml"
}

# verify TAG: the archive is the one the manifest pins and, where the commit is in this clone,
# holds exactly that commit's build tree.
verify() {
  local tag=$1 commit sum
  commit=$(field "$tag" 2) sum=$(field "$tag" 3)
  [ -n "$commit" ] && [ -f "$kept/$tag.tar.gz" ] || die "release $tag: no tests/upgrade/releases/$tag.tar.gz or manifest line"
  echo "$sum  $kept/$tag.tar.gz" | sha256sum --quiet -c - || die "release $tag: tests/upgrade/releases/$tag.tar.gz is not the archive the manifest pins"
  if git -C "$ROOT" rev-parse -q --verify "refs/tags/$tag" >/dev/null; then
    [ "$(git -C "$ROOT" rev-parse "$tag^{commit}")" = "$commit" ] || die "release $tag: the tag points elsewhere than the manifest's $commit"
  fi
  if git -C "$ROOT" cat-file -e "$commit^{commit}" 2>/dev/null; then
    local specs; mapfile -t specs < <(pathspecs "$(git -C "$ROOT" show "$commit:Cargo.toml")")
    cmp -s <(tar -xzOf "$kept/$tag.tar.gz" | sha256sum) \
      <(git -C "$ROOT" archive --format=tar "$commit" -- "${specs[@]}" | tar -xO | sha256sum) \
      && [ "$(tar -tzf "$kept/$tag.tar.gz" | sort)" = "$(git -C "$ROOT" archive --format=tar "$commit" -- "${specs[@]}" | tar -t | sort)" ] \
      || die "release $tag: tests/upgrade/releases/$tag.tar.gz differs from commit $commit"
  fi
}

build_one() {  # build_one TAG VERSION
  local tag=$1 ver=$2 out=$base/$1/pg$2
  local commit; commit=$(field "$tag" 2)
  if [ -f "$out/pgflow.so" ] && [ "$(cat "$out/commit" 2>/dev/null)" = "$commit" ]; then
    return 0
  fi
  say "building release $tag for Postgres $ver (from its released sources, once)"
  local src=$base/src/$tag pkg=$base/pkg/$tag-pg$ver
  rm -rf "$src" "$pkg"
  mkdir -p "$src" "$out"
  tar -xzf "$kept/$tag.tar.gz" -C "$src"
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
      verify "$tag"
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
  freeze)
    tag=$2
    commit=$(git -C "$ROOT" rev-parse "$tag^{commit}") || die "no tag $tag"
    mkdir -p "$kept"
    mapfile -t specs < <(pathspecs "$(git -C "$ROOT" show "$commit:Cargo.toml")")
    git -C "$ROOT" archive --format=tar "$commit" -- "${specs[@]}" | gzip -n -9 >"$kept/$tag.tar.gz"
    sum=$(sha256sum "$kept/$tag.tar.gz" | cut -d' ' -f1)
    { grep -v "^$tag " "$manifest" 2>/dev/null || true; echo "$tag $commit $sum"; } >"$manifest.new"
    { grep '^#' "$manifest.new" || true; grep -v '^#' "$manifest.new" | sort -V; } >"$manifest"
    rm -f "$manifest.new"
    say "kept $tag ($commit) in tests/upgrade/releases/"
    ;;
  *) die "usage: releases.sh build VERSION | dir TAG VERSION | list | freeze TAG" ;;
esac
