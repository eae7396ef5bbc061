#!/usr/bin/env python3
"""Drafts an upgrade script from two catalog snapshots (tests/upgrade/catalog.sql run, with
psql -At -z -0, on a fresh install of the old version and of the new one).

    upgrade_sql.py OLD.catalog NEW.catalog > sql/pgflow--OLD--NEW.sql

What it writes, in an order that works: functions the new version no longer has are dropped;
functions whose arguments or result changed are dropped and re-created; composite types gain
the attributes the new version appends; functions are created or replaced (C, then PL/pgSQL,
then SQL bodies, which Postgres checks at creation, then BEGIN ATOMIC ones); indexes,
constraints and triggers that changed are re-created; comments are set. Tables must not
change shape: it stops with an error when one does, since moving rows needs a hand-written
step. A new table is created by a hand-written step too (scripts/upgrade-steps/), with its
indexes and constraints, which are then left out here. tests/upgrade/upgrade.sh then proves the result: the upgraded catalog must equal a
fresh install's, and every row must survive.
"""
import re
import sys


def load(path):
    fields = open(path, "rb").read().decode().split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    if len(fields) % 3:
        sys.exit(f"{path}: not a catalog snapshot (fields not in threes)")
    rows = {}
    for i in range(0, len(fields), 3):
        kind, ident, definition = fields[i : i + 3]
        rows.setdefault(kind, {})[ident] = definition
    return rows


def header(fdef):
    """A function's signature and result: what CREATE OR REPLACE cannot change."""
    m = re.match(r"CREATE OR REPLACE FUNCTION (.*?)\n RETURNS (.*?)\n", fdef, re.S)
    return m.groups() if m else fdef


def body_order(fdef):
    if " LANGUAGE c" in fdef:
        return 0
    if " LANGUAGE plpgsql" in fdef:
        return 1
    if "BEGIN ATOMIC" in fdef:
        return 3
    return 2


def c_module(fdef):
    # pg_get_functiondef prints the library as installed; the script names it as pgrx does.
    return re.sub(r"\nAS '[^']*', ", "\nAS 'MODULE_PATHNAME', ", fdef)


def main(old_path, new_path):
    old, new = load(old_path), load(new_path)
    out = []
    say = out.append

    say("-- Tables: columns appended (nullable with no default, or NOT NULL with a constant default:")
    say("-- no row is rewritten). Their CHECKs come with the constraints below.")
    for kind in ("relation",):
        for ident, d in sorted(new.get(kind, {}).items()):
            o = old.get(kind, {}).get(ident)
            if o is None or o == d:
                continue
            added = d[len(o) + 2:].split(", ") if d.startswith(o + ", ") else None
            # Nullable with no default, or NOT NULL with a constant default: since Postgres 11
            # both are added without rewriting a row.
            if added is None or not all(re.fullmatch(r"\w+ [a-z ]+", a) and " not null" not in a
                                        or re.fullmatch(r"\w+ [a-z ]+ not null default "
                                                        r"(true|false|-?\d+(\.\d+)?|'[^']*'::[a-z ]+)", a)
                                        for a in added):
                sys.exit(f"{kind} {ident} changed shape: write that step by hand\n  old: {o}\n  new: {d}")
            for a in added:
                say(f"ALTER TABLE {ident} ADD COLUMN {a};")

    of, nf = old.get("function", {}), new.get("function", {})
    gone = sorted(set(of) - set(nf))
    changed_header = sorted(i for i in set(of) & set(nf) if header(of[i]) != header(nf[i]))
    say("-- Functions 0.2.0 no longer has, or whose arguments or result changed.")
    for ident in gone + changed_header:
        say(f"DROP FUNCTION {ident};")

    say("\n-- Composite types: new ones, and attributes appended to existing ones.")
    ot, nt = old.get("type", {}), new.get("type", {})
    for ident, attrs in sorted(nt.items()):
        if attrs in ("b", "p", "e", "d", "r", "m"):  # not composite (e.g. a table's row type)
            continue
        if ident not in ot:
            say(f"CREATE TYPE {ident} AS ({attrs});")
        elif ot[ident] != attrs:
            if not attrs.startswith(ot[ident] + ", "):
                sys.exit(f"type {ident} changed other than by appending: write that step by hand")
            for a in attrs[len(ot[ident]) + 2 :].split(", "):
                say(f"ALTER TYPE {ident} ADD ATTRIBUTE {a};")

    say("\n-- Functions, new or changed (C, PL/pgSQL, SQL, then BEGIN ATOMIC bodies).")
    todo = [i for i in nf if i not in of or of[i] != nf[i] or i in changed_header]
    for ident in sorted(todo, key=lambda i: (body_order(nf[i]), i)):
        say(c_module(nf[ident]).rstrip() + ";\n")

    # A new table comes from a hand-written step (CREATE TABLE, before this part) with its
    # indexes, constraints and triggers: those are not repeated here.
    new_rels = set(new.get("relation", {})) - set(old.get("relation", {}))

    def of_new_rel(kind, ident, definition):
        if kind == "index":
            m = re.search(r" ON (\S+) USING ", definition or "")
            return bool(m) and m.group(1) in new_rels
        return ident.rsplit(".", 1)[0] in new_rels

    for kind, drop in (("index", "DROP INDEX {};"), ("constraint", None), ("trigger", None)):
        o, n = old.get(kind, {}), new.get(kind, {})
        diff = sorted(i for i in set(o) | set(n)
                      if o.get(i) != n.get(i) and not (i not in o and of_new_rel(kind, i, n[i])))
        if not diff:
            continue
        say(f"\n-- {kind.capitalize()}es that changed." if kind == "index" else f"\n-- {kind.capitalize()}s that changed.")
        for ident in diff:
            if kind == "index":
                if ident in o:
                    say(drop.format(ident))
                if ident in n:
                    say(n[ident] + ";")
            elif kind == "constraint":
                table, name = ident.rsplit(".", 1)
                if ident in o:
                    say(f"ALTER TABLE {table} DROP CONSTRAINT {name};")
                if ident in n:
                    say(f"ALTER TABLE {table} ADD CONSTRAINT {name} {n[ident]};")
            else:
                table, name = ident.rsplit(".", 1)
                if ident in o:
                    say(f"DROP TRIGGER {name} ON {table};")
                if ident in n:
                    say(n[ident] + ";")

    oc, nc = old.get("comment", {}), new.get("comment", {})
    diff = sorted(i for i in nc if oc.get(i) != nc[i])
    if diff:
        say("\n-- Comments.")
        for ident in diff:
            text = nc[ident].replace("'", "''")
            say(f"COMMENT ON {ident} IS '{text}';")

    print("\n".join(out))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
