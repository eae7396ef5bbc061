//! Per-queue statistics in shared memory: what `metrics()` reads in O(1), and what the
//! Prometheus endpoint (`worker::exporter`) and `metrics_text()` print.
//!
//! Per queue (of every database), one entry holds:
//! - **gauges**: live messages by state (ready, delayed, in flight, waiting), dead letters and
//!   archived rows;
//! - **counters** since the entry's `reset_at`: sent, delivered, archived, deleted, nacked,
//!   expired, dead-lettered, redriven;
//! - **histograms** with log-spaced buckets: the wait from enqueue to first delivery, the
//!   processing time from delivery to archive (observed when the session that leased a message
//!   archives it: `api::stats` keeps each session's recent deliveries), and the time from
//!   enqueue to archive (end to end).
//!
//! **Where the numbers come from.** A C row trigger on `pgflow.message`, `pgflow.archive` and
//! `pgflow.dead` (`api::stats`) notes each row's state change in this backend's pending
//! deltas, so every path counts, the worker's and a user's own `UPDATE` included. A verb whose
//! meaning the rows don't show (a pop, a lease expiry, a redrive) says so first
//! (`_stats_mode`). The deltas are applied when the transaction commits; a rollback, or a
//! subtransaction's, drops its part. A `PREPARE TRANSACTION` applies them at once, as if it
//! would commit: a `ROLLBACK PREPARED` leaves the gauges off by what it undid, until the next
//! rebuild.
//!
//! **Rebuilds.** Gauges can be recomputed from the tables, counters can't. A gauge is trusted
//! only on an entry marked valid: one made by `create_queue` (empty, exact), or one the
//! database's worker rebuilt (`_stats_rebuild`: under a SHARE lock on the three tables, so no
//! writer's delta is in flight, it counts every queue's rows and loads them). A restart or
//! crash empties shared memory, so the worker rebuilds at its start; so it does after
//! `pgflow.stats` is turned back on. Until then `metrics()` counts rows, as `exact => true`
//! does. Counters and histograms start again at a restart; `reset_at` says since when.
//!
//! Without `shared_preload_libraries` there is no table: the trigger does nothing and
//! `metrics()` counts rows.
use std::cell::{Cell, RefCell};

use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::{pg_shmem_init, PgAtomic};

use super::preloaded;
use super::shm::Region;
use super::table::{self, Census, Keyed};

/// Queues (of all databases) with statistics; `metrics()` counts rows for the others.
/// Bytes of a queue name kept (names are at most 80 characters of ASCII).
const NAME_LEN: usize = 80;

/// Gauge labels, in `gauges` order (the exporter's `state` label).
pub const GAUGES: [&str; 6] = [
    "ready",
    "delayed",
    "in_flight",
    "waiting",
    "dead",
    "archived",
];
pub const READY: usize = 0;
pub const DELAYED: usize = 1;
pub const IN_FLIGHT: usize = 2;
pub const WAITING: usize = 3;
pub const DEAD: usize = 4;
pub const ARCHIVED_ROWS: usize = 5;

/// Counter labels, in `events` order (the exporter's `event` label).
pub const EVENTS: [&str; 8] = [
    "sent",
    "delivered",
    "archived",
    "deleted",
    "nacked",
    "expired",
    "dead_lettered",
    "redriven",
];
pub const SENT: usize = 0;
pub const DELIVERED: usize = 1;
pub const ARCHIVED: usize = 2;
pub const DELETED: usize = 3;
pub const NACKED: usize = 4;
pub const EXPIRED: usize = 5;
pub const DEAD_LETTERED: usize = 6;
pub const REDRIVEN: usize = 7;

/// Alert kinds, in `alerts` order (the exporter's `alert` label).
pub const ALERTS: [&str; 3] = ["dlq", "age", "depth"];

/// Histogram names, in `hist` order.
pub const HISTOGRAMS: [&str; 3] = ["wait", "processing", "end_to_end"];
pub const WAIT: usize = 0;
pub const PROCESSING: usize = 1;
pub const END_TO_END: usize = 2;
/// Upper bounds of the buckets, in microseconds (1 ms to 1 h, log-spaced); one more bucket
/// takes everything above.
pub const BOUNDS_US: [i64; 14] = [
    1_000,
    5_000,
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    900_000_000,
    3_600_000_000,
];
pub const BUCKETS: usize = BOUNDS_US.len() + 1;

