//! A commit whose wait for the synchronous standby is cancelled stays committed on the server
//! it reached, which only warns: the client reports it as `Error::OutcomeUnknown`, and a
//! producer's retry with the same dedup key stores the message once. A test binary of its own:
//! while it runs, every commit on the server waits for a standby that never comes, so no other
//! test may run beside it (cargo runs test binaries one after another).
use std::time::Duration;

use pgflow_client::{Client, Error, SendOptions};
use serde_json::json;

fn dsn() -> String {
    std::env::var("PGFLOW_TEST_DSN")
        .expect("PGFLOW_TEST_DSN is not set: run through scripts/test.sh")
}

async fn setting_reaches(c: &Client, value: &str) {
    for _ in 0..10_000 {
        let now: String = c
            .pg()
            .query_one("SELECT current_setting('synchronous_standby_names')", &[])
            .await
            .unwrap()
            .get(0);
        if now == value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("synchronous_standby_names never became {value:?}");
}

/// Waits until commits really wait for the synchronous standby. A session sees a reloaded
/// `synchronous_standby_names` before commits wait on it: they skip the wait until the
/// checkpointer has processed the reload as well (`WalSndCtl->sync_standbys_defined`). A probe
/// commit either finishes at once (too early: try again) or waits, shown by its own wait event,
/// and is cancelled.
async fn commits_wait_for_the_standby(watch: &Client) {
    for _ in 0..10_000 {
        let probe = Client::connect(&dsn()).await.unwrap();
        let pid: i32 = probe
            .pg()
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let commit = tokio::spawn(async move {
            // A commit waits for the standby only if its transaction has an xid and wrote WAL:
            // a transactional logical message does both, and touches no table.
            probe
                .pg()
                .batch_execute("SELECT pg_logical_emit_message(true, 'pgflow-test', 'probe')")
                .await
        });
        let mut waited = false;
        while !waited && !commit.is_finished() {
            waited = watch
                .pg()
                .query_one(
                    "SELECT coalesce(bool_or(wait_event = 'SyncRep'), false) FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await
                .unwrap()
                .get(0);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if waited {
            watch
                .pg()
                .execute("SELECT pg_cancel_backend($1)", &[&pid])
                .await
                .unwrap();
        }
        commit.await.unwrap().unwrap();
        if waited {
            return;
        }
    }
    panic!("commits never waited for the synchronous standby");
}

#[tokio::test]
async fn a_cancelled_wait_for_the_synchronous_standby_is_an_unknown_outcome() {
    let q = "rs_syncrep";
    let admin = Client::connect(&dsn()).await.unwrap();
    admin
        .pg()
        .batch_execute(
            "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS pgflow;
             SELECT pgflow.drop_queue('rs_syncrep', if_exists => true);
             SELECT pgflow.create_queue('rs_syncrep');",
        )
        .await
        .unwrap();
    let producer = Client::connect(&dsn()).await.unwrap();
    let pid: i32 = producer
        .pg()
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = 'nobody'",
        "SELECT pg_reload_conf()",
    ] {
        admin.pg().batch_execute(sql).await.unwrap();
    }
    let opts = SendOptions {
        dedup_key: Some("order-1".into()),
        ..Default::default()
    };
    // The part that may panic runs in a task of its own, so the setting is reset either way.
    let admin_dsn = dsn();
    let first = opts.clone();
    let waited = tokio::spawn(async move {
        let admin = Client::connect(&admin_dsn).await.unwrap();
        setting_reaches(&producer, "nobody").await;
        commits_wait_for_the_standby(&admin).await;
        let sending = {
            let opts = first;
            tokio::spawn(async move { producer.send_with(q, &json!({"n": 1}), &opts).await })
        };
        // Cancel the wait once the server shows it (the backend's own wait event).
        loop {
            let waits: bool = admin
                .pg()
                .query_one(
                    "SELECT coalesce(wait_event = 'SyncRep', false) FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await
                .unwrap()
                .get(0);
            if waits || sending.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        admin
            .pg()
            .execute("SELECT pg_cancel_backend($1)", &[&pid])
            .await
            .unwrap();
        sending.await.unwrap()
    })
    .await;
    for sql in [
        "ALTER SYSTEM RESET synchronous_standby_names",
        "SELECT pg_reload_conf()",
    ] {
        admin.pg().batch_execute(sql).await.unwrap();
    }
    setting_reaches(&admin, "").await;
    let outcome = waited.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    match outcome {
        Err(Error::OutcomeUnknown { message, detail }) => {
            assert!(message.contains("synchronous replication"), "{message}");
            assert!(detail.unwrap_or_default().contains("committed locally"));
        }
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    // The producer's retry with the same key: the message is there once.
    let again = admin.send_with(q, &json!({"n": 1}), &opts).await.unwrap();
    let got = admin
        .read::<serde_json::Value>(q, Duration::from_secs(30), 10, None)
        .await
        .unwrap();
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), vec![again]);
}
