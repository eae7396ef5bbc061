//! The claim cursor and the due time: what lets a read go straight to the first deliverable
//! message, and skip the lease-expiry and promotion probes when nothing can be due, however
//! many dead index entries a held xmin horizon has left behind (docs/design.md, "Claim
//! cursor").
//!
//! Per queue, in shared memory:
//! - `mark`, a claim key (`-priority`, `msg_id`) such that every committed ready message has a
//!   key above it. A read scans the ready index from `mark` instead of from the queue's start,
//!   so it never walks the entries of the messages claimed before it.
//! - `due`, a time such that no committed leased or delayed message has `vt` before it. A read
//!   runs the expiry and promotion probes only once `due` has passed.
//!
//! Both are bounds that may be too low (then a read does more work than needed, never less);
//! the rules below keep them from ever being too high:
//! - **Lowering.** A transaction that makes a message ready (send, promotion, group advance,
//!   `set_vt` 0, redrive) or leased or delayed with some `vt` records it; at commit, after the
//!   commit is visible, it lowers `mark` below that key and `due` to that `vt`, and lowers the
//!   `low` of every watch in flight on the queue to that key. Within the transaction its own
//!   records already count, so it reads its own messages. An abort lowers nothing: its rows
//!   are gone.
//! - **Raising the mark.** A read takes a watch slot (one of `WATCHES` per queue) and notes the
//!   mark before its claim takes a snapshot. At its commit it raises the mark to the last key it
//!   claimed (or past everything, when it found fewer than it asked for), but never to or above
//!   its watch's `low`: the lowest key committed since the note, which its snapshot may not
//!   have seen. A read that found no free slot does not raise. Messages it skipped because
//!   another transaction held them come back only through that transaction's abort, which
//!   lowers.
//! - **Aborts.** A read that aborts lowers the mark back to where its scan started; a
//!   subtransaction's abort does the same and takes away the raises of the transaction's
//!   claims, which it keeps, so a later abort lowers again. Any other verb that may have locked
//!   a ready message (archive, delete, set_vt, nack, purge, drop_queue) resets the mark and
//!   `due` on abort.
//! - **Raising due.** One backend at a time recomputes `due` from the table once it has
//!   passed: it sets a flag, runs the probes, takes a new snapshot for the minimum `vt`, and
//!   publishes the minimum of that and of every `vt` committed while the flag was set. A
//!   recompute older than `BUSY_STALE` no longer makes others skip their probes.
//! - **Prepared transactions** commit in another backend, with no callback here: a PREPARE
//!   resets both bounds of the queues it touched and freezes them (no raising, also by claims
//!   noted while frozen) until `maintain()` finds no prepared transaction left in the database.
//! - **REPEATABLE READ and SERIALIZABLE** transactions read through a snapshot taken at their
//!   start, before their note: their claims never raise the mark, and they never recompute
//!   `due` (they probe when it has passed).
//! - **Everything else** (a restore that bypasses the API, a user's own `UPDATE`, a logical
//!   replication apply) is caught by `maintain()`, which checks each queue's mark against the
//!   table every `CHECK_INTERVAL` and lowers it when a ready message sits below it.
//!
//! An entry carries a generation: a queue dropped and re-created, or an entry re-used, never
//! takes a raise noted on an earlier incarnation.
//!
//! A restart or crash reinitializes shared memory: every bound starts at its minimum. Without
//! `shared_preload_libraries` there is no table: reads scan from the start and probe every
//! time, as before.
//!
//! The rules are carried out by `rules.rs` (plain Rust on plain data, unit-tested there and
//! model-checked by `model.rs`); this file is the Postgres shell around it: the shared table
//! behind its LWLock, the transaction's record in a thread-local, and what Postgres knows (the
//! database, the pid, the isolation level, the clock).
use pgrx::prelude::*;
use std::cell::RefCell;

use super::preloaded;
use super::shm::Region;

#[cfg(test)]
mod model;
mod rules;

use rules::{Ctx, Cursors, View, Xact};
pub use rules::{Entry, Head, Key, Probe, Status, MAX_KEY, MIN_KEY};

/// The shared table: `pgflow.max_queues` entries.
pub(super) static CURSORS: Region<Head, Entry> = Region::new(c"pgflow_cursors");

/// The table, held exclusively, for one call of the rules.
fn with_table<R>(f: impl FnOnce(&mut Cursors) -> R) -> R {
    let g = CURSORS.exclusive();
    f(&mut Cursors {
        head: &mut *g.head,
        entries: &mut *g.entries,
    })
}