/// The bucket of a duration (microseconds; a negative one, from a clock step, goes first).
pub fn bucket_of(us: i64) -> usize {
    BOUNDS_US
        .iter()
        .position(|&b| us <= b)
        .unwrap_or(BOUNDS_US.len())
}

#[derive(Copy, Clone, Default, Debug, PartialEq)]
pub struct Hist {
    pub buckets: [u64; BUCKETS],
    pub sum_us: i64,
}

impl Hist {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// One queue's statistics, as a copy taken under the lock.
#[derive(Copy, Clone)]
pub struct Entry {
    pub dboid: u32, // 0: free
    pub queue_id: i32,
    name: [u8; NAME_LEN],
    name_len: u8,
    /// The gauges are exact (created empty, or rebuilt from the tables).
    pub valid: bool,
    pub gauges: [i64; GAUGES.len()],
    pub events: [u64; EVENTS.len()],
    pub hist: [Hist; HISTOGRAMS.len()],
    /// Since when the counters and histograms count (microseconds since 2000, Postgres's epoch).
    pub reset_at: i64,
    /// When the gauges were last loaded from the tables (0: never, they were made empty).
    pub rebuilt_at: i64,
    /// Since when each alert fires (0: it does not), as the worker's last check found it.
    pub alerts: [i64; ALERTS.len()],
    /// Each firing alert's value and threshold as the worker's check found them (the status
    /// page shows them beside `alerts`).
    pub alert_values: [f64; ALERTS.len()],
    pub alert_thresholds: [f64; ALERTS.len()],
    /// When the oldest ready message was enqueued (0: none ready), as the worker's last tick
    /// found it.
    pub oldest_ready: i64,
}

impl Entry {
    const EMPTY: Entry = Entry {
        dboid: 0,
        queue_id: 0,
        name: [0; NAME_LEN],
        name_len: 0,
        valid: false,
        gauges: [0; GAUGES.len()],
        events: [0; EVENTS.len()],
        hist: [Hist {
            buckets: [0; BUCKETS],
            sum_us: 0,
        }; HISTOGRAMS.len()],
        reset_at: 0,
        rebuilt_at: 0,
        alerts: [0; ALERTS.len()],
        alert_values: [0.0; ALERTS.len()],
        alert_thresholds: [0.0; ALERTS.len()],
        oldest_ready: 0,
    };

    fn fresh(dboid: u32, queue_id: i32, now: i64) -> Entry {
        Entry {
            dboid,
            queue_id,
            reset_at: now,
            ..Entry::EMPTY
        }
    }

    pub fn name(&self) -> &str {
        std::str::from_utf8(&self.name[..self.name_len as usize]).unwrap_or("")
    }

    fn set_name(&mut self, name: &str) {
        let b = name.as_bytes();
        let n = b.len().min(NAME_LEN);
        self.name[..n].copy_from_slice(&b[..n]);
        self.name_len = n as u8;
    }

    fn apply(&mut self, d: &Delta) {
        for (g, dg) in self.gauges.iter_mut().zip(d.gauges) {
            *g += dg;
        }
        for (e, de) in self.events.iter_mut().zip(d.events) {
            *e = e.wrapping_add(de as u64);
        }
        // What left the table without being archived or dead-lettered was deleted.
        let deleted = d.removed - d.events[ARCHIVED] - d.events[DEAD_LETTERED];
        self.events[DELETED] = self.events[DELETED].wrapping_add(deleted.max(0) as u64);
        for (h, dh) in self.hist.iter_mut().zip(&d.hist) {
            for (b, db) in h.buckets.iter_mut().zip(dh.buckets) {
                *b += db;
            }
            h.sum_us = h.sum_us.wrapping_add(dh.sum_us);
        }
    }

