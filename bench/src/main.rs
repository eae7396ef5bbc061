//! pgflow-bench: pgflow, pgmq and PgQ side by side on one server, same settings, same payload.
//!
//! `bench/run.sh` starts the cluster, installs the three systems and runs this binary; see
//! `bench/README.md` for what each workload measures. Only ratios between systems measured in
//! the same run mean anything: these machines are shared and noisy.
//!
//! Usage: pgflow-bench --dsn DSN --mode smoke|quick|full --pgbench PATH --out DIR
//!                     [--systems pgflow,pgmq,pgq] [--workloads W1,W3,...] [--label TEXT]
//!                     [--tables aged|clean]
mod plan;
mod probes;
mod report;
mod systems;
mod workloads;

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::thread;

use plan::{Mode, Plan};
use report::{markdown, Report, Results};
use systems::Sys;
use workloads::{w10, w11, w1_w2, w3, w4, w5, w7, w8, w9, Ctx};

/// 277 bytes: a seeds' proposal_for_consensus message, valid under its contract (W9).
pub(crate) const PAYLOAD: &str = r#"{"type":"proposal_for_consensus","proposal_id":"123e4567-e89b-12d3-a456-426614174000","instance_id":"singularity_1","agent_type":"BugFixerAgent","code_change":{"file":"lib/cache.ex","change":"bound table"},"impact_score":8.0,"risk_score":1.0,"timestamp":"2026-11-22T10:00:00Z"}"#;
pub(crate) const QUEUE: &str = "bench";

pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn machine() -> HashMap<String, String> {
    let mut m = HashMap::new();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    m.insert("cpu".into(), cpu);
    m.insert(
        "cores".into(),
        thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_default(),
    );
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| format!("{:.0} GiB", kb / 1048576.0))
        .unwrap_or_default();
    m.insert("memory".into(), mem);
    m
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let dsn = arg(&args, "--dsn").ok_or("--dsn is required")?;
    let mode = match arg(&args, "--mode").as_deref().unwrap_or("quick") {
        "smoke" => Mode::Smoke,
        "quick" => Mode::Quick,
        "full" => Mode::Full,
        m => return Err(format!("unknown mode {m}").into()),
    };
    let out = PathBuf::from(arg(&args, "--out").unwrap_or_else(|| "bench/results".into()));
    let pgbench = arg(&args, "--pgbench").unwrap_or_else(|| "pgbench".into());
    let label = arg(&args, "--label").unwrap_or_default();
    let systems: Vec<Sys> = arg(&args, "--systems")
        .unwrap_or_else(|| "pgflow,pgmq,pgq".into())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "pgflow" => Ok(Sys::Pgflow),
            "pgmq" => Ok(Sys::Pgmq),
            "pgq" => Ok(Sys::Pgq),
            o => Err(format!("unknown system {o}")),
        })
        .collect::<Result<_, _>>()?;
    let workloads =
        arg(&args, "--workloads").unwrap_or_else(|| "W1,W2,W3,W4,W5,W6,W7,W8,W9,W10,W11".into());
    let tables = arg(&args, "--tables").unwrap_or_else(|| "aged".into());
    let clean_tables = match tables.as_str() {
        "aged" => false,
        "clean" => true,
        o => return Err(format!("--tables is aged or clean, not {o}").into()),
    };

    // Connection parameters for pgbench, from the key=value DSN.
    let kv: HashMap<&str, &str> = dsn
        .split_whitespace()
        .filter_map(|p| p.split_once('='))
        .collect();
    let mut ctx = Ctx {
        dsn: dsn.clone(),
        pgbench,
        plan: Plan::for_mode(mode),
        systems: systems.clone(),
        pg_host: kv.get("host").unwrap_or(&"127.0.0.1").to_string(),
        pg_port: kv.get("port").unwrap_or(&"5432").to_string(),
        pg_user: kv.get("user").unwrap_or(&"postgres").to_string(),
        pg_db: kv.get("dbname").unwrap_or(&"postgres").to_string(),
        clean_tables,
        out_base: PathBuf::new(),
        python: arg(&args, "--python").unwrap_or_else(|| "python3".into()),
        bench_dir: PathBuf::from(arg(&args, "--bench-dir").unwrap_or_else(|| "bench".into())),
        mode_name: format!("{mode:?}").to_lowercase(),
    };

    let mut admin = ctx.admin()?;
    let server_version: String = admin.query_one("SELECT version()", &[])?.get(0);
    // The installed extension's version (not this crate's).
    let pgflow_version: String = admin
        .query_one(
            "SELECT coalesce((SELECT extversion FROM pg_extension WHERE extname = 'pgflow'), '?')",
            &[],
        )?
        .get(0);
    let mut settings = HashMap::new();
    for s in [
        "synchronous_commit",
        "fsync",
        "shared_buffers",
        "max_connections",
        "autovacuum",
    ] {
        let v: String = admin.query_one("SELECT current_setting($1)", &[&s])?.get(0);
        settings.insert(s.to_owned(), v);
    }
    settings.insert("bench_tables".to_owned(), tables.clone());
    drop(admin);

    let mut res = Results::default();
    let started = chrono::Utc::now();
    let m = machine();
    let header = format!(
        "### Benchmark: {} mode, {}\n\n{}; {} cores ({}), {}; synchronous_commit={}, fsync={}, shared_buffers={}. \
         pgflow {} (release build), pgmq 1.13 (SQL from the PyPI package pgmq 1.1.4), PgQ 3.5 (Debian). \
         Tables: {}.{}\n",
        format!("{mode:?}").to_lowercase(),
        started.format("%Y-%m-%d"),
        server_version.split(" on ").next().unwrap_or(&server_version),
        m.get("cores").cloned().unwrap_or_default(),
        m.get("cpu").cloned().unwrap_or_default(),
        m.get("memory").cloned().unwrap_or_default(),
        settings["synchronous_commit"],
        settings["fsync"],
        settings["shared_buffers"],
        pgflow_version,
        if clean_tables {
            "clean (VACUUM FULL before every measured run)"
        } else {
            "aged (workloads back to back; each lives with what the previous left, autovacuum at its defaults)"
        },
        if label.is_empty() { String::new() } else { format!(" {label}") },
    );
    fs::create_dir_all(&out)?;
    let stamp = started.format("%Y%m%dT%H%M%SZ");
    let major: String = server_version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').next())
        .unwrap_or("x")
        .to_owned();
    let base = out.join(format!(
        "{stamp}-{}-pg{major}",
        format!("{mode:?}").to_lowercase()
    ));
    ctx.out_base = base.clone();
    // Results are written after every workload, so a failure late in a long run keeps the rest.
    let save = |res: &Results, failures: &[String]| -> Res<String> {
        let mut md = markdown(res, &header);
        if !failures.is_empty() {
            md.push_str("\nFailed workloads (no figures above):\n");
            for f in failures {
                md.push_str(&format!("- {f}\n"));
            }
        }
        let report = Report {
            date: started.to_rfc3339(),
            mode,
            label: label.clone(),
            server_version: server_version.clone(),
            settings: settings.clone(),
            machine: m.clone(),
            systems: systems.clone(),
            failures: failures.to_vec(),
            series: &res.series,
        };
        fs::write(
            base.with_extension("json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        fs::write(base.with_extension("md"), &md)?;
        Ok(md)
    };

    type Workload = fn(&Ctx, &mut Results) -> Res<()>;
    let all: [(&str, &[&str], Workload); 9] = [
        (
            "W1/W2: send throughput (pgbench -M prepared)",
            &["W1", "W2"],
            w1_w2,
        ),
        ("W3/W6: drain a backlog", &["W3", "W6"], w3),
        ("W4: steady state", &["W4"], w4),
        ("W5: latency at a fixed rate", &["W5"], w5),
        ("W7: held snapshot", &["W7"], w7),
        ("W8: idle cost", &["W8"], w8),
        ("W9: contract validation cost", &["W9"], w9),
        (
            "W10: production mimic (held snapshots at intervals)",
            &["W10"],
            w10,
        ),
        (
            "W11: statistics cost (pgflow.stats on and off)",
            &["W11"],
            w11,
        ),
    ];
    let mut failures = Vec::new();
    for (title, names, f) in all {
        if !names.iter().any(|n| workloads.split(',').any(|x| x == *n)) {
            continue;
        }
        eprintln!("{title}");
        if let Err(e) = f(&ctx, &mut res) {
            eprintln!("  FAILED: {e}");
            failures.push(format!("{title}: {e}"));
        }
        save(&res, &failures)?;
    }
    let md = save(&res, &failures)?;
    println!("{md}");
    eprintln!("results: {}.{{json,md}}", base.display());
    if !failures.is_empty() {
        return Err(format!("{} workload(s) failed", failures.len()).into());
    }
    Ok(())
}
