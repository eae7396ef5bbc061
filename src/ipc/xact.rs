//! Transaction ends: the one place pgflow registers with Postgres's transaction callbacks, and
//! the order in which each part of pgflow acts when a transaction commits, aborts, prepares or
//! rolls back to a savepoint.
//!
//! # The rule: the commit side cannot fail
//!
//! `XACT_EVENT_COMMIT` runs after the commit record is written: an ERROR there is promoted to
//! PANIC (a restart of the whole server) and a Rust panic would become one. The abort side
//! runs while Postgres is already cleaning up after an error. So, on those sides:
//! - nothing allocates: each part takes its backend-local state out of its cell with
//!   `try_borrow_mut` (a `RefCell` already borrowed is skipped, never a panic) and
//!   `mem::take` (no allocation), and publishes it into shared memory under an LWLock;
//! - nothing calls into Postgres beyond LWLocks, latches and plain globals (no catalog, no
//!   palloc, no SPI, no GUC lookup by name);
//! - work that may fail happens before: while the statement runs (a name looked up, a slot
//!   found) or at `XACT_EVENT_PRE_COMMIT`, where an ERROR still aborts the transaction
//!   cleanly.
//!
//! And in case a step breaks the rule anyway, each step runs guarded (`guarded`): a panic or an
//! ERROR is caught, Postgres's interrupt holdoff counts are put back (an ERROR zeroes them),
//! the step is counted (`faults()`, the endpoint's `pgflow_xact_faults_total`) and a WARNING
//! names it; the server stays up. What a failed step did not publish is repaired by the same
//! paths that repair any lost bound: the claim cursor by `maintain()`'s check, the statistics
//! by their rebuild. `pgflow.test_xact_fault` (superuser, for the tests) injects a failure at
//! each phase; tests/pg_regress/sql/xact.sql shows each one leaving the server up.
//!
//! # Order at commit
//!
//! Postgres runs transaction callbacks newest first, so callbacks registered by separate
//! modules ran in whatever order they happened to register in: a long-poll reader could be
//! woken before the claim cursor was lowered below the message that woke it, scan from the old
//! cursor, find nothing and sleep out its wait (issue #30). Here the order is fixed:
//! 1. the statistics publish this transaction's deltas;
//! 2. the claim cursor publishes its lowerings and raises (and says which queues' due time it
//!    brought forward);
//! 3. waiting readers are woken: of the queues this transaction made messages ready in, of the
//!    queues whose due time moved earlier (a delayed send, a nack's retry: their sleep was
//!    computed for the old due time), and of the whole database after `COMMIT PREPARED` or
//!    `ROLLBACK PREPARED` (the prepared transaction's own callbacks ran at its PREPARE);
//! 4. throttled notifications are marked for the worker's trailing NOTIFY;
//! 5. the end hooks of the other modules (a held worker released, a worker requested, the
//!    apply marker cleared), in registration order.
//!
//! Abort, prepare and subtransaction abort go through the same steps where they apply; what
//! each part does at each event is documented at its `at_*` functions.
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};

use super::{cursor, notify, stats, waiters};

/// Where `pgflow.test_xact_fault` injects a failure (tests only).
#[derive(Copy, Clone, PartialEq, Eq, Debug, pgrx::PostgresGucEnum)]
pub enum Fault {
    #[name = c"none"]
    None,
    #[name = c"pre_commit_error"]
    PreCommitError,
    #[name = c"commit_panic"]
    CommitPanic,
    #[name = c"commit_error"]
    CommitError,
    #[name = c"abort_panic"]
    AbortPanic,
    #[name = c"abort_error"]
    AbortError,
    #[name = c"prepare_panic"]
    PreparePanic,
    #[name = c"prepare_error"]
    PrepareError,
    #[name = c"subabort_panic"]
    SubabortPanic,
    #[name = c"subabort_error"]
    SubabortError,
}

/// The events a step runs at.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum End {
    Commit,
    Abort,
    Prepare,
}

