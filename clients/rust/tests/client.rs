//! The Rust client against a real server (PGFLOW_TEST_DSN, set by scripts/test.sh): typed
//! calls, and the consumer runtime's guarantees: every message archived exactly once, failures
//! retried, slow handlers keep their lease, timeouts nacked, shutdown drains what is in flight.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use pgflow_client::{Client, Consumer, Message, NackOutcome, SendOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

fn dsn() -> String {
    std::env::var("PGFLOW_TEST_DSN")
        .expect("PGFLOW_TEST_DSN is not set: run through scripts/test.sh")
}

async fn fresh(queue: &str, extra: &str) -> Client {
    let c = Client::connect(&dsn()).await.unwrap();
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

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Job {
    id: String,
    n: i32,
}

async fn archived_ns(c: &Client, queue: &str) -> Vec<(i32, i32)> {
    c.pg()
        .query(
            "SELECT (message->>'n')::int, read_ct FROM pgflow.archive a JOIN pgflow.queue q USING (queue_id)
              WHERE q.queue_name = $1 ORDER BY 1",
            &[&queue],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn typed_calls_round_trip_and_errors_carry_sqlstates() {
    let q = "rs_typed";
    let c = fresh(q, ", retry_delay => '0', retry_jitter => 0").await;
    let job = Job {
        id: "job_1".into(),
        n: 7,
    };
    let id = c
        .send_with(
            q,
            &job,
            &SendOptions {
                priority: Some(5),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let got: Vec<Message<Job>> = c.read(q, Duration::from_secs(30), 10, None).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].id, got[0].read_ct, &got[0].payload), (id, 1, &job));
    let first = got[0].receipt;
    assert_eq!(
        c.nack(q, id, "boom", Some(first)).await.unwrap(),
        NackOutcome::Retry
    );
    let again: Vec<Message<Job>> = c
        .read(q, Duration::from_secs(30), 1, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(again[0].read_ct, 2);
    assert_ne!(again[0].receipt, first, "each delivery has its own receipt");
    // The first delivery's receipt is stale: its nack and heartbeat are refused (55000), its
    // archive changes nothing.
    let e = c.nack(q, id, "late", Some(first)).await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("55000"));
    let e = c
        .set_vt(q, id, Duration::from_secs(60), Some(first))
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("55000"));
    assert!(!c.archive(q, id, Some(first)).await.unwrap());
    let current = Some(again[0].receipt);
    assert!(c
        .set_vt(q, id, Duration::from_secs(60), current)
        .await
        .unwrap());
    assert!(c.archive(q, id, current).await.unwrap());
    assert!(!c.archive(q, id, None).await.unwrap());
    let e = c.send(q, &serde_json::json!([1])).await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("22023"), "an array is not a message");
    let e = c.send("rs_no_such_queue", &job).await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("42704"));
    // The payload must deserialize into the type asked for.
    c.send(q, &serde_json::json!({"id": 1})).await.unwrap();
    assert!(matches!(
        c.read::<Job>(q, Duration::from_secs(30), 1, None).await,
        Err(pgflow_client::Error::Payload(_))
    ));
}

#[tokio::test]
async fn send_batch_sends_in_one_commit_in_order_or_not_at_all() {
    let q = "rs_send_batch";
    let c = fresh(q, "").await;
    let jobs: Vec<Job> = (0..5)
        .map(|n| Job {
            id: format!("j{n}"),
            n,
        })
        .collect();
    let ids = c.send_batch(q, &jobs).await.unwrap();
    assert_eq!(ids.len(), 5);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in input order");
    let got: Vec<Message<Job>> = c.read(q, Duration::from_secs(30), 10, None).await.unwrap();
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert_eq!(got.into_iter().map(|m| m.payload).collect::<Vec<_>>(), jobs);
    // An empty batch sends nothing; an unknown queue is 42704.
    let none: &[Job] = &[];
    assert!(c.send_batch(q, none).await.unwrap().is_empty());
    let e = c.send_batch("rs_no_such_queue", &jobs).await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("42704"));
}

