//! pgflow: durable message queues inside PostgreSQL.
//!
//! Layout (CONTRIBUTING.md has the whole map):
//! - `sql/`: the SQL verbs, plain PL/pgSQL with static, plan-cached statements, one file per
//!   concern in call order: `schema`, `internal`, `admin`, `contracts`, `produce`, `failure`,
//!   `consume`, `maintenance`, `observe`, `topics`, `finalize` (the storage design is in
//!   `docs/design.md`);
//! - `src/api/`: every `#[pg_extern]`, thin shims the SQL layer calls;
//! - `src/queue/`: queue semantics that need no Postgres (name rules, the retry formula, topic
//!   matching, the contract checker), tested with plain `#[test]`s;
//! - `src/contract_cache.rs`: the per-backend cache of parsed contract schemas;
//! - `src/ipc/`: shared memory and wake-ups by latch (long-poll waiters, the NOTIFY throttle,
//!   the claim cursor, the per-queue statistics);
//! - `src/worker/`: the launcher, the per-database maintenance workers and the utility hook;
//! - `src/guc.rs`: every setting;
//! - `src/error.rs`: every error a user can cause, each with its SQLSTATE.
// `#[pg_extern]` functions return `Result<T, ErrorReport>` so that every error carries its
// SQLSTATE; pgrx's ErrorReport is large, and that is the type pgrx's error path expects.
#![allow(clippy::result_large_err)]

use pgrx::prelude::*;

pub mod api;
pub mod contract_cache;
pub mod error;
pub mod guc;
pub mod ipc;
pub mod queue;
pub mod worker;

::pgrx::pg_module_magic!(name, version);

// The SQL files in call order: each `requires` the files and the Rust functions its code
// calls, so the generated script creates everything before its first use.
// First of all, before anything is created or resolved through schema pgflow: the guard
// refuses an install that could be hijacked (sql/guard.sql says what it checks).
extension_sql_file!("../sql/guard.sql", name = "guard", bootstrap);
extension_sql_file!("../sql/schema.sql", name = "schema", requires = ["guard"]);
extension_sql_file!(
    "../sql/internal.sql",
    name = "internal",
    requires = [
        "schema",
        api::_check_queue_name,
        api::wait::_announce,
        api::cursor::_ready,
        api::cursor::_due_at,
        api::access::_caller,
        api::access::_caller_class,
        api::access::_primary
    ]
);
extension_sql_file!(
    "../sql/access.sql",
    name = "access",
    requires = ["internal"]
);
extension_sql_file!(
    "../sql/admin.sql",
    name = "admin",
    requires = [
        "internal",
        api::_check_contract_schema_text,
        api::wait::_notify_forget,
        api::cursor::_cursor_forget,
        api::cursor::_touch,
        api::stats::_stats_created,
        api::stats::_stats_dropped
    ]
);
extension_sql_file!(
    "../sql/contracts.sql",
    name = "contracts",
    requires = [
        "internal",
        api::_check_contract_schema_text,
        api::_validate_contract_text
    ]
);
extension_sql_file!(
    "../sql/produce.sql",
    name = "produce",
    requires = ["contracts", api::wait::_announce]
);
extension_sql_file!(
    "../sql/failure.sql",
    name = "failure",
    requires = [
        "internal",
        api::_retry_delay,
        api::_receipt,
        api::wait::_announce,
        api::cursor::_touch,
        api::stats::_stats_mode,
        api::access::_session_key_of
    ]
);
extension_sql_file!(
    "../sql/consume.sql",
    name = "consume",
    requires = [
        "failure",
        api::wait::_wait_begin,
        api::wait::_wait_end,
        api::wait::_wait_for,
        api::cursor::_claim_begin,
        api::cursor::_claim_span,
        api::cursor::_claim_end,
        api::cursor::_due_begin,
        api::cursor::_due_end,
        api::cursor::_due,
        api::access::_session_key
    ]
);
extension_sql_file!(
    "../sql/maintenance.sql",
    name = "maintenance",
    requires = [
        "consume",
        api::cursor::_cursor_check,
        api::cursor::_cursor_lower,
        api::cursor::_cursor_freezes,
        api::cursor::_cursor_thaw
    ]
);
extension_sql_file!(
    "../sql/observe.sql",
    name = "observe",
    requires = [
        "internal",
        api::cursor::_cursor_status,
        api::stats::_stats,
        api::access::_sees_activity_of
    ]
);
extension_sql_file!(
    "../sql/stats.sql",
    name = "stats",
    requires = [
        "observe",
        api::stats::_stats_note,
        api::stats::_stats_load,
        api::stats::_stats_needs_rebuild,
        api::stats::_stats_enabled,
        api::stats::_stats_reset,
        api::stats::_stats_alerts,
        api::stats::_stats_alerts_at,
        api::stats::_stats_oldest,
        api::stats::_stats_ready,
        api::cursor::_cursor_status,
        api::stats::_metrics_text
    ]
);
extension_sql_file!(
    "../sql/topics.sql",
    name = "topics",
    requires = [
        "produce",
        api::_check_topic,
        api::_check_topic_pattern,
        api::_topic_matches
    ]
);
extension_sql_file!(
    "../sql/links_schema.sql",
    name = "links_schema",
    requires = ["topics"]
);
extension_sql_file!(
    "../sql/links.sql",
    name = "links",
    requires = [
        "links_schema",
        "stats",
        "maintenance",
        api::access::_arriving
    ]
);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// Library load. The settings exist in every process; shared memory, the launcher and the
/// utility hook only when loaded by `shared_preload_libraries`. The SQL API needs neither and
/// works without preloading (run `pgflow.maintain()` from pg_cron or a client then).
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        ipc::init();
        worker::init();
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // Tests run with the library preloaded, as production does.
        vec!["shared_preload_libraries = 'pgflow'"]
    }
}
