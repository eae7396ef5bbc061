//! Background workers: one launcher per cluster, one maintenance worker per database that has
//! the extension.
//!
//! - `launcher.rs`: the static worker the postmaster starts after recovery. It lists the
//!   databases (a catalog scan, connected to none), keeps one slot per database in shared
//!   memory, and starts, stops and restarts the database workers.
//! - `maintainer.rs`: a database's worker. Each tick it runs `pgflow.maintain()`, which does
//!   bounded batches and returns counts (the same function pg_cron or a client can call).
//! - `hook.rs`: a ProcessUtility hook. `DROP DATABASE`, `CREATE DATABASE ... TEMPLATE`,
//!   `ALTER DATABASE ... RENAME` and `... SET TABLESPACE` refuse to run while another session
//!   is connected to the database, so the hook stops that database's worker first and holds it
//!   until the command's transaction ends.
//! - `policy.rs`: the database filter and the restart backoff, as plain functions.
//!
//! The slot table is the one source of truth, so a restarted launcher neither loses workers nor
//! starts duplicates. A slot moves through these states:
//!
//! ```text
//!  (new database) -> wanted -> starting -> running --(no extension / disabled here)--> idle
//!                      ^  |                 |   \--(error, crash, terminate)--> wanted (backoff)
//!                      |  v                 v
//!                      held <--------- stopping   (pgflow.enabled off, pgflow.databases,
//!                                                   or a utility command holding the database)
//! ```
//! `idle` is left by a notice from `CREATE EXTENSION` (after its commit) or a launcher restart.
use std::ffi::CStr;

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

use crate::ipc::{set_latch, LatchRef};

pub mod exporter;
pub mod exposition;
pub mod hook;
pub mod launcher;
pub mod maintainer;
pub mod policy;
pub mod reindexer;
pub mod status_page;

/// Databases that can have a worker at once; a database beyond this gets none (the launcher
/// logs a WARNING). Each slot takes about 240 bytes of shared memory.
pub const MAX_DATABASES: usize = crate::ipc::MAX_WORKERS;

/// How often the launcher looks for new databases when nothing wakes it sooner.
pub const LAUNCHER_NAPTIME_MS: i64 = 10_000;

/// How often a database's worker compares its tables' indexes with their heaps (reindexer.rs).
pub const REINDEX_CHECK: std::time::Duration = std::time::Duration::from_secs(10);
/// How long after a finished rebuild the worker looks again.
pub const REINDEX_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
/// How long after a failed rebuild (or one that never started) the worker looks again.
pub const REINDEX_RETRY: std::time::Duration = std::time::Duration::from_secs(3600);
/// A rebuild is not started while the horizon has been held back for longer than this: it
/// would wait for the holder (reindexer.rs). Long-poll reads hold a snapshot for their `wait`
/// (the runtimes wait 1 to 5 s), which the rebuild may wait out.
pub const REINDEX_HORIZON_SECS: f64 = 30.0;
/// A rebuilder that has not attached after this long is taken as failed to start.
pub const REINDEX_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotState {
    Free,
    /// Should run; the launcher starts it once `not_before` has passed.
    Wanted,
    /// Registered with the postmaster, not yet attached.
    Starting,
    Running,
    /// Asked to stop; moves to `Held` when it has exited.
    Stopping,
    /// Stopped by configuration or a utility command; the launcher starts it again when allowed.
    Held,
    /// Exited by itself: the extension is not created there, or `pgflow.enabled` is off for that
    /// database.
    Idle,
}

impl SlotState {
    pub fn label(self) -> &'static str {
        match self {
            SlotState::Free => "free",
            SlotState::Wanted => "wanted",
            SlotState::Starting => "starting",
            SlotState::Running => "running",
            SlotState::Stopping => "stopping",
            SlotState::Held => "held",
            SlotState::Idle => "idle",
        }
    }
}

/// Why a worker stopped by itself (an `Idle` slot), as `worker_status` reports it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum IdleReason {
    None,
    /// The extension is not created in the database.
    NoExtension,
    /// `pgflow.enabled` is off for the database (ALTER DATABASE ... SET).
    Disabled,
}