/// Failures caught on the commit and abort sides, since the server started.
static FAULTS: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"pgflow_xact_faults") };

pub(super) fn init() {
    pg_shmem_init!(FAULTS);
}

/// Failures caught on the commit and abort sides since the server started (0 without preload).
pub fn faults() -> u64 {
    if super::preloaded() {
        FAULTS.get().load(Ordering::Relaxed)
    } else {
        0
    }
}

/// An end hook of a module outside `ipc` (a worker's hold, a worker request, the apply
/// marker): called at every top-level end with whether the transaction committed. It obeys the
/// rule above.
pub type EndHook = fn(committed: bool);

const MAX_HOOKS: usize = 8;

thread_local! {
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    static HOOKS: Cell<[Option<EndHook>; MAX_HOOKS]> = const { Cell::new([None; MAX_HOOKS]) };
    /// COMMIT PREPARED or ROLLBACK PREPARED ran in this transaction: wake every reader of the
    /// database when it commits.
    static WAKE_DATABASE: Cell<bool> = const { Cell::new(false) };
}

/// Registers the callbacks in this backend, once; every part calls it before it records
/// anything for the end of the transaction.
pub fn ensure() {
    if !REGISTERED.with(|r| r.replace(true)) {
        unsafe {
            pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
        }
    }
}

/// Adds an end hook (once per backend per hook; a hook already there is not added twice).
pub fn add_end_hook(hook: EndHook) {
    ensure();
    HOOKS.with(|h| {
        let mut all = h.get();
        if all.iter().flatten().any(|f| std::ptr::fn_addr_eq(*f, hook)) {
            return;
        }
        if let Some(free) = all.iter_mut().find(|f| f.is_none()) {
            *free = Some(hook);
            h.set(all);
        }
    });
}

/// `COMMIT PREPARED` or `ROLLBACK PREPARED` is about to run: its commit wakes every reader of
/// this database (the prepared transaction's queues are not known here; a spurious wake-up is
/// harmless, a missing one holds a reader for its whole wait).
pub fn wake_database_at_commit() {
    ensure();
    WAKE_DATABASE.with(|w| w.set(true));
}

/// Queues whose readers the commit wakes, collected without allocating; past its capacity the
/// whole database's readers are woken.
pub struct WakeSet {
    ids: [i32; 32],
    len: usize,
    pub all: bool,
}

impl Default for WakeSet {
    fn default() -> Self {
        WakeSet::new()
    }
}

impl WakeSet {
    pub const fn new() -> WakeSet {
        WakeSet {
            ids: [0; 32],
            len: 0,
            all: false,
        }
    }

    pub fn add(&mut self, queue_id: i32) {
        if self.all || self.ids[..self.len].contains(&queue_id) {
            return;
        }
        if self.len == self.ids.len() {
            self.all = true;
        } else {
            self.ids[self.len] = queue_id;
            self.len += 1;
        }
    }

    pub fn contains(&self, queue_id: i32) -> bool {
        self.all || self.ids[..self.len].contains(&queue_id)
    }

    pub fn ids(&self) -> &[i32] {
        &self.ids[..self.len]
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.len == 0
    }
}

fn fault() -> Fault {
    crate::guc::TEST_XACT_FAULT.get()
}

/// A failure of the kind asked for: a Rust panic, or an ERROR raised inside Postgres (a bad
/// integer through `pg_strtoint32`), which is what a catalog or memory failure would look like.
fn inject(panic: bool) {
    if panic {
        panic!("pgflow.test_xact_fault: injected panic");
    }
    unsafe {
        pg_sys::pg_strtoint32(c"pgflow.test_xact_fault: injected error".as_ptr());
    }
}

