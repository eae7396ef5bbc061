//! Every setting pgflow reads, each a named, documented `GucSetting` (docs/operations.md lists them all).
//!
//! All are reloadable: `ALTER SYSTEM SET ...; SELECT pg_reload_conf();` (SIGHUP). The launcher
//! re-reads them and starts or stops workers; each worker re-reads them before its next tick.
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `pgflow.enabled` (default on): the off switch. Off in `postgresql.conf` stops every worker;
/// off for one database (`ALTER DATABASE d SET pgflow.enabled = off`) keeps that database's
/// worker from running from its next start. The SQL API works either way.
pub static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `pgflow.databases` (default empty: all): a comma-separated list of the databases that get a
/// worker. A database must also have the extension created to get one.
pub static DATABASES: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);

/// `pgflow.tick` (default 1 s): how long a worker sleeps between two rounds of maintenance.
/// A lease, delay or retry comes due at most this late; a read never waits for the tick
/// (it applies an expired lease itself and sees due messages at once).
pub static TICK_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// `pgflow.batch_size` (default 1000): at most this many messages per queue per job per round
/// (expire_leases, promote_delayed), so one busy queue never starves the others or holds long
/// locks. A round that fills a batch is followed at once by another, up to ten per tick.
pub static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// `pgflow.prune_batch_size` (default 10000): at most this many archived messages deleted per
/// queue per round by prune_archive.
pub static PRUNE_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// `pgflow.reindex_min_size` (default 64 MB, in kB; 0: off): a database's worker rebuilds the
/// indexes of a churning pgflow table (`message`, `archive`, `dead`, `dedup`) with
/// `REINDEX TABLE CONCURRENTLY` once they take at least this much and over four times the
/// table's heap, which is how a drain's index space comes back (worker/reindexer.rs). Below
/// 1 MB nothing is rebuilt.
pub static REINDEX_MIN_SIZE: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024);

/// `pgflow.notify_interval` (default 100 ms): a queue created with `notify => true` sends at
/// most one NOTIFY per interval (the first send of a window notifies at its commit; later sends
/// in the window get one trailing notification from the worker when it ends). 0 notifies on
/// every send.
pub static NOTIFY_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(100);

/// `pgflow.stats` (default on): keep per-queue statistics in shared memory (ipc/stats.rs), so
/// `metrics()` costs O(1) and the endpoint has counters and histograms. Off, `metrics()`
/// counts rows; turned back on, each database's worker rebuilds the gauges from the tables.
/// Cluster-wide (a session cannot turn it off for itself, which would leave the gauges wrong).
pub static STATS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `pgflow.metrics_listen` (default empty: off): the address the Prometheus endpoint listens
/// on, `host:port` (for example `127.0.0.1:9187`). Unauthenticated: keep it on loopback or a
/// trusted network. Read at server start.
pub static METRICS_LISTEN: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);

/// `pgflow.metrics_databases` (default empty: all): the databases the endpoint serves,
/// comma-separated.
pub static METRICS_DATABASES: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);

/// `pgflow.alerts_channel` (default empty: none): the channel on which the worker announces
/// each alert that starts or clears with a NOTIFY (a JSON payload naming the queue, the alert,
/// its value and threshold). Postgres has no privilege on LISTEN: every role that may connect
/// to the database can listen on a channel whose name it knows, so the announcements are off
/// unless an administrator names a channel (issue #34). `alerts()`, the server log and the
/// endpoint report alerts either way. Superusers only (per database with ALTER DATABASE).
pub static ALERTS_CHANNEL: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);

/// `pgflow.metrics_on_standby` (default off): serve the endpoint on a hot standby too. Off,
/// the endpoint starts once the server accepts writes (after a promotion). Read at server
/// start.
pub static METRICS_ON_STANDBY: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `pgflow.max_queues` (default 1024, restart): the queues of all databases that get an entry
/// in each of the shared-memory tables (the claim cursor, the statistics, the NOTIFY throttle;
/// src/ipc/table.rs). A queue that finds no entry still works, as without the preload (reads
/// scan from the queue's start, `metrics()` counts rows, NOTIFY is not throttled), and the
/// refusal is counted and shown. About 1.3 kB of shared memory a queue (1.3 MB at the
/// default); at most 65,536.
pub static MAX_QUEUES: GucSetting<i32> = GucSetting::<i32>::new(1024);

/// Tests only: holds a claim inside one of its windows (src/api/cursor.rs, `pause_at`).
pub static TEST_PAUSE: GucSetting<crate::api::cursor::Pause> =
    GucSetting::<crate::api::cursor::Pause>::new(crate::api::cursor::Pause::None);

/// Tests only: DROP DATABASE leaves the database's shared-memory entries behind, as a way of
/// dropping a database that the hook did not see would, so that the launcher's sweep can be
/// shown to free them (tests/cluster/leak.sh).
pub static TEST_KEEP_DROPPED: GucSetting<bool> = GucSetting::<bool>::new(false);

