//! The Genesis job runner on pgflow: 4 handlers consume `code_execution_requests` (30 s lease,
//! renewed while a job runs; 10 s timeout), publish each result to `code_execution_results`,
//! and archive the request, the result and the archive in one transaction (`run_tx`): a crash
//! never publishes a result twice. SIGTERM or Ctrl-C stops it gracefully: jobs in flight finish.
//!
//!   PGFLOW_DSN="host=127.0.0.1 port=54315 user=postgres dbname=pgflow_demo" \
//!     cargo run -p pgflow-client --example genesis_runner
use std::time::{Duration, Instant};

use pgflow_client::{Consumer, Message, Tx};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dsn = std::env::var("PGFLOW_DSN")
        .unwrap_or_else(|_| "host=127.0.0.1 port=54315 user=postgres dbname=pgflow_demo".into());
    let consumer = Consumer {
        handlers: 4,
        lease: Duration::from_secs(30),
        timeout: Duration::from_secs(10),
        progress: Some(Duration::from_secs(2)),
        ..Consumer::new(&dsn, "code_execution_requests")
    };
    let handler = move |m: Message<Value>, tx: Tx| {
        async move {
            let t0 = Instant::now();
            let code = m.payload["code"].as_str().unwrap_or_default().to_owned();
            // The analysis itself is a stand-in: a score and an issue count from the code.
            let result = json!({
                "type": "code_execution_result",
                "id": m.payload["id"],
                "status": "succeeded",
                "output": format!("{} ok (rust runner)", m.payload["analysis_type"].as_str().unwrap_or("?")),
                "metrics": {
                    "execution_ms": t0.elapsed().as_secs_f64() * 1000.0,
                    "quality_score": 5 + code.len() % 5,
                    "issues_count": code.len() % 3
                },
                "timestamp": "2026-11-22T10:00:00Z"
            });
            // In the handler's transaction: it commits with the request's archive.
            tx.client()
                .send("code_execution_results", &result)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    let shutdown = async {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("genesis runner: stopping; jobs in flight finish first");
    };
    let stats = consumer.run_tx(handler, shutdown).await?;
    eprintln!(
        "genesis runner: done, {} archived, {} nacked",
        stats.archived.load(std::sync::atomic::Ordering::Relaxed),
        stats.nacked.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
