//! Wake-ups for long-poll reads: `read(..., wait => interval)` sleeps on its own latch instead
//! of querying in a loop, and a committed send to its queue sets that latch. The SQL shims are
//! in `api::wait`.
//!
//! A waiting reader registers (database, queue, latch) in a shared table **before** it looks
//! for messages, then sleeps. A producer's transaction remembers the queues it sent to and,
//! after its commit is visible, sets the latch of every reader registered for them. Either the
//! reader's look comes after the commit (and sees the message), or the registration came
//! before the producer scanned the table (and the reader is woken): no wake-up is lost. Both
//! sides take the table's LWLock, which orders them.
//!
//! Registrations end with the reader's transaction (commit or abort, so an error or a cancel
//! cleans up too). A stale entry can only cause a spurious wake-up, which every sleeper
//! tolerates. Without `shared_preload_libraries` there is no table: readers fall back to
//! looking every `POLL_FALLBACK_MS`.
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU32, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};

use super::shm::Region;
use super::xact::WakeSet;
use super::{preloaded, LatchRef};

/// How often a waiting reader looks when it cannot be woken (no preload).
pub const POLL_FALLBACK_MS: i64 = 100;

#[derive(Copy, Clone, Default)]
pub(super) struct Waiter {
    pid: i32,
    dboid: u32,
    queue_id: i32,
    latch: LatchRef,
    /// Set (with the latch) by `release_database`: stop waiting.
    released: bool,
}

/// One slot per backend that can run a read (`MaxBackends` of them, so every reader has one):
/// a reader of each backend at most waits at once.
pub(super) static WAITERS: Region<(), Waiter> = Region::new(c"pgflow_waiters");
/// Registered waiters, so a commit with nobody waiting skips the lock.
static WAITING: PgAtomic<AtomicU32> = unsafe { PgAtomic::new(c"pgflow_waiting") };

pub(super) fn init() {
    pg_shmem_init!(WAITING);
}

thread_local! {
    /// Queues this transaction made messages ready in.
    static SENT: RefCell<WakeSet> = const { RefCell::new(WakeSet::new()) };
    /// Whether this backend holds a registration.
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

fn unregister() {
    let had = REGISTERED.with(|r| r.replace(false));
    if !had {
        return;
    }
    let me = unsafe { pg_sys::MyProcPid };
    let w = WAITERS.exclusive();
    for s in w.entries.iter_mut().filter(|s| s.pid == me) {
        *s = Waiter::default();
        WAITING.get().fetch_sub(1, Ordering::SeqCst);
    }
}

/// Registers this backend as a reader of `queue_id` until `end` or the end of the
/// transaction. False when it cannot be woken (not preloaded, or the table is full): the
/// caller then polls.
pub fn begin(queue_id: i32) -> bool {
    if !preloaded() {
        return false;
    }
    unregister();
    let me = unsafe { pg_sys::MyProcPid };
    let entry = Waiter {
        pid: me,
        dboid: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        queue_id,
        latch: super::my_latch(),
        released: false,
    };
    {
        let w = WAITERS.exclusive();
        let Some(slot) = w.entries.iter_mut().find(|s| s.pid == 0) else {
            return false;
        };
        *slot = entry;
        WAITING.get().fetch_add(1, Ordering::SeqCst);
    }
    super::xact::ensure();
    REGISTERED.with(|r| r.set(true));
    true
}

/// Ends this backend's registration (also done at the end of the transaction).
pub fn end() {
    if preloaded() {
        unregister();
    }
}

/// Sleeps on this backend's latch until `until` (a timestamp), a wake-up, or an interrupt (a
/// cancel or statement_timeout raises here). When `woken` is false nothing will set the latch,
/// so it sleeps at most POLL_FALLBACK_MS.
pub fn sleep_until(until: i64, woken: bool) {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let mut ms = (until - now + 999) / 1000;
    if !woken {
        ms = ms.min(POLL_FALLBACK_MS);
    }
    if ms > 0 {
        super::sleep(ms);
    }
    pgrx::pg_sys::check_for_interrupts!();
}

/// Whether this backend's registration was released (`release_database`): its read stops
/// waiting and returns what it has.
pub fn released() -> bool {
    if !preloaded() || !REGISTERED.with(|r| r.get()) {
        return false;
    }
    let me = unsafe { pg_sys::MyProcPid };
    WAITERS
        .share()
        .entries
        .iter()
        .any(|s| s.pid == me && s.released)
}

/// Wakes every reader waiting in database `dboid` for good: `DROP EXTENSION pgflow`,
/// `DROP SCHEMA pgflow` and `DROP DATABASE` call it before they run, so that no long-poll holds
/// the locks (or the session) they wait for until its wait runs out.
pub fn release_database(dboid: u32) {
    if !preloaded() || WAITING.get().load(Ordering::SeqCst) == 0 {
        return;
    }
    let w = WAITERS.exclusive();
    for s in w
        .entries
        .iter_mut()
        .filter(|s| s.pid != 0 && s.dboid == dboid)
    {
        s.released = true;
        super::set_latch(s.latch);
    }
}

/// Readers now waiting in long-poll, per (database, queue).
pub fn waiting_by_queue() -> Vec<(u32, i32, i64)> {
    if !preloaded() || WAITING.get().load(Ordering::SeqCst) == 0 {
        return Vec::new();
    }
    let mut out: Vec<(u32, i32, i64)> = Vec::new();
    let w = WAITERS.share();
    for s in w.entries.iter().filter(|s| s.pid != 0 && !s.released) {
        match out.iter_mut().find(|o| o.0 == s.dboid && o.1 == s.queue_id) {
            Some(o) => o.2 += 1,
            None => out.push((s.dboid, s.queue_id, 1)),
        }
    }
    out
}

/// Remembers `queue_id` for the commit's wake-up. Cheap: a lookup in a backend-local list.
pub fn wake_on_commit(queue_id: i32) {
    if !preloaded() {
        return;
    }
    super::xact::ensure();
    SENT.with(|s| s.borrow_mut().add(queue_id));
}

/// Commit (step 3 of `xact`): this backend's registration ends, and every reader waiting in
/// this database on a queue of `wake` or of this transaction's sends is woken, after the claim
/// cursor has published the commit's lowerings (step 2).
pub(super) fn at_commit(wake: &mut WakeSet) {
    if !preloaded() {
        return;
    }
    let _ = SENT.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            let sent = std::mem::take(&mut *s);
            if sent.all {
                wake.all = true;
            }
            for &q in sent.ids() {
                wake.add(q);
            }
        }
    });
    unregister();
    if wake.is_empty() || WAITING.get().load(Ordering::SeqCst) == 0 {
        return;
    }
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let w = WAITERS.share();
    for s in w.entries.iter() {
        if s.pid != 0 && s.dboid == db && wake.contains(s.queue_id) {
            super::set_latch(s.latch);
        }
    }
}

/// Abort and prepare: the registration ends, the sends wake no one.
pub(super) fn at_abort() {
    if !preloaded() {
        return;
    }
    let _ = SENT.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            *s = WakeSet::new();
        }
    });
    unregister();
}
