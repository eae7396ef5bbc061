//! The Prometheus text exposition format (version 0.0.4) of pgflow's statistics: what the
//! endpoint (`exporter.rs`) serves and `pgflow.metrics_text()` returns. Everything comes from
//! shared memory: the queues' statistics (`ipc::stats`), the long-poll waiters and the worker
//! slots, so a scrape runs no query and costs O(queues).
use std::fmt::Write;

use crate::ipc::stats::{self, Hist, BOUNDS_US};
use crate::ipc::waiters;

use super::{SlotState, REGISTRY};

/// Microseconds from the Unix epoch to Postgres's (2000-01-01).
const PG_EPOCH_UNIX_US: i64 = 946_684_800_000_000;

/// A label value, escaped as the format asks (backslash, double quote, newline).
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

fn unix_secs(pg_us: i64) -> f64 {
    (pg_us + PG_EPOCH_UNIX_US) as f64 / 1e6
}

/// Estimates quantile `q` (0..1) of a histogram in seconds, by linear interpolation inside
/// the bucket (as Prometheus's histogram_quantile does); None when it is empty. Above the
/// last bound it answers the last bound.
pub fn quantile(h: &Hist, q: f64) -> Option<f64> {
    let total = h.count();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, &n) in h.buckets.iter().enumerate() {
        if n > 0 && (seen + n) as f64 >= rank {
            if i == BOUNDS_US.len() {
                return Some(BOUNDS_US[i - 1] as f64 / 1e6);
            }
            let lo = if i == 0 { 0 } else { BOUNDS_US[i - 1] } as f64;
            let hi = BOUNDS_US[i] as f64;
            let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
            return Some((lo + (hi - lo) * within) / 1e6);
        }
        seen += n;
    }
    Some(BOUNDS_US[BOUNDS_US.len() - 1] as f64 / 1e6)
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One of a database's link gauges, from its registry slot.
type LinkGauge = fn(&super::Slot) -> f64;
/// A per-link series' value from the link's row and the time now (a Postgres timestamp).
type PerLink = fn(&super::LinkRow, i64) -> f64;
/// 2000-01-01 (Postgres's epoch) in Unix time.
const PG_EPOCH_UNIX: f64 = 946_684_800.0;

