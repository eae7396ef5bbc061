//! The consumer runtime: N handlers in parallel, each on its own connection.
//!
//! Per message: the handler runs under a timeout while a heartbeat extends the lease every
//! lease/3 (so a slow handler keeps its message and nobody else gets it); success archives
//! (together with the next lease, in one `archive_read` round trip), an error or the timeout nacks (the queue's retry policy decides: retry later or DLQ), with
//! the received lease receipt so a handler that lost its lease cannot disturb the new holder
//! (archives, heartbeats and nacks all name the delivery they received, so none of them touches
//! a later delivery, or another message given the same id after a failover).
//!
//! Transactional handlers ([`Consumer::run_tx`]): the handler gets its worker's connection
//! ([`Tx`]) inside a transaction, and the message's archive commits in that same transaction
//! (with the lease of the next message: the archive is an `archive_read`, so a busy queue costs
//! one round trip and one commit per message here too).
//! A handler that sends its result to another queue, or writes rows, does so exactly once per
//! archived message: a crash before the COMMIT loses both the writes and the archive (the
//! message is delivered again), never one of them. Heartbeats then go over a second connection
//! per worker (an extension made inside the open transaction would be invisible until its
//! commit).
//!
//! Shutdown (the future passed to `run` completes, e.g. on SIGTERM): no new reads; messages
//! in flight finish (or time out and are nacked) and are archived, then `run` returns. A
//! message is never dropped on the floor: it is archived, nacked, or its lease runs out and it
//! is delivered again.
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Client, Message, Result};

/// What a handler returns: Ok to archive, Err(reason) to nack.
pub type Outcome = std::result::Result<(), String>;

/// The worker's connection, inside the transaction a [`Consumer::run_tx`] handler runs in.
/// Its statements commit with the message's archive, or roll back with a failure.
#[derive(Clone)]
pub struct Tx(Arc<Client>);

impl Tx {
    /// The connection, for any SQL (including `pgflow.send` of a result).
    pub fn pg(&self) -> &tokio_postgres::Client {
        self.0.pg()
    }

    /// The typed pgflow calls on the same connection (so in the same transaction).
    pub fn client(&self) -> &Client {
        &self.0
    }
}

/// Counters of a run.
#[derive(Debug, Default)]
pub struct Stats {
    pub archived: AtomicU64,
    pub nacked: AtomicU64,
    pub timed_out: AtomicU64,
    pub lease_extensions: AtomicU64,
}

impl Stats {
    fn line(&self, since: Instant) -> String {
        let a = self.archived.load(Ordering::Relaxed);
        let secs = since.elapsed().as_secs_f64().max(1e-9);
        format!(
            "pgflow consumer: {a} archived ({:.0}/s), {} nacked ({} timed out), {} lease extensions",
            a as f64 / secs,
            self.nacked.load(Ordering::Relaxed),
            self.timed_out.load(Ordering::Relaxed),
            self.lease_extensions.load(Ordering::Relaxed)
        )
    }
}

/// A consumer of one queue.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub dsn: String,
    pub queue: String,
    /// Handlers running at once (one connection each).
    pub handlers: usize,
    /// The lease each read takes; the heartbeat renews it.
    pub lease: Duration,
    /// How long a handler may run before its message is nacked as timed out.
    pub timeout: Duration,
    /// How long an empty read waits in the server before looking again.
    pub wait: Duration,
    /// Print a progress line this often (None: never).
    pub progress: Option<Duration>,
    /// The connections go through a transaction-mode pooler (PgBouncer): a queue with
    /// `session_leases` is then refused at start (0A000), since its leases belong to the
    /// server connection that read them, which the pooler lends to others and may close while
    /// the handler still works. Calls need nothing else: they prepare no named statements.
    pub pooled: bool,
}

impl Consumer {
    pub fn new(dsn: &str, queue: &str) -> Consumer {
        Consumer {
            dsn: dsn.to_owned(),
            queue: queue.to_owned(),
            handlers: 4,
            lease: Duration::from_secs(30),
            timeout: Duration::from_secs(60),
            wait: Duration::from_secs(1),
            progress: None,
            pooled: false,
        }
    }

    /// Under a transaction-mode pooler, a queue whose leases need a stable backend is refused.
    async fn check_pooling(&self) -> Result<()> {
        if !self.pooled {
            return Ok(());
        }
        let c = Client::connect(&self.dsn).await?;
        let session_leases: Option<bool> = c
            .pg()
            .query_typed_opt(
                "SELECT session_leases FROM pgflow.list_queues() WHERE queue_name = $1",
                &[(&self.queue, tokio_postgres::types::Type::TEXT)],
            )
            .await?
            .map(|r| r.get(0));
        if session_leases == Some(true) {
            return Err(crate::Error::Refused(
                "0A000",
                format!(
                    "queue \"{}\" has session_leases, which need a stable backend: a transaction-mode \
                     pooler lends each transaction a server connection of its own (consume it \
                     through session pooling or a direct connection)",
                    self.queue
                ),
            ));
        }
        Ok(())
    }

