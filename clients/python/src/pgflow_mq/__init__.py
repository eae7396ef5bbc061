"""pgflow for Python: durable message queues inside PostgreSQL, on psycopg 3.

- :class:`Client` and :class:`AsyncClient`: every verb of the SQL API as a typed method, on a
  connection (and so in a transaction) the caller owns.
- :class:`Consumer`: N workers in one process with long-poll reads, lease heartbeats, a handler
  timeout, handlers that share the archive's transaction, and a graceful stop on SIGTERM.
- :mod:`pgflow_mq.errors`: one exception class per SQLSTATE pgflow raises.
"""

from ._calls import Call, Message, NackResult
from .client import AsyncClient, Client
from .consumer import Consumer, ConsumerEvent, Handler, Retry
from .errors import (
    ContractViolation,
    FeatureNotSupported,
    InvalidArgument,
    LeaseLost,
    NullArgument,
    OutcomeUnknown,
    PermissionDenied,
    PgflowError,
    QueryCanceled,
    QueueExists,
    QueueNotFound,
    Standby,
)

__version__ = "0.2.0"

__all__ = [
    "AsyncClient",
    "Call",
    "Client",
    "Consumer",
    "ConsumerEvent",
    "ContractViolation",
    "FeatureNotSupported",
    "Handler",
    "InvalidArgument",
    "LeaseLost",
    "Message",
    "NackResult",
    "NullArgument",
    "OutcomeUnknown",
    "PermissionDenied",
    "PgflowError",
    "QueryCanceled",
    "QueueExists",
    "QueueNotFound",
    "Standby",
    "Retry",
]
