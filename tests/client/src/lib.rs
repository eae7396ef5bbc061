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
