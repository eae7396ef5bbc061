"""Fixtures: a database of the tests' own on the server PGFLOW_TEST_DSN names (the suite's
throwaway cluster, with pgflow preloaded), created once per run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

DB = "pgflow_python"


def _dsn(dbname: str) -> str:
    base = os.environ["PGFLOW_TEST_DSN"]
    return psycopg.conninfo.make_conninfo(base, dbname=dbname)


@pytest.fixture(scope="session")
def dsn() -> Iterator[str]:
    with psycopg.connect(_dsn("postgres"), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB}")
    with psycopg.connect(_dsn(DB), autocommit=True) as c:
        c.execute("CREATE EXTENSION pgflow")
    yield _dsn(DB)
    with psycopg.connect(_dsn("postgres"), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c
