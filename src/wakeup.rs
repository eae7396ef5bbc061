//! Wake-ups for long-poll reads: `read(..., wait => interval)` sleeps on its own latch instead
//! of querying in a loop, and a committed send to its queue sets that latch.
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
use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic, PgLwLock};

use crate::worker::preloaded;

/// Readers that can wait at once with wake-ups; more fall back to polling.
pub const MAX_WAITERS: usize = 1024;

/// How often a waiting reader looks when it cannot be woken (no preload, or the table is full).
pub const POLL_FALLBACK_MS: i64 = 100;

#[derive(Copy, Clone, Default)]
struct Waiter {
    pid: i32,
    dboid: u32,
    queue_id: i32,
    latch: usize,
}

#[derive(Copy, Clone)]
pub struct Waiters {
    slots: [Waiter; MAX_WAITERS],
}

impl Default for Waiters {
    fn default() -> Self {
        Waiters {
            slots: [Waiter::default(); MAX_WAITERS],
        }
    }
}

// SAFETY: plain data; the latch is an address in shared memory (a PGPROC's procLatch), valid
// in every process.
unsafe impl PGRXSharedMemory for Waiters {}

static WAITERS: PgLwLock<Waiters> = unsafe { PgLwLock::new(c"pgflow_waiters") };
/// Registered waiters, so a commit with nobody waiting skips the lock.
static WAITING: PgAtomic<AtomicU32> = unsafe { PgAtomic::new(c"pgflow_waiting") };

pub fn init() {
    pg_shmem_init!(WAITERS);
    pg_shmem_init!(WAITING);
}

thread_local! {
    /// Queues this transaction sent to, and whether the commit callback is registered.
    static SENT: RefCell<(Vec<i32>, bool)> = const { RefCell::new((Vec::new(), false)) };
    /// Whether this backend holds a registration, and whether its cleanup is registered.
    static REGISTERED: RefCell<(bool, bool)> = const { RefCell::new((false, false)) };
}

fn unregister() {
    let had = REGISTERED.with(|r| std::mem::replace(&mut r.borrow_mut().0, false));
    if !had {
        return;
    }
    let me = unsafe { pg_sys::MyProcPid };
    let mut w = WAITERS.exclusive();
    for s in w.slots.iter_mut().filter(|s| s.pid == me) {
        *s = Waiter::default();
        WAITING.get().fetch_sub(1, Ordering::SeqCst);
    }
}

/// Registers this backend as a reader of `queue_id` until `_wait_end` or the end of the
/// transaction. False when it cannot be woken (not preloaded, or the table is full): the
/// caller then polls.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _wait_begin(queue_id: i32) -> bool {
    if !preloaded() {
        return false;
    }
    unregister();
    let me = unsafe { pg_sys::MyProcPid };
    let entry = Waiter {
        pid: me,
        dboid: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        queue_id,
        latch: unsafe { pg_sys::MyLatch } as usize,
    };
    {
        let mut w = WAITERS.exclusive();
        let Some(slot) = w.slots.iter_mut().find(|s| s.pid == 0) else {
            return false;
        };
        *slot = entry;
        WAITING.get().fetch_add(1, Ordering::SeqCst);
    }
    REGISTERED.with(|r| {
        let mut r = r.borrow_mut();
        r.0 = true;
        if !r.1 {
            r.1 = true;
            let clean = || {
                REGISTERED.with(|r| r.borrow_mut().1 = false);
                unregister();
            };
            pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, clean);
            pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, clean);
        }
    });
    true
}

/// Ends this backend's registration (also done at the end of the transaction).
#[pg_extern(volatile, parallel_unsafe)]
fn _wait_end() {
    if preloaded() {
        unregister();
    }
}

/// Sleeps on this backend's latch until `until`, a wake-up, or an interrupt (a cancel or
/// statement_timeout raises here). When `woken` is false nothing will set the latch, so it
/// sleeps at most POLL_FALLBACK_MS.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _wait_sleep(until: TimestampWithTimeZone, woken: bool) {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let until: i64 = until.into();
    let mut ms = (until - now + 999) / 1000;
    if !woken {
        ms = ms.min(POLL_FALLBACK_MS);
    }
    if ms > 0 {
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                ms.min(i64::from(i32::MAX)) as _,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
    }
    pgrx::pg_sys::check_for_interrupts!();
}