/// Tests only: injects a failure into one phase of pgflow's transaction ends (src/ipc/xact.rs).
pub static TEST_XACT_FAULT: GucSetting<crate::ipc::xact::Fault> =
    GucSetting::<crate::ipc::xact::Fault>::new(crate::ipc::xact::Fault::None);

/// Registers the settings; called from `_PG_init` in every process that loads the library.
pub fn init() {
    GucRegistry::define_bool_guc(
        c"pgflow.enabled",
        c"Runs pgflow's background workers.",
        c"Off in postgresql.conf stops all workers; per database (ALTER DATABASE ... SET) it \
          keeps that database's worker from running from its next start.",
        &ENABLED,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pgflow.databases",
        c"Databases that get a pgflow worker (comma-separated; empty means all).",
        c"A database must also have the extension created to get a worker.",
        &DATABASES,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pgflow.tick",
        c"Time between two maintenance rounds of a pgflow worker.",
        c"Leases, delays and retries come due at most this late.",
        &TICK_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pgflow.notify_interval",
        c"Least time between two NOTIFYs of one queue (0: every send notifies).",
        c"Throttles NOTIFY so a burst of sends does not serialize every commit on NOTIFY's lock.",
        &NOTIFY_INTERVAL_MS,
        0,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pgflow.reindex_min_size",
        c"Index size of a pgflow table above which its worker rebuilds the indexes concurrently (0: never).",
        c"Only when the indexes also take over four times the table's heap, as after a drain; below 1 MB nothing is rebuilt.",
        &REINDEX_MIN_SIZE,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"pgflow.batch_size",
        c"Messages per queue per maintenance job and round.",
        c"Bounds the locks and time one round holds; a full batch is followed at once by another.",
        &BATCH_SIZE,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pgflow.stats",
        c"Keeps per-queue statistics in shared memory.",
        c"Off, metrics() counts rows; turned back on, the workers rebuild the gauges.",
        &STATS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pgflow.metrics_databases",
        c"Databases the Prometheus endpoint serves (comma-separated; empty means all).",
        c"",
        &METRICS_DATABASES,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pgflow.alerts_channel",
        c"Channel on which the worker NOTIFYs alerts that start or clear; empty: none.",
        c"Every role that may connect can LISTEN on a channel whose name it knows.",
        &ALERTS_CHANNEL,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pgflow.prune_batch_size",
        c"Archived messages deleted per queue per round.",
        c"Bounds the work of prune_archive in one round.",
        &PRUNE_BATCH_SIZE,
        1,
        10_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"pgflow.test_pause",
        c"Tests only: holds a claim inside one of its windows.",
        c"claim_noted holds a read after it noted its claim and before the claim's snapshot; \
          claim_scanned after the claim locked its rows and before its end. The read waits \
          while another session holds pg_advisory_lock(7400613590).",
        &TEST_PAUSE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"pgflow.test_xact_fault",
        c"Tests only: injects a failure into a phase of pgflow's transaction ends.",
        c"pre_commit_error raises before the commit (the transaction aborts); the others fail \
          on the commit, abort, prepare or subtransaction-abort side, where pgflow catches the \
          failure, counts it (pgflow_xact_faults_total) and warns: the server stays up.",
        &TEST_XACT_FAULT,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pgflow.test_keep_dropped_entries",
        c"Tests only: DROP DATABASE leaves the database's shared-memory entries behind.",
        c"As a drop the hook did not see would; the launcher's sweep frees them.",
        &TEST_KEEP_DROPPED,
        GucContext::Suset,
        GucFlags::default(),
    );
    // Server-start settings can only be defined while shared_preload_libraries loads: a
    // backend that loads the library later (the SQL API without preloading) would stop with
    // FATAL "cannot create PGC_POSTMASTER variables after startup". Without preloading there
    // is no endpoint, so they stay placeholders.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        GucRegistry::define_int_guc(
            c"pgflow.max_queues",
            c"Queues of all databases that get an entry in pgflow's shared-memory tables.",
            c"Past it a queue works as without shared_preload_libraries (reads from its start, \
              metrics by counting, NOTIFY unthrottled) and the refusal is counted. Read at server start.",
            &MAX_QUEUES,
            64,
            65_536,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_string_guc(
            c"pgflow.metrics_listen",
            c"Address (host:port) of pgflow's Prometheus endpoint; empty: none.",
            c"Unauthenticated: keep it on loopback or a trusted network.",
            &METRICS_LISTEN,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_bool_guc(
            c"pgflow.metrics_on_standby",
            c"Serves the Prometheus endpoint on a hot standby too.",
            c"Off, the endpoint starts once the server accepts writes.",
            &METRICS_ON_STANDBY,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
}
