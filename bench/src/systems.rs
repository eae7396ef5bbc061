//! The three systems behind one interface.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use postgres::{Client, NoTls};
use serde::Serialize;

use crate::{Res, PAYLOAD, QUEUE};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Sys {
    Pgflow,
    Pgmq,
    Pgq,
}

impl Sys {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Sys::Pgflow => "pgflow",
            Sys::Pgmq => "pgmq",
            Sys::Pgq => "PgQ",
        }
    }

    /// PgQ has no competing consumers: every registered consumer sees every event. Where a
    /// workload asks for N competing consumers, PgQ runs its one consumer.
    pub(crate) fn competing_consumers(self) -> bool {
        self != Sys::Pgq
    }

    pub(crate) fn recreate(self, c: &mut Client, queue: &str) -> Res<()> {
        match self {
            Sys::Pgflow => {
                c.execute("SELECT pgflow.drop_queue($1, if_exists => true)", &[&queue])?;
                c.execute("SELECT pgflow.create_queue($1)", &[&queue])?;
            }
            Sys::Pgmq => {
                c.execute(
                    "SELECT pgmq.drop_queue(queue_name) FROM pgmq.list_queues() WHERE queue_name = $1",
                    &[&queue],
                )?;
                c.execute("SELECT pgmq.create($1)", &[&queue])?;
            }
            Sys::Pgq => {
                c.execute(
                    "SELECT pgq.drop_queue(queue_name, true) FROM pgq.queue WHERE queue_name = $1",
                    &[&queue],
                )?;
                c.execute("SELECT pgq.create_queue($1)", &[&queue])?;
                c.execute("SELECT pgq.register_consumer($1, 'bench')", &[&queue])?;
                // Tick on every call of the ticker thread that has 100 new events or 10 ms of lag.
                c.execute(
                    "SELECT pgq.set_queue_config($1, 'ticker_max_count', '100')",
                    &[&queue],
                )?;
                c.execute(
                    "SELECT pgq.set_queue_config($1, 'ticker_max_lag', '10 milliseconds')",
                    &[&queue],
                )?;
            }
        }
        Ok(())
    }

    pub(crate) fn drop(self, c: &mut Client, queue: &str) -> Res<()> {
        match self {
            Sys::Pgflow => {
                c.execute("SELECT pgflow.drop_queue($1, if_exists => true)", &[&queue])?;
            }
            Sys::Pgmq => {
                c.execute(
                    "SELECT pgmq.drop_queue(queue_name) FROM pgmq.list_queues() WHERE queue_name = $1",
                    &[&queue],
                )?;
            }
            Sys::Pgq => {
                c.execute(
                    "SELECT pgq.drop_queue(queue_name, true) FROM pgq.queue WHERE queue_name = $1",
                    &[&queue],
                )?;
            }
        }
        Ok(())
    }

    /// One statement sending one message; $1 queue, $2 payload. Returns the id.
    pub(crate) fn send_sql(self) -> &'static str {
        match self {
            Sys::Pgflow => "SELECT pgflow.send($1, $2::text::jsonb)",
            Sys::Pgmq => "SELECT pgmq.send($1, $2::text::jsonb)",
            Sys::Pgq => "SELECT pgq.insert_event($1, 'proposal', $2::text)",
        }
    }

    /// pgbench script bodies for W1 (one message) and W2 (a batch of 100).
    pub(crate) fn pgbench_script(self, batch: u32) -> String {
        let p = PAYLOAD.replace('\'', "''");
        match (self, batch) {
            (Sys::Pgflow, 1) => format!("SELECT pgflow.send('{QUEUE}', '{p}'::jsonb);\n"),
            (Sys::Pgmq, 1) => format!("SELECT pgmq.send('{QUEUE}', '{p}'::jsonb);\n"),
            (Sys::Pgq, 1) => format!("SELECT pgq.insert_event('{QUEUE}', 'proposal', '{p}');\n"),
            (Sys::Pgflow, n) => format!(
                "SELECT count(*) FROM pgflow.send_batch('{QUEUE}', array_fill('{p}'::jsonb, ARRAY[{n}]));\n"
            ),
            (Sys::Pgmq, n) => format!(
                "SELECT count(*) FROM pgmq.send_batch('{QUEUE}', array_fill('{p}'::jsonb, ARRAY[{n}]));\n"
            ),
            (Sys::Pgq, n) => format!(
                "SELECT count(pgq.insert_event('{QUEUE}', 'proposal', '{p}')) FROM generate_series(1, {n});\n"
            ),
        }
    }

    /// Fills the queue with n messages. PgQ gets a tick after every `batch` events, so its
    /// consumer receives batches of that size (PgQ's own way of sizing a read).
    pub(crate) fn prefill(self, c: &mut Client, n: i64, batch: i32) -> Res<()> {
        match self {
            Sys::Pgflow | Sys::Pgmq => {
                let sql = if self == Sys::Pgflow {
                    "SELECT count(*) FROM pgflow.send_batch($1, array_fill($2::text::jsonb, ARRAY[$3::int]))"
                } else {
                    "SELECT count(*) FROM pgmq.send_batch($1, array_fill($2::text::jsonb, ARRAY[$3::int]))"
                };
                let mut left = n;
                while left > 0 {
                    let k = left.min(1000) as i32;
                    c.execute(sql, &[&QUEUE, &PAYLOAD, &k])?;
                    left -= k as i64;
                }
            }
            Sys::Pgq => {
                c.execute(
                    "SELECT pgq.set_queue_config($1, 'ticker_max_count', $2)",
                    &[&QUEUE, &batch.to_string()],
                )?;
                c.execute(
                    "SELECT pgq.set_queue_config($1, 'ticker_max_lag', '1 hour')",
                    &[&QUEUE],
                )?;
                let mut left = n;
                while left > 0 {
                    let k = left.min(batch as i64) as i32;
                    c.execute(
                        "SELECT count(pgq.insert_event($1, 'proposal', $2)) FROM generate_series(1, $3)",
                        &[&QUEUE, &PAYLOAD, &k],
                    )?;
                    c.execute("SELECT pgq.ticker($1)", &[&QUEUE])?;
                    left -= k as i64;
                }
                // Close the last batch.
                c.execute(
                    "SELECT pgq.set_queue_config($1, 'ticker_max_lag', '0')",
                    &[&QUEUE],
                )?;
                c.execute("SELECT pgq.ticker($1)", &[&QUEUE])?;
            }
        }
        Ok(())
    }

    /// The tables (with their indexes and TOAST) that hold this system's queue.
    pub(crate) fn relations(self, c: &mut Client) -> Res<Vec<String>> {
        Ok(match self {
            Sys::Pgflow => vec!["pgflow.message".into(), "pgflow.archive".into()],
            Sys::Pgmq => vec![format!("pgmq.q_{QUEUE}"), format!("pgmq.a_{QUEUE}")],
            Sys::Pgq => c
                .query(
                    "SELECT format('%I.%I', n.nspname, t.relname)
                       FROM pgq.queue q
                       JOIN pg_class t ON t.relname ~ ('^' || split_part(q.queue_data_pfx, '.', 2) || '(_[0-9]+)?$')
                       JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'pgq'
                      WHERE q.queue_name = $1 AND t.relkind = 'r'",
                    &[&QUEUE],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect(),
        })
    }

    /// Prepares the system's tables for a measured run. With `clean`, returns them to a
    /// just-created state (VACUUM FULL). Without it (the default, as production runs), the run
    /// inherits whatever the previous one left and autovacuum has not yet removed: pgmq and PgQ
    /// get new tables per queue, while pgflow keeps one shared table and lives with its
    /// garbage. Either way a checkpoint first, so no run pays for the previous one's.
    pub(crate) fn reset(self, c: &mut Client, clean: bool) -> Res<()> {
        if clean {
            for r in self.relations(c)? {
                c.batch_execute(&format!("VACUUM FULL ANALYZE {r}"))?;
            }
        }
        c.batch_execute("CHECKPOINT")?;
        Ok(())
    }

    /// The table live messages sit in (for bytes per message).
    pub(crate) fn live_relations(self, c: &mut Client) -> Res<Vec<String>> {
        Ok(match self {
            Sys::Pgflow => vec!["pgflow.message".into()],
            Sys::Pgmq => vec![format!("pgmq.q_{QUEUE}")],
            Sys::Pgq => self.relations(c)?,
        })
    }
}

