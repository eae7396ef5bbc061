//! The status page the endpoint serves at `/`: one self-contained HTML page (inline CSS, inline
//! SVG, no script and no external asset) with every served queue's depth by state, its rates,
//! its latency percentiles, its dead letters and its alerts, and a chart of its depth over the
//! last minutes. The exporter samples shared memory every `SAMPLE_EVERY` into a ring of its own
//! (`History`, bounded: `SAMPLES` per queue, at most `MAX_QUEUES` queues); rates come from the
//! ring's oldest sample within the last minute.
use std::collections::HashMap;
use std::fmt::Write;

use crate::ipc::stats::{self, Entry};

use super::exposition::quantile;

/// How often the exporter samples, and how many samples a queue keeps (5 minutes).
pub const SAMPLE_EVERY_US: i64 = 2_000_000;
const SAMPLES: usize = 150;
/// The window of the rates.
const RATE_WINDOW_US: i64 = 60_000_000;

#[derive(Copy, Clone, Default)]
struct Sample {
    at: i64,
    depth: i64,
    sent: u64,
    delivered: u64,
    archived: u64,
}

/// The recent samples of every served queue, by (database, queue).
#[derive(Default)]
pub struct History {
    queues: HashMap<(u32, i32), Vec<Sample>>,
}

fn depth(e: &Entry) -> i64 {
    e.gauges[stats::READY]
        + e.gauges[stats::DELAYED]
        + e.gauges[stats::IN_FLIGHT]
        + e.gauges[stats::WAITING]
}

impl History {
    /// Adds a sample of each entry, and forgets queues that are gone.
    pub fn sample(&mut self, entries: &[Entry], at: i64) {
        self.queues
            .retain(|k, _| entries.iter().any(|e| (e.dboid, e.queue_id) == *k));
        for e in entries.iter().filter(|e| e.valid) {
            let ring = self.queues.entry((e.dboid, e.queue_id)).or_default();
            // A counter that went back (a restart, stats_reset) starts the ring over.
            if ring
                .last()
                .is_some_and(|l| e.events[stats::SENT] < l.sent || e.reset_at > l.at)
            {
                ring.clear();
            }
            if ring.len() == SAMPLES {
                ring.remove(0);
            }
            ring.push(Sample {
                at,
                depth: depth(e),
                sent: e.events[stats::SENT],
                delivered: e.events[stats::DELIVERED],
                archived: e.events[stats::ARCHIVED],
            });
        }
    }

    /// Per second over the last minute: (sent, delivered, archived); None before two samples.
    fn rates(&self, key: (u32, i32)) -> Option<(f64, f64, f64)> {
        let ring = self.queues.get(&key)?;
        let last = ring.last()?;
        let first = ring.iter().find(|s| last.at - s.at <= RATE_WINDOW_US)?;
        let secs = (last.at - first.at) as f64 / 1e6;
        (secs > 0.0).then(|| {
            (
                (last.sent - first.sent) as f64 / secs,
                (last.delivered - first.delivered) as f64 / secs,
                (last.archived - first.archived) as f64 / secs,
            )
        })
    }