/// Announces that this transaction made messages of a queue deliverable (a send, `set_vt` 0, a
/// redrive, a group advance): its commit wakes the queue's waiting readers and, for a
/// notify-enabled queue, LISTEN clients (throttled). The one call every such path makes.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _announce(queue_id: i32, queue_name: &str, notify: bool) {
    wake_on_commit(queue_id);
    if notify {
        notify_send(queue_id, queue_name);
    }
}

/// Remembers `queue_id` for the commit's wake-up. Cheap: a lookup in a backend-local list.
fn wake_on_commit(queue_id: i32) {
    if !preloaded() {
        return;
    }
    SENT.with(|s| {
        let mut s = s.borrow_mut();
        if !s.0.contains(&queue_id) {
            s.0.push(queue_id);
        }
        if !s.1 {
            s.1 = true;
            pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, wake_sent);
            pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, || {
                SENT.with(|s| *s.borrow_mut() = (Vec::new(), false));
            });
        }
    });
}

/// After commit: set the latch of every reader waiting on a queue this transaction sent to.
fn wake_sent() {
    let queues = SENT.with(|s| std::mem::replace(&mut *s.borrow_mut(), (Vec::new(), false)).0);
    if WAITING.get().load(Ordering::SeqCst) == 0 {
        return;
    }
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let w = WAITERS.share();
    for s in w.slots.iter() {
        if s.pid != 0 && s.dboid == db && queues.contains(&s.queue_id) {
            unsafe { pg_sys::SetLatch(s.latch as *mut pg_sys::Latch) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NOTIFY for LISTEN clients, throttled
// ---------------------------------------------------------------------------------------------
//
// A queue created with notify => true announces sends on channel "pgflow" with the queue name
// as payload. A NOTIFY makes its transaction's commit take a cluster-wide lock, so a burst of
// sends would serialize every commit; instead each queue notifies at most once per
// `pgflow.notify_interval`:
// - the first send of a window issues NOTIFY in its own transaction (delivered at its commit);
// - a send inside the window issues none; at its commit it marks the queue pending, and the
//   database's worker sends one trailing NOTIFY when the window ends.
// So a listener that drains the queue on every notification sees each committed message within
// one interval (plus a wake-up of the worker). A notification can also come when there is
// nothing left (a rolled-back send): listeners must treat it as "look", not "there is one".
// Without the preload (no shared table) every send notifies.

/// Queues that can be throttled at once; beyond that, sends notify unthrottled.
pub const MAX_NOTIFY_QUEUES: usize = 1024;

#[derive(Copy, Clone)]
struct NotifySlot {
    dboid: u32,
    queue_id: i32,
    last: i64,
    pending: bool,
    name: [u8; 96],
}

impl Default for NotifySlot {
    fn default() -> Self {
        NotifySlot {
            dboid: 0,
            queue_id: 0,
            last: 0,
            pending: false,
            name: [0; 96],
        }
    }
}

#[derive(Copy, Clone)]
pub struct NotifyTable {
    slots: [NotifySlot; MAX_NOTIFY_QUEUES],
}

impl Default for NotifyTable {
    fn default() -> Self {
        NotifyTable {
            slots: [NotifySlot::default(); MAX_NOTIFY_QUEUES],
        }
    }
}

// SAFETY: plain data behind the LWLock.
unsafe impl PGRXSharedMemory for NotifyTable {}

static NOTIFY: PgLwLock<NotifyTable> = unsafe { PgLwLock::new(c"pgflow_notify") };

pub fn init_notify() {
    pg_shmem_init!(NOTIFY);
}

pub const CHANNEL: &std::ffi::CStr = c"pgflow";

// commands/async.h is not in pgrx's bindings.
unsafe extern "C-unwind" {
    fn Async_Notify(channel: *const std::ffi::c_char, payload: *const std::ffi::c_char);
}

fn notify_now(queue_name: &str) {
    if let Ok(payload) = std::ffi::CString::new(queue_name) {
        unsafe {
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
                Async_Notify(CHANNEL.as_ptr(), payload.as_ptr())
            })
        };
    }
}

thread_local! {
    /// Queues whose send in this transaction was throttled: marked pending at commit.
    static THROTTLED: RefCell<(Vec<i32>, bool)> = const { RefCell::new((Vec::new(), false)) };
}

/// A send to a notify-enabled queue: NOTIFY now, or leave it to the trailing one (see above).
fn notify_send(queue_id: i32, queue_name: &str) {
    let interval = i64::from(crate::guc::NOTIFY_INTERVAL_MS.get()) * 1000;
    if !preloaded() || interval == 0 {
        notify_now(queue_name);
        return;
    }
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let lead = {
        let mut t = NOTIFY.exclusive();
        let idx = t
            .slots
            .iter()
            .position(|s| s.dboid == db && s.queue_id == queue_id)
            .or_else(|| t.slots.iter().position(|s| s.dboid == 0));
        match idx {
            None => true, // table full: unthrottled
            Some(i) => {
                let s = &mut t.slots[i];
                if s.dboid == 0 {
                    *s = NotifySlot {
                        dboid: db,
                        queue_id,
                        ..NotifySlot::default()
                    };
                    let n = queue_name.len().min(95);
                    s.name[..n].copy_from_slice(&queue_name.as_bytes()[..n]);
                }
                if now >= s.last + interval {
                    s.last = now;
                    true
                } else {
                    false
                }
            }
        }
    };
    if lead {
        notify_now(queue_name);
        return;
    }
    THROTTLED.with(|t| {
        let mut t = t.borrow_mut();
        if !t.0.contains(&queue_id) {
            t.0.push(queue_id);
        }
        if !t.1 {
            t.1 = true;
            pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, mark_pending);
            pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, || {
                THROTTLED.with(|t| *t.borrow_mut() = (Vec::new(), false));
            });
        }
    });
}

