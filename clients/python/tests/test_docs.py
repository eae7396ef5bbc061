"""The Python blocks of clients/python/README.md and docs/clients.md run as written, against the
test database (issue #33: docs that run). Only the connection string changes: the documents'
``host=127.0.0.1 dbname=app user=app`` becomes the test DSN. The README's consumer, which runs
until SIGTERM, runs in a process of its own until it has handled a message, then gets SIGTERM
and must stop cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[3]
DOC_DSN = "host=127.0.0.1 dbname=app user=app"
DEADLINE = 60.0


def blocks(doc: str) -> list[str]:
    text = (ROOT / doc).read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def run_block(code: str, dsn: str) -> None:
    assert DOC_DSN in code, f"a block without the documents' connection string: {code[:80]}"
    exec(compile(code.replace(DOC_DSN, dsn), "<doc block>", "exec"), {})


def test_the_documents_have_the_blocks_this_test_knows() -> None:
    assert len(blocks("clients/python/README.md")) == 2
    assert len(blocks("docs/clients.md")) == 1


def test_the_readme_calls_block_runs(dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT pgflow.drop_queue('jobs', if_exists => true)")
    run_block(blocks("clients/python/README.md")[0], dsn)
    # It sent one message, read it and archived it.
    assert conn.execute("SELECT total_archived FROM pgflow.metrics('jobs')").fetchone() == (1,)


def test_the_clients_page_block_runs(dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT pgflow.create_queue('jobs', if_not_exists => true)")
    before = conn.execute("SELECT total_archived FROM pgflow.metrics('jobs')").fetchone()
    run_block(blocks("docs/clients.md")[0], dsn)
    after = conn.execute("SELECT total_archived FROM pgflow.metrics('jobs')").fetchone()
    assert before is not None and after is not None and after[0] == before[0] + 1


def test_the_readme_consumer_block_runs_until_sigterm(dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT pgflow.create_queue('jobs', if_not_exists => true)")
    conn.execute("DROP TABLE IF EXISTS results")
    conn.execute("CREATE TABLE results (job int)")
    conn.execute("""SELECT pgflow.send('jobs', '{"id": 7}')""")
    code = blocks("clients/python/README.md")[1].replace(DOC_DSN, dsn)
    p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ))
    try:
        end = time.monotonic() + DEADLINE
        while conn.execute("SELECT count(*) FROM results WHERE job = 7").fetchone() != (1,):
            assert p.poll() is None, f"the consumer exited with {p.returncode}"
            assert time.monotonic() < end, "the README's consumer never handled the message"
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=DEADLINE) == 0
    finally:
        if p.poll() is None:
            p.kill()
    conn.execute("DROP TABLE results")
    conn.execute("SELECT pgflow.drop_queue('jobs')")