/// A consumer connection of one system: takes a batch, handles it, acknowledges it.
pub(crate) struct Consumer {
    sys: Sys,
    client: Client,
    qty: i32,
    /// pgflow: the ids of the last round, archived by the next (archive_read).
    pending: Vec<i64>,
}

impl Consumer {
    pub(crate) fn new(sys: Sys, dsn: &str, qty: i32) -> Res<Consumer> {
        Ok(Consumer {
            sys,
            client: connect(dsn)?,
            qty,
            pending: Vec::new(),
        })
    }

    pub(crate) fn backend_pid(&mut self) -> Res<i32> {
        Ok(self
            .client
            .query_one("SELECT pg_backend_pid()", &[])?
            .get(0))
    }

    /// One read-and-acknowledge round. Returns the ids consumed (empty: nothing available).
    /// pgflow's consumer loop is its archive_read: one statement and one commit archives the
    /// previous round's batch and leases the next, so a batch returned here is archived by
    /// the next round (or by `finish`); the round that finds nothing has archived them all.
    pub(crate) fn round(&mut self) -> Res<Vec<i64>> {
        match self.sys {
            Sys::Pgflow => {
                let ids: Vec<i64> = self
                    .client
                    .query(
                        "SELECT msg_id FROM pgflow.archive_read($1, $2, '30 seconds', $3)",
                        &[&QUEUE, &self.pending, &self.qty],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                self.pending.clone_from(&ids);
                Ok(ids)
            }
            Sys::Pgmq => {
                let ids: Vec<i64> = self
                    .client
                    .query(
                        "SELECT msg_id FROM pgmq.read($1, 30, $2)",
                        &[&QUEUE, &self.qty],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                if !ids.is_empty() {
                    self.client
                        .execute("SELECT pgmq.archive($1, $2::bigint[])", &[&QUEUE, &ids])?;
                }
                Ok(ids)
            }
            Sys::Pgq => loop {
                let batch: Option<i64> = self
                    .client
                    .query_one("SELECT pgq.next_batch($1, 'bench')", &[&QUEUE])?
                    .get(0);
                let Some(batch) = batch else {
                    return Ok(Vec::new());
                };
                let ids: Vec<i64> = self
                    .client
                    .query("SELECT ev_id FROM pgq.get_batch_events($1)", &[&batch])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                self.client
                    .execute("SELECT pgq.finish_batch($1)", &[&batch])?;
                // An empty batch (a tick with no events) is not the end of the queue.
                if !ids.is_empty() {
                    return Ok(ids);
                }
            },
        }
    }

    /// Archives what the last round returned (pgflow; the others acknowledge within a round).
    pub(crate) fn finish(&mut self) -> Res<()> {
        if !self.pending.is_empty() {
            self.client.execute(
                "SELECT pgflow.archive($1, $2::bigint[])",
                &[&QUEUE, &self.pending],
            )?;
            self.pending.clear();
        }
        Ok(())
    }

    /// A read that waits for work the way each system offers: pgmq's read_with_poll (polling
    /// every 10 ms), pgflow's long-poll read (asleep on its latch until a send commits), PgQ's
    /// next_batch after a tick, polled every 10 ms.
    pub(crate) fn wait_round(&mut self, stop: &AtomicBool) -> Res<Vec<i64>> {
        loop {
            let ids = match self.sys {
                Sys::Pgmq => self.read_and_archive(
                    "SELECT msg_id FROM pgmq.read_with_poll($1, 30, $2, 1, 10)",
                    "SELECT pgmq.archive($1, $2::bigint[])",
                )?,
                Sys::Pgflow => self.read_and_archive(
                    "SELECT msg_id FROM pgflow.read($1, '30 s', $2, wait => '1 s')",
                    "SELECT pgflow.archive($1, $2::bigint[])",
                )?,
                _ => self.round()?,
            };
            if !ids.is_empty() || stop.load(Ordering::Relaxed) {
                return Ok(ids);
            }
            if self.sys == Sys::Pgq {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// One waiting read ($1 queue, $2 qty) and, if it got anything, one archive of the ids.
    fn read_and_archive(&mut self, read_sql: &str, archive_sql: &str) -> Res<Vec<i64>> {
        let ids: Vec<i64> = self
            .client
            .query(read_sql, &[&QUEUE, &self.qty])?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !ids.is_empty() {
            self.client.execute(archive_sql, &[&QUEUE, &ids])?;
        }
        Ok(ids)
    }
}

/// Calls pgq.ticker() every 10 ms until stopped, as pgqd would (PgQ consumers see nothing
/// without ticks). A no-op for the other systems.
pub(crate) fn spawn_ticker(
    sys: Sys,
    dsn: &str,
    stop: Arc<AtomicBool>,
) -> Option<thread::JoinHandle<()>> {
    if sys != Sys::Pgq {
        return None;
    }
    let dsn = dsn.to_owned();
    Some(thread::spawn(move || {
        let mut c = connect(&dsn).expect("ticker connection");
        while !stop.load(Ordering::Relaxed) {
            let _ = c.execute("SELECT pgq.ticker()", &[]);
            thread::sleep(Duration::from_millis(10));
        }
    }))
}

pub(crate) fn connect(dsn: &str) -> Res<Client> {
    Ok(Client::connect(dsn, NoTls)?)
}