/// The table, held in shared mode.
fn with_view<R>(f: impl FnOnce(&View) -> R) -> R {
    let g = CURSORS.share();
    f(&View {
        head: g.head,
        entries: g.entries,
    })
}

thread_local! {
    static XACT: RefCell<Xact> = RefCell::new(Xact::default());
    /// Numbers this backend's claims (with its pid, the owner token of a watch slot).
    static TOKEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The calling backend, as the core sees it.
fn ctx() -> Ctx {
    Ctx {
        db: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        pid: unsafe { pg_sys::MyProcPid },
        snapshot: unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 },
    }
}

fn ensure_callbacks() {
    super::xact::ensure();
}

fn with_xact<R>(f: impl FnOnce(&mut Xact) -> R) -> R {
    XACT.with(|x| f(&mut x.borrow_mut()))
}

/// This backend's transaction record, taken out without allocating or panicking (None when
/// the cell is busy, which cannot happen between statements).
fn take_xact() -> Option<Xact> {
    XACT.try_with(|x| x.try_borrow_mut().ok().map(|mut b| std::mem::take(&mut *b)))
        .ok()
        .flatten()
}

/// Commit: publishes the transaction's lowerings and raises, and adds to `wake` the queues
/// whose due time it brought forward, so that their sleeping readers look again.
pub(super) fn at_commit(wake: &mut super::xact::WakeSet) {
    if let Some(x) = take_xact().filter(rules::commit_has_work) {
        with_table(|t| rules::commit(t, &x, ctx(), &mut |q| wake.add(q)));
    }
}

/// Abort (`prepared`: PREPARE TRANSACTION): see `rules::abort`.
pub(super) fn at_abort(prepared: bool) {
    if let Some(x) = take_xact().filter(|x| rules::abort_has_work(x, prepared)) {
        with_table(|t| rules::abort(t, &x, ctx(), prepared));
    }
}

/// A subtransaction's abort: see `rules::subabort` (in place, nothing allocated).
pub(super) fn at_subabort() {
    let _ = XACT.try_with(|x| {
        let Ok(mut x) = x.try_borrow_mut() else {
            return;
        };
        with_table(|t| rules::subabort(t, &mut x, ctx()));
    });
}

/// Before a claim's snapshot: the key to scan from, and a note for `claim_end`.
pub fn claim_begin(queue_id: i32, seq: u32) -> Key {
    if !preloaded() {
        return MIN_KEY;
    }
    ensure_callbacks();
    let token = TOKEN.with(|n| {
        let next = n.get().wrapping_add(1).max(1);
        n.set(next);
        (u64::from(unsafe { pg_sys::MyProcPid } as u32) << 32) | (next & 0xffff_ffff)
    });
    let c = ctx();
    with_xact(|x| with_table(|t| rules::claim_begin(t, x, c, queue_id, seq, token)))
}

/// The messages one claim took: `n` of them, keys from `first` to `last` (once per claim, from
/// an aggregate over its rows).
pub fn claim_span(first: Key, last: Key, n: i64) {
    if preloaded() {
        with_xact(|x| rules::claim_span(x, first, last, n));
    }
}

/// After a claim of up to `qty` (see `rules::claim_end`): an empty claim's watch ends now.
pub fn claim_end(qty: i64) {
    if !preloaded() {
        return;
    }
    let c = ctx();
    if let Some(empty) = with_xact(|x| rules::claim_end(x, c, qty)) {
        with_table(|t| rules::end_empty(t, c, empty));
    }
}

/// This transaction made a message of the queue ready.
pub fn ready(queue_id: i32, seq: u32, key: Key) {
    if preloaded() {
        ensure_callbacks();
        with_xact(|x| x.ready(queue_id, seq, key));
    }
}

/// This transaction leased or delayed a message of the queue until `vt`.
pub fn due_at(queue_id: i32, seq: u32, vt: i64) {
    if preloaded() {
        ensure_callbacks();
        with_xact(|x| x.due_at(queue_id, seq, vt));
    }
}

/// This transaction may lock messages of the queue (ready ones among them).
pub fn touch_queue(queue_id: i32, seq: u32) {
    if preloaded() {
        ensure_callbacks();
        with_xact(|x| x.touch(queue_id, seq));
    }
}

