//! Failure handling over real connections: a consumer dies holding a lease.
use std::time::{Duration, Instant};

use pgflow_e2e::{connect, fresh_queue};
use postgres::Client;

/// Calls `read` until it returns a message or `deadline` passes. Each read applies lease
/// expiry itself, so this waits for the real lease to run out (100 ms), never for a timer.
fn read_until(c: &mut Client, queue: &str, vt: &str, deadline: Duration) -> Option<(i64, i32)> {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        let rows = c
            .query(
                &format!("SELECT msg_id, read_ct FROM pgflow.read($1, '{vt}', 1)"),
                &[&queue],
            )
            .unwrap();
        if let Some(r) = rows.first() {
            return Some((r.get(0), r.get(1)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn dlq_length(c: &mut Client, queue: &str) -> i64 {
    c.query_one("SELECT dlq_length FROM pgflow.metrics($1)", &[&queue])
        .unwrap()
        .get(0)
}

#[test]
fn a_killed_consumer_leads_to_redelivery_then_the_dlq_then_a_clean_redrive() {
    let queue = "client_crash";
    let mut admin = connect();
    fresh_queue(&mut admin, queue);
    admin
        .execute(
            "SELECT pgflow.alter_queue($1, max_retries => 2, retry_delay => '0', retry_jitter => 0)",
            &[&queue],
        )
        .unwrap();
    let sent: i64 = admin
        .query_one(
            "SELECT pgflow.send($1, '{\"type\": \"code_execution_request\", \"n\": 7}')",
            &[&queue],
        )
        .unwrap()
        .get(0);

    // Three deliveries, each to a consumer whose backend is killed while it holds the lease.
    for delivery in 1..=3 {
        let mut victim = connect();
        let pid: i32 = victim
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        let (id, read_ct) = read_until(&mut victim, queue, "100 ms", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("delivery {delivery} never came"));
        assert_eq!(
            (id, read_ct),
            (sent, delivery),
            "the same message, one more delivery"
        );
        let killed: bool = admin
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap()
            .get(0);
        assert!(killed);
        assert!(
            victim.query("SELECT 1", &[]).is_err(),
            "the victim's connection is gone"
        );
    }

    // The third lease runs out: max_retries 2 is used up, so the next read dead-letters it
    // instead of delivering it a fourth time.
    let end = Instant::now() + Duration::from_secs(10);
    while dlq_length(&mut admin, queue) == 0 && Instant::now() < end {
        let got = admin
            .query("SELECT msg_id FROM pgflow.read($1, '30 s', 1)", &[&queue])
            .unwrap();
        assert!(got.is_empty(), "a fourth delivery happened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let dead = admin
        .query_one(
            "SELECT msg_id, read_ct, jsonb_array_length(errors), last_error, reason
               FROM pgflow.dlq_list($1)",
            &[&queue],
        )
        .unwrap();
    assert_eq!(dead.get::<_, i64>(0), sent);
    assert_eq!(dead.get::<_, i32>(1), 3);
    assert_eq!(dead.get::<_, i32>(2), 3, "every failed delivery recorded");
    assert_eq!(dead.get::<_, String>(3), "visibility timeout expired");
    assert!(dead
        .get::<_, String>(4)
        .starts_with("visibility timeout expired after 3 deliveries"));

    // An operator redrives it; a healthy consumer handles and archives it.
    let new_id: i64 = admin
        .query_one("SELECT pgflow.dlq_retry($1, $2::bigint)", &[&queue, &sent])
        .unwrap()
        .get(0);
    let mut healthy = connect();
    let (id, read_ct) =
        read_until(&mut healthy, queue, "30 s", Duration::from_secs(10)).expect("redriven");
    assert_eq!(
        (id, read_ct),
        (new_id, 1),
        "fresh attempts after the redrive"
    );
    let archived: bool = healthy
        .query_one("SELECT pgflow.archive($1, $2::bigint)", &[&queue, &id])
        .unwrap()
        .get(0);
    assert!(archived);

    // Counted: nothing lost, nothing duplicated.
    let m = admin
        .query_one(
            "SELECT queue_length, dlq_length, archive_length, total_archived FROM pgflow.metrics($1)",
            &[&queue],
        )
        .unwrap();
    assert_eq!(
        (
            m.get::<_, i64>(0),
            m.get::<_, i64>(1),
            m.get::<_, i64>(2),
            m.get::<_, i64>(3)
        ),
        (0, 0, 1, 1)
    );
    let n: i32 = admin
        .query_one(
            "SELECT (message->>'n')::int FROM pgflow.archive a JOIN pgflow.queue q USING (queue_id)
              WHERE q.queue_name = $1",
            &[&queue],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 7, "the payload survived the round trip");
}