    fn reset_counters(&mut self, now: i64) {
        self.events = [0; EVENTS.len()];
        self.hist = Entry::EMPTY.hist;
        self.reset_at = now;
    }
}

impl Default for Entry {
    fn default() -> Self {
        Entry::EMPTY
    }
}

impl Keyed for Entry {
    fn key(&self) -> (u32, i32) {
        (self.dboid, self.queue_id)
    }
    fn set_key(&mut self, db: u32, queue_id: i32) {
        self.dboid = db;
        self.queue_id = queue_id;
    }
}

/// The table: `pgflow.max_queues` entries (`ipc::table` finds, makes and frees them; the last
/// eighth only for databases holding fewer, issue #34), and its census of refusals.
pub(super) static STATS: Region<Census, Entry> = Region::new(c"pgflow_stats");
/// Set while the statistics are off (`pgflow.stats`). One flag in shared memory, not each
/// process's copy of the setting: a backend reads its settings again only between commands,
/// so a statement that began before a reload would go on noting (or not) after it, and a
/// rebuild could not know. The flag flips for every process at once (`sync_enabled`).
static DISABLED: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"pgflow_stats_disabled") };

pub(super) fn init() {
    pg_shmem_init!(DISABLED);
}

/// Makes the shared flag follow `pgflow.stats`, after a reload (the launcher and the workers
/// call it). Turning the statistics off makes every entry's gauges untrusted at the same
/// moment; on again, each database's worker rebuilds them.
pub fn sync_enabled() {
    if !preloaded() {
        return;
    }
    let off = !crate::guc::STATS.get();
    if DISABLED.get().load(Ordering::SeqCst) == off {
        return;
    }
    let s = STATS.exclusive();
    DISABLED.get().store(off, Ordering::SeqCst);
    if off {
        for e in s.entries.iter_mut() {
            e.valid = false;
        }
    }
}

fn my_db() -> u32 {
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// The entry of a queue, made (not valid, counting from `now`) when there is none; None when
/// refused (counted). Allocates nothing and cannot fail: it runs at commit.
fn find<'a>(
    census: &mut Census,
    entries: &'a mut [Entry],
    db: u32,
    queue_id: i32,
    now: i64,
) -> Option<&'a mut Entry> {
    let (i, made) = table::find_or_make(census, entries, db, queue_id)?;
    if made {
        entries[i].reset_at = now;
    }
    Some(&mut entries[i])
}

/// The table's use: (entries in use of all databases, of database `db`).
pub fn capacity(db: u32) -> (usize, usize) {
    if !preloaded() {
        return (0, 0);
    }
    table::used(STATS.share().entries, db)
}

/// The table's length (`pgflow.max_queues`; 0 without the preload).
pub fn len() -> usize {
    STATS.size()
}

/// How many times a queue of database `db` found no statistics entry since the server started
/// (0 without the preload).
pub fn refused(db: u32) -> u64 {
    if !preloaded() {
        return 0;
    }
    STATS.share().head.refused_of(db)
}

/// What one transaction (at one subtransaction level) did to one queue.
#[derive(Clone, Default)]
pub struct Delta {
    pub gauges: [i64; GAUGES.len()],
    pub events: [i64; EVENTS.len()],
    /// Message rows that left the table (archived, dead-lettered, deleted or popped).
    pub removed: i64,
    pub hist: [Hist; HISTOGRAMS.len()],
}

impl Delta {
    pub fn observe(&mut self, hist: usize, us: i64) {
        self.hist[hist].buckets[bucket_of(us)] += 1;
        self.hist[hist].sum_us = self.hist[hist].sum_us.wrapping_add(us);
    }
}

/// What a verb tells the trigger about the rows it is about to change.
#[derive(Copy, Clone, PartialEq, Eq, Debug, Default)]
pub enum Mode {
    #[default]
    Plain,
    /// pop: a removed ready message was delivered (and deleted).
    Pop,
    /// Lease expiry: a failed delivery is an expiry, not a nack.
    Expire,
    /// dlq_retry: a new message is a redriven dead letter, not a send.
    Redrive,
}

