//! Failure handling: nack, backoff, lease expiry, the dead-letter queue, maintenance.
use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::tests::{one_bool, one_i64, setup_queue, sqlstate};

    // ---------------------------------------------------------------------------------------
    // Failure handling: nack, backoff, lease expiry, the dead-letter queue, maintenance
    // ---------------------------------------------------------------------------------------

    /// A queue whose retries are exact (no jitter), with one leased message. Returns its id.
    fn leased_message(name: &str, extra: &str) -> i64 {
        Spi::run(&format!(
            "SELECT pgflow.create_queue('{name}', retry_jitter => 0{extra})"
        ))
        .unwrap();
        let id = one_i64(&format!("SELECT pgflow.send('{name}', '{{\"job\": 1}}')"));
        assert_eq!(
            one_i64(&format!(
                "SELECT msg_id FROM pgflow.read('{name}', '30 s', 1)"
            )),
            id
        );
        id
    }

    /// Makes a retried message deliverable now and leases it again (what the clock would do).
    fn redeliver(name: &str, id: i64) -> i64 {
        Spi::run(&format!("SELECT pgflow.set_vt('{name}', {id}, '0')")).unwrap();
        one_i64(&format!(
            "SELECT read_ct::bigint FROM pgflow.read('{name}', '30 s', 1)"
        ))
    }

    #[pg_test]
    fn nack_backoff_schedule_is_exact_under_a_controlled_now() {
        let id = leased_message("jobs", "");
        // Retries 1, 2, 3 wait 1 s, 2 s, 4 s after the nack; the 4th failed delivery is dead.
        for (attempt, wait) in [(1, "00:00:01"), (2, "00:00:02"), (3, "00:00:04")] {
            let (outcome, read_ct, waited) = Spi::get_three::<String, i32, String>(&format!(
                "SELECT outcome, read_ct, (retry_at - '2030-01-01 00:00:00+00')::text
                   FROM pgflow.nack('jobs', {id}, 'boom {attempt}', now => '2030-01-01 00:00:00+00')"
            ))
            .unwrap();
            assert_eq!(outcome.as_deref(), Some("retry"), "attempt {attempt}");
            assert_eq!(read_ct, Some(attempt));
            assert_eq!(waited.as_deref(), Some(wait), "attempt {attempt}");
            assert_eq!(redeliver("jobs", id), attempt as i64 + 1);
        }
        let (outcome, read_ct, retry_at) = Spi::get_three::<String, i32, String>(&format!(
            "SELECT outcome, read_ct, retry_at::text FROM pgflow.nack('jobs', {id}, 'boom 4')"
        ))
        .unwrap();
        assert_eq!(
            (outcome.as_deref(), read_ct, retry_at),
            (Some("dead"), Some(4), None)
        );
        assert_eq!(one_i64("SELECT count(*) FROM pgflow.message"), 0);
        assert!(one_bool(&format!(
            "SELECT msg_id = {id} AND read_ct = 4 AND first_error = 'boom 1' AND last_error = 'boom 4'
                    AND jsonb_array_length(errors) = 4 AND reason LIKE 'max_retries exceeded after 4 deliveries%'
                    AND message = '{{\"job\": 1}}'
               FROM pgflow.dlq_list('jobs')"
        )));
        assert_eq!(one_i64("SELECT dlq_length FROM pgflow.metrics('jobs')"), 1);
    }

    #[pg_test]
    fn the_policy_knobs_shape_the_schedule() {
        Spi::run(
            "SELECT pgflow.create_queue('jobs', max_retries => 5, retry_delay => '10 s',
                    retry_backoff => 3, retry_delay_max => '1 min', retry_jitter => 0.5)",
        )
        .unwrap();
        let got = Spi::get_one::<String>(
            "SELECT string_agg(attempt || ':' || min_delay || '-' || max_delay, ' ' ORDER BY attempt)
               FROM pgflow.retry_schedule('jobs')",
        )
        .unwrap();
        assert_eq!(
            got.as_deref(),
            Some("1:00:00:05-00:00:10 2:00:00:15-00:00:30 3:00:00:30-00:01:00 4:00:00:30-00:01:00 5:00:00:30-00:01:00")
        );
        // A jittered nack lands inside its band.
        let id = one_i64("SELECT pgflow.send('jobs', '{}')");
        Spi::run("SELECT pgflow.read('jobs', '30 s', 1)").unwrap();
        assert!(one_bool(&format!(
            "SELECT retry_at - '2030-01-01+00' BETWEEN '5 s' AND '10 s'
               FROM pgflow.nack('jobs', {id}, now => '2030-01-01+00')"
        )));
    }

    #[pg_test]
    fn retry_after_overrides_the_backoff() {
        let id = leased_message("jobs", "");
        assert!(one_bool(&format!(
            "SELECT outcome = 'retry' AND retry_at = '2030-01-01 00:10:00+00'
               FROM pgflow.nack('jobs', {id}, '429', retry_after => '10 min', now => '2030-01-01+00')"
        )));
    }

    #[pg_test]
    fn a_stale_or_misplaced_nack_is_refused_with_55000() {
        let id = leased_message("jobs", "");
        // The consumer that got read_ct 1 lost its lease; the message was delivered again.
        Spi::run(&format!("SELECT pgflow.set_vt('jobs', {id}, '0')")).unwrap();
        Spi::run("SELECT pgflow.read('jobs', '30 s', 1)").unwrap();
        assert_eq!(
            sqlstate(&format!("SELECT pgflow.nack('jobs', {id}, read_ct => 1)")),
            "55000"
        );
        // The current holder's nack (read_ct 2) is accepted.
        assert!(one_bool(&format!(
            "SELECT outcome = 'retry' FROM pgflow.nack('jobs', {id}, read_ct => 2)"
        )));
        // Now it is delayed, not in flight: a second nack is refused.
        assert_eq!(
            sqlstate(&format!("SELECT pgflow.nack('jobs', {id})")),
            "55000"
        );
        assert_eq!(
            one_i64("SELECT count(*) FROM pgflow.nack('jobs', 999)"),
            0,
            "missing: no row"
        );
        for (stmt, code) in [
            ("SELECT pgflow.nack('nope', 1)", "42704"),
            ("SELECT pgflow.nack('jobs', NULL)", "22004"),
            (
                "SELECT pgflow.nack('jobs', 1, retry_after => '-1 s')",
                "22023",
            ),
            (
                "SELECT pgflow.create_queue('q2', retry_backoff => 0.5)",
                "22023",
            ),
            (
                "SELECT pgflow.create_queue('q2', retry_jitter => 1.5)",
                "22023",
            ),
            (
                "SELECT pgflow.create_queue('q2', retry_delay_max => '-1 s')",
                "22023",
            ),
            (
                "SELECT pgflow.alter_queue('jobs', retry_backoff => 1000)",
                "22023",
            ),
            ("SELECT pgflow.expire_leases(batch => 0)", "22023"),
            ("SELECT pgflow.expire_leases(batch => NULL)", "22004"),
            (
                "SELECT pgflow.create_queue('q2', retry_backoff => NULL)",
                "22004",
            ),
            ("SELECT pgflow.prune_archive(batch => -1)", "22023"),
            ("SELECT pgflow.dlq_list('jobs', 0)", "22023"),
            ("SELECT pgflow.dlq_list('nope')", "42704"),
            ("SELECT pgflow.dlq_retry('nope')", "42704"),
            ("SELECT pgflow.dlq_retry('jobs', NULL::bigint)", "22004"),
            ("SELECT pgflow.dlq_purge('nope')", "42704"),
            ("SELECT pgflow.retry_schedule('nope')", "42704"),
        ] {
            assert_eq!(sqlstate(stmt), code, "{stmt}");
        }
        // Nothing stored was touched by the refused calls.
        assert_eq!(one_i64("SELECT count(*) FROM pgflow.message"), 1);
    }

    #[pg_test]
    fn an_expired_lease_is_a_failed_delivery_until_dead() {
        let id = leased_message("jobs", ", max_retries => 1");
        let future = "clock_timestamp() + interval '1 hour'";
        // The lease runs out: the worker's job schedules a retry with the policy's delay.
        assert_eq!(
            one_i64(&format!("SELECT pgflow.expire_leases(now => {future})")),
            1
        );
        assert!(one_bool(&format!(
            "SELECT state = 'delayed' AND read_ct = 1 FROM pgflow.list_pending('jobs') WHERE msg_id = {id}"
        )));
        assert_eq!(
            one_i64(&format!("SELECT pgflow.expire_leases(now => {future})")),
            0,
            "only once"
        );
        // Second delivery, lease runs out again: max_retries 1 is used up.
        assert_eq!(redeliver("jobs", id), 2);
        assert_eq!(
            one_i64(&format!("SELECT pgflow.expire_leases(now => {future})")),
            1
        );
        assert!(one_bool(
            "SELECT reason LIKE 'visibility timeout expired after 2 deliveries%'
                    AND last_error = 'visibility timeout expired' FROM pgflow.dlq_list('jobs')"
        ));
    }

    #[pg_test]
    fn read_applies_lease_expiry_itself_without_the_worker() {
        Spi::run("SELECT pgflow.create_queue('jobs', retry_delay => '1 hour', retry_jitter => 0)")
            .unwrap();
        let id = one_i64("SELECT pgflow.send('jobs', '{}')");
        // A one-microsecond lease has run out by the next statement.
        Spi::run("SELECT pgflow.read('jobs', '1 microsecond', 1)").unwrap();
        // The next read counts the failed delivery and schedules the retry an hour out, so it
        // does not hand the message straight back.
        assert_eq!(
            one_i64("SELECT count(*) FROM pgflow.read('jobs', '30 s', 10)"),
            0
        );
        assert!(one_bool(&format!(
            "SELECT state = 'delayed' AND vt > clock_timestamp() + interval '59 min'
               FROM pgflow.list_pending('jobs') WHERE msg_id = {id}"
        )));
    }

    #[pg_test]
    fn dlq_retry_redrives_with_new_ids_and_fresh_attempts() {
        Spi::run("SELECT pgflow.create_queue('jobs', max_retries => 0)").unwrap();
        let ids: Vec<i64> = (0..3)
            .map(|i| one_i64(&format!("SELECT pgflow.send('jobs', '{{\"n\": {i}}}')")))
            .collect();
        Spi::run("SELECT pgflow.read('jobs', '30 s', 10)").unwrap();
        for id in &ids {
            Spi::run(&format!("SELECT pgflow.nack('jobs', {id}, 'bad input')")).unwrap();
        }
        assert_eq!(one_i64("SELECT dlq_length FROM pgflow.metrics('jobs')"), 3);
        // One by id: a new id, deliverable at once, read_ct back to 0.
        let new_id = one_i64(&format!("SELECT pgflow.dlq_retry('jobs', {})", ids[0]));
        assert!(new_id > ids[2]);
        assert!(
            Spi::get_one::<i64>(&format!("SELECT pgflow.dlq_retry('jobs', {})", ids[0]))
                .unwrap()
                .is_none(),
            "a dead letter is redriven once"
        );
        assert!(one_bool(&format!(
            "SELECT read_ct = 1 AND message = '{{\"n\": 0}}' FROM pgflow.read('jobs', '30 s', 10) WHERE msg_id = {new_id}"
        )));
        // The rest at once, in id order.
        assert_eq!(
            one_i64(
                "SELECT count(*) FROM pgflow.dlq_retry('jobs') r WHERE r.msg_id > r.dead_msg_id"
            ),
            2
        );
        assert_eq!(one_i64("SELECT dlq_length FROM pgflow.metrics('jobs')"), 0);
        assert_eq!(one_i64("SELECT visible FROM pgflow.metrics('jobs')"), 2);
    }

    #[pg_test]
    fn dlq_purge_by_age() {
        Spi::run("SELECT pgflow.create_queue('jobs', max_retries => 0)").unwrap();
        for i in 0..2 {
            let id = one_i64(&format!("SELECT pgflow.send('jobs', '{{\"n\": {i}}}')"));
            Spi::run("SELECT pgflow.read('jobs', '30 s', 1)").unwrap();
            Spi::run(&format!(
                "SELECT pgflow.nack('jobs', {id}, now => '2030-01-0{}+00')",
                i + 1
            ))
            .unwrap();
        }
        assert_eq!(
            one_i64("SELECT pgflow.dlq_purge('jobs', older_than => '2030-01-02+00')"),
            1
        );
        assert_eq!(one_i64("SELECT count(*) FROM pgflow.dlq_list('jobs')"), 1);
        assert_eq!(one_i64("SELECT pgflow.dlq_purge('jobs')"), 1);
    }

    #[pg_test]
    fn error_history_keeps_the_first_and_the_last_nineteen() {
        let id = leased_message("jobs", ", max_retries => 40");
        for i in 1..=25 {
            Spi::run(&format!("SELECT pgflow.nack('jobs', {id}, 'e{i}')")).unwrap();
            redeliver("jobs", id);
        }
        let kept = Spi::get_one::<String>(
            "SELECT string_agg(e->>'error', ',' ORDER BY ord)
               FROM pgflow.message, jsonb_array_elements(errors) WITH ORDINALITY AS x(e, ord)",
        )
        .unwrap()
        .unwrap();
        let want: Vec<String> = std::iter::once(1)
            .chain(7..=25)
            .map(|i| format!("e{i}"))
            .collect();
        assert_eq!(kept, want.join(","));
    }

    #[pg_test]
    fn prune_archive_keeps_what_retention_covers() {
        Spi::run("SELECT pgflow.create_queue('jobs', archive_retention => '1 day')").unwrap();
        Spi::run("SELECT pgflow.create_queue('keep', archive_retention => '30 days')").unwrap();
        for q in ["jobs", "keep"] {
            let id = one_i64(&format!("SELECT pgflow.send('{q}', '{{}}')"));
            Spi::run(&format!("SELECT pgflow.archive('{q}', {id}::bigint)")).unwrap();
        }
        let in_two_days = "clock_timestamp() + interval '2 days'";
        assert_eq!(
            one_i64("SELECT pgflow.prune_archive()"),
            0,
            "nothing is old yet"
        );
        assert_eq!(
            one_i64(&format!(
                "SELECT pgflow.prune_archive(now => {in_two_days})"
            )),
            1
        );
        assert_eq!(
            one_i64("SELECT archive_length FROM pgflow.metrics('keep')"),
            1
        );
        assert!(one_bool(&format!(
            "SELECT array_agg(job || '=' || processed ORDER BY job) = '{{check_cursors=0,confirm_forwarded=0,expire_leases=0,promote_delayed=0,prune_archive=0,prune_dedup=0}}'
               FROM pgflow.maintain(now => {in_two_days})"
        )));
    }

    #[pg_test]
    fn claims_never_fall_back_to_a_sequential_scan_as_the_table_grows() {
        setup_queue("jobs");
        // Statistics taken while the table is nearly empty, and plans cached with them...
        Spi::run("SELECT pgflow.send_batch('jobs', array_fill('{}'::jsonb, ARRAY[5]))").unwrap();
        Spi::run("ANALYZE pgflow.message").unwrap();
        for _ in 0..8 {
            Spi::run("SELECT pgflow.archive('jobs', array_agg(msg_id)) FROM pgflow.read('jobs', '30 s', 1)")
                .unwrap();
            Spi::run("SELECT pgflow.send('jobs', '{}')").unwrap();
        }
        // ...then the table grows far past them (bench W4 saw this between two autoanalyzes).
        Spi::run("SELECT pgflow.send_batch('jobs', array_fill('{}'::jsonb, ARRAY[5000]))").unwrap();
        let seq_scans = || {
            one_i64("SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relid = 'pgflow.message'::regclass")
        };
        let before = seq_scans();
        for _ in 0..20 {
            Spi::run(
                "SELECT pgflow.archive('jobs', array_agg(msg_id)) FROM pgflow.read('jobs', '30 s', 10);
                 SELECT pgflow.delete('jobs', array_agg(msg_id)) FROM pgflow.read('jobs', '30 s', 10);
                 SELECT count(*) FROM pgflow.pop('jobs', 5);",
            )
            .unwrap();
        }
        assert_eq!(
            seq_scans(),
            before,
            "a verb scanned the whole message table"
        );
    }
}
