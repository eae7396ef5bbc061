//! Delivery over real connections: many consumers, no message lost, none archived twice.
use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::thread;

use pgflow_e2e::{connect, fresh_queue};

/// Reads batches and archives each one until the queue has nothing left to hand out.
/// Returns the ids this consumer archived.
fn consume_until_empty(client: &mut postgres::Client, queue: &str, batch: i32) -> Vec<i64> {
    let mut mine = Vec::new();
    loop {
        let ids: Vec<i64> = client
            .query(
                "SELECT msg_id FROM pgflow.read($1, '30 s', $2)",
                &[&queue, &batch],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ids.is_empty() {
            // Nothing deliverable: every remaining message is leased by another consumer
            // (leases are 30 s and nobody fails here), so this consumer is done.
            return mine;
        }
        let archived: Vec<i64> = client
            .query("SELECT pgflow.archive($1, $2::bigint[])", &[&queue, &ids])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            archived.len(),
            ids.len(),
            "a leased message could not be archived"
        );
        mine.extend(archived);
    }
}

#[test]
fn eight_consumers_drain_ten_thousand_messages_exactly_once() {
    const N: i64 = 10_000;
    let queue = "client_drain";
    let mut admin = connect();
    fresh_queue(&mut admin, queue);
    for chunk in 0..10 {
        let payloads: Vec<serde_json::Value> = (0..1000)
            .map(|i| serde_json::json!({ "type": "code_execution_request", "n": chunk * 1000 + i }))
            .collect();
        admin
            .execute(
                "SELECT pgflow.send_batch($1, $2::jsonb[])",
                &[&queue, &payloads],
            )
            .unwrap();
    }

    let start = Arc::new(Barrier::new(8));
    let consumers: Vec<_> = (0..8)
        .map(|_| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let mut client = connect();
                start.wait();
                consume_until_empty(&mut client, queue, 10)
            })
        })
        .collect();
    let per_consumer: Vec<Vec<i64>> = consumers.into_iter().map(|c| c.join().unwrap()).collect();

    let all: Vec<i64> = per_consumer.iter().flatten().copied().collect();
    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(
        all.len() as i64,
        N,
        "archived count (duplicates would exceed N)"
    );
    assert_eq!(distinct.len() as i64, N, "no message archived twice");
    assert_eq!(
        distinct,
        (1..=N).collect::<HashSet<i64>>(),
        "every sent id archived"
    );

    let row = admin
        .query_one(
            "SELECT queue_length, total_archived, archive_length FROM pgflow.metrics($1)",
            &[&queue],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0, "queue empty");
    assert_eq!(row.get::<_, i64>(1), N, "total archived");
    assert_eq!(row.get::<_, i64>(2), N, "archive rows");
    // Each payload is in the archive once, with its content intact.
    let payload_ns: i64 = admin
        .query_one(
            "SELECT count(DISTINCT (message->>'n')::int) FROM pgflow.archive a
               JOIN pgflow.queue q USING (queue_id) WHERE q.queue_name = $1",
            &[&queue],
        )
        .unwrap()
        .get(0);
    assert_eq!(payload_ns, N);
    // More than one consumer did work (the barrier starts them together).
    assert!(per_consumer.iter().filter(|c| !c.is_empty()).count() > 1);
}

#[test]
fn producers_and_consumers_run_together_without_loss() {
    const PRODUCERS: i64 = 4;
    const PER_PRODUCER: i64 = 500;
    let queue = "client_mixed";
    let mut admin = connect();
    fresh_queue(&mut admin, queue);

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            thread::spawn(move || {
                let mut c = connect();
                for i in 0..PER_PRODUCER {
                    let payload = serde_json::json!({ "producer": p, "seq": i });
                    c.execute("SELECT pgflow.send($1, $2)", &[&queue, &payload])
                        .unwrap();
                }
            })
        })
        .collect();
    // Consumers run while producers send; each keeps going until producers are done and
    // the queue is empty.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumers: Vec<_> = (0..4)
        .map(|_| {
            let done = Arc::clone(&done);
            thread::spawn(move || {
                let mut client = connect();
                let mut got = Vec::new();
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                    let batch = consume_until_empty(&mut client, queue, 7);
                    let empty = batch.is_empty();
                    got.extend(batch);
                    if finished && empty {
                        return got;
                    }
                    thread::yield_now();
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let all: Vec<i64> = consumers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len() as i64, PRODUCERS * PER_PRODUCER);
    assert_eq!(distinct.len(), all.len(), "no duplicates");
    // Every producer's every message arrived.
    let per_producer: Vec<(i32, i64)> = admin
        .query(
            "SELECT (message->>'producer')::int, count(DISTINCT message->>'seq')
               FROM pgflow.archive a JOIN pgflow.queue q USING (queue_id)
              WHERE q.queue_name = $1 GROUP BY 1 ORDER BY 1",
            &[&queue],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        per_producer,
        (0..PRODUCERS as i32)
            .map(|p| (p, PER_PRODUCER))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_send_is_visible_to_other_connections_only_after_commit() {
    let queue = "client_tx";
    let mut producer = connect();
    let mut consumer = connect();
    fresh_queue(&mut producer, queue);

    let mut tx = producer.transaction().unwrap();
    let id: i64 = tx
        .query_one("SELECT pgflow.send($1, '{\"n\": 1}')", &[&queue])
        .unwrap()
        .get(0);
    let before = consumer
        .query("SELECT msg_id FROM pgflow.read($1, '30 s', 10)", &[&queue])
        .unwrap();
    assert!(
        before.is_empty(),
        "uncommitted send visible to another connection"
    );
    tx.commit().unwrap();
    let after: Vec<i64> = consumer
        .query("SELECT msg_id FROM pgflow.read($1, '30 s', 10)", &[&queue])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(after, vec![id]);
}

#[test]
fn errors_reach_the_client_with_their_sqlstate() {
    let mut c = connect();
    fresh_queue(&mut c, "client_errors");
    let cases: [(&str, &str); 4] = [
        ("SELECT pgflow.send('client_missing', '{}')", "42704"),
        ("SELECT pgflow.send('client_errors', '[1]')", "22023"),
        ("SELECT pgflow.read('client_errors', '30 s', 0)", "22023"),
        ("SELECT pgflow.create_queue('client_errors')", "42710"),
    ];
    for (sql, code) in cases {
        let err = c.batch_execute(sql).expect_err(sql);
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{sql}: not a server error: {err}"));
        assert_eq!(db.code().code(), code, "{sql}: {}", db.message());
    }
    // The connection is still usable: no backend crashed.
    let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
}