/// Renders the databases `keep_db` accepts and, of their queues, those `keep_queue` accepts.
/// `sql_horizon`, from `metrics_text()`, gives one database's horizon as just measured
/// (seconds and transactions, None when nothing holds it); otherwise each worker's last
/// measurement is used.
pub fn render(
    keep_db: &dyn Fn(u32) -> bool,
    keep_queue: &dyn Fn(u32, i32) -> bool,
    sql_horizon: Option<(u32, Option<(f64, i32)>)>,
) -> String {
    let slots: Vec<super::Slot> = {
        let reg = REGISTRY.share();
        reg.slots
            .iter()
            // A database where pgflow is not created is none of the endpoint's business: its
            // name would tell an unauthenticated scraper what the cluster holds (issue #34).
            .filter(|s| s.has_pgflow() && keep_db(s.dboid))
            .copied()
            .collect()
    };
    let db_name = |db: u32| {
        slots
            .iter()
            .find(|s| s.dboid == db)
            .map_or_else(|| db.to_string(), |s| s.name())
    };
    let entries: Vec<stats::Entry> = stats::snapshot(keep_db)
        .into_iter()
        .filter(|e| keep_queue(e.dboid, e.queue_id))
        .collect();
    let waiting = waiters::waiting_by_queue();
    let labels: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "database=\"{}\",queue=\"{}\"",
                esc(&db_name(e.dboid)),
                esc(e.name())
            )
        })
        .collect();
    let mut out = String::with_capacity(1024 + entries.len() * 3000);

    header(
        &mut out,
        "pgflow_queue_messages",
        "gauge",
        "Messages of a queue by state (archived: rows kept in the audit trail).",
    );
    for (e, l) in entries.iter().zip(&labels) {
        // Gauges waiting for a rebuild are left out rather than shown wrong.
        if !e.valid {
            continue;
        }
        for (state, v) in stats::GAUGES.iter().zip(e.gauges) {
            let _ = writeln!(out, "pgflow_queue_messages{{{l},state=\"{state}\"}} {v}");
        }
    }
    header(
        &mut out,
        "pgflow_messages_total",
        "counter",
        "Message events of a queue since its statistics were reset.",
    );
    for (e, l) in entries.iter().zip(&labels) {
        for (event, v) in stats::EVENTS.iter().zip(e.events) {
            let _ = writeln!(out, "pgflow_messages_total{{{l},event=\"{event}\"}} {v}");
        }
    }
    for (h, name, help) in [
        (
            stats::WAIT,
            "pgflow_wait_seconds",
            "Time from enqueue to first delivery.",
        ),
        (
            stats::PROCESSING,
            "pgflow_processing_seconds",
            "Time from delivery to archive, when the session that leased a message archives it.",
        ),
        (
            stats::END_TO_END,
            "pgflow_end_to_end_seconds",
            "Time from enqueue to archive.",
        ),
    ] {
        header(&mut out, name, "histogram", help);
        for (e, l) in entries.iter().zip(&labels) {
            let hist = &e.hist[h];
            let mut cum = 0u64;
            for (i, n) in hist.buckets.iter().enumerate() {
                cum += n;
                let le = match BOUNDS_US.get(i) {
                    Some(b) => format!("{}", *b as f64 / 1e6),
                    None => "+Inf".to_owned(),
                };
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {cum}");
            }
            let _ = writeln!(out, "{name}_sum{{{l}}} {}", hist.sum_us as f64 / 1e6);
            let _ = writeln!(out, "{name}_count{{{l}}} {cum}");
        }
    }
    header(
        &mut out,
        "pgflow_waiting_consumers",
        "gauge",
        "Readers waiting in long-poll on a queue.",
    );
    for (e, l) in entries.iter().zip(&labels) {
        let n = waiting
            .iter()
            .find(|w| w.0 == e.dboid && w.1 == e.queue_id)
            .map_or(0, |w| w.2);
        let _ = writeln!(out, "pgflow_waiting_consumers{{{l}}} {n}");
    }
    header(
        &mut out,
        "pgflow_queue_oldest_ready_timestamp_seconds",
        "gauge",
        "When a queue's oldest deliverable message was enqueued (Unix time), as the worker's last tick found it; no line when none is.",
    );
    for (e, l) in entries.iter().zip(&labels) {
        if e.valid && e.oldest_ready != 0 {
            let _ = writeln!(
                out,
                "pgflow_queue_oldest_ready_timestamp_seconds{{{l}}} {}",
                unix_secs(e.oldest_ready)
            );
        }
    }
    header(
        &mut out,
        "pgflow_alert_firing_since_timestamp_seconds",
        "gauge",
        "Since when a queue's alert (dlq, age, depth) fires, as the worker last checked; only firing alerts have a line.",
    );
    for (e, l) in entries.iter().zip(&labels) {
        for (alert, since) in stats::ALERTS.iter().zip(e.alerts) {
            if since != 0 {
                let _ = writeln!(
                    out,
                    "pgflow_alert_firing_since_timestamp_seconds{{{l},alert=\"{alert}\"}} {}",
                    unix_secs(since)
                );
            }
        }
    }
    header(
        &mut out,
        "pgflow_stats_reset_timestamp_seconds",
        "gauge",
        "When a queue's counters and histograms started (Unix time).",
    );
    for (e, l) in entries.iter().zip(&labels) {
        let _ = writeln!(
            out,
            "pgflow_stats_reset_timestamp_seconds{{{l}}} {}",
            unix_secs(e.reset_at)
        );
    }

    // The workers, and what holds back each database's xmin horizon.
    header(
        &mut out,
        "pgflow_worker_up",
        "gauge",
        "1 when the database's maintenance worker is running.",
    );
    for s in &slots {
        let up = u8::from(s.state == SlotState::Running);
        let _ = writeln!(
            out,
            "pgflow_worker_up{{database=\"{}\",state=\"{}\"}} {up}",
            esc(&s.name()),
            s.state.label()
        );
    }
    header(
        &mut out,
        "pgflow_worker_no_slot",
        "gauge",
        "1 while the database's worker cannot start because every background worker slot (max_worker_processes) is taken.",
    );
    for s in &slots {
        let _ = writeln!(
            out,
            "pgflow_worker_no_slot{{database=\"{}\"}} {}",
            esc(&s.name()),
            u8::from(s.no_bgw_slot_since != 0 && s.state != SlotState::Running)
        );
    }
    header(
        &mut out,
        "pgflow_worker_ticks_total",
        "counter",
        "Maintenance rounds since the server started.",
    );
    for s in &slots {
        let _ = writeln!(
            out,
            "pgflow_worker_ticks_total{{database=\"{}\"}} {}",
            esc(&s.name()),
            s.ticks
        );
    }
    header(
        &mut out,
        "pgflow_worker_restarts_total",
        "counter",
        "Unplanned worker exits since the server started.",
    );
    for s in &slots {
        let _ = writeln!(
            out,
            "pgflow_worker_restarts_total{{database=\"{}\"}} {}",
            esc(&s.name()),
            s.restarts
        );
    }
    header(
        &mut out,
        "pgflow_worker_jobs_total",
        "counter",
        "Messages the worker's jobs processed since the server started.",
    );
    for s in &slots {
        for (job, n) in [
            ("expire_leases", s.expired),
            ("promote_delayed", s.promoted),
            ("prune_archive", s.pruned),
        ] {
            let _ = writeln!(
                out,
                "pgflow_worker_jobs_total{{database=\"{}\",job=\"{job}\"}} {n}",
                esc(&s.name())
            );
        }
    }
    header(
        &mut out,
        "pgflow_shm_free_entries",
        "gauge",
        "Free entries of a shared-memory table of queues (all databases; each pgflow.max_queues long): the claim cursor's, the statistics' and the NOTIFY throttle's.",
    );
    let (cursor_used, _, cursor_refused, _) = crate::ipc::cursor::capacity(0);
    let _ = writeln!(
        out,
        "pgflow_shm_free_entries{{table=\"cursor\"}} {}",
        crate::ipc::cursor::len().saturating_sub(cursor_used)
    );
    let _ = writeln!(
        out,
        "pgflow_shm_free_entries{{table=\"stats\"}} {}",
        stats::len().saturating_sub(stats::capacity(0).0)
    );
    let _ = writeln!(
        out,
        "pgflow_shm_free_entries{{table=\"notify\"}} {}",
        crate::ipc::notify::len().saturating_sub(crate::ipc::notify::capacity(0).0)
    );
    header(
        &mut out,
        "pgflow_cursor_refused_total",
        "counter",
        "Lookups that found the claim cursor's table full (that queue reads from its start).",
    );
    let _ = writeln!(out, "pgflow_cursor_refused_total {cursor_refused}");
    header(
        &mut out,
        "pgflow_stats_refused_total",
        "counter",
        "Lookups that found no statistics entry for a queue of the database (shared memory full, or its share taken).",
    );
    for s in &slots {
        let _ = writeln!(
            out,
            "pgflow_stats_refused_total{{database=\"{}\"}} {}",
            esc(&s.name()),
            stats::refused(s.dboid)
        );
    }
    header(
        &mut out,
        "pgflow_index_rebuilds_total",
        "counter",
        "Index rebuilds (REINDEX TABLE CONCURRENTLY) the worker finished since the server started.",
    );
    for s in &slots {
        let _ = writeln!(
            out,
            "pgflow_index_rebuilds_total{{database=\"{}\"}} {}",
            esc(&s.name()),
            s.reindexes
        );
    }
    header(
        &mut out,
        "pgflow_horizon_age_seconds",
        "gauge",
        "How long the oldest holder of the database's xmin horizon has held it (0: none).",
    );
    let horizons: Vec<(String, f64, i32)> = slots
        .iter()
        .filter_map(|s| match sql_horizon {
            Some((db, h)) if db == s.dboid => {
                let (age, xids) = h.unwrap_or((0.0, 0));
                Some((s.name(), age, xids))
            }
            Some(_) => None,
            None => (s.horizon_at != 0).then(|| (s.name(), s.horizon_age, s.horizon_xmin_age)),
        })
        .collect();
    for (name, age, _) in &horizons {
        let _ = writeln!(
            out,
            "pgflow_horizon_age_seconds{{database=\"{}\"}} {age}",
            esc(name)
        );
    }
    header(
        &mut out,
        "pgflow_horizon_xmin_age",
        "gauge",
        "Transactions since the horizon the oldest holder keeps (0: none).",
    );
    for (name, _, xids) in &horizons {
        let _ = writeln!(
            out,
            "pgflow_horizon_xmin_age{{database=\"{}\"}} {xids}",
            esc(name)
        );
    }
    // Links to other sites (sql/links.sql), per database, as its worker last counted them.
    let linked: Vec<&super::Slot> = slots.iter().filter(|s| s.links_at != 0).collect();
    let link_gauges: [(&str, &str, LinkGauge); 5] = [
        ("pgflow_links", "Links to other sites.", |s| {
            f64::from(s.links)
        }),
        (
            "pgflow_links_down",
            "Links whose remote site is not streaming from them now.",
            |s| f64::from(s.links_down),
        ),
        (
            "pgflow_links_alerting",
            "Links whose oldest unforwarded message is older than their alert_age.",
            |s| f64::from(s.links_alerting),
        ),
        (
            "pgflow_link_backlog_messages",
            "Messages in the links' outboxes that their remote sites have not confirmed.",
            |s| s.link_backlog as f64,
        ),
        (
            "pgflow_link_oldest_unforwarded_seconds",
            "Age of the oldest message in a link's outbox (0: none).",
            |s| s.link_oldest_age,
        ),
    ];
    for (name, help, value) in link_gauges {
        header(&mut out, name, "gauge", help);
        for s in &linked {
            let _ = writeln!(
                out,
                "{name}{{database=\"{}\"}} {}",
                esc(&s.name()),
                value(s)
            );
        }
    }
    header(
        &mut out,
        "pgflow_link_forwarded_total",
        "counter",
        "Messages the links' remote sites confirmed (rate() of it: forwarded per second).",
    );
    for s in &linked {
        let _ = writeln!(
            out,
            "pgflow_link_forwarded_total{{database=\"{}\"}} {}",
            esc(&s.name()),
            s.links_forwarded
        );
    }
    // The same one link at a time: the first LINK_ROWS links of each database by name.
    let now = super::now();
    let per_link: [(&str, &str, &str, PerLink); 6] = [
        (
            "pgflow_link_up",
            "gauge",
            "1 while the link's remote site streams from it, else 0 (first links of each \
             database by name; pgflow.links() has them all).",
            |l, _| f64::from(u8::from(l.state() == "connected")),
        ),
        (
            "pgflow_link_waiting_messages",
            "gauge",
            "Messages in the link's outbox that its remote site has not confirmed.",
            |l, _| l.backlog as f64,
        ),
        (
            "pgflow_link_oldest_waiting_seconds",
            "gauge",
            "Age of the oldest message in the link's outbox (0: none).",
            |l, _| l.oldest_age,
        ),
        (
            "pgflow_link_down_seconds",
            "gauge",
            "For how long the link has not been streaming (0: it is, or was never subscribed).",
            |l, now| {
                if l.down_since == 0 {
                    0.0
                } else {
                    (now - l.down_since).max(0) as f64 / 1e6
                }
            },
        ),
        (
            "pgflow_link_last_error_timestamp_seconds",
            "gauge",
            "When the link's latest trouble began, in Unix time (0: none yet); \
             pgflow.links().last_error says what it was.",
            |l, _| {
                if l.last_error_at == 0 {
                    0.0
                } else {
                    l.last_error_at as f64 / 1e6 + PG_EPOCH_UNIX
                }
            },
        ),
        (
            "pgflow_link_confirmed_total",
            "counter",
            "Messages the link's remote site confirmed (rate() of it: forwarded per second).",
            |l, _| l.forwarded as f64,
        ),
    ];
    for (name, kind, help, value) in per_link {
        header(&mut out, name, kind, help);
        for s in &linked {
            for l in &s.link_rows[..usize::from(s.link_rows_n).min(super::LINK_ROWS)] {
                let _ = writeln!(
                    out,
                    "{name}{{database=\"{}\",link=\"{}\",remote_site=\"{}\"}} {}",
                    esc(&s.name()),
                    esc(&l.name()),
                    esc(&l.remote()),
                    value(l, now)
                );
            }
        }
    }
    header(
        &mut out,
        "pgflow_link_state",
        "gauge",
        "The link's state as pgflow.links() names it, as a label (the value is always 1).",
    );
    for s in &linked {
        for l in &s.link_rows[..usize::from(s.link_rows_n).min(super::LINK_ROWS)] {
            let _ = writeln!(
                out,
                "pgflow_link_state{{database=\"{}\",link=\"{}\",state=\"{}\"}} 1",
                esc(&s.name()),
                esc(&l.name()),
                l.state()
            );
        }
    }
    header(
        &mut out,
        "pgflow_xact_faults_total",
        "counter",
        "Failures caught at a transaction's end (commit, abort, prepare) since the server \
         started; each also logged a WARNING. Expected to stay 0.",
    );
    let _ = writeln!(
        out,
        "pgflow_xact_faults_total {}",
        crate::ipc::xact::faults()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let mut h = Hist::default();
        assert_eq!(quantile(&h, 0.5), None);
        h.buckets[1] = 10; // (1 ms, 5 ms]
        let p50 = quantile(&h, 0.5).unwrap();
        assert!((p50 - 0.003).abs() < 1e-9, "{p50}");
        h.buckets[BOUNDS_US.len()] = 1000;
        assert_eq!(quantile(&h, 0.99), Some(3600.0));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
