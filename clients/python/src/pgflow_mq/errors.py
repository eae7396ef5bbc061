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


class Standby(PgflowError):
    """25006: the server is a standby in recovery; pgflow's writing calls run only on the
    primary. Connect with ``target_session_attrs=read-write`` (and every host listed)."""

    sqlstate = "25006"


class OutcomeUnknown(PgflowError):
    """The call committed on the server it reached, but that server's synchronous standby never
    confirmed it (the wait was cancelled, or the server shut down while waiting): a failover now
    may or may not keep it. Not a success. A producer sends again with the same ``dedup_key``
    (delivered once either way); a consumer's archive or nack is safe to repeat with its
    receipt. ``sqlstate`` is the warning's code; ``detail`` is the server's explanation."""

    def __init__(self, message: str, sqlstate: str | None = None, detail: str | None = None) -> None:
        super().__init__(message, sqlstate)
        self.detail = detail


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
        Standby,
    )
}


def sync_rep_cancelled(diag: psycopg.errors.Diagnostic) -> OutcomeUnknown | None:
    """The :class:`OutcomeUnknown` for a notice that reports a commit whose wait for the
    synchronous standby was cancelled (Postgres sends it as a WARNING, and the call otherwise
    looks successful), else None. Matched on the message, as Postgres gives it no code of its
    own: with ``lc_messages`` other than English, it is not recognized."""
    message = diag.message_primary or ""
    if diag.severity_nonlocalized == "WARNING" and "synchronous replication" in message:
        return OutcomeUnknown(message, diag.sqlstate, diag.message_detail)
    return None


def translate(err: psycopg.Error) -> PgflowError:
    """The pgflow exception for a psycopg error."""
    state = err.sqlstate
    cls = _BY_SQLSTATE.get(state or "", PgflowError)
    message = err.diag.message_primary or str(err)
    out = cls(message, state) if cls is PgflowError else cls(message)
    return out