    /// An inline SVG line of the queue's depth over its samples.
    fn chart(&self, key: (u32, i32)) -> String {
        const W: f64 = 200.0;
        const H: f64 = 40.0;
        let Some(ring) = self.queues.get(&key).filter(|r| r.len() >= 2) else {
            return "<svg class=\"chart\" width=\"200\" height=\"40\"></svg>".to_owned();
        };
        let (t0, t1) = (ring[0].at, ring[ring.len() - 1].at);
        let max = ring.iter().map(|s| s.depth).max().unwrap_or(0).max(1) as f64;
        let points: Vec<String> = ring
            .iter()
            .map(|s| {
                let x = (s.at - t0) as f64 / (t1 - t0).max(1) as f64 * W;
                let y = H - (s.depth.max(0) as f64 / max) * (H - 2.0) - 1.0;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        format!(
            "<svg class=\"chart\" width=\"200\" height=\"40\" viewBox=\"0 0 200 40\" \
             role=\"img\" aria-label=\"depth, max {max}\"><polyline fill=\"none\" \
             stroke=\"#2a6fdb\" stroke-width=\"1.5\" points=\"{}\"/></svg>\
             <span class=\"max\">max {max}</span>",
            points.join(" ")
        )
    }
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn secs(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(s) if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        Some(s) => format!("{s:.1} s"),
    }
}

/// The page, for the entries served (sorted by database and queue) and their databases' names.
pub fn render(entries: &[Entry], db_name: &dyn Fn(u32) -> String, history: &History) -> String {
    let now = super::now();
    let mut out = String::with_capacity(4096 + entries.len() * 1500);
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\">\
         <title>pgflow status</title><style>\
         body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
         table{border-collapse:collapse}th,td{padding:4px 8px;border-bottom:1px solid #ddd;\
         text-align:right;white-space:nowrap}th{background:#f3f3f3}td.name{text-align:left}\
         td.alert{color:#b00;font-weight:bold;text-align:left}.max{color:#888;font-size:11px;\
         margin-left:4px}.chart{vertical-align:middle;background:#fafafa}\
         </style></head><body><h1>pgflow</h1>\n",
    );
    let _ = writeln!(
        out,
        "<p>{} queues. Depths by state now; rates per second over the last minute; latency \
         percentiles since the statistics were reset; the chart is the queue's depth over the \
         last 5 minutes. Refreshes every 5 s.</p>",
        entries.len()
    );
    out.push_str(
        "<table id=\"queues\"><thead><tr><th>database</th><th>queue</th><th>ready</th>\
         <th>delayed</th><th>in flight</th><th>waiting</th><th>dead</th><th>oldest ready</th><th>sent/s</th>\
         <th>delivered/s</th><th>archived/s</th><th>wait p50</th><th>wait p99</th>\
         <th>processing p99</th><th>end to end p99</th><th>alerts</th><th>depth</th></tr></thead>\
         <tbody>\n",
    );
    for e in entries {
        let key = (e.dboid, e.queue_id);
        let g = |i: usize| {
            if e.valid {
                e.gauges[i].to_string()
            } else {
                "…".to_owned()
            }
        };
        let (sent, delivered, archived) = match history.rates(key) {
            Some((s, d, a)) => (format!("{s:.1}"), format!("{d:.1}"), format!("{a:.1}")),
            None => ("–".to_owned(), "–".to_owned(), "–".to_owned()),
        };
        let alerts: Vec<&str> = stats::ALERTS
            .iter()
            .zip(e.alerts)
            .filter(|(_, since)| *since != 0)
            .map(|(a, _)| *a)
            .collect();
        let _ = writeln!(
            out,
            "<tr data-database=\"{db}\" data-queue=\"{q}\"><td class=\"name\">{db}</td>\
             <td class=\"name\">{q}</td><td class=\"ready\">{}</td><td class=\"delayed\">{}</td>\
             <td class=\"in_flight\">{}</td><td class=\"waiting\">{}</td><td class=\"dead\">{}</td>\
             <td class=\"oldest_ready\">{}</td>\
             <td class=\"sent\">{sent}</td><td class=\"delivered\">{delivered}</td>\
             <td class=\"archived\">{archived}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"alert\">{}</td><td>{}</td></tr>",
            g(stats::READY),
            g(stats::DELAYED),
            g(stats::IN_FLIGHT),
            g(stats::WAITING),
            g(stats::DEAD),
            secs((e.valid && e.oldest_ready != 0).then(|| (now - e.oldest_ready) as f64 / 1e6)),
            secs(quantile(&e.hist[stats::WAIT], 0.5)),
            secs(quantile(&e.hist[stats::WAIT], 0.99)),
            secs(quantile(&e.hist[stats::PROCESSING], 0.99)),
            secs(quantile(&e.hist[stats::END_TO_END], 0.99)),
            alerts.join(" "),
            history.chart(key),
            db = esc(&db_name(e.dboid)),
            q = esc(e.name()),
        );
    }
    out.push_str("</tbody></table></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