#[tokio::test]
async fn archive_read_archives_and_leases_in_one_call() {
    let q = "rs_archive_read";
    let c = fresh(q, "").await;
    let a = c.send(q, &serde_json::json!({"n": 1})).await.unwrap();
    let b = c.send(q, &serde_json::json!({"n": 2})).await.unwrap();
    let got: Vec<Message<Value>> = c.read(q, Duration::from_secs(30), 1, None).await.unwrap();
    assert_eq!(got[0].id, a);
    // A bad argument is refused before anything changes: a is still leased, not archived.
    let e = c
        .archive_read::<Value>(q, &[(a, got[0].receipt)], Duration::from_secs(30), 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("22023"));
    let next: Vec<Message<Value>> = c
        .archive_read(q, &[(a, got[0].receipt)], Duration::from_secs(30), 10, None)
        .await
        .unwrap();
    assert_eq!(next.iter().map(|m| m.id).collect::<Vec<_>>(), vec![b]);
    assert_eq!(archived_ns(&c, q).await.len(), 1, "a archived once");
    // Nothing left: b is archived and the read returns nothing.
    // A stale receipt archives nothing: b stays leased, and the read finds nothing else.
    let none: Vec<Message<Value>> = c
        .archive_read(
            q,
            &[(b, next[0].receipt ^ 1)],
            Duration::from_secs(30),
            10,
            None,
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(
        archived_ns(&c, q).await.len(),
        1,
        "b not archived with a stale receipt"
    );
    let none: Vec<Message<Value>> = c
        .archive_read(
            q,
            &[(b, next[0].receipt)],
            Duration::from_secs(30),
            10,
            None,
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(archived_ns(&c, q).await.len(), 2);
}

#[tokio::test]
async fn the_runtime_archives_each_message_once_retries_failures_and_keeps_slow_leases() {
    let q = "rs_runtime";
    const N: i32 = 100;
    let c = fresh(q, ", retry_delay => '0', retry_jitter => 0").await;
    for n in 0..N {
        c.send(
            q,
            &Job {
                id: format!("job_{n}"),
                n,
            },
        )
        .await
        .unwrap();
    }
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
                    // Slower than two whole leases by the server's clock: the heartbeat must
                    // keep it ours. (A 3 s lease renewed every second leaves 2 s for a late
                    // heartbeat, so only a broken renewal lets it run out.)
                    common::work_past_server_clock(&dsn(), 6).await;
                }
                if done.fetch_add(1, Ordering::SeqCst) + 1 == N as usize {
                    all_done.notify_one();
                }
                Ok(())
            }
        }
    };
    let consumer = Consumer {
        handlers: 4,
        lease: Duration::from_secs(3),
        timeout: Duration::from_secs(30),
        wait: Duration::from_millis(200),
        ..Consumer::new(&dsn(), q)
    };
    let stats = consumer
        .run(handler, async move { all_done.notified().await })
        .await
        .unwrap();
    assert_eq!(stats.archived.load(Ordering::SeqCst), N as u64);
    assert_eq!(stats.nacked.load(Ordering::SeqCst), 10);
    assert!(stats.lease_extensions.load(Ordering::SeqCst) >= 1);
    let archived = archived_ns(&c, q).await;
    assert_eq!(archived.len(), N as usize, "each message archived once");
    let by_n: HashMap<i32, i32> = archived.into_iter().collect();
    assert_eq!(by_n.len(), N as usize);
    assert_eq!(
        by_n[&5], 1,
        "the slow job was never redelivered: its lease was kept"
    );
    assert_eq!(by_n[&13], 2, "a failed job is delivered again");
    let left: i64 = c
        .pg()
        .query_one(
            "SELECT queue_length + dlq_length FROM pgflow.metrics($1)",
            &[&q],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_handler_that_times_out_is_nacked_and_its_message_retried() {
    let q = "rs_timeout";
    let c = fresh(q, ", retry_delay => '0', retry_jitter => 0").await;
    c.send(
        q,
        &Job {
            id: "slow".into(),
            n: 1,
        },
    )
    .await
    .unwrap();
    let done = Arc::new(Notify::new());
    let handler = {
        let done = Arc::clone(&done);
        move |m: Message<Value>| {
            let done = Arc::clone(&done);
            async move {
                if m.read_ct == 1 {
                    tokio::time::sleep(Duration::from_secs(5)).await; // past the timeout
                }
                done.notify_one();
                Ok(())
            }
        }
    };
    let consumer = Consumer {
        handlers: 1,
        lease: Duration::from_secs(30),
        timeout: Duration::from_millis(300),
        wait: Duration::from_millis(200),
        ..Consumer::new(&dsn(), q)
    };
    let stats = consumer
        .run(handler, async move { done.notified().await })
        .await
        .unwrap();
    assert_eq!(stats.timed_out.load(Ordering::SeqCst), 1);
    assert_eq!(stats.archived.load(Ordering::SeqCst), 1);
    let row = c
        .pg()
        .query_one(
            "SELECT a.read_ct, a.message FROM pgflow.archive a JOIN pgflow.queue q USING (queue_id)
              WHERE q.queue_name = $1",
            &[&q],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 2, "delivered again after the timeout");
}

#[tokio::test]
async fn shutdown_lets_in_flight_messages_finish_and_loses_none() {
    let q = "rs_shutdown";
    const N: i32 = 20;
    let c = fresh(q, "").await;
    for n in 0..N {
        c.send(
            q,
            &Job {
                id: format!("j{n}"),
                n,
            },
        )
        .await
        .unwrap();
    }
    let started = Arc::new(Notify::new());
    let handler = {
        let started = Arc::clone(&started);
        move |_m: Message<Value>| {
            let started = Arc::clone(&started);
            async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await; // work in flight
                Ok(())
            }
        }
    };
    let consumer = Consumer {
        handlers: 4,
        wait: Duration::from_millis(200),
        ..Consumer::new(&dsn(), q)
    };
    // SIGTERM stands in as "the first job has started".
    let stats = consumer
        .run(handler, async move { started.notified().await })
        .await
        .unwrap();
    let archived = stats.archived.load(Ordering::SeqCst);
    assert!(archived >= 1, "the job in flight finished");
    let m = c
        .pg()
        .query_one(
            "SELECT visible, in_flight, total_archived FROM pgflow.metrics($1)",
            &[&q],
        )
        .await
        .unwrap();
    let (visible, in_flight, total_archived): (i64, i64, i64) = (m.get(0), m.get(1), m.get(2));
    assert_eq!(in_flight, 0, "nothing left leased");
    assert_eq!(total_archived as u64, archived);
    assert_eq!(visible + total_archived, N as i64, "nothing lost");
    assert_eq!(
        archived_ns(&c, q).await.len() as u64,
        archived,
        "nothing archived twice"
    );
}

