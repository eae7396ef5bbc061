//! An async client for pgflow, over tokio-postgres: typed `send`, `read`, `archive`, `nack`,
//! `set_vt`, and a consumer runtime ([`Consumer`]) that runs N handlers in parallel, keeps each
//! message's lease alive while its handler works, archives on success, nacks on error or
//! timeout, and shuts down gracefully.
//!
//! Every call is one SQL function call; nothing here holds state the database does not. Calls
//! are sent as unnamed statements with their parameter types (`query_typed`): one round trip
//! each, and nothing prepared that a transaction-mode pooler (PgBouncer) would have to carry
//! from one server connection to the next.
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client as PgClient, GenericClient, NoTls};

mod consumer;
pub use consumer::{Consumer, Outcome, Stats, Tx};

/// Errors: the database's (with its SQLSTATE), or a payload that does not (de)serialize.
#[derive(Debug)]
pub enum Error {
    Db(tokio_postgres::Error),
    Payload(serde_json::Error),
    /// Refused by the client before any call, with the SQLSTATE the server would use.
    Refused(&'static str, String),
    /// The call committed on the server it reached, but its synchronous standby never
    /// confirmed it (the server's WARNING "canceling wait for synchronous replication"): a
    /// failover may or may not keep it. Not a success: a producer sends again with the same
    /// dedup key. The message and detail are the server's.
    OutcomeUnknown {
        message: String,
        detail: Option<String>,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Db(e) => match e.as_db_error() {
                Some(d) => write!(f, "{} ({})", d.message(), d.code().code()),
                None => write!(f, "{e}"),
            },
            Error::Payload(e) => write!(f, "payload: {e}"),
            Error::Refused(code, m) => write!(f, "{m} ({code})"),
            Error::OutcomeUnknown { message, detail } => {
                write!(f, "outcome unknown: {message}")?;
                match detail {
                    Some(d) => write!(f, " ({d})"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::Db(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Payload(e)
    }
}

impl Error {
    /// The SQLSTATE, when the database raised the error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Db(e) => e.code().map(|c| c.code()),
            Error::Payload(_) => None,
            Error::Refused(code, _) => Some(code),
            Error::OutcomeUnknown { .. } => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A delivered message.
#[derive(Debug, Clone)]
pub struct Message<T> {
    pub id: i64,
    /// Deliveries so far, this one included.
    pub read_ct: i32,
    /// This delivery's lease receipt: pass it to `archive`, `archive_read`, `nack` and `set_vt`
    /// so that they act only on this delivery, never on a later one (the lease ran out and
    /// another consumer has the message) or on another message given the same id after a
    /// failover.
    pub receipt: i64,
    pub payload: T,
    pub headers: Option<Value>,
}

/// Options of `send` beyond the payload; `Default` sends plainly.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    pub headers: Option<Value>,
    pub delay: Option<Duration>,
    pub priority: Option<i32>,
    pub group_key: Option<String>,
    pub dedup_key: Option<String>,
}

/// What a `nack` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NackOutcome {
    /// Delivered again later (after the backoff).
    Retry,
    /// Moved to the dead-letter queue.
    Dead,
    /// The message was not in the queue any more.
    Gone,
}

/// An interval literal for a duration, to bind as text and cast to interval.
pub(crate) fn interval(d: Duration) -> String {
    format!("{} microseconds", d.as_micros())
}

/// The typed calls, on a connection or a transaction of tokio-postgres: [`Client`] owns its
/// connection; [`on`]`(&tx)` borrows a caller's [`tokio_postgres::Transaction`] (or
/// `Client`), so a message is sent together with the caller's own writes, or not at all (the
/// outbox pattern), and a read or archive rolls back with the transaction.
pub struct Calls<C>(C);

/// One connection to a database with pgflow.
pub type Client = Calls<Owned>;

/// A connection [`Client::connect`] opened: the client, and what its connection task saw of
/// a cancelled wait for the synchronous standby since the last call began.
pub struct Owned {
    pg: PgClient,
    unknown: Arc<Mutex<Option<Error>>>,
}

/// What the calls run on: a connection, or a borrowed connection or transaction.
pub trait Conn {
    type Pg: GenericClient + Sync;
    fn conn(&self) -> &Self::Pg;
    /// Before a call: forget what an earlier call left.
    fn arm(&self) {}
    /// After a call: an error when its commit was not confirmed by the synchronous standby.
    /// (Only on a connection of the client's own: in a caller's transaction the warning comes
    /// with the caller's COMMIT.)
    fn settled(&self) -> Result<()> {
        Ok(())
    }
}

impl Conn for Owned {
    type Pg = PgClient;
    fn conn(&self) -> &PgClient {
        &self.pg
    }
    fn arm(&self) {
        self.unknown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
    fn settled(&self) -> Result<()> {
        match self
            .unknown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The warning Postgres gives, instead of an error, when a commit's wait for the synchronous
/// standby is cancelled (by a cancel, a statement timeout or a shutdown). It has no code of its
/// own: it is matched by its English message.
fn sync_rep_cancelled(n: &tokio_postgres::error::DbError) -> Option<Error> {
    (n.severity() == "WARNING" && n.message().contains("synchronous replication")).then(|| {
        Error::OutcomeUnknown {
            message: n.message().to_owned(),
            detail: n.detail().map(str::to_owned),
        }
    })
}

impl<C: GenericClient + Sync> Conn for &C {
    type Pg = C;
    fn conn(&self) -> &C {
        self
    }
}

/// The typed calls on `c`, a [`tokio_postgres::Client`] or [`tokio_postgres::Transaction`].
pub fn on<C: GenericClient + Sync>(c: &C) -> Calls<&C> {
    Calls(c)
}

impl Client {
    /// Connects (the connection task runs on the current tokio runtime).
    pub async fn connect(dsn: &str) -> Result<Client> {
        let (pg, mut conn) = tokio_postgres::connect(dsn, NoTls).await?;
        let unknown = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&unknown);
        // The connection task: it also reads the server's notices, in order, before the
        // results that follow them reach the call, so a call sees its own warning.
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notice(n))) => {
                        if let Some(e) = sync_rep_cancelled(&n) {
                            *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        });
        Ok(Calls(Owned { pg, unknown }))
    }

    /// The underlying connection, for anything else (transactions, other SQL).
    pub fn pg(&self) -> &PgClient {
        &self.0.pg
    }

    /// After a statement run on [`Client::pg`] (a COMMIT of your own): `Error::OutcomeUnknown`
    /// when the server reported that its commit's wait for the synchronous standby was
    /// cancelled. The warning belongs to the connection, so share a `Client` between tasks
    /// that run calls at once only if you do not rely on it.
    pub fn settled(&self) -> Result<()> {
        self.0.settled()
    }
}

impl<C: Conn + Sync> Calls<C> {
    /// Runs one statement of a call; its result stands only if its commit was confirmed.
    async fn call<T>(
        &self,
        f: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        self.0.arm();
        let v = f.await?;
        self.0.settled()?;
        Ok(v)
    }

    /// Sends one message; returns its id (the first one's id for a deduplicated repeat).
    pub async fn send<T: Serialize>(&self, queue: &str, payload: &T) -> Result<i64> {
        self.send_with(queue, payload, &SendOptions::default())
            .await
    }

    pub async fn send_with<T: Serialize>(
        &self,
        queue: &str,
        payload: &T,
        opts: &SendOptions,
    ) -> Result<i64> {
        let payload = serde_json::to_value(payload)?;
        let delay = interval(opts.delay.unwrap_or_default());
        let row = self
            .call(self.0.conn().query_typed_one(
                "SELECT pgflow.send($1, $2, $3, $4::text::interval, $5, $6, $7)",
                &[
                    (&queue, Type::TEXT),
                    (&payload, Type::JSONB),
                    (&opts.headers, Type::JSONB),
                    (&delay, Type::TEXT),
                    (&opts.priority, Type::INT4),
                    (&opts.group_key, Type::TEXT),
                    (&opts.dedup_key, Type::TEXT),
                ],
            ))
            .await?;
        Ok(row.get(0))
    }

    /// Sends messages in one statement and one commit; returns their ids in input order.
    /// Contracts, dedup and forwarding apply to each as to `send`; one refused message refuses
    /// the batch.
    pub async fn send_batch<T: Serialize>(&self, queue: &str, payloads: &[T]) -> Result<Vec<i64>> {
        let payloads = payloads
            .iter()
            .map(serde_json::to_value)
            .collect::<std::result::Result<Vec<Value>, _>>()?;
        let rows = self
            .call(self.0.conn().query_typed(
                "SELECT id FROM pgflow.send_batch($1, $2) AS id",
                &[(&queue, Type::TEXT), (&payloads, Type::JSONB_ARRAY)],
            ))
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Leases up to `qty` messages for `vt`; with `wait`, sleeps (in the server) until one
    /// arrives or `wait` passes.
    pub async fn read<T: DeserializeOwned>(
        &self,
        queue: &str,
        vt: Duration,
        qty: i32,
        wait: Option<Duration>,
    ) -> Result<Vec<Message<T>>> {
        let wait = wait.map(interval);
        let rows = self
            .call(self.0.conn().query_typed(
                "SELECT msg_id, read_ct, message, headers, receipt
                   FROM pgflow.read($1, $2::text::interval, $3, $4::text::interval)",
                &[
                    (&queue, Type::TEXT),
                    (&interval(vt), Type::TEXT),
                    (&qty, Type::INT4),
                    (&wait, Type::TEXT),
                ],
            ))
            .await?;
        messages(&rows)
    }

    /// Archives `done` (each an id and the receipt it was read with) and leases up to `qty`
    /// more, in one statement and one commit (a consumer loop's round trip; see
    /// `pgflow.archive_read`). With `wait`, the archive commits when the read returns. A message
    /// whose receipt no longer matches is not archived (someone else holds it now).
    pub async fn archive_read<T: DeserializeOwned>(
        &self,
        queue: &str,
        done: &[(i64, i64)],
        vt: Duration,
        qty: i32,
        wait: Option<Duration>,
    ) -> Result<Vec<Message<T>>> {
        let wait = wait.map(interval);
        let (ids, receipts): (Vec<i64>, Vec<i64>) = done.iter().copied().unzip();
        let rows = self
            .call(self.0.conn().query_typed(
                "SELECT msg_id, read_ct, message, headers, receipt
                   FROM pgflow.archive_read($1, $2, $3::text::interval, $4, $5::text::interval,
                                            receipts => $6)",
                &[
                    (&queue, Type::TEXT),
                    (&ids, Type::INT8_ARRAY),
                    (&interval(vt), Type::TEXT),
                    (&qty, Type::INT4),
                    (&wait, Type::TEXT),
                    (&receipts, Type::INT8_ARRAY),
                ],
            ))
            .await?;
        messages(&rows)
    }

    /// Archives a message: true when it was in the queue and, with `receipt`, still the
    /// delivery that receipt names.
    pub async fn archive(&self, queue: &str, id: i64, receipt: Option<i64>) -> Result<bool> {
        Ok(self
            .call(self.0.conn().query_typed_one(
                "SELECT pgflow.archive($1, $2, $3)",
                &[
                    (&queue, Type::TEXT),
                    (&id, Type::INT8),
                    (&receipt, Type::INT8),
                ],
            ))
            .await?
            .get(0))
    }

    /// Reports a failed delivery. With `receipt` (the one received), a consumer whose lease
    /// was lost gets 55000 instead of disturbing the new holder.
    pub async fn nack(
        &self,
        queue: &str,
        id: i64,
        error: &str,
        receipt: Option<i64>,
    ) -> Result<NackOutcome> {
        let row = self
            .call(self.0.conn().query_typed_opt(
                "SELECT outcome FROM pgflow.nack($1, $2, $3, receipt => $4)",
                &[
                    (&queue, Type::TEXT),
                    (&id, Type::INT8),
                    (&error, Type::TEXT),
                    (&receipt, Type::INT8),
                ],
            ))
            .await?;
        Ok(match row.map(|r| r.get::<_, String>(0)) {
            Some(o) if o == "dead" => NackOutcome::Dead,
            Some(_) => NackOutcome::Retry,
            None => NackOutcome::Gone,
        })
    }

    /// Sets a message's visibility to now + `vt` (extends a lease; zero hands it back). With
    /// `receipt`, a lease lost meanwhile is 55000 and nothing changes.
    pub async fn set_vt(
        &self,
        queue: &str,
        id: i64,
        vt: Duration,
        receipt: Option<i64>,
    ) -> Result<bool> {
        Ok(!self
            .call(self.0.conn().query_typed(
                "SELECT msg_id FROM pgflow.set_vt($1, $2, $3::text::interval, $4)",
                &[
                    (&queue, Type::TEXT),
                    (&id, Type::INT8),
                    (&interval(vt), Type::TEXT),
                    (&receipt, Type::INT8),
                ],
            ))
            .await?
            .is_empty())
    }
}

/// The rows of read and archive_read as messages.
fn messages<T: DeserializeOwned>(rows: &[tokio_postgres::Row]) -> Result<Vec<Message<T>>> {
    rows.iter()
        .map(|r| {
            Ok(Message {
                id: r.get(0),
                read_ct: r.get(1),
                payload: serde_json::from_value(r.get::<_, Value>(2))?,
                headers: r.get(3),
                receipt: r.get(4),
            })
        })
        .collect()
}
