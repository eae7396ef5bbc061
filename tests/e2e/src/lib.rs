//! Helpers for the end-to-end tests: connections to the server the test script started.
//!
//! The tests need a running server with pgflow installed; `scripts/test.sh` starts one and
//! passes its address in `PGFLOW_TEST_DSN`. Without it the tests fail (they never skip).
use postgres::{Client, NoTls};

/// A new connection to the test server, with the extension created.
pub fn connect() -> Client {
    let dsn = std::env::var("PGFLOW_TEST_DSN")
        .expect("PGFLOW_TEST_DSN is not set: run the client tests through scripts/test.sh");
    let mut client =
        Client::connect(&dsn, NoTls).unwrap_or_else(|e| panic!("cannot connect to {dsn}: {e}"));
    client
        // Tests connect in parallel. The batch is one implicit transaction, so the advisory
        // lock is held until the CREATE EXTENSION commits and the next test sees it.
        .batch_execute(
            "SET client_min_messages = warning;
             SELECT pg_advisory_xact_lock(4242);
             CREATE EXTENSION IF NOT EXISTS pgflow;",
        )
        .expect("CREATE EXTENSION pgflow");
    client
}

/// A fresh queue with the given name (dropped first if a previous run left it).
pub fn fresh_queue(client: &mut Client, name: &str) {
    client
        .execute("SELECT pgflow.drop_queue($1, if_exists => true)", &[&name])
        .unwrap();
    client
        .execute("SELECT pgflow.create_queue($1)", &[&name])
        .unwrap();
}

/// The test server's DSN with another database name.
pub fn dsn_for(dbname: &str) -> String {
    let dsn = std::env::var("PGFLOW_TEST_DSN").expect("PGFLOW_TEST_DSN is not set");
    let kept: Vec<&str> = dsn
        .split_whitespace()
        .filter(|kv| !kv.starts_with("dbname="))
        .collect();
    format!("{} dbname={dbname}", kept.join(" "))
}

/// A connection to `dbname` (no extension created).
pub fn connect_to(dbname: &str) -> Client {
    let dsn = dsn_for(dbname);
    let mut client =
        Client::connect(&dsn, NoTls).unwrap_or_else(|e| panic!("cannot connect to {dsn}: {e}"));
    client
        .batch_execute("SET client_min_messages = warning")
        .unwrap();
    client
}

/// Polls `sql` (one boolean) until it is true or `secs` pass; true if it became true. For
/// waiting on another process (a background worker) whose progress no latch of ours can see.
pub fn eventually(client: &mut Client, sql: &str, secs: u64) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let ok: Option<bool> = client.query_one(sql, &[]).unwrap().get(0);
        if ok == Some(true) {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
