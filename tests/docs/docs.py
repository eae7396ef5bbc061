"""The docs layer: every SQL block of the README and docs/ runs as written (issue #33).

For each Markdown file, its ```sql blocks run top to bottom, each statement on its own, in one
session (as the superuser, in autocommit, on a database of the file's own with pgflow created),
so that a block can build on the one before it, as a reader would. What a block needs first and
is not in the text is declared in an HTML comment right before it, which the test reads:

    <!-- docs-test: setup SQL -->          SQL run (hidden) before the block
    <!-- docs-test: setup-file PATH -->    a file of SQL (from the repository's root) run before it
    <!-- docs-test: fresh-database -->     the block and those after it run in a new database
                                           without pgflow (an install block)
    <!-- docs-test: skip REASON -->        not SQL to run (a configuration file, say): said why

A statement the text says fails (`-- ERROR ...` on its last line, or on the comment lines that
follow it) must fail, with the SQLSTATE the comment names if it names one; every other
statement must succeed. A block of function signatures (`pgflow.name(arg type, ...) RETURNS
...`, as docs/api.md lists them) is checked against the catalog instead: the function exists
with those arguments, in that order.

Roles a file creates are dropped after it, and settings it changes with ALTER SYSTEM are reset.
Usage: docs.py DSN FILE... (DSN of a cluster with pgflow installed and preloaded, as a
superuser). Prints one line per block; exits 1 on the first failure.
"""
import os
import re
import sys

import psycopg
from psycopg import sql as pgsql

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DSN = sys.argv[1]
FILES = sys.argv[2:]
checked = {"statements": 0, "signatures": 0, "blocks": 0, "skipped": 0}


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def blocks(path):
    """(line, directives, language, text) of every fenced block, with the directives (HTML
    comments starting 'docs-test:') right before it."""
    lines = open(path, encoding="utf-8").read().split("\n")
    out, pending, i = [], [], 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$", line)
        if m:
            pending.append(m.group(1))
        elif line.lstrip().startswith("```"):
            # A fence, possibly indented inside a list item: its lines lose that indent.
            indent = len(line) - len(line.lstrip())
            lang = line.strip()[3:].strip()
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith("```"):
                j += 1
            out.append((i + 1, pending, lang, "\n".join(ln[indent:] for ln in lines[i + 1:j])))
            pending, i = [], j
        elif line.strip():
            pending = []
        i += 1
    return out


def statements(text):
    """Splits SQL into statements (quotes, dollar quotes and comments respected), each with the
    comment text that belongs to it: on its last line, and on the comment lines after it."""
    out, cur, i, n = [], "", 0, len(text)
    while i < n:
        c = text[i]
        if c == "'":
            j = i + 1
            while j < n and not (text[j] == "'" and (j + 1 >= n or text[j + 1] != "'")):
                j += 2 if text[j] == "'" else 1
            cur += text[i:j + 1]
            i = j + 1
        elif c == "$" and re.match(r"\$\w*\$", text[i:]):
            tag = re.match(r"\$\w*\$", text[i:]).group(0)
            j = text.find(tag, i + len(tag))
            j = n if j < 0 else j + len(tag)
            cur += text[i:j]
            i = j
        elif text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            comment = text[i + 2:j].strip()
            if cur.strip():
                cur += " /*" + comment.replace("*/", "") + "*/ "
            elif out:
                out[-1][1].append(comment)
            i = j
        elif c == ";":
            out.append((cur.strip(), []))
            cur, i = "", i + 1
        else:
            cur += c
            i += 1
    if cur.strip():
        out.append((cur.strip(), []))
    result = []
    for stmt, after in out:
        trailing = re.findall(r"/\*(.*?)\*/", stmt)
        result.append((stmt, " ".join(trailing[-1:] + after)))
    return result


def expected_error(comment):
    """None when the statement must succeed; else the SQLSTATE it must fail with ('' for any)."""
    if not re.search(r"\bERROR\b", comment):
        return None
    m = re.search(r"\b(?:ERROR|SQLSTATE)[: ]+([0-9A-Z]{5})\b", comment)
    return m.group(1) if m else ""


