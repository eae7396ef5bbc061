//! Observability over real connections: what holds back the xmin horizon (`horizon()` and the
//! horizon columns of `metrics`). Its own test binary, so no other test's transactions run
//! alongside, and its two tests run one at a time; the worker's short rounds are the only other
//! snapshots, and the check that could meet one polls until it sees the holder it made.
use postgres::{Client, IsolationLevel};

use pgflow_e2e::{connect, eventually, fresh_queue};

const DEADLINE: u64 = 30;

/// The two tests make the oldest holders of the database's horizon: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ends `n` transactions that each take a transaction id, so that a snapshot taken before them
/// is older than any taken after.
fn age_the_horizon(c: &mut Client, n: usize) {
    for _ in 0..n {
        c.batch_execute("SELECT txid_current()").unwrap();
    }
}

#[test]
fn a_held_snapshot_is_reported_until_it_ends() {
    let _g = serial();
    let queue = "obs_horizon";
    let mut admin = connect();
    fresh_queue(&mut admin, queue);
    let mut holder = connect();
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let mut tx = holder
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .unwrap();
    tx.query_one("SELECT 1", &[]).unwrap(); // the snapshot, held until the transaction ends
    age_the_horizon(&mut admin, 5);

    // horizon() names the backend, since its transaction began, and how it sits.
    let row = admin
        .query_one(
            "SELECT h.holder, h.xmin_age >= 5, h.since = a.xact_start, h.detail
               FROM pgflow.horizon() h JOIN pg_stat_activity a USING (pid)
              WHERE h.pid = $1",
            &[&pid],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "backend");
    assert!(
        row.get::<_, bool>(1),
        "the snapshot is older than the 5 transactions after it"
    );
    assert!(
        row.get::<_, bool>(2),
        "since is the holder's transaction start"
    );
    let detail: String = row.get(3);
    assert!(detail.contains("idle in transaction"), "{detail}");

    // metrics shows it as the oldest holder, with its age by the server's clock.
    let oldest = format!(
        "SELECT horizon_holder LIKE 'backend {pid}: %' AND horizon_age_sec >= 0
           FROM pgflow.metrics('{queue}')"
    );
    assert!(
        eventually(&mut admin, &oldest, DEADLINE),
        "metrics names the holder"
    );

    // Once the transaction ends, the backend holds nothing.
    tx.commit().unwrap();
    assert!(
        eventually(
            &mut admin,
            &format!("SELECT NOT EXISTS (SELECT 1 FROM pgflow.horizon() WHERE pid = {pid})"),
            DEADLINE
        ),
        "the holder is gone after COMMIT"
    );
}

#[test]
fn a_prepared_transaction_is_reported_until_it_is_resolved() {
    let _g = serial();
    let mut admin = connect();
    let gid = "pgflow_e2e_horizon";
    // A leftover of an interrupted run would be reported too: resolve it first.
    let leftover: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE gid = $1)",
            &[&gid],
        )
        .unwrap()
        .get(0);
    if leftover {
        admin
            .batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
            .unwrap();
    }
    let mut c = connect();
    c.batch_execute(&format!(
        "BEGIN; SELECT txid_current(); PREPARE TRANSACTION '{gid}'"
    ))
    .unwrap();
    age_the_horizon(&mut admin, 3);
    let row = admin
        .query_one(
            "SELECT h.xmin_age >= 3, h.since = p.prepared, h.pid IS NULL
               FROM pgflow.horizon() h JOIN pg_prepared_xacts p ON h.detail LIKE p.gid || ' (%'
              WHERE h.holder = 'prepared transaction' AND p.gid = $1",
            &[&gid],
        )
        .unwrap();
    assert!(
        row.get::<_, bool>(0),
        "older than the 3 transactions after it"
    );
    assert!(row.get::<_, bool>(1), "since is when it was prepared");
    assert!(
        row.get::<_, bool>(2),
        "a prepared transaction has no process"
    );
    admin
        .batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
        .unwrap();
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pgflow.horizon() WHERE holder = 'prepared transaction'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "resolved, it holds nothing");
}

/// pgflow's own rounds hold a snapshot for their length; horizon() and metrics() leave them out
/// unless one has lasted 10 s (issue #33: right after a read, metrics() named the worker). The
/// worker's next round is made to wait, holding its snapshot, on a lock of a table its round
/// writes (pgflow.dedup, prune_dedup); the 10 s are the server's own clock, in the query itself.
#[test]
fn pgflows_own_short_rounds_are_not_named_as_the_holder() {
    let _g = serial();
    let queue = "obs_own_round";
    let mut admin = connect();
    fresh_queue(&mut admin, queue);
    let mut blocker = connect();
    let mut tx = blocker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE pgflow.dedup IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let waiting = "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                    WHERE backend_type = 'pgflow worker' AND datname = current_database()
                      AND wait_event_type = 'Lock' AND backend_xmin IS NOT NULL)";
    assert!(
        eventually(&mut admin, waiting, DEADLINE),
        "the worker's round never waited on the lock"
    );
    // Either pgflow's worker is not named, or its round has really lasted 10 s.
    let lasted = "EXISTS (SELECT 1 FROM pg_stat_activity
                   WHERE backend_type = 'pgflow worker' AND datname = current_database()
                     AND xact_start <= clock_timestamp() - interval '10 seconds')";
    let named: bool = admin
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM pgflow.horizon() h JOIN pg_stat_activity a USING (pid)
                                 WHERE a.backend_type = 'pgflow worker') AND NOT {lasted}"
            )[..],
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        !named,
        "horizon() names pgflow's own worker in a short round"
    );
    let in_metrics: bool = admin
        .query_one(
            &format!(
                "SELECT coalesce(horizon_holder LIKE 'backend ' || (SELECT pid FROM pg_stat_activity
                                  WHERE backend_type = 'pgflow worker'
                                    AND datname = current_database()) || ':%', false)
                        AND NOT {lasted}
                   FROM pgflow.metrics($1)"
            )[..],
            &[&queue],
        )
        .unwrap()
        .get(0);
    assert!(
        !in_metrics,
        "metrics() names pgflow's own worker in a short round"
    );
    tx.rollback().unwrap();
}