/// Runs one step of the commit or abort side; a failure is caught, counted and reported, and
/// the server stays up (see the module's header).
fn guarded(step: &str, f: impl FnOnce()) {
    // An ERROR zeroes these on its way out (errfinish); the transaction end that called us
    // still holds its interrupts and resumes them after we return.
    let saved = unsafe {
        (
            pg_sys::InterruptHoldoffCount,
            pg_sys::QueryCancelHoldoffCount,
            pg_sys::CritSectionCount,
            pg_sys::CurrentMemoryContext,
        )
    };
    if catch_unwind(AssertUnwindSafe(f)).is_ok() {
        return;
    }
    unsafe {
        pg_sys::InterruptHoldoffCount = saved.0;
        pg_sys::QueryCancelHoldoffCount = saved.1;
        pg_sys::CritSectionCount = saved.2;
        pg_sys::CurrentMemoryContext = saved.3;
    }
    if super::preloaded() {
        FAULTS.get().fetch_add(1, Ordering::Relaxed);
    }
    // A WARNING does not unwind; guarded as well, since nothing here may escape.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        pgrx::warning!("pgflow: the {step} step of a transaction end failed; the server stays up")
    }));
    unsafe {
        pg_sys::InterruptHoldoffCount = saved.0;
        pg_sys::QueryCancelHoldoffCount = saved.1;
        pg_sys::CritSectionCount = saved.2;
        pg_sys::CurrentMemoryContext = saved.3;
    }
}

fn end_hooks(committed: bool) {
    let hooks = HOOKS.try_with(|h| h.get()).unwrap_or([None; MAX_HOOKS]);
    for hook in hooks.iter().flatten() {
        guarded("end hook", || hook(committed));
    }
}

/// Registered once per backend (`ensure`).
#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        // May fail: an ERROR here aborts the transaction, as any ERROR before the commit does.
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE if fault() == Fault::PreCommitError => {
            inject(false);
        }
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            let f = fault();
            if matches!(f, Fault::CommitPanic | Fault::CommitError) {
                guarded("injected", || inject(f == Fault::CommitPanic));
            }
            let mut wake = WakeSet::new();
            wake.all = WAKE_DATABASE
                .try_with(|w| w.replace(false))
                .unwrap_or(false);
            guarded("statistics", || stats::at_end(End::Commit));
            guarded("claim cursor", || cursor::at_commit(&mut wake));
            guarded("wake-up", || waiters::at_commit(&mut wake));
            guarded("notify", || notify::at_end(true));
            end_hooks(true);
        }
        // PREPARE: the transaction commits later, in whichever session runs COMMIT PREPARED;
        // what it sent wakes readers then (wake_database_at_commit). Here it ends as an abort
        // does, but for the statistics (counted now) and the cursor (frozen).
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => {
            let (end, faults) = if event == XACT_EVENT_PREPARE {
                (End::Prepare, (Fault::PreparePanic, Fault::PrepareError))
            } else {
                (End::Abort, (Fault::AbortPanic, Fault::AbortError))
            };
            let f = fault();
            if f == faults.0 || f == faults.1 {
                guarded("injected", || inject(f == faults.0));
            }
            let _ = WAKE_DATABASE.try_with(|w| w.set(false));
            guarded("statistics", || stats::at_end(end));
            guarded("claim cursor", || cursor::at_abort(end == End::Prepare));
            guarded("wake-up", waiters::at_abort);
            guarded("notify", || notify::at_end(false));
            end_hooks(false);
        }
        _ => {}
    }
}

/// A subtransaction's commit hands its part to the parent; its abort undoes it.
#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_COMMIT_SUB => guarded("statistics", stats::at_subcommit),
        SUBXACT_EVENT_ABORT_SUB => {
            let f = fault();
            if matches!(f, Fault::SubabortPanic | Fault::SubabortError) {
                guarded("injected", || inject(f == Fault::SubabortPanic));
            }
            guarded("statistics", stats::at_subabort);
            guarded("claim cursor", cursor::at_subabort);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_set_past_its_capacity_wakes_everyone() {
        let mut w = WakeSet::new();
        assert!(w.is_empty());
        for q in 1..=32 {
            w.add(q);
            w.add(q);
        }
        assert!(!w.all && w.contains(32) && !w.contains(33));
        w.add(33);
        assert!(w.all && w.contains(1000));
    }
}