/// A transaction's pending changes, applied at its end.
#[derive(Default)]
struct Xact {
    /// (subtransaction level, queue, delta)
    deltas: Vec<(i32, i32, Delta)>,
    /// Queues created (level, queue, name): their entries start empty and exact at commit.
    created: Vec<(i32, i32, String)>,
    /// Queues dropped (level, queue): their entries are freed at commit.
    dropped: Vec<(i32, i32)>,
    /// Databases whose every entry goes at commit (DROP EXTENSION, DROP SCHEMA pgflow, DROP
    /// DATABASE).
    drop_all: Vec<u32>,
}

impl Xact {
    fn is_empty(&self) -> bool {
        self.deltas.is_empty()
            && self.created.is_empty()
            && self.dropped.is_empty()
            && self.drop_all.is_empty()
    }
}

thread_local! {
    static XACT: RefCell<Xact> = RefCell::new(Xact::default());
    static MODE: Cell<Mode> = const { Cell::new(Mode::Plain) };
}

fn level() -> i32 {
    unsafe { pg_sys::GetCurrentTransactionNestLevel() }
}

fn ensure_callbacks() {
    super::xact::ensure();
}

/// Whether the trigger should note anything: preloaded and the statistics on.
pub fn enabled() -> bool {
    preloaded() && !DISABLED.get().load(Ordering::Relaxed)
}

pub fn mode() -> Mode {
    MODE.with(|m| m.get())
}

/// Sets what the next row changes mean; `Mode::Plain` ends it. Any (sub)transaction end
/// ends it too.
pub fn set_mode(mode: Mode) {
    MODE.with(|m| m.set(mode));
    if mode != Mode::Plain {
        ensure_callbacks();
    }
}

/// Adds to this transaction's delta for a queue.
pub fn with_delta(queue_id: i32, f: impl FnOnce(&mut Delta)) {
    ensure_callbacks();
    let lvl = level();
    XACT.with(|x| {
        let mut x = x.borrow_mut();
        let i = match x
            .deltas
            .iter()
            .position(|(l, q, _)| *l == lvl && *q == queue_id)
        {
            Some(i) => i,
            None => {
                x.deltas.push((lvl, queue_id, Delta::default()));
                x.deltas.len() - 1
            }
        };
        f(&mut x.deltas[i].2);
    });
}

/// create_queue: the queue's entry starts empty (exact) at this transaction's commit.
pub fn created(queue_id: i32, name: &str) {
    if !preloaded() {
        return;
    }
    ensure_callbacks();
    let lvl = level();
    XACT.with(|x| {
        x.borrow_mut()
            .created
            .push((lvl, queue_id, name.to_owned()))
    });
}

/// drop_queue: the queue's entry goes at this transaction's commit.
pub fn dropped(queue_id: i32) {
    if !preloaded() {
        return;
    }
    ensure_callbacks();
    let lvl = level();
    XACT.with(|x| x.borrow_mut().dropped.push((lvl, queue_id)));
}

/// DROP EXTENSION pgflow, DROP SCHEMA pgflow, DROP DATABASE: every entry of database `dboid`
/// goes at commit.
pub fn drop_database_entries(dboid: u32) {
    if !preloaded() {
        return;
    }
    ensure_callbacks();
    XACT.with(|x| x.borrow_mut().drop_all.push(dboid));
}

/// Commit and prepare publish this transaction's deltas (a prepared transaction commits, or
/// not, later and elsewhere: counted now); abort drops them. Any end ends the mode.
pub(super) fn at_end(end: super::xact::End) {
    MODE.with(|m| m.set(Mode::Plain));
    let Some(x) = take_xact() else { return };
    if end != super::xact::End::Abort {
        apply(&x);
    }
}

/// This backend's transaction state, taken out without allocating or panicking (None when the
/// cell is busy, which cannot happen between statements).
fn take_xact() -> Option<Xact> {
    XACT.try_with(|x| x.try_borrow_mut().ok().map(|mut b| std::mem::take(&mut *b)))
        .ok()
        .flatten()
}