/// What a read does about lease expiry and promotion at `now`.
pub fn due_begin(queue_id: i32, seq: u32, now: i64) -> Probe {
    if !preloaded() {
        return Probe::Probe;
    }
    ensure_callbacks();
    // This transaction's own leases and delays are not in shared memory before its commit.
    if with_xact(|x| x.own_due(queue_id, seq)).is_some_and(|vt| vt <= now) {
        with_xact(|x| x.touch(queue_id, seq));
        return Probe::Probe;
    }
    let c = ctx();
    let real_now = unsafe { pg_sys::GetCurrentTimestamp() };
    if with_view(|t| rules::due_quick(t, c, queue_id, seq, now, real_now)) {
        return Probe::Skip;
    }
    let r = with_table(|t| rules::due_begin(t, c, queue_id, seq, now, real_now));
    with_xact(|x| rules::note_probe(x, queue_id, seq, r));
    r
}

/// Publishes the recomputed due (`next`: the minimum vt the probe's snapshot found).
pub fn due_end(queue_id: i32, seq: u32, next: Option<i64>) {
    if !preloaded() {
        return;
    }
    let c = ctx();
    with_xact(|x| with_table(|t| rules::due_end(t, x, c, queue_id, seq, next)));
}

/// The earliest time anything of the queue can come due, when known.
pub fn due(queue_id: i32, seq: u32) -> Option<i64> {
    if !preloaded() {
        return None;
    }
    let c = ctx();
    with_xact(|x| with_view(|t| rules::due(t, x, c, queue_id, seq)))
}

/// The mark to check against the table, when its check is due at `now` (maintain()).
pub fn check_begin(queue_id: i32, seq: u32, now: i64) -> Option<Key> {
    if !preloaded() {
        return None;
    }
    let real_now = unsafe { pg_sys::GetCurrentTimestamp() };
    let c = ctx();
    with_table(|t| rules::check_begin(t, c, queue_id, seq, now, real_now))
}

/// A ready message was found at or below the mark: lower it (an event, like a send's commit).
pub fn lower_now(queue_id: i32, seq: u32, key: Key) {
    if preloaded() {
        let c = ctx();
        with_table(|t| rules::lower_now(t, c, queue_id, seq, key));
    }
}

/// Forgets every queue of a database when the current transaction commits (see
/// `Xact::drop_dbs`).
pub fn drop_database_entries(dboid: u32) {
    if preloaded() {
        ensure_callbacks();
        with_xact(|x| x.drop_dbs.push(dboid));
    }
}

/// Forgets a dropped queue when the drop commits.
pub fn forget(queue_id: i32) {
    if preloaded() {
        ensure_callbacks();
        with_xact(|x| x.forget.push(queue_id));
    }
}

/// The freeze count, read before looking for prepared transactions.
pub fn freezes() -> u64 {
    if !preloaded() {
        return 0;
    }
    CURSORS.share().head.freezes
}

/// No prepared transaction was left in this database when `freezes` was `seen`: thaw its
/// queues, unless a PREPARE has frozen one since.
pub fn thaw(seen: u64) -> bool {
    let c = ctx();
    preloaded() && with_table(|t| rules::thaw(t, c, seen))
}

/// Every queue's state in this database, for `pgflow.cursor_status()`.
pub fn status() -> Vec<Status> {
    if !preloaded() {
        return Vec::new();
    }
    let db = ctx().db;
    with_view(|t| rules::status(t, db))
}

/// The table's use, for `worker_status()` and the endpoint: (entries in use of all databases,
/// of database `db`, refusals since the server started of all databases, of `db`).
pub fn capacity(db: u32) -> (usize, usize, u64, u64) {
    if !preloaded() {
        return (0, 0, 0, 0);
    }
    with_view(|t| {
        let (all, mine) = t.used(db);
        (
            all,
            mine,
            t.head.census.refused,
            t.head.census.refused_of(db),
        )
    })
}

/// The table's length (`pgflow.max_queues`; 0 without the preload).
pub fn len() -> usize {
    CURSORS.size()
}

/// The first refusal since the server started, once: true for the one caller that should warn.
pub fn take_warning() -> Option<u64> {
    if !preloaded() || CURSORS.share().head.census.refused == 0 {
        return None;
    }
    let g = CURSORS.exclusive();
    let c = &mut g.head.census;
    if c.warned {
        return None;
    }
    c.warned = true;
    Some(c.refused)
}