/// After commit: the throttled queues need a trailing notification; wake the worker for it.
fn mark_pending() {
    let queues = THROTTLED.with(|t| std::mem::replace(&mut *t.borrow_mut(), (Vec::new(), false)).0);
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    {
        let mut t = NOTIFY.exclusive();
        for s in t.slots.iter_mut() {
            if s.dboid == db && queues.contains(&s.queue_id) {
                s.pending = true;
            }
        }
    }
    crate::worker::wake_database_worker(db);
}

/// For a database's worker: sends the trailing notifications that are due (in one transaction)
/// and returns when the next one will be, if any is pending.
pub fn flush_notifies(db: u32) -> Option<i64> {
    let interval = i64::from(crate::guc::NOTIFY_INTERVAL_MS.get()) * 1000;
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let mut due: Vec<String> = Vec::new();
    let mut next: Option<i64> = None;
    {
        let mut t = NOTIFY.exclusive();
        for s in t.slots.iter_mut().filter(|s| s.dboid == db && s.pending) {
            if now >= s.last + interval {
                s.pending = false;
                s.last = now;
                let end = s.name.iter().position(|&b| b == 0).unwrap_or(s.name.len());
                due.push(String::from_utf8_lossy(&s.name[..end]).into_owned());
            } else {
                let at = s.last + interval;
                next = Some(next.map_or(at, |n: i64| n.min(at)));
            }
        }
    }
    if !due.is_empty() {
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
        }
        for name in &due {
            notify_now(name);
        }
        unsafe { pg_sys::CommitTransactionCommand() };
    }
    next
}

/// Forgets a dropped queue's throttle state (its id may be reused after DROP EXTENSION).
#[pg_extern(volatile, strict, parallel_unsafe)]
fn _notify_forget(queue_id: i32) {
    if !preloaded() {
        return;
    }
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let mut t = NOTIFY.exclusive();
    for s in t
        .slots
        .iter_mut()
        .filter(|s| s.dboid == db && s.queue_id == queue_id)
    {
        *s = NotifySlot::default();
    }
}
