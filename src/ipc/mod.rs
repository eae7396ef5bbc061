//! Shared memory and the signals between processes: long-poll waiters (`waiters`), the NOTIFY
//! throttle (`notify`), the claim cursor (`cursor`), the statistics (`stats`), what happens at
//! transaction ends (`xact`, the only callback registration), and the one way any pgflow
//! process wakes another: setting its latch. `README.md` here maps them.
//!
//! Every wake-up sets a latch (the `procLatch` of the process's PGPROC, in shared memory and so
//! valid in every process); none signals a stored pid, which could by then belong to another
//! process. A latch left behind by a process that exited is harmless: setting it wakes, at
//! worst, whichever process took over that PGPROC, and every sleeper here tolerates a spurious
//! wake-up.
//!
//! This module depends on nothing else of the crate but the settings: the workers, the SQL shims
//! and the hook all build on it.
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

pub mod cursor;
pub mod notify;
pub mod stats;
pub mod waiters;
pub mod xact;

/// Databases whose worker can be woken at once (the worker registry has the same size).
pub const MAX_WORKERS: usize = 256;

/// Set in `_PG_init` when loaded by `shared_preload_libraries`: only then does pgflow's shared
/// memory exist.
static mut PRELOADED: bool = false;

/// Whether the library was preloaded, so its shared memory exists.
pub fn preloaded() -> bool {
    // SAFETY: written once in _PG_init, before any other code of this library runs.
    unsafe { PRELOADED }
}

/// A process's latch as stored in shared memory (0: none).
pub type LatchRef = usize;

/// Called from `_PG_init` when the library is being preloaded.
pub fn init() {
    unsafe {
        PRELOADED = true;
    }
    waiters::init();
    notify::init();
    cursor::init();
    stats::init();
    xact::init();
    pg_shmem_init!(WORKER_LATCHES);
}

/// This process's latch, to store where others can set it.
pub fn my_latch() -> LatchRef {
    unsafe { pg_sys::MyLatch as LatchRef }
}

/// Wakes the process that owns `latch` (a no-op for 0).
pub fn set_latch(latch: LatchRef) {
    if latch != 0 {
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// Sleeps on this process's latch for at most `timeout_ms` (at least 1 ms), until it is set;
/// exits with the postmaster. The caller checks for interrupts.
pub fn sleep(timeout_ms: i64) {
    let timeout = timeout_ms.clamp(1, i64::from(i32::MAX));
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}

/// The latch of each database's running worker, so that a backend can wake it (for a trailing
/// NOTIFY) without knowing the worker registry.
#[derive(Copy, Clone)]
pub struct WorkerLatches {
    slots: [(u32, LatchRef); MAX_WORKERS],
}

impl Default for WorkerLatches {
    fn default() -> Self {
        WorkerLatches {
            slots: [(0, 0); MAX_WORKERS],
        }
    }
}

// SAFETY: plain data behind the LWLock; the latches are shared-memory addresses.
unsafe impl PGRXSharedMemory for WorkerLatches {}

static WORKER_LATCHES: PgLwLock<WorkerLatches> = unsafe { PgLwLock::new(c"pgflow_worker_latches") };

/// A database's worker has started: `wake_worker(dboid)` sets its latch from now on.
pub fn worker_started(dboid: u32) {
    let mut t = WORKER_LATCHES.exclusive();
    let idx = t
        .slots
        .iter()
        .position(|s| s.0 == dboid)
        .or_else(|| t.slots.iter().position(|s| s.0 == 0));
    if let Some(i) = idx {
        t.slots[i] = (dboid, my_latch());
    }
}

/// A database's worker is exiting.
pub fn worker_exited(dboid: u32) {
    let mut t = WORKER_LATCHES.exclusive();
    for s in t.slots.iter_mut().filter(|s| s.0 == dboid) {
        *s = (0, 0);
    }
}

/// Wakes the worker of database `dboid`, if one runs.
pub fn wake_worker(dboid: u32) {
    if !preloaded() {
        return;
    }
    let latch = {
        let t = WORKER_LATCHES.share();
        t.slots.iter().find(|s| s.0 == dboid).map_or(0, |s| s.1)
    };
    set_latch(latch);
}
