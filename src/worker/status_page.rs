//! The status page the endpoint serves at `/`: one self-contained HTML page (inline CSS, inline
//! SVG, no script and no external asset), an operator's first screen: a summary line (the
//! databases and how many have no running worker, the alerts firing, the oldest ready message,
//! the dead letters), each database's worker with what keeps it from running, then every
//! served queue, most troubled first, with its depth by state, its rates, its latency
//! percentiles, its dead letters, its alerts (value, threshold and since) and a chart of its
//! depth over the last minutes, labelled with its scale. It fits 1280 px without scrolling
//! sideways (the metrics layer measures it). The exporter samples shared memory every `SAMPLE_EVERY` into a ring of its own
//! (`History`, bounded: `SAMPLES` per queue, at most `pgflow.max_queues` queues); rates come from the
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
            return "<svg class=\"chart\" width=\"90\" height=\"28\"></svg>".to_owned();
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
            "<svg class=\"chart\" width=\"90\" height=\"28\" viewBox=\"0 0 200 40\" \
             preserveAspectRatio=\"none\" role=\"img\" aria-label=\"depth, max {max}\">\
             <polyline fill=\"none\" stroke=\"#2a6fdb\" stroke-width=\"2\" \
             vector-effect=\"non-scaling-stroke\" points=\"{}\"/></svg>\
             <span class=\"scale\">0–{max}</span>",
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

/// A served database's worker, as the page's summary and worker table show it.
pub struct Worker {
    pub database: String,
    /// The slot's state (`running`, `wanted`, ...).
    pub state: &'static str,
    /// Why it is not running, when it is not (empty otherwise).
    pub problem: String,
    /// Its links to other sites (empty: none), and whether one is down or past its alert_age.
    pub links: String,
    pub links_trouble: bool,
    /// Its first links by name, one by one (`LINK_ROWS` at most; `pgflow.links()` has all).
    pub link_rows: Vec<Link>,
}

/// One link of a served database, as the page's links table shows it.
pub struct Link {
    pub name: String,
    pub remote: String,
    pub state: &'static str,
    pub alerting: bool,
    pub backlog: i64,
    pub oldest_age: f64,
    pub forwarded: i64,
    /// Seconds since it stopped streaming (None: it streams, or was never subscribed).
    pub down_for: Option<f64>,
    /// Seconds since its latest trouble began (None: none yet).
    pub last_error_ago: Option<f64>,
}

impl Link {
    /// Not streaming, or past its alert_age: listed first, its state marked bad.
    fn in_trouble(&self) -> bool {
        self.state != "connected" || self.alerting
    }
}

/// How much trouble a queue is in, most first: firing alerts, then dead letters, then the age
/// of its oldest ready message, then its depth. The page lists queues in this order, so that
/// what needs an operator is on the first screen whatever the databases' names.
fn trouble(e: &Entry, now: i64) -> (usize, i64, i64, i64) {
    let firing = e.alerts.iter().filter(|&&since| since != 0).count();
    let dead = if e.valid { e.gauges[stats::DEAD] } else { 0 };
    let age = if e.valid && e.oldest_ready != 0 {
        now - e.oldest_ready
    } else {
        0
    };
    (firing, dead, age, if e.valid { depth(e) } else { 0 })
}

