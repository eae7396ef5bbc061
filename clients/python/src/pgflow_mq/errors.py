"""pgflow's errors as Python exceptions: one class per SQLSTATE pgflow raises.

Every call of :class:`pgflow_mq.Client` and :class:`pgflow_mq.AsyncClient` turns a
``psycopg.Error`` whose SQLSTATE is one of pgflow's into the matching class below (the
original error is its ``__cause__``); any other database error is re-raised as
:class:`PgflowError` with its ``sqlstate``.
"""

from __future__ import annotations

import psycopg


class PgflowError(Exception):
    """A call to pgflow failed. ``sqlstate`` is the server's code (None without one)."""

    sqlstate: str | None = None

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        if sqlstate is not None:
            self.sqlstate = sqlstate


class QueueNotFound(PgflowError):
    """42704: the queue (or contract version) does not exist."""

    sqlstate = "42704"


class QueueExists(PgflowError):
    """42710: a queue of that name exists already."""

    sqlstate = "42710"


class PermissionDenied(PgflowError):
    """42501: the calling role has no grant for this on the queue."""

    sqlstate = "42501"


class InvalidArgument(PgflowError):
    """22023: an argument is out of its range or malformed."""

    sqlstate = "22023"


class NullArgument(PgflowError):
    """22004: an argument that must not be NULL (None) was."""

    sqlstate = "22004"


class ContractViolation(PgflowError):
    """23514: the payload breaks the queue's contract."""

    sqlstate = "23514"


class LeaseLost(PgflowError):
    """55000: the message is not leased by the caller any more (or not in flight at all)."""

    sqlstate = "55000"


class FeatureNotSupported(PgflowError):
    """0A000: e.g. a long-poll read outside READ COMMITTED."""

    sqlstate = "0A000"


class QueryCanceled(PgflowError):
    """57014: statement_timeout or a cancel request stopped the call."""

    sqlstate = "57014"


_BY_SQLSTATE: dict[str, type[PgflowError]] = {
    cls.sqlstate: cls
    for cls in (
        QueueNotFound,
        QueueExists,
        PermissionDenied,
        InvalidArgument,
        NullArgument,
        ContractViolation,
        LeaseLost,
        FeatureNotSupported,
        QueryCanceled,
    )
}


def translate(err: psycopg.Error) -> PgflowError:
    """The pgflow exception for a psycopg error."""
    state = err.sqlstate
    cls = _BY_SQLSTATE.get(state or "", PgflowError)
    message = err.diag.message_primary or str(err)
    out = cls(message, state) if cls is PgflowError else cls(message)
    return out