    /// Runs until `shutdown` completes, then drains what is in flight and returns the counts.
    pub async fn run<F, Fut, S>(self, handler: F, shutdown: S) -> Result<Arc<Stats>>
    where
        F: Fn(Message<Value>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
        S: Future<Output = ()> + Send,
    {
        self.supervise(shutdown, move |me, stats, stop| {
            let handler = handler.clone();
            async move {
                let client = Client::connect(&me.dsn).await?;
                me.worker(client, handler, stats, stop).await
            }
        })
        .await
    }

    /// As [`Consumer::run`], with a transactional handler: it gets a [`Tx`], and a message it
    /// handles successfully is archived in the handler's transaction, which then commits. An
    /// error, a timeout (the handler's statement is cancelled) or a failed COMMIT rolls the
    /// transaction back and nacks the message.
    pub async fn run_tx<F, Fut, S>(self, handler: F, shutdown: S) -> Result<Arc<Stats>>
    where
        F: Fn(Message<Value>, Tx) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
        S: Future<Output = ()> + Send,
    {
        self.supervise(shutdown, move |me, stats, stop| {
            let handler = handler.clone();
            async move {
                let client = Arc::new(Client::connect(&me.dsn).await?);
                let beat = Client::connect(&me.dsn).await?;
                me.worker_tx(client, beat, handler, stats, stop).await
            }
        })
        .await
    }

    /// Starts `handlers` workers, prints progress, waits for `shutdown`, then for the workers.
    async fn supervise<S, W, WFut>(self, shutdown: S, spawn: W) -> Result<Arc<Stats>>
    where
        S: Future<Output = ()> + Send,
        W: Fn(Consumer, Arc<Stats>, Arc<AtomicBool>) -> WFut,
        WFut: Future<Output = Result<()>> + Send + 'static,
    {
        self.check_pooling().await?;
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..self.handlers.max(1) {
            tasks.push(tokio::spawn(spawn(
                self.clone(),
                Arc::clone(&stats),
                Arc::clone(&stop),
            )));
        }
        let progress = self.progress.map(|every| {
            let (stats, stop) = (Arc::clone(&stats), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(every).await;
                    eprintln!("{}", stats.line(started));
                }
            })
        });
        shutdown.await;
        stop.store(true, Ordering::SeqCst);
        let mut first_err = None;
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => {}
            }
        }
        if let Some(p) = progress {
            p.abort();
        }
        if self.progress.is_some() {
            eprintln!("{} (stopped)", stats.line(started));
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }

    async fn worker<F, Fut>(
        &self,
        client: Client,
        handler: F,
        stats: Arc<Stats>,
        stop: Arc<AtomicBool>,
    ) -> Result<()>
    where
        F: Fn(Message<Value>) -> Fut,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        // Messages handled successfully, archived by the next round trip: archive_read
        // archives them and leases the next message in one statement and one commit. It never
        // waits with an archive pending (a long-poll would hold the archive back), so a
        // handled message is archived at once either way.
        let mut done: Vec<(i64, i64)> = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let msgs = if done.is_empty() {
                unknown_is_none(
                    client
                        .read::<Value>(&self.queue, self.lease, 1, Some(self.wait))
                        .await,
                )?
            } else {
                let msgs = unknown_is_none(
                    client
                        .archive_read::<Value>(&self.queue, &done, self.lease, 1, None)
                        .await,
                )?;
                stats
                    .archived
                    .fetch_add(done.len() as u64, Ordering::Relaxed);
                done.clear();
                msgs
            };
            for m in msgs {
                if let Some(id) = self.handle(&client, &handler, m, &stats).await? {
                    done.push(id);
                }
            }
        }
        for (id, receipt) in done {
            client.archive(&self.queue, id, Some(receipt)).await?;
            stats.archived.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn handle<F, Fut>(
        &self,
        client: &Client,
        handler: &F,
        m: Message<Value>,
        stats: &Stats,
    ) -> Result<Option<(i64, i64)>>
    where
        F: Fn(Message<Value>) -> Fut,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let (id, receipt) = (m.id, m.receipt);
        let outcome = self
            .with_heartbeat(
                client,
                (id, receipt),
                tokio::time::timeout(self.timeout, handler(m)),
                stats,
            )
            .await?;
        match outcome {
            // Archived by the caller's next round trip.
            Ok(Ok(())) => return Ok(Some((id, receipt))),
            Ok(Err(reason)) => {
                self.nack(client, id, &reason, receipt).await?;
                stats.nacked.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                let reason = format!("handler timed out after {:?}", self.timeout);
                self.nack(client, id, &reason, receipt).await?;
                stats.nacked.fetch_add(1, Ordering::Relaxed);
                stats.timed_out.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(None)
    }

    /// Awaits `work` while extending the lease of message `id` (read with `receipt`) every
    /// lease/3 over `beat`. A lease lost meanwhile (55000: it ran out and someone else has the
    /// message) is not extended again; the handler's archive or nack, naming the same receipt,
    /// then changes nothing either.
    async fn with_heartbeat<T>(
        &self,
        beat: &Client,
        (id, receipt): (i64, i64),
        work: impl Future<Output = T>,
        stats: &Stats,
    ) -> Result<T> {
        let mut work = Box::pin(work);
        let every = self.lease / 3;
        let mut held = true;
        loop {
            tokio::select! {
                r = &mut work => return Ok(r),
                _ = tokio::time::sleep(every), if held => {
                    // Heartbeat: the handler still works, keep the message ours.
                    match beat.set_vt(&self.queue, id, self.lease, Some(receipt)).await {
                        Ok(_) => {
                            stats.lease_extensions.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.sqlstate() == Some("55000") => held = false,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    async fn worker_tx<F, Fut>(
        &self,
        client: Arc<Client>,
        beat: Client,
        handler: F,
        stats: Arc<Stats>,
        stop: Arc<AtomicBool>,
    ) -> Result<()>
    where
        F: Fn(Message<Value>, Tx) -> Fut,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        // Leased and not handled yet. A success archives its message with the archive_read
        // that leases the next one, inside the handler's transaction (one round trip and one
        // commit); the worker long-polls only when that found nothing.
        let mut pending: Vec<Message<Value>> = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            if pending.is_empty() {
                pending = unknown_is_none(
                    client
                        .read::<Value>(&self.queue, self.lease, 1, Some(self.wait))
                        .await,
                )?;
                continue;
            }
            let m = pending.remove(0);
            {
                let (id, receipt) = (m.id, m.receipt);
                client.pg().batch_execute("BEGIN").await?;
                let work = tokio::time::timeout(self.timeout, handler(m, Tx(Arc::clone(&client))));
                let failure = match self
                    .with_heartbeat(&beat, (id, receipt), work, &stats)
                    .await?
                {
                    Ok(Ok(())) => {
                        let archived = if pending.is_empty() && !stop.load(Ordering::SeqCst) {
                            client
                                .archive_read::<Value>(
                                    &self.queue,
                                    &[(id, receipt)],
                                    self.lease,
                                    1,
                                    None,
                                )
                                .await
                        } else {
                            client
                                .archive(&self.queue, id, Some(receipt))
                                .await
                                .map(|_| Vec::new())
                        };
                        match archived {
                            Ok(next) => match client.pg().batch_execute("COMMIT").await {
                                // Committed: the archive, and the next lease with it.
                                Ok(()) => {
                                    // Unless the commit's wait for the synchronous standby was
                                    // cancelled: then neither is sure. What a failover lost
                                    // comes back when its lease runs out.
                                    match client.settled() {
                                        Ok(()) => pending.extend(next),
                                        Err(e) => eprintln!(
                                            "pgflow consumer {}: message {id}: {e}",
                                            self.queue
                                        ),
                                    }
                                    None
                                }
                                Err(e) => Some(format!("commit failed: {}", crate::Error::Db(e))),
                            },
                            Err(e) => Some(format!("archive failed: {e}")),
                        }
                    }
                    Ok(Err(reason)) => Some(reason),
                    Err(_) => {
                        // The handler's statement may still run: cancel it before the ROLLBACK.
                        let _ = client
                            .pg()
                            .cancel_token()
                            .cancel_query(tokio_postgres::NoTls)
                            .await;
                        stats.timed_out.fetch_add(1, Ordering::Relaxed);
                        Some(format!("handler timed out after {:?}", self.timeout))
                    }
                };
                match failure {
                    None => {
                        stats.archived.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(reason) => {
                        // A cancel sent after a timeout can land on the next statement instead
                        // of the handler's: a statement cancelled that way did nothing, so it
                        // is simply run again.
                        for attempt in 0.. {
                            let r = match client.pg().batch_execute("ROLLBACK").await {
                                Ok(()) => self.nack(&client, id, &reason, receipt).await,
                                Err(e) => Err(e.into()),
                            };
                            match r {
                                Ok(()) => break,
                                Err(e) if e.sqlstate() == Some("57014") && attempt < 3 => {}
                                Err(e) => return Err(e),
                            }
                        }
                        stats.nacked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        // Leased but not started (the stop came): give them back at once, not at the lease's
        // end.
        for m in pending {
            match client
                .set_vt(&self.queue, m.id, Duration::ZERO, Some(m.receipt))
                .await
            {
                Err(e) if e.sqlstate() != Some("55000") => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    async fn nack(&self, client: &Client, id: i64, reason: &str, receipt: i64) -> Result<()> {
        match client.nack(&self.queue, id, reason, Some(receipt)).await {
            Ok(_) => Ok(()),
            // 55000: the lease was lost meanwhile (another consumer has it); nothing to do.
            Err(e) if e.sqlstate() == Some("55000") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A read (or archive_read) whose commit the synchronous standby did not confirm: its leases
/// may or may not survive a failover, so none is handled here; they come back when they run
/// out. (An archive in it is as unsure: the message is then delivered again, at least once.)
fn unknown_is_none<T>(r: Result<Vec<T>>) -> Result<Vec<T>> {
    match r {
        Err(e @ crate::Error::OutcomeUnknown { .. }) => {
            eprintln!("pgflow consumer: {e}; the leases it took come back when they run out");
            Ok(Vec::new())
        }
        other => other,
    }
}
