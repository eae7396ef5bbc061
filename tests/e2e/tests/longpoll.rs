//! Long-poll reads that cannot take what is due, and long-polls that DROP EXTENSION or DROP
//! DATABASE must not wait for (issue #14). Over real connections; no wall-clock bound but the
//! server's own, and the counts of the reader's own calls.
use std::thread;

use pgflow_e2e::{connect, connect_to, eventually, fresh_queue};

const DEADLINE: u64 = 30;

/// CPU seconds (user + system) a backend has used, from /proc (the server runs on this machine).
fn cpu_secs(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the backend's /proc");
    // After the command name in parentheses: state is field 3; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / unsafe_clk_tck()
}

fn unsafe_clk_tck() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on; getconf says so without libc.
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A lease that ran out while another open transaction holds its row (a consumer archiving it
/// inside a longer transaction) is due, but no reader can take it. A long-poll on its queue
/// used to look again without sleeping (4.7 s of CPU in a 5 s wait); it now backs off from
/// 10 ms to 1 s between looks, so a 5 s wait sleeps at most a dozen times.
#[test]
fn a_long_poll_backs_off_while_the_due_lease_is_locked() {
    let queue = "lp_locked";
    let mut admin = connect();
    fresh_queue(&mut admin, queue);
    admin
        .execute("SELECT pgflow.send($1, '{}')", &[&queue])
        .unwrap();
    let id: i64 = admin
        .query_one("SELECT msg_id FROM pgflow.read($1, '1 s', 1)", &[&queue])
        .unwrap()
        .get(0);
    // The consumer archives inside a transaction it keeps open: the row stays locked.
    let mut consumer = connect();
    let mut tx = consumer.transaction().unwrap();
    tx.execute("SELECT pgflow.archive($1, $2::bigint)", &[&queue, &id])
        .unwrap();
    // Wait until the lease has run out by the server's clock.
    assert!(eventually(
        &mut admin,
        &format!(
            "SELECT bool_and(m.vt <= clock_timestamp()) FROM pgflow.message m
               JOIN pgflow.queue q USING (queue_id) WHERE q.queue_name = '{queue}'"
        ),
        DEADLINE
    ));

    let mut reader = connect();
    let pid: i32 = reader
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    reader.batch_execute("SET track_functions = 'all'").unwrap();
    let before = cpu_secs(pid);
    let mut rtx = reader.transaction().unwrap();
    let got: i64 = rtx
        .query_one(
            "SELECT count(*) FROM pgflow.read($1, '30 s', 1, wait => '5 s')",
            &[&queue],
        )
        .unwrap()
        .get(0);
    // This transaction's own calls of the sleep (counted by the server, not timed).
    let sleeps: i64 = rtx
        .query_one(
            "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_xact_user_functions
              WHERE schemaname = 'pgflow' AND funcname = '_wait_for'",
            &[],
        )
        .unwrap()
        .get(0);
    rtx.commit().unwrap();
    let cpu = cpu_secs(pid) - before;
    tx.rollback().unwrap();
    assert_eq!(got, 0, "the locked message is not delivered");
    assert!(sleeps >= 1, "the reader slept");
    assert!(
        sleeps <= 20,
        "{sleeps} sleeps in a 5 s wait: no backoff (10 ms each would be ~500)"
    );
    assert!(cpu < 0.5, "the 5 s wait used {cpu:.2} s of CPU");
}

/// A reader that waits in long-poll while a DROP EXTENSION runs: the drop wakes it first, so
/// the read returns at once (with nothing) and the drop gets its locks, instead of both
/// waiting out the read's 60 s. The same for DROP DATABASE, whose session wait the reader
/// then leaves.
#[test]
fn drop_extension_and_drop_database_wake_long_polls() {
    let db = "pgflow_e2e_lp_drop";
    let mut admin = connect();
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap();
    for what in ["extension", "database"] {
        let mut owner = connect_to(db);
        owner
            .batch_execute(
                "CREATE EXTENSION IF NOT EXISTS pgflow;
                 SELECT pgflow.create_queue('lp_drop', if_not_exists => true);",
            )
            .unwrap();
        let waiter = thread::spawn(move || {
            let mut w = connect_to(db);
            let row = w
                .query_one(
                    "SELECT (SELECT count(*) FROM pgflow.read('lp_drop', '30 s', 1, wait => '60 s')),
                            extract(epoch FROM clock_timestamp() - statement_timestamp())::float8",
                    &[],
                )
                .unwrap();
            (row.get::<_, i64>(0), row.get::<_, f64>(1))
            // The connection closes here, which DROP DATABASE waits for.
        });
        // Until the reader sleeps on its latch in the long-poll.
        assert!(
            eventually(
                &mut admin,
                &format!(
                    "SELECT count(*) = 1 FROM pg_stat_activity
                      WHERE datname = '{db}' AND state = 'active' AND wait_event_type = 'Extension'
                        AND query LIKE '%pgflow.read%'"
                ),
                DEADLINE
            ),
            "the reader is waiting"
        );
        match what {
            "extension" => owner.batch_execute("DROP EXTENSION pgflow").unwrap(),
            _ => {
                drop(owner);
                admin
                    .batch_execute(&format!("DROP DATABASE {db}"))
                    .expect("DROP DATABASE once the woken reader has left");
            }
        }
        let (n, took) = waiter.join().unwrap();
        assert_eq!(n, 0);
        assert!(
            took < 30.0,
            "DROP {what}: the read returned after {took:.1} s of its 60 s wait"
        );
    }
}