def check_signature(conn, text, where):
    """pgflow.f(a type, b type DEFAULT ...) [RETURNS ...]: f exists with those arguments."""
    body = re.sub(r"--[^\n]*", "", text)
    for m in re.finditer(r"pgflow\.(\w+)\s*\(", body):
        name, depth, j = m.group(1), 1, m.end()
        while j < len(body) and depth:
            depth += {"(": 1, ")": -1}.get(body[j], 0)
            j += 1
        args = [a.strip() for a in re.split(r",(?![^()]*\))", body[m.end():j - 1]) if a.strip()]
        names = [a.split()[0] for a in args]
        rows = conn.execute(
            "SELECT coalesce(p.proargnames, '{}') FROM pg_catalog.pg_proc p"
            " WHERE p.pronamespace = 'pgflow'::regnamespace AND p.proname = %s", (name,)).fetchall()
        if not rows:
            fail(f"{where}: pgflow.{name} does not exist")
        if not any(list(r[0][:len(names)]) == names for r in rows):
            fail(f"{where}: pgflow.{name}({', '.join(names)}) matches none of {[r[0] for r in rows]}")
        checked["signatures"] += 1


def new_database(admin, n, path):
    name = f"pgflow_docs_{n}"
    admin.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name)))
    admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    return name


def connect(db):
    return psycopg.connect(DSN, dbname=db, autocommit=True)


def run_file(admin, path, n):
    settings = set()
    db = new_database(admin, n, path)
    conn = connect(db)
    conn.execute("CREATE EXTENSION pgflow")
    # After the install, which makes pgflow's own roles when they are missing.
    roles_before = {r[0] for r in admin.execute("SELECT rolname FROM pg_catalog.pg_roles")}
    try:
        for line, directives, lang, text in blocks(path):
            where = f"{path.replace(ROOT + '/', '')}:{line}"
            if lang != "sql":
                continue
            checked["blocks"] += 1
            if any(d.startswith("skip") for d in directives):
                checked["skipped"] += 1
                print(f"  {where}: skipped ({directives})")
                continue
            first = next((ln for ln in text.split("\n") if ln.strip() and not ln.strip().startswith("--")), "")
            if re.match(r"\s*pgflow\.\w+\s*\(", first):
                check_signature(conn, text, where)
                continue
            for d in directives:
                if d == "fresh-database":
                    conn.close()
                    n += 1
                    db = new_database(admin, n, path)
                    conn = connect(db)
                elif d.startswith("setup-file "):
                    conn.execute(open(f"{ROOT}/{d.split(None, 1)[1]}", encoding="utf-8").read())
                elif d.startswith("setup "):
                    conn.execute(d.split(None, 1)[1])
                else:
                    fail(f"{where}: unknown directive {d!r}")
            for stmt, comment in statements(text):
                want = expected_error(comment)
                m = re.match(r"ALTER SYSTEM SET (\S+)", stmt, re.I)
                if m:
                    settings.add(m.group(1))
                try:
                    conn.execute(stmt)
                    got = None
                except psycopg.Error as e:
                    got = e.sqlstate or "?"
                    detail = str(e).strip()
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        conn.rollback()
                checked["statements"] += 1
                if want is None and got is not None:
                    fail(f"{where}: {stmt!r} failed with {got}: {detail}")
                if want is not None and got is None:
                    fail(f"{where}: {stmt!r} should fail ({comment!r}) but succeeded")
                if want and got != want:
                    fail(f"{where}: {stmt!r} failed with {got}, the text says {want}: {detail}")
            print(f"  {where}: ran")
    finally:
        conn.close()
        for s in settings:
            admin.execute(pgsql.SQL("ALTER SYSTEM RESET {}").format(pgsql.Identifier(s.split(".")[0], s.split(".")[1]) if "." in s else pgsql.Identifier(s)))
        if settings:
            admin.execute("SELECT pg_reload_conf()")
        for r in sorted({r[0] for r in admin.execute("SELECT rolname FROM pg_catalog.pg_roles")} - roles_before):
            for d in admin.execute("SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE 'pgflow_docs_%'").fetchall():
                with connect(d[0]) as c:
                    c.execute(pgsql.SQL("DROP OWNED BY {}").format(pgsql.Identifier(r)))
            admin.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(r)))
    return n + 1


with psycopg.connect(DSN, autocommit=True) as admin:
    n = 0
    try:
        for f in FILES:
            print(f"{f.replace(ROOT + '/', '')}")
            n = run_file(admin, f, n)
    finally:
        for d in admin.execute("SELECT datname FROM pg_catalog.pg_database"
                               " WHERE datname LIKE 'pgflow_docs_%'").fetchall():
            admin.execute(pgsql.SQL("DROP DATABASE {} WITH (FORCE)").format(pgsql.Identifier(d[0])))
print(f"docs: {checked['blocks']} SQL blocks in {len(FILES)} files: {checked['statements']} statements "
      f"ran as written, {checked['signatures']} signatures matched the catalog, "
      f"{checked['skipped']} blocks skipped with a reason")
