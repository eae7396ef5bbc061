//! Results: the series collected, the markdown table and the JSON report.
use std::collections::HashMap;

use serde::Serialize;

use crate::plan::Mode;
use crate::systems::Sys;

#[derive(Serialize, Clone)]
pub(crate) struct Series {
    pub(crate) workload: String,
    pub(crate) variant: String,
    pub(crate) metric: String,
    pub(crate) unit: String,
    pub(crate) higher_is_better: bool,
    pub(crate) system: Sys,
    pub(crate) values: Vec<f64>,
    pub(crate) note: Option<String>,
}

#[derive(Default)]
pub(crate) struct Results {
    pub(crate) series: Vec<Series>,
}

impl Results {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add(
        &mut self,
        w: &str,
        variant: &str,
        metric: &str,
        unit: &str,
        hib: bool,
        sys: Sys,
        v: f64,
        note: Option<&str>,
    ) {
        if let Some(s) = self.series.iter_mut().find(|s| {
            s.workload == w && s.variant == variant && s.metric == metric && s.system == sys
        }) {
            s.values.push(v);
            return;
        }
        self.series.push(Series {
            workload: w.into(),
            variant: variant.into(),
            metric: metric.into(),
            unit: unit.into(),
            higher_is_better: hib,
            system: sys,
            values: vec![v],
            note: note.map(str::to_owned),
        });
    }
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn cell(s: Option<&Series>) -> String {
    match s {
        None => "n/a".into(),
        Some(s) if s.values.len() == 1 => fmt_num(s.values[0]),
        Some(s) => {
            let lo = s.values.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = s.values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            format!(
                "{} ({}–{})",
                fmt_num(median(&s.values)),
                fmt_num(lo),
                fmt_num(hi)
            )
        }
    }
}

fn ratio(a: Option<&Series>, b: Option<&Series>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => {
            let (ma, mb) = (median(&a.values), median(&b.values));
            if mb == 0.0 || ma.is_nan() || mb.is_nan() {
                "n/a".into()
            } else {
                format!("{:.2}x", ma / mb)
            }
        }
        _ => "n/a".into(),
    }
}

pub(crate) fn markdown(results: &Results, header: &str) -> String {
    let mut out = String::new();
    out.push_str(header);
    out.push_str(
        "\n| workload | variant | metric | pgflow | pgmq | PgQ | pgflow/pgmq | pgflow/PgQ |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for s in &results.series {
        let k = (s.workload.clone(), s.variant.clone(), s.metric.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut notes: Vec<String> = Vec::new();
    for (w, v, m) in keys {
        let find = |sys: Sys| {
            results
                .series
                .iter()
                .find(|s| s.workload == w && s.variant == v && s.metric == m && s.system == sys)
        };
        let any = find(Sys::Pgflow)
            .or(find(Sys::Pgmq))
            .or(find(Sys::Pgq))
            .unwrap();
        let arrow = if any.higher_is_better { "↑" } else { "↓" };
        for sys in [Sys::Pgflow, Sys::Pgmq, Sys::Pgq] {
            if let Some(n) = find(sys).and_then(|s| s.note.clone()) {
                let line = format!("{w} {v} {}: {n}", sys.name());
                if !notes.contains(&line) {
                    notes.push(line);
                }
            }
        }
        out.push_str(&format!(
            "| {w} | {v} | {m} ({}) {arrow} | {} | {} | {} | {} | {} |\n",
            any.unit,
            cell(find(Sys::Pgflow)),
            cell(find(Sys::Pgmq)),
            cell(find(Sys::Pgq)),
            ratio(find(Sys::Pgflow), find(Sys::Pgmq)),
            ratio(find(Sys::Pgflow), find(Sys::Pgq)),
        ));
    }
    out.push_str("\nCells: median (min–max) over the repeats. ↑ higher is better, ↓ lower is better; ratios are pgflow's median over the peer's.\n");
    if !notes.is_empty() {
        out.push_str("\nNotes:\n");
        for n in notes {
            out.push_str(&format!("- {n}\n"));
        }
    }
    out
}

#[derive(Serialize)]
pub(crate) struct Report<'a> {
    pub(crate) date: String,
    pub(crate) mode: Mode,
    pub(crate) label: String,
    pub(crate) server_version: String,
    pub(crate) settings: HashMap<String, String>,
    pub(crate) machine: HashMap<String, String>,
    pub(crate) systems: Vec<Sys>,
    pub(crate) failures: Vec<String>,
    pub(crate) series: &'a [Series],
}
