//! pgflow: durable message queues inside PostgreSQL.
//!
//! Layout:
//! - `sql/schema.sql`: tables and indexes (the storage design is in `docs/design.md`);
//! - `sql/api.sql`: the SQL verbs (`send`, `read`, `archive`, ...), plain PL/pgSQL with static,
//!   plan-cached statements;
//! - `sql/failure.sql`: nack, lease expiry, the dead-letter queue and the maintenance jobs;
//! - `src/queue/`: queue semantics that need no Postgres (name rules, the retry formula),
//!   tested with plain `#[test]`s;
//! - `src/api/`: the thin `#[pg_extern]` shims the SQL layer calls;
//! - `src/worker/`: the launcher and the per-database maintenance workers;
//! - `src/guc.rs`: every setting;
//! - `src/error.rs`: every error a user can cause, each with its SQLSTATE.
use pgrx::prelude::*;

pub mod api;
pub mod error;
pub mod guc;
pub mod queue;
pub mod wakeup;
pub mod worker;

::pgrx::pg_module_magic!(name, version);

// Tables first, then the SQL API and the Rust functions it calls, failure handling last.
extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/api.sql", name = "api", requires = ["schema"]);
extension_sql_file!(
    "../sql/contracts.sql",
    name = "contracts",
    requires = ["api", api::_check_contract_schema, api::_validate_contract]
);
extension_sql_file!(
    "../sql/topics.sql",
    name = "topics",
    requires = [
        "api",
        api::_check_topic,
        api::_check_topic_pattern,
        api::_topic_matches
    ]
);
extension_sql_file!("../sql/failure.sql", name = "failure", finalize);

/// Library load. The settings exist in every process; shared memory, the launcher and the
/// utility hook only when loaded by `shared_preload_libraries`. The SQL API needs neither and
/// works without preloading (run `pgflow.maintain()` from pg_cron or a client then).
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        worker::init();
        wakeup::init();
        wakeup::init_notify();
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