#[derive(Copy, Clone, Debug)]
#[repr(C)]
pub struct Slot {
    pub dboid: u32,
    pub datname: [u8; 64],
    pub state: SlotState,
    /// A utility command (DROP DATABASE, ...) holds this database: no worker until it ends.
    pub held: bool,
    /// Why an idle slot is idle.
    pub idle_reason: IdleReason,
    /// A CREATE EXTENSION committed since the worker attached: it must not go idle on a check
    /// that may have run before that commit.
    pub notified: bool,
    pub pid: i32,
    /// The latch of a backend waiting for this worker to exit (the utility hook), set at its
    /// exit.
    pub waiter_latch: LatchRef,
    pub not_before: i64,
    pub state_since: i64,
    pub started_at: i64,
    pub last_tick_at: i64,
    pub ticks: i64,
    pub expired: i64,
    pub promoted: i64,
    pub pruned: i64,
    pub restarts: i32,
    pub failures: i32,
    /// The worker's last look at what holds back the database's xmin horizon: for how long
    /// (seconds, 0 for nothing) and how many transactions, and when it looked (0: never).
    pub horizon_age: f64,
    pub horizon_xmin_age: i32,
    pub horizon_at: i64,
    /// The worker skips its rounds while default_transaction_read_only is on (a failover
    /// manager fences a promoted server that way until the old primary is known to be down).
    pub read_only: bool,
    /// The index rebuild (reindexer.rs): its process (-1 while it starts, 0 for none), its
    /// table (a number in `reindexer::TABLES`), when it started and ended, the table's index
    /// bytes before, how many finished, whether the last one failed, and when the worker may
    /// look for the next one.
    pub reindex_pid: i32,
    pub reindex_table: u8,
    pub reindex_failed: bool,
    pub reindexes: i32,
    pub reindex_started_at: i64,
    pub reindex_ended_at: i64,
    pub reindex_before: i64,
    pub reindex_next_check: i64,
    /// Since when the launcher could not register this database's worker because every
    /// background worker slot (`max_worker_processes`) was taken (0: it could, or never tried).
    /// `worker_status()`, the endpoint and the status page say so; the launcher warns once.
    pub no_bgw_slot_since: i64,
    /// The database's links to other sites (sql/links.sql), as the worker last counted them
    /// (links_at: when, 0 never): how many, how many not streaming, how many past their
    /// alert_age, the messages in their outboxes and the oldest one's age in seconds, and the
    /// messages their remote sites have confirmed since they were made.
    pub links: i32,
    pub links_down: i32,
    pub links_alerting: i32,
    pub link_backlog: i64,
    pub link_oldest_age: f64,
    pub links_forwarded: i64,
    pub links_at: i64,
    /// The first `LINK_ROWS` links by name, one by one, for the endpoint's per-link series and
    /// the status page (`pgflow.links()` has them all); `link_rows_n` of them are filled.
    pub link_rows: [LinkRow; LINK_ROWS],
    pub link_rows_n: u8,
}

/// How many of a database's links the endpoint and the status page show one by one.
pub const LINK_ROWS: usize = 8;

/// One link as the worker last saw it (a row of `pgflow._links_state()`).
#[derive(Copy, Clone, Debug)]
#[repr(C)]
pub struct LinkRow {
    /// Its name and its remote site's (both 1 to 40 of `a-z`, `0-9`, `_`; NUL-padded).
    pub name: [u8; 40],
    pub remote: [u8; 40],
    /// `links()`'s state, as an index into `LINK_STATES`.
    pub state: u8,
    pub alerting: bool,
    pub backlog: i64,
    pub oldest_age: f64,
    pub forwarded: i64,
    /// Since when it has not been streaming, and when its latest trouble began (Postgres
    /// timestamps; 0: none).
    pub down_since: i64,
    pub last_error_at: i64,
}

/// `links()`'s states; a state this library does not know shows as the last.
pub const LINK_STATES: [&str; 7] = [
    "connected",
    "disconnected",
    "starting",
    "not subscribed",
    "slot lost",
    "wal lost",
    "unknown",
];

impl LinkRow {
    pub const EMPTY: LinkRow = LinkRow {
        name: [0; 40],
        remote: [0; 40],
        state: 0,
        alerting: false,
        backlog: 0,
        oldest_age: 0.0,
        forwarded: 0,
        down_since: 0,
        last_error_at: 0,
    };

    fn text(b: &[u8]) -> String {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }

    fn put(dst: &mut [u8; 40], v: &str) {
        *dst = [0; 40];
        let n = v.len().min(40);
        dst[..n].copy_from_slice(&v.as_bytes()[..n]);
    }

    pub fn name(&self) -> String {
        Self::text(&self.name)
    }

    pub fn remote(&self) -> String {
        Self::text(&self.remote)
    }

