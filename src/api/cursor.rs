//! The shims behind the claim cursor and the due time (`ipc::cursor`). SQL passes each queue
//! as its id and its `msg_seq` oid (which tells a queue from one re-created after DROP
//! EXTENSION with the same id).
use pgrx::prelude::*;

use crate::ipc::cursor::{self, Key, Probe};

fn ts(t: Option<TimestampWithTimeZone>) -> Option<i64> {
    t.map(Into::into)
}

/// Where `pgflow.test_pause` holds a claim (tests only).
#[derive(Copy, Clone, PartialEq, Eq, Debug, pgrx::PostgresGucEnum)]
pub enum Pause {
    #[name = c"none"]
    None,
    /// After the claim's note (`_claim_begin`), before its snapshot.
    #[name = c"claim_noted"]
    ClaimNoted,
    /// After the claim locked its rows, before its end (`_claim_end`).
    #[name = c"claim_scanned"]
    ClaimScanned,
}

/// The advisory lock key a paused claim waits on.
pub const PAUSE_KEY: i64 = 7_400_613_590;

/// Tests only: when `pgflow.test_pause` names this window, waits until no other session holds
/// the advisory lock `PAUSE_KEY` (taken and released at once, in shared mode), so that an
/// isolation spec can act inside the window: the spec's controller holds the lock, the reader
/// shows as blocked on it (tests/isolation/specs/claim_cursor.spec). Off, it costs one read of
/// a setting.
fn pause_at(at: Pause) {
    if crate::guc::TEST_PAUSE.get() != at {
        return;
    }
    Spi::run_with_args(
        "SELECT pg_catalog.pg_advisory_lock_shared($1), pg_catalog.pg_advisory_unlock_shared($1)",
        &[PAUSE_KEY.into()],
    )
    .unwrap_or_else(|e| pgrx::error!("pgflow.test_pause: {e}"));
}

/// Before a claim's snapshot: `ARRAY[-priority, msg_id]` to scan the ready index from
/// (exclusive). Must run in a statement of its own, before the claim.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _claim_begin(queue_id: i32, seq: pg_sys::Oid) -> Vec<i64> {
    let k = cursor::claim_begin(queue_id, seq.to_u32());
    pause_at(Pause::ClaimNoted);
    vec![i64::from(k.p), k.id]
}

/// The messages a claim took: how many, and the lowest and highest of their keys as
/// `ARRAY[-priority, msg_id]` (an aggregate over the claim's rows, so one call per claim);
/// true, so that it can sit in the claim's WHERE.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _claim_span(first: Vec<i64>, last: Vec<i64>, n: i64) -> bool {
    if let (Some(first), Some(last)) = (Key::from_pair(&first), Key::from_pair(&last)) {
        cursor::claim_span(first, last, n);
    }
    true
}

/// After a claim of up to `qty` messages.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _claim_end(qty: i32) {
    pause_at(Pause::ClaimScanned);
    cursor::claim_end(i64::from(qty));
}

/// This transaction made a message ready; true, so that it can sit in a RETURNING or WHERE.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _ready(queue_id: i32, seq: pg_sys::Oid, priority: i16, msg_id: i64) -> bool {
    cursor::ready(queue_id, seq.to_u32(), Key::of(priority, msg_id));
    true
}

/// This transaction leased or delayed a message until `vt`; true, like `_ready`.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _due_at(queue_id: i32, seq: pg_sys::Oid, vt: TimestampWithTimeZone) -> bool {
    cursor::due_at(queue_id, seq.to_u32(), vt.into());
    true
}

/// This transaction may lock messages of the queue.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _touch(queue_id: i32, seq: pg_sys::Oid) {
    cursor::touch_queue(queue_id, seq.to_u32());
}

/// Whether a read at `now` probes for expired leases and due messages: 0 no (nothing can be
/// due), 1 yes, 2 yes and then it recomputes due with `_due_end`.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _due_begin(queue_id: i32, seq: pg_sys::Oid, now: TimestampWithTimeZone) -> i32 {
    match cursor::due_begin(queue_id, seq.to_u32(), now.into()) {
        Probe::Skip => 0,
        Probe::Probe => 1,
        Probe::Recompute => 2,
    }
}

/// Publishes a recomputed due: `next` is the earliest vt of a leased or delayed message, NULL
/// when there is none. Must run in a statement after `_due_begin`'s.
#[pg_extern(volatile, parallel_unsafe)]
fn _due_end(queue_id: i32, seq: pg_sys::Oid, next: Option<TimestampWithTimeZone>) {
    cursor::due_end(queue_id, seq.to_u32(), ts(next));
}

/// The earliest time a leased or delayed message of the queue can come due, NULL when not
/// known (no shared memory).
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _due(queue_id: i32, seq: pg_sys::Oid) -> Option<TimestampWithTimeZone> {
    cursor::due(queue_id, seq.to_u32())
        .filter(|&t| t != i64::MIN && t != i64::MAX)
        .and_then(|t| TimestampWithTimeZone::try_from(t).ok())
}

/// maintain()'s check: the mark as `ARRAY[-priority, msg_id]` when it is time to check it
/// against the table, else NULL.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _cursor_check(queue_id: i32, seq: pg_sys::Oid, now: TimestampWithTimeZone) -> Option<Vec<i64>> {
    cursor::check_begin(queue_id, seq.to_u32(), now.into()).map(|k| vec![i64::from(k.p), k.id])
}

/// maintain() found a ready message at or below the mark: lower the mark below it.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _cursor_lower(queue_id: i32, seq: pg_sys::Oid, priority: i16, msg_id: i64) {
    cursor::lower_now(queue_id, seq.to_u32(), Key::of(priority, msg_id));
}

/// A dropped queue's cursor is forgotten.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _cursor_forget(queue_id: i32) {
    cursor::forget(queue_id);
}

/// The freeze count, read before looking for prepared transactions.
#[pg_extern(volatile, parallel_unsafe)]
fn _cursor_freezes() -> i64 {
    cursor::freezes() as i64
}

/// Thaws this database's frozen cursors, unless a PREPARE came after `seen` was read.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _cursor_thaw(seen: i64) -> bool {
    cursor::thaw(seen as u64)
}

/// Every cursor of this database (pgflow.cursor_status() adds the queue names).
#[pg_extern(volatile, parallel_restricted)]
#[allow(clippy::type_complexity)]
fn _cursor_status() -> TableIterator<
    'static,
    (
        name!(queue_id, i32),
        name!(seq, pg_sys::Oid),
        name!(mark_priority, Option<i32>),
        name!(mark_msg_id, Option<i64>),
        name!(due, Option<TimestampWithTimeZone>),
        name!(events, i64),
        name!(frozen, bool),
    ),
> {
    let rows = cursor::status().into_iter().map(|s| {
        // The mark as the priority and id just below which nothing is ready; NULL at its
        // minimum ("scan from the start") or maximum ("nothing is ready").
        let bounded = s.mark != cursor::MIN_KEY && s.mark != cursor::MAX_KEY;
        (
            s.queue_id,
            pg_sys::Oid::from(s.seq),
            bounded.then(|| s.mark.p.saturating_neg()),
            bounded.then_some(s.mark.id),
            (s.due != i64::MIN && s.due != i64::MAX)
                .then(|| TimestampWithTimeZone::try_from(s.due).ok())
                .flatten(),
            s.events as i64,
            s.frozen,
        )
    });
    TableIterator::new(rows.collect::<Vec<_>>())
}