/// Transactional handlers: the handler's own writes (a row, and a result sent to another
/// queue) commit with the archive, or roll back with the nack; a handler that times out in the
/// middle of a statement is cancelled, rolled back and nacked, and the worker goes on.
#[tokio::test]
async fn transactional_handlers_commit_their_writes_with_the_archive() {
    let q = "rs_tx";
    let c = fresh(q, ", retry_delay => '1 hour', retry_jitter => 0").await;
    let results = "rs_tx_results";
    fresh(results, "").await;
    c.pg()
        .batch_execute("DROP TABLE IF EXISTS rs_tx_effects; CREATE TABLE rs_tx_effects (id text)")
        .await
        .unwrap();
    for id in ["ok", "fail", "slow"] {
        c.send(
            q,
            &Job {
                id: id.into(),
                n: 1,
            },
        )
        .await
        .unwrap();
    }
    let handled = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(Notify::new());
    let handler = {
        let (handled, all) = (Arc::clone(&handled), Arc::clone(&all));
        move |m: Message<Value>, tx: pgflow_client::Tx| {
            let (handled, all) = (Arc::clone(&handled), Arc::clone(&all));
            async move {
                let id = m.payload["id"].as_str().unwrap_or("").to_owned();
                // The third has started: stop after it (the runtime finishes what is in
                // flight, here by timing it out).
                if handled.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
                    all.notify_one();
                }
                async {
                    tx.pg()
                        .execute("INSERT INTO rs_tx_effects VALUES ($1)", &[&id])
                        .await
                        .map_err(|e| e.to_string())?;
                    tx.client()
                        .send("rs_tx_results", &serde_json::json!({ "for": id }))
                        .await
                        .map_err(|e| e.to_string())?;
                    match id.as_str() {
                        "fail" => Err("it broke".to_owned()),
                        "slow" => {
                            // Past the timeout, inside a statement of the transaction.
                            tx.pg()
                                .execute("SELECT pg_sleep(30)", &[])
                                .await
                                .map_err(|e| e.to_string())?;
                            Ok(())
                        }
                        _ => Ok(()),
                    }
                }
                .await
            }
        }
    };
    let consumer = Consumer {
        handlers: 1,
        lease: Duration::from_secs(30),
        timeout: Duration::from_secs(3), // the others finish well within it, even on a busy machine
        wait: Duration::from_millis(200),
        ..Consumer::new(&dsn(), q)
    };
    let done = Arc::clone(&all);
    let stats = tokio::time::timeout(
        Duration::from_secs(60),
        consumer.run_tx(handler, async move { done.notified().await }),
    )
    .await
    .expect("the consumer never handled the three messages")
    .unwrap();
    assert_eq!(stats.archived.load(Ordering::SeqCst), 1);
    assert_eq!(stats.nacked.load(Ordering::SeqCst), 2);
    assert_eq!(stats.timed_out.load(Ordering::SeqCst), 1);
    let effects: Vec<String> = c
        .pg()
        .query("SELECT id FROM rs_tx_effects", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        effects,
        vec!["ok".to_owned()],
        "only the archived handler's write committed"
    );
    let sent: Vec<Value> = c
        .pg()
        .query(
            "SELECT message FROM pgflow.message m JOIN pgflow.queue q USING (queue_id)
              WHERE q.queue_name = $1",
            &[&results],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        sent,
        vec![serde_json::json!({ "for": "ok" })],
        "one result, for the archived message"
    );
    let failed: Vec<(String, String)> = c
        .pg()
        .query(
            "SELECT message ->> 'id', errors -> -1 ->> 'error' FROM pgflow.message m
               JOIN pgflow.queue q USING (queue_id)
              WHERE q.queue_name = $1 ORDER BY msg_id",
            &[&q],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0], ("fail".to_owned(), "it broke".to_owned()));
    assert_eq!(failed[1].0, "slow");
    assert!(failed[1].1.starts_with("handler timed out"), "{failed:?}");
}

