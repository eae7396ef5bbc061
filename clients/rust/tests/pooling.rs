//! The consumer runtime through PgBouncer in transaction mode: long-poll reads woken by sends
//! that go through the pooler, heartbeats that keep a slow handler's lease, nacks, archives,
//! and a queue with session leases refused. tests/cluster/pooling.sh runs these with
//! PGFLOW_POOLED_DSN (the pooler) and PGFLOW_TEST_DSN (the server itself, for setup and
//! checks); they are `#[ignore]`d elsewhere (`make test LAYER=pooling` runs them).
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use pgflow_client::{Client, Consumer, Message};
use serde_json::{json, Value};
use tokio::sync::Notify;

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run tests/cluster/pooling.sh"))
}

async fn fresh(queue: &str, extra: &str) -> Client {
    let c = Client::connect(&env("PGFLOW_TEST_DSN")).await.unwrap();
    // Both tests may create it at once: the loser's unique violation means it is there.
    c.pg()
        .batch_execute("SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS pgflow")
        .await
        .ok();
    c.pg()
        .execute("SELECT pgflow.drop_queue($1, if_exists => true)", &[&queue])
        .await
        .unwrap();
    c.pg()
        .execute(&format!("SELECT pgflow.create_queue($1{extra})"), &[&queue])
        .await
        .unwrap();
    c
}

#[tokio::test]
#[ignore = "needs PgBouncer: make test LAYER=pooling"]
async fn the_runtime_through_a_transaction_pooler() {
    let q = "rs_pooled";
    const N: i64 = 20;
    let c = fresh(q, ", retry_delay => '0', retry_jitter => 0").await;
    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(Notify::new());
    let handler = {
        let (done, all_done) = (Arc::clone(&done), Arc::clone(&all_done));
        move |m: Message<Value>| {
            let (done, all_done) = (Arc::clone(&done), Arc::clone(&all_done));
            async move {
                let n = m.payload["n"].as_i64().unwrap();
                if n % 10 == 3 && m.read_ct == 1 {
                    return Err(format!("job {n}: transient failure"));
                }
                if n == 5 {
                    // Slower than two whole 3 s leases by the server's clock (read directly,
                    // not through the pooler): the heartbeats through the pooler keep it ours.
                    common::work_past_server_clock(&env("PGFLOW_TEST_DSN"), 6).await;
                }
                if done.fetch_add(1, Ordering::SeqCst) + 1 == N as usize {
                    all_done.notify_one();
                }
                Ok(())
            }
        }
    };
    let consumer = Consumer {
        handlers: 3,
        lease: Duration::from_secs(3),
        timeout: Duration::from_secs(60),
        wait: Duration::from_secs(1),
        pooled: true,
        ..Consumer::new(&env("PGFLOW_POOLED_DSN"), q)
    };
    let run = tokio::spawn(consumer.run(handler, async move { all_done.notified().await }));
    // The long-polls wait in the server before anything is sent: the sends wake them.
    loop {
        let waiting: i64 = c
            .pg()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE state = 'active' AND query LIKE '%pgflow.read(%'
                    AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let producer = Client::connect(&env("PGFLOW_POOLED_DSN")).await.unwrap();
    for n in 0..N {
        producer.send(q, &json!({ "n": n })).await.unwrap();
    }
    let stats = run.await.unwrap().unwrap();
    assert_eq!(stats.archived.load(Ordering::SeqCst), N as u64);
    assert_eq!(stats.nacked.load(Ordering::SeqCst), 2);
    assert!(stats.lease_extensions.load(Ordering::SeqCst) >= 1);
    let by_n: HashMap<i64, i32> = c
        .pg()
        .query(
            "SELECT (message->>'n')::bigint, read_ct FROM pgflow.archive a
               JOIN pgflow.queue USING (queue_id) WHERE queue_name = $1",
            &[&q],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(by_n.len(), N as usize, "each message archived once");
    assert_eq!(by_n[&5], 1, "the slow job kept its lease");
    assert_eq!((by_n[&3], by_n[&13]), (2, 2), "failed jobs delivered again");
}

#[tokio::test]
#[ignore = "needs PgBouncer: make test LAYER=pooling"]
async fn a_queue_with_session_leases_is_refused_under_pooling() {
    let q = "rs_pooled_session";
    fresh(q, ", session_leases => true").await;
    let consumer = Consumer {
        pooled: true,
        ..Consumer::new(&env("PGFLOW_POOLED_DSN"), q)
    };
    let e = consumer
        .run(
            |_m: Message<Value>| async { Err("nothing may be consumed".to_string()) },
            async {},
        )
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("0A000"));
    assert!(e.to_string().contains("session_leases"), "{e}");
}