    pub fn set_names(&mut self, name: &str, remote: &str) {
        Self::put(&mut self.name, name);
        Self::put(&mut self.remote, remote);
    }

    pub fn state(&self) -> &'static str {
        LINK_STATES[usize::from(self.state).min(LINK_STATES.len() - 1)]
    }

    pub fn state_code(state: &str) -> u8 {
        let i = LINK_STATES
            .iter()
            .position(|&s| s == state)
            .unwrap_or(LINK_STATES.len() - 1);
        u8::try_from(i).unwrap_or(u8::MAX)
    }
}

impl Slot {
    const EMPTY: Slot = Slot {
        dboid: 0,
        datname: [0; 64],
        state: SlotState::Free,
        held: false,
        idle_reason: IdleReason::None,
        notified: false,
        pid: 0,
        waiter_latch: 0,
        not_before: 0,
        state_since: 0,
        started_at: 0,
        last_tick_at: 0,
        ticks: 0,
        expired: 0,
        promoted: 0,
        pruned: 0,
        restarts: 0,
        failures: 0,
        horizon_age: 0.0,
        horizon_xmin_age: 0,
        horizon_at: 0,
        read_only: false,
        reindex_pid: 0,
        reindex_table: 0,
        reindex_failed: false,
        reindexes: 0,
        reindex_started_at: 0,
        reindex_ended_at: 0,
        reindex_before: 0,
        reindex_next_check: 0,
        no_bgw_slot_since: 0,
        links: 0,
        links_down: 0,
        links_alerting: 0,
        link_backlog: 0,
        link_oldest_age: 0.0,
        links_forwarded: 0,
        links_at: 0,
        link_rows: [LinkRow::EMPTY; LINK_ROWS],
        link_rows_n: 0,
    };

    pub fn name(&self) -> String {
        let end = self
            .datname
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.datname.len());
        String::from_utf8_lossy(&self.datname[..end]).into_owned()
    }

    pub fn set_name(&mut self, name: &str) {
        self.datname = [0; 64];
        // datname is a NameData (63 bytes and a NUL), so it always fits.
        let n = name.len().min(63);
        self.datname[..n].copy_from_slice(&name.as_bytes()[..n]);
    }

    /// Whether this slot is a database where pgflow is created, as far as the launcher knows
    /// (the endpoint and the status page show no other).
    pub fn has_pgflow(&self) -> bool {
        self.state != SlotState::Free
            && !(self.state == SlotState::Idle && self.idle_reason == IdleReason::NoExtension)
    }

    /// What keeps this database's worker from doing its rounds, in words (None: nothing):
    /// what `worker_status()` says first and what the status page shows.
    pub fn problem(&self, now: i64) -> Option<String> {
        Some(match (self.state, self.idle_reason) {
            _ if self.held => "held by a database-level command".to_owned(),
            (SlotState::Idle, IdleReason::NoExtension) => {
                "extension not created in this database".to_owned()
            }
            (SlotState::Idle, IdleReason::Disabled) => {
                "pgflow.enabled is off for this database".to_owned()
            }
            (SlotState::Held, _) => "stopped by pgflow.enabled or pgflow.databases".to_owned(),
            (SlotState::Wanted | SlotState::Starting, _) if self.no_bgw_slot_since != 0 => {
                // SAFETY: a plain int setting of the postmaster's.
                let max = unsafe { pgrx::pg_sys::max_worker_processes };
                let since = self
                    .no_bgw_slot_since
                    .div_euclid(1_000_000)
                    .rem_euclid(86_400);
                format!(
                    "no free background worker slot since {:02}:{:02}:{:02} UTC: \
                     max_worker_processes = {max}",
                    since / 3600,
                    since / 60 % 60,
                    since % 60
                )
            }
            (SlotState::Wanted, _) if self.not_before > now => {
                format!("restarting after {} unplanned exits", self.restarts)
            }
            (SlotState::Running, _) if self.read_only => {
                "paused: default_transaction_read_only is on (a failover manager such as \
                 pg_auto_failover sets it on a promoted standby until the old primary is known \
                 to be down); the rounds resume when it is off"
                    .to_owned()
            }
            _ => return None,
        })
    }

    pub fn set_state(&mut self, state: SlotState) {
        self.state = state;
        self.state_since = now();
    }

    /// An index rebuild that failed or never started: none runs, and the worker looks again
    /// after `REINDEX_RETRY`.
    pub fn reindex_gave_up(&mut self) {
        let t = now();
        self.reindex_pid = 0;
        self.reindex_failed = true;
        self.reindex_ended_at = t;
        self.reindex_next_check = t + micros(REINDEX_RETRY);
    }
}