fn clock(t: i64) -> String {
    // Timestamps are microseconds since 2000-01-01 UTC; the page shows UTC wall-clock time.
    let secs = t.div_euclid(1_000_000).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "?".to_owned()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The page: a summary line, the databases' workers, then the queues served, most troubled
/// first (`entries` as `stats::snapshot` gives them, `workers` for the databases served).
pub fn render(
    entries: &[Entry],
    workers: &[Worker],
    db_name: &dyn Fn(u32) -> String,
    history: &History,
) -> String {
    let now = super::now();
    let mut out = String::with_capacity(4096 + entries.len() * 1500);
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>pgflow status</title><style>\
         body{font:13px system-ui,sans-serif;margin:1em;color:#222;max-width:1260px}\
         h1{font-size:20px;margin:0 0 .4em}h2{font-size:15px;margin:1em 0 .3em}\
         p.summary{font-size:15px;margin:.3em 0}.bad{color:#b00;font-weight:bold}.good{color:#070}\
         table{border-collapse:collapse}th,td{padding:3px 4px;border-bottom:1px solid #ddd;\
         text-align:right;white-space:nowrap}th{background:#f3f3f3;font-weight:600;\
         white-space:normal;vertical-align:bottom}th:nth-child(-n+2){text-align:left}\
         td.name{text-align:left;max-width:160px;overflow:hidden;text-overflow:ellipsis}\
         td.alert{color:#b00;text-align:left;white-space:normal;min-width:110px;max-width:170px}\
         td.problem{text-align:left;white-space:normal;color:#b00}\
         .scale{color:#666;font-size:11px;margin-left:3px}.chart{vertical-align:middle;\
         background:#fafafa}tr.trouble td.name{font-weight:bold}\
         </style></head><body><h1>pgflow</h1>\n",
    );

    // The summary: what an operator asks first.
    let down: Vec<&Worker> = workers.iter().filter(|w| !w.problem.is_empty()).collect();
    let firing: usize = entries
        .iter()
        .map(|e| e.alerts.iter().filter(|&&s| s != 0).count())
        .sum();
    let dead: i64 = entries
        .iter()
        .filter(|e| e.valid)
        .map(|e| e.gauges[stats::DEAD])
        .sum();
    let oldest = entries
        .iter()
        .filter(|e| e.valid && e.oldest_ready != 0)
        .min_by_key(|e| e.oldest_ready);
    let _ = writeln!(
        out,
        "<p class=\"summary\" id=\"summary\"><span id=\"databases\">{} databases, <span class=\"{}\">{} \
         without a running worker</span></span> · <span id=\"firing\" class=\"{}\">{firing} \
         alerts firing</span> · <span id=\"oldest\">oldest ready message: {}</span> · \
         <span id=\"dead\" class=\"{}\">{dead} dead letters</span> · {} queues{}</p>",
        workers.len(),
        if down.is_empty() { "good" } else { "bad" },
        down.len(),
        if firing == 0 { "good" } else { "bad" },
        oldest.map_or_else(
            || "none".to_owned(),
            |e| format!(
                "{} ({} / {})",
                secs(Some((now - e.oldest_ready) as f64 / 1e6)),
                esc(&db_name(e.dboid)),
                esc(e.name())
            )
        ),
        if dead == 0 { "good" } else { "bad" },
        entries.len(),
        if workers.iter().any(|w| !w.links.is_empty()) {
            let bad = workers.iter().filter(|w| w.links_trouble).count();
            format!(
                " · <span id=\"links\" class=\"{}\">{bad} databases with a link in trouble</span>",
                if bad == 0 { "good" } else { "bad" }
            )
        } else {
            String::new()
        },
    );

    // The workers: every served database's, those in trouble first.
    out.push_str(
        "<h2>Workers</h2><table id=\"workers\"><thead><tr><th>database</th><th>worker</th>\
         <th>problem</th><th>links to other sites</th></tr></thead><tbody>\n",
    );
    let mut ws: Vec<&Worker> = workers.iter().collect();
    ws.sort_by(|a, b| {
        (a.problem.is_empty(), &a.database).cmp(&(b.problem.is_empty(), &b.database))
    });
    for w in ws {
        let _ = writeln!(
            out,
            "<tr data-worker=\"{db}\"><td class=\"name\">{db}</td><td class=\"state\">{}</td>\
             <td class=\"problem\">{}</td><td class=\"{}\">{}</td></tr>",
            w.state,
            esc(&w.problem),
            if w.links_trouble {
                "links bad"
            } else {
                "links"
            },
            esc(&w.links),
            db = esc(&w.database),
        );
    }
    out.push_str("</tbody></table>\n");

    // The links, one by one: those in trouble (not streaming, or past alert_age) first.
    let mut links: Vec<(&str, &Link)> = workers
        .iter()
        .flat_map(|w| w.link_rows.iter().map(move |l| (w.database.as_str(), l)))
        .collect();
    if !links.is_empty() {
        links.sort_by(|a, b| {
            (!a.1.in_trouble(), a.0, &a.1.name).cmp(&(!b.1.in_trouble(), b.0, &b.1.name))
        });
        let _ = writeln!(
            out,
            "<h2>Links</h2><p>Each database's links to other sites (its first {} by name; \
             <code>pgflow.links()</code> has them all, with the last error's text), those in \
             trouble first.</p><table id=\"links-table\"><thead><tr><th>database</th>\
             <th>link</th><th>remote site</th><th>state</th><th>waiting</th>\
             <th>oldest waiting</th><th>confirmed</th><th>down for</th>\
             <th>last trouble</th></tr></thead><tbody>",
            super::LINK_ROWS
        );
        for (db, l) in links {
            let bad = l.in_trouble();
            let _ = writeln!(
                out,
                "<tr data-link=\"{}/{}\"><td class=\"name\">{}</td><td>{}</td><td>{}</td>\
                 <td class=\"{}\">{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td></tr>",
                esc(db),
                esc(&l.name),
                esc(db),
                esc(&l.name),
                esc(&l.remote),
                if bad { "state bad" } else { "state good" },
                l.state,
                if l.alerting { ", past alert_age" } else { "" },
                l.backlog,
                if l.backlog > 0 {
                    secs(Some(l.oldest_age))
                } else {
                    "–".to_owned()
                },
                l.forwarded,
                secs(l.down_for),
                l.last_error_ago
                    .map_or_else(|| "none".to_owned(), |a| format!("{} ago", secs(Some(a)))),
            );
        }
        out.push_str("</tbody></table>\n");
    }

    let _ = writeln!(
        out,
        "<h2>Queues</h2><p>Most troubled first (alerts, dead letters, oldest ready, depth). \
         Depths by state now; rates per second over the last minute; latency percentiles since \
         the statistics were reset; an alert as its value &gt; its threshold, since when; the \
         chart is the queue's depth over the last 5 minutes, each on its own scale (0 to the \
         max written beside it). Refreshes every 5 s.</p>"
    );
    out.push_str(
        "<table id=\"queues\"><thead><tr><th>database</th><th>queue</th><th>ready</th>\
         <th>delayed</th><th>in flight</th><th>waiting</th><th>dead</th><th>oldest ready</th>\
         <th>sent /s</th><th>deliv. /s</th><th>arch. /s</th><th>wait p50</th><th>wait p99</th>\
         <th>end to end p99</th><th>alerts</th><th>depth</th>\
         </tr></thead><tbody>\n",
    );
    let mut order: Vec<&Entry> = entries.iter().collect();
    order.sort_by(|a, b| {
        trouble(b, now)
            .cmp(&trouble(a, now))
            .then_with(|| (db_name(a.dboid), a.name()).cmp(&(db_name(b.dboid), b.name())))
    });
    for e in order {
        let key = (e.dboid, e.queue_id);
        let (firing, dead, _, _) = trouble(e, now);
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
        let alerts: Vec<String> = stats::ALERTS
            .iter()
            .enumerate()
            .filter(|&(i, _)| e.alerts[i] != 0)
            .map(|(i, a)| {
                format!(
                    "<span class=\"firing\" data-alert=\"{a}\">{a} {} &gt; {} since {}</span>",
                    number(e.alert_values[i]),
                    number(e.alert_thresholds[i]),
                    clock(e.alerts[i])
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "<tr data-database=\"{db}\" data-queue=\"{q}\"{cls}><td class=\"name\">{db}</td>\
             <td class=\"name\">{q}</td><td class=\"ready\">{}</td><td class=\"delayed\">{}</td>\
             <td class=\"in_flight\">{}</td><td class=\"waiting\">{}</td><td class=\"dead\">{}</td>\
             <td class=\"oldest_ready\">{}</td>\
             <td class=\"sent\">{sent}</td><td class=\"delivered\">{delivered}</td>\
             <td class=\"archived\">{archived}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"alert\">{}</td><td>{}</td></tr>",
            g(stats::READY),
            g(stats::DELAYED),
            g(stats::IN_FLIGHT),
            g(stats::WAITING),
            g(stats::DEAD),
            secs((e.valid && e.oldest_ready != 0).then(|| (now - e.oldest_ready) as f64 / 1e6)),
            secs(quantile(&e.hist[stats::WAIT], 0.5)),
            secs(quantile(&e.hist[stats::WAIT], 0.99)),
            secs(quantile(&e.hist[stats::END_TO_END], 0.99)),
            alerts.join(" "),
            history.chart(key),
            db = esc(&db_name(e.dboid)),
            q = esc(e.name()),
            cls = if firing > 0 || dead > 0 {
                " class=\"trouble\""
            } else {
                ""
            },
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