/// A subtransaction's commit hands its part to the parent.
pub(super) fn at_subcommit() {
    let lvl = level();
    let _ = XACT.try_with(|x| {
        if let Ok(mut x) = x.try_borrow_mut() {
            for d in x.deltas.iter_mut().filter(|d| d.0 >= lvl) {
                d.0 = lvl - 1;
            }
            for c in x.created.iter_mut().filter(|c| c.0 >= lvl) {
                c.0 = lvl - 1;
            }
            for d in x.dropped.iter_mut().filter(|d| d.0 >= lvl) {
                d.0 = lvl - 1;
            }
        }
    });
}

/// A subtransaction's abort drops its part.
pub(super) fn at_subabort() {
    MODE.with(|m| m.set(Mode::Plain));
    let lvl = level();
    let _ = XACT.try_with(|x| {
        if let Ok(mut x) = x.try_borrow_mut() {
            x.deltas.retain(|d| d.0 < lvl);
            x.created.retain(|c| c.0 < lvl);
            x.dropped.retain(|d| d.0 < lvl);
        }
    });
}

fn apply(x: &Xact) {
    if x.is_empty() || !preloaded() {
        return;
    }
    let db = my_db();
    let t = now();
    let g = STATS.exclusive();
    let (census, entries) = (&mut *g.head, &mut *g.entries);
    // Drops first: a queue dropped and created in one transaction starts over.
    if !x.drop_all.is_empty() {
        table::forget_where(census, entries, |d| x.drop_all.contains(&d));
    }
    for &(_, q) in &x.dropped {
        table::forget(census, entries, db, q);
    }
    for (_, q, name) in &x.created {
        if let Some(e) = find(census, entries, db, *q, t) {
            *e = Entry::fresh(db, *q, t);
            e.set_name(name);
            // Exact only if the changes that follow are noted.
            e.valid = !DISABLED.get().load(Ordering::SeqCst);
        }
    }
    if x.drop_all.contains(&db) {
        return;
    }
    for (_, q, d) in &x.deltas {
        if x.dropped.iter().any(|&(_, dq)| dq == *q) && !x.created.iter().any(|c| c.1 == *q) {
            continue;
        }
        if let Some(e) = find(census, entries, db, *q, t) {
            e.apply(d);
        }
    }
}

/// One queue's gauges as `_stats_rebuild` counted them.
pub struct Counted {
    pub queue_id: i32,
    pub name: String,
    pub gauges: [i64; GAUGES.len()],
}

/// Loads the gauges of every queue of this database (the caller holds a SHARE lock on the
/// tables, so no delta is in flight) and frees the entries of queues that no longer exist.
/// Counters and histograms of existing entries are kept. Returns how many queues got an entry.
pub fn load(queues: &[Counted]) -> i64 {
    if !preloaded() {
        return 0;
    }
    let db = my_db();
    let t = now();
    let g = STATS.exclusive();
    let (census, entries) = (&mut *g.head, &mut *g.entries);
    for i in 0..entries.len() {
        let e = &entries[i];
        if e.dboid == db && !queues.iter().any(|q| q.queue_id == e.queue_id) {
            table::remove(census, entries, i);
        }
    }
    let mut n = 0;
    for q in queues {
        if let Some(e) = find(census, entries, db, q.queue_id, t) {
            e.set_name(&q.name);
            e.gauges = q.gauges;
            e.valid = true;
            e.rebuilt_at = t;
            n += 1;
        }
    }
    n
}

/// Whether this database has a queue whose gauges need a rebuild (`queues`: the ids it has).
pub fn needs_rebuild(queues: &[i32]) -> bool {
    if !preloaded() {
        return false;
    }
    let db = my_db();
    let s = STATS.share();
    queues
        .iter()
        .any(|&q| match table::index(s.entries, db, q) {
            Some(i) => !s.entries[i].valid,
            None => s.head.live < s.entries.len(),
        })
}

/// One firing alert as the worker's check found it.
#[derive(Clone, Copy, Debug)]
pub struct Firing {
    pub queue_id: i32,
    pub kind: usize,
    pub since: i64,
    pub value: f64,
    pub threshold: f64,
}

