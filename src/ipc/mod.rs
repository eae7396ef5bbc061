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
pub mod shm;
pub mod stats;
pub mod table;
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
    stats::init();
    xact::init();
    pg_shmem_init!(WORKER_LATCHES);
    unsafe {
        PREV_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;

/// The per-queue tables' length: `pgflow.max_queues`, read when the postmaster asks for shared
/// memory (the setting can only change with a restart).
fn max_queues() -> usize {
    usize::try_from(crate::guc::MAX_QUEUES.get()).unwrap_or(1024)
}

/// Asks for the regions sized at start (`shm::Region`): the three per-queue tables and one
/// waiter slot per backend.
#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        let n = max_queues();
        cursor::CURSORS.request(n);
        stats::STATS.request(n);
        notify::NOTIFY.request(n);
        waiters::WAITERS.request(usize::try_from(pg_sys::MaxBackends).unwrap_or(0));
    }
}

/// Finds or makes the regions (the postmaster runs it again after a crash restart).
#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        cursor::CURSORS.startup();
        stats::STATS.startup();
        notify::NOTIFY.startup();
        waiters::WAITERS.startup();
    }
}

/// The databases that hold entries in the per-queue tables (the launcher's sweep; allocates).
pub fn databases_with_entries() -> Vec<u32> {
    if !preloaded() {
        return Vec::new();
    }
    let mut dbs = table::databases(cursor::CURSORS.share().entries);
    dbs.extend(table::databases(stats::STATS.share().entries));
    dbs.extend(table::databases(notify::NOTIFY.share().entries));
    dbs.sort_unstable();
    dbs.dedup();
    dbs
}

/// Frees every entry of the databases `gone` (they no longer exist) in the per-queue tables;
/// how many it freed. The hook frees a database's entries when its DROP DATABASE commits; this
/// is the launcher's backstop for any other way a database goes.
pub fn sweep(gone: &[u32]) -> usize {
    if !preloaded() || gone.is_empty() {
        return 0;
    }
    let is_gone = |d: u32| gone.contains(&d);
    let mut n = 0;
    {
        let g = cursor::CURSORS.exclusive();
        let (head, entries) = (&mut *g.head, &mut *g.entries);
        n += table::forget_where(&mut head.census, entries, is_gone);
    }
    {
        let g = stats::STATS.exclusive();
        let (census, entries) = (&mut *g.head, &mut *g.entries);
        n += table::forget_where(census, entries, is_gone);
    }
    {
        let g = notify::NOTIFY.exclusive();
        let (census, entries) = (&mut *g.head, &mut *g.entries);
        n += table::forget_where(census, entries, is_gone);
    }
    n
}

/// The bytes of shared memory the regions sized at start take, for `pgflow.max_queues` queues
/// and `backends` backends (docs/operations.md quotes it).
pub fn shmem_bytes(queues: usize, backends: usize) -> usize {
    shm::Region::<cursor::Head, cursor::Entry>::bytes(queues)
        + shm::Region::<table::Census, stats::Entry>::bytes(queues)
        + shm::Region::<table::Census, notify::NotifySlot>::bytes(queues)
        + shm::Region::<(), waiters::Waiter>::bytes(backends)
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

#[cfg(test)]
mod tests {
    #[test]
    fn shared_memory_per_queue_is_what_the_docs_say() {
        let per_queue = (super::shmem_bytes(10_000, 0) - super::shmem_bytes(0, 0)) / 10_000;
        // docs/operations.md and guc.rs: about 1.3 kB a queue (1,280 bytes when last measured).
        assert!(
            (1_000..=1_400).contains(&per_queue),
            "the docs say about 1.3 kB a queue: {per_queue} bytes"
        );
    }
}