#[derive(Copy, Clone)]
pub struct Registry {
    /// The launcher's latch: set to make it reconcile now.
    pub launcher_latch: LatchRef,
    pub slots: [Slot; MAX_DATABASES],
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            launcher_latch: 0,
            slots: [Slot::EMPTY; MAX_DATABASES],
        }
    }
}

// SAFETY: plain-old-data, no pointers; every access goes through the LWLock.
unsafe impl PGRXSharedMemory for Registry {}

impl Registry {
    pub fn find(&mut self, dboid: u32) -> Option<&mut Slot> {
        self.slots
            .iter_mut()
            .find(|s| s.state != SlotState::Free && s.dboid == dboid)
    }

    /// The slot for `dboid`, created (state `Wanted`) if missing; None when the table is full.
    pub fn find_or_add(&mut self, dboid: u32, name: &str) -> Option<&mut Slot> {
        let idx = match self
            .slots
            .iter()
            .position(|s| s.state != SlotState::Free && s.dboid == dboid)
        {
            Some(i) => i,
            None => {
                let i = self.slots.iter().position(|s| s.state == SlotState::Free)?;
                let s = &mut self.slots[i];
                *s = Slot::EMPTY;
                s.dboid = dboid;
                s.set_name(name);
                s.set_state(SlotState::Wanted);
                i
            }
        };
        Some(&mut self.slots[idx])
    }
}

pub static REGISTRY: PgLwLock<Registry> = unsafe { PgLwLock::new(c"pgflow_workers") };

/// Called from `_PG_init` when the library is being preloaded: shared memory, the launcher, and
/// the utility hook.
pub fn init() {
    pg_shmem_init!(REGISTRY);
    launcher::register();
    exporter::register();
    hook::install();
}

pub fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

pub fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Tells the launcher that this database wants a worker (after `CREATE EXTENSION` commits).
pub fn request_worker(dboid: u32, name: &str) {
    if !crate::ipc::preloaded() {
        return;
    }
    let launcher = {
        let mut reg = REGISTRY.exclusive();
        if let Some(slot) = reg.find_or_add(dboid, name) {
            slot.notified = true;
            if matches!(slot.state, SlotState::Idle | SlotState::Wanted) {
                slot.set_state(SlotState::Wanted);
                slot.not_before = 0;
                slot.failures = 0;
            }
        }
        reg.launcher_latch
    };
    set_latch(launcher);
}

/// Whether `datname` passes the `pgflow.databases` filter.
pub fn database_allowed(datname: &str) -> bool {
    let list = crate::guc::DATABASES.get();
    let list = list.as_deref().map(CStr::to_string_lossy);
    policy::allows(list.as_deref(), datname)
}

/// The C string of a database name from a NameData.
pub fn name_of(data: &pg_sys::NameData) -> String {
    unsafe { CStr::from_ptr(data.data.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Installs `handler` for `signal`, across the pqsignal rename of PG 18.
///
/// # Safety
/// `handler` runs in signal context: it must be async-signal-safe (Postgres's own handlers,
/// such as `die`, are).
pub unsafe fn set_signal(signal: i32, handler: unsafe extern "C-unwind" fn(i32)) {
    #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17"))]
    pg_sys::pqsignal(signal, Some(handler));
    #[cfg(feature = "pg18")]
    pg_sys::pqsignal_be(signal, Some(handler));
}

// The C signal handlers themselves (pg_sys's wrappers of these are not async-signal-safe).
unsafe extern "C-unwind" {
    #[link_name = "die"]
    fn pg_die(signal: i32);
    #[link_name = "SignalHandlerForConfigReload"]
    fn pg_reload(signal: i32);
}

/// The signal setup both workers share: SIGTERM ends the process through Postgres's `die`
/// (so a running statement is cancelled at its next interrupt check, not only between ticks),
/// SIGHUP asks for a configuration reload.
pub fn setup_signals() {
    unsafe {
        set_signal(libc::SIGTERM, pg_die);
        set_signal(libc::SIGHUP, pg_reload);
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

/// Processes a pending cancel/terminate (exits on SIGTERM) and a pending reload; true when the
/// configuration was reloaded.
pub fn handle_interrupts() -> bool {
    unsafe {
        if pg_sys::InterruptPending != 0 {
            pg_sys::ProcessInterrupts();
        }
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            return true;
        }
    }
    false
}