/// The alerts firing in this database, as the worker's check found them: every other alert of
/// the database's entries is cleared.
pub fn set_alerts(firing: &[Firing]) {
    if !preloaded() {
        return;
    }
    let db = my_db();
    let s = STATS.exclusive();
    for e in s.entries.iter_mut().filter(|e| e.dboid == db) {
        e.alerts = [0; ALERTS.len()];
        e.alert_values = [0.0; ALERTS.len()];
        e.alert_thresholds = [0.0; ALERTS.len()];
        for f in firing.iter().filter(|f| f.queue_id == e.queue_id) {
            e.alerts[f.kind] = f.since;
            e.alert_values[f.kind] = f.value;
            e.alert_thresholds[f.kind] = f.threshold;
        }
    }
}

/// The oldest ready message of each queue of this database that has one, (queue, enqueued
/// at), as the worker's tick found them: every other entry of the database has none.
pub fn set_oldest(oldest: &[(i32, i64)]) {
    if !preloaded() {
        return;
    }
    let db = my_db();
    let s = STATS.exclusive();
    for e in s.entries.iter_mut().filter(|e| e.dboid == db) {
        e.oldest_ready = oldest.iter().find(|o| o.0 == e.queue_id).map_or(0, |o| o.1);
    }
}

/// Zeroes counters and histograms: of one queue, or of every queue of this database.
pub fn reset(queue_id: Option<i32>) {
    if !preloaded() {
        return;
    }
    let db = my_db();
    let t = now();
    let s = STATS.exclusive();
    for e in s
        .entries
        .iter_mut()
        .filter(|e| e.dboid == db && queue_id.is_none_or(|q| q == e.queue_id))
    {
        e.reset_counters(t);
    }
}

/// The queues of this database whose gauges are exact and count ready messages: one pass
/// over shared memory (the worker's tick looks for their oldest ready message; calling `get`
/// per queue copied every entry's histograms, 15 µs a queue).
pub fn ready_queues() -> Vec<i32> {
    if !preloaded() {
        return Vec::new();
    }
    let db = my_db();
    let s = STATS.share();
    s.entries
        .iter()
        .filter(|e| e.dboid == db && e.valid && e.gauges[0] > 0)
        .map(|e| e.queue_id)
        .collect()
}

/// A copy of one queue's entry of this database.
pub fn get(queue_id: i32) -> Option<Entry> {
    if !preloaded() {
        return None;
    }
    let db = my_db();
    let s = STATS.share();
    table::index(s.entries, db, queue_id).map(|i| s.entries[i])
}

/// Copies of the entries of the databases `keep` accepts, by database then queue name.
pub fn snapshot(keep: impl Fn(u32) -> bool) -> Vec<Entry> {
    if !preloaded() {
        return Vec::new();
    }
    let mut v: Vec<Entry> = {
        let s = STATS.share();
        s.entries
            .iter()
            .filter(|e| e.dboid != 0 && e.name_len > 0 && keep(e.dboid))
            .copied()
            .collect()
    };
    v.sort_by(|a, b| (a.dboid, a.name()).cmp(&(b.dboid, b.name())));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log_spaced_and_the_last_takes_the_rest() {
        assert_eq!(bucket_of(-5), 0);
        assert_eq!(bucket_of(1_000), 0);
        assert_eq!(bucket_of(1_001), 1);
        assert_eq!(bucket_of(3_600_000_000), BOUNDS_US.len() - 1);
        assert_eq!(bucket_of(i64::MAX), BOUNDS_US.len());
    }

    #[test]
    fn deleted_is_what_left_without_being_archived_or_dead_lettered() {
        let mut e = Entry::fresh(1, 1, 0);
        let mut d = Delta {
            removed: 5,
            ..Delta::default()
        };
        d.events[ARCHIVED] = 2;
        d.events[DEAD_LETTERED] = 1;
        d.observe(WAIT, 2_000);
        e.apply(&d);
        assert_eq!(e.events[DELETED], 2);
        assert_eq!(e.events[ARCHIVED], 2);
        assert_eq!(e.hist[WAIT].count(), 1);
        assert_eq!(e.hist[WAIT].buckets[1], 1);
        assert_eq!(e.hist[WAIT].sum_us, 2_000);
    }
}
