//! The background workers as a backend sees them.
use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::tests::{one_bool, one_i64, setup_queue, sqlstate};

    // Background workers (the test server preloads pgflow). A test's own transaction is never
    // committed, so the worker cannot see its data: what the worker does to committed messages
    // is covered by the end-to-end tests (tests/e2e/tests/worker.rs), and so are DROP DATABASE
    // and DROP EXTENSION, which cannot run inside a test's transaction.

    /// Polls `cond` until it is true or 30 s pass. The worker is another process; nothing it
    /// does can wake this backend, so this is a bounded poll, not a sleep in place of a clock.
    fn eventually(cond: &str) -> bool {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            Spi::run("SELECT pg_stat_clear_snapshot()").unwrap();
            if one_bool(cond) {
                return true;
            }
            if std::time::Instant::now() >= end {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    const MY_WORKER_RUNS: &str = "SELECT coalesce((SELECT state = 'running' AND pid IS NOT NULL
                                     FROM pgflow.worker_status()
                                    WHERE datname = current_database()), false)";

    fn my_worker_pid() -> i32 {
        Spi::get_one::<i32>(
            "SELECT pid FROM pgflow.worker_status() WHERE datname = current_database()",
        )
        .unwrap()
        .expect("the worker has a pid")
    }

    #[pg_test]
    fn the_launcher_and_this_database_s_worker_show_in_pg_stat_activity() {
        // One query: another test may be restarting the worker meanwhile (SIGTERM test).
        assert!(
            eventually(
                "SELECT EXISTS (SELECT 1 FROM pgflow.worker_status() s
                                  JOIN pg_stat_activity a ON a.pid = s.pid
                                 WHERE s.datname = current_database() AND s.state = 'running'
                                   AND a.backend_type = 'pgflow worker'
                                   AND a.datname = current_database())"
            ),
            "no worker for this database in pg_stat_activity"
        );
        assert!(one_bool(
            "SELECT count(*) = 1 FROM pg_stat_activity
              WHERE backend_type = 'pgflow launcher' AND datname IS NULL"
        ));
    }

    #[pg_test]
    fn the_worker_ticks_and_counts_its_rounds() {
        assert!(eventually(MY_WORKER_RUNS));
        let ticks =
            one_i64("SELECT ticks FROM pgflow.worker_status() WHERE datname = current_database()");
        assert!(eventually(&format!(
            "SELECT ticks > {ticks} AND last_tick_at IS NOT NULL AND started_at <= last_tick_at
               FROM pgflow.worker_status() WHERE datname = current_database()"
        )));
    }

    #[pg_test]
    fn sigterm_ends_the_worker_and_the_launcher_starts_a_new_one() {
        assert!(eventually(MY_WORKER_RUNS));
        let pid = my_worker_pid();
        let restarts = one_i64(
            "SELECT restarts FROM pgflow.worker_status() WHERE datname = current_database()",
        );
        assert!(one_bool(&format!("SELECT pg_terminate_backend({pid})")));
        assert!(
            eventually(&format!(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = {pid})"
            )),
            "the worker ignored SIGTERM"
        );
        assert!(
            eventually(&format!(
                "SELECT coalesce((SELECT state = 'running' AND pid <> {pid} AND restarts > {restarts}
                                    FROM pgflow.worker_status()
                                   WHERE datname = current_database()), false)"
            )),
            "no new worker after SIGTERM"
        );
    }

    #[pg_test]
    fn maintain_runs_every_job_and_rejects_bad_batches() {
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT string_agg(job || '=' || processed, ',') FROM pgflow.maintain()"
            )
            .unwrap()
            .unwrap(),
            "expire_leases=0,promote_delayed=0,prune_archive=0,prune_dedup=0,check_cursors=0,\
             confirm_forwarded=0"
        );
        assert_eq!(
            sqlstate("SELECT * FROM pgflow.maintain(batch => 0)"),
            "22023"
        );
        assert_eq!(
            sqlstate("SELECT * FROM pgflow.maintain(prune_batch => NULL)"),
            "22004"
        );
        assert_eq!(
            sqlstate("SELECT pgflow.promote_delayed(batch => -1)"),
            "22023"
        );
        // The shared per-queue loop refuses a job it does not know instead of doing nothing.
        assert_eq!(
            sqlstate("SELECT pgflow._each_queue('expire_lease', now(), 10)"),
            "22023"
        );
        assert_eq!(
            sqlstate("SELECT pgflow._each_queue(NULL, now(), 10)"),
            "22023"
        );
    }

    #[pg_test]
    fn promote_delayed_makes_due_messages_ready_and_leaves_the_rest() {
        setup_queue("promote");
        Spi::run(
            "SELECT pgflow.send('promote', '{\"n\": 1}', delay => '10 seconds');
             SELECT pgflow.send('promote', '{\"n\": 2}', delay => '1 hour');",
        )
        .unwrap();
        let at = "clock_timestamp() + interval '1 minute'";
        assert_eq!(one_i64(&format!("SELECT pgflow.promote_delayed({at})")), 1);
        assert_eq!(
            one_i64(&format!("SELECT pgflow.promote_delayed({at})")),
            0,
            "idempotent"
        );
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT string_agg((message->>'n') || ':' || state::text, ',' ORDER BY msg_id)
                   FROM pgflow.message m JOIN pgflow.queue q USING (queue_id)
                  WHERE q.queue_name = 'promote'"
            )
            .unwrap()
            .unwrap(),
            "1:r,2:d"
        );
    }
}