#[tokio::test]
async fn transactional_handlers_archive_with_the_next_lease_in_one_call() {
    let q = "rs_tx_batches";
    let c = fresh(q, "").await;
    for n in 0..10 {
        c.send(
            q,
            &Job {
                id: format!("j{n}"),
                n,
            },
        )
        .await
        .unwrap();
    }
    // The counts of pgflow's functions, taken by the consumer's sessions only (the setting
    // is theirs), so tests running beside this one do not count.
    let calls = || async {
        c.pg()
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        let rows = c
            .pg()
            .query(
                "SELECT funcname::text, calls FROM pg_stat_user_functions
                  WHERE schemaname = 'pgflow' AND funcname IN ('read', 'archive', 'archive_read')",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect::<HashMap<_, _>>()
    };
    let before = calls().await;
    let consumer = Consumer {
        handlers: 1,
        wait: Duration::from_millis(200),
        ..Consumer::new(&format!("{} options='-c track_functions=all'", dsn()), q)
    };
    // Stop once all ten are archived: by then the worker waits in a plain long-poll read.
    let watcher = Client::connect(&dsn()).await.unwrap();
    let all_archived = async move {
        loop {
            let n: i64 = watcher
                .pg()
                .query_one(
                    "SELECT archived FROM pgflow.metrics($1, exact => true)",
                    &[&"rs_tx_batches"],
                )
                .await
                .unwrap()
                .get(0);
            if n == 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let stats = tokio::time::timeout(
        Duration::from_secs(60),
        consumer.run_tx(
            |_m: Message<Value>, _tx| async { Ok::<(), String>(()) },
            all_archived,
        ),
    )
    .await
    .expect("the consumer never archived the ten messages")
    .unwrap();
    assert_eq!(stats.archived.load(Ordering::SeqCst), 10);
    // Each message was archived by the archive_read that leased the next (the tenth's found
    // none); no plain archive. The sessions' counts reach the server when they end.
    let delta = |after: &HashMap<String, i64>, f: &str| {
        after.get(f).copied().unwrap_or(0) - before.get(f).copied().unwrap_or(0)
    };
    let mut after = calls().await;
    for _ in 0..600 {
        if delta(&after, "archive_read") >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = calls().await;
    }
    assert_eq!(delta(&after, "archive_read"), 10, "{after:?}");
    assert_eq!(delta(&after, "archive"), 0, "{after:?}");
    assert!(delta(&after, "read") >= 1, "{after:?}");
    assert_eq!(archived_ns(&c, q).await.len(), 10);
}

#[tokio::test]
async fn calls_inside_a_callers_transaction_commit_or_roll_back_with_it() {
    let q = "rs_outbox";
    let c = fresh(q, "").await;
    c.pg()
        .batch_execute(
            "DROP TABLE IF EXISTS rs_orders; CREATE TABLE rs_orders (id text PRIMARY KEY)",
        )
        .await
        .unwrap();
    let (mut pg, conn) = tokio_postgres::connect(&dsn(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let job = |id: &str| Job {
        id: id.to_owned(),
        n: 0,
    };

    // Rolled back: neither the business row nor the message.
    let tx = pg.transaction().await.unwrap();
    tx.execute("INSERT INTO rs_orders VALUES ('o1')", &[])
        .await
        .unwrap();
    pgflow_client::on(&tx).send(q, &job("o1")).await.unwrap();
    tx.rollback().await.unwrap();
    // Committed: both, visible together.
    let tx = pg.transaction().await.unwrap();
    tx.execute("INSERT INTO rs_orders VALUES ('o2')", &[])
        .await
        .unwrap();
    let id = pgflow_client::on(&tx).send(q, &job("o2")).await.unwrap();
    assert!(c
        .read::<Job>(q, Duration::from_secs(30), 10, None)
        .await
        .unwrap()
        .is_empty());
    tx.commit().await.unwrap();

    // A read and an archive inside a transaction that rolls back leave the message as it was.
    let tx = pg.transaction().await.unwrap();
    let got = pgflow_client::on(&tx)
        .read::<Job>(q, Duration::from_secs(30), 10, None)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].id, got[0].payload.id.as_str()), (id, "o2"));
    assert!(pgflow_client::on(&tx)
        .archive(q, id, Some(got[0].receipt))
        .await
        .unwrap());
    tx.rollback().await.unwrap();
    let again = c
        .read::<Job>(q, Duration::from_secs(30), 10, None)
        .await
        .unwrap();
    assert_eq!(
        again.len(),
        1,
        "the rolled-back read and archive left it deliverable"
    );
    assert_eq!((again[0].id, again[0].read_ct), (id, 1));
    let orders: Vec<String> = c
        .pg()
        .query("SELECT id FROM rs_orders ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(orders, vec!["o2".to_owned()]);
    c.pg().batch_execute("DROP TABLE rs_orders").await.unwrap();
}
