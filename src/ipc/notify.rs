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

use super::preloaded;
use super::shm::Region;
use super::table::{self, Census, Keyed};

#[derive(Copy, Clone)]
pub(super) struct NotifySlot {
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

impl Keyed for NotifySlot {
    fn key(&self) -> (u32, i32) {
        (self.dboid, self.queue_id)
    }
    fn set_key(&mut self, db: u32, queue_id: i32) {
        self.dboid = db;
        self.queue_id = queue_id;
    }
}

/// One slot per notify-enabled queue that has announced a send: `pgflow.max_queues` of them
/// (`ipc::table`); a queue that finds none notifies unthrottled.
pub(super) static NOTIFY: Region<Census, NotifySlot> = Region::new(c"pgflow_notify");

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
        let g = NOTIFY.exclusive();
        let (census, slots) = (&mut *g.head, &mut *g.entries);
        match table::find_or_make(census, slots, db, queue_id) {
            None => true, // table full: unthrottled
            Some((i, made)) => {
                let s = &mut slots[i];
                if made {
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
        let g = NOTIFY.exclusive();
        for &q in queues {
            if let Some(i) = table::index(g.entries, db, q) {
                g.entries[i].pending = true;
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
        let g = NOTIFY.exclusive();
        for s in g.entries.iter_mut().filter(|s| s.dboid == db && s.pending) {
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
    if !preloaded() {
        return;
    }
    let g = NOTIFY.exclusive();
    let (census, slots) = (&mut *g.head, &mut *g.entries);
    table::forget(census, slots, db, queue_id);
}

/// Forgets every throttle slot of a database (DROP DATABASE, DROP EXTENSION, DROP SCHEMA
/// pgflow). Done before the command runs: if it rolls back, the next send of a queue just
/// notifies at once, as after a restart.
pub fn forget_database(dboid: u32) {
    if !preloaded() {
        return;
    }
    let g = NOTIFY.exclusive();
    let (census, slots) = (&mut *g.head, &mut *g.entries);
    table::forget_db(census, slots, dboid);
}

/// The table's use: (entries in use of all databases, refusals since the server started of
/// database `db`: sends of a queue that found no slot and notified unthrottled).
pub fn capacity(db: u32) -> (usize, u64) {
    if !preloaded() {
        return (0, 0);
    }
    let g = NOTIFY.share();
    (table::used(g.entries, db).0, g.head.refused_of(db))
}

/// The table's length (`pgflow.max_queues`; 0 without the preload).
pub fn len() -> usize {
    NOTIFY.size()
}
