//! NOTIFY for LISTEN clients, throttled.
//!
//! A queue created with notify => true announces sends on channel "pgflow" with the queue name
//! as payload. A NOTIFY makes its transaction's commit take a cluster-wide lock, so a burst of
//! sends would serialize every commit; instead each queue notifies at most once per
//! `pgflow.notify_interval`:
//! - the first send of a window issues NOTIFY in its own transaction (delivered at its commit);
//! - a send inside the window issues none; at its commit it marks the queue pending, and the
//!   database's worker sends one trailing NOTIFY when the window ends.
//!
//! So a listener that drains the queue on every notification sees each committed message within
//! one interval (plus a wake-up of the worker). A notification can also come when there is
//! nothing left (a rolled-back send): listeners must treat it as "look", not "there is one".
//! Without the preload (no shared table) every send notifies.
use std::cell::RefCell;

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

use super::preloaded;

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

pub(super) fn init() {
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
    static THROTTLED: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
}

/// A send to a notify-enabled queue: NOTIFY now, or leave it to the trailing one (see above).
pub fn send(queue_id: i32, queue_name: &str) {
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
    super::xact::ensure();
    THROTTLED.with(|t| {
        let mut t = t.borrow_mut();
        if !t.contains(&queue_id) {
            t.push(queue_id);
        }
    });
}

/// Commit (step 4 of `xact`): the throttled queues need a trailing notification; wake the
/// worker for it. Abort and prepare forget them.
pub(super) fn at_end(committed: bool) {
    let Ok(Some(queues)) =
        THROTTLED.try_with(|t| t.try_borrow_mut().ok().map(|mut t| std::mem::take(&mut *t)))
    else {
        return;
    };
    if committed && !queues.is_empty() && preloaded() {
        mark_pending(&queues);
    }
}

fn mark_pending(queues: &[i32]) {
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    {
        let mut t = NOTIFY.exclusive();
        for s in t.slots.iter_mut() {
            if s.dboid == db && queues.contains(&s.queue_id) {
                s.pending = true;
            }
        }
    }
    super::wake_worker(db);
}

/// For a database's worker: sends the trailing notifications that are due (in one transaction)
/// and returns when the next one will be, if any is pending.
pub fn flush(db: u32) -> Option<i64> {
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
pub fn forget(queue_id: i32) {
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

/// Forgets every throttle slot of a database (DROP DATABASE, DROP EXTENSION, DROP SCHEMA
/// pgflow). Done before the command runs: if it rolls back, the next send of a queue just
/// notifies at once, as after a restart.
pub fn forget_database(dboid: u32) {
    if !preloaded() {
        return;
    }
    let mut t = NOTIFY.exclusive();
    for s in t.slots.iter_mut().filter(|s| s.dboid == dboid) {
        *s = NotifySlot::default();
    }
}
