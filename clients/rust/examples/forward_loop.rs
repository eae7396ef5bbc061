//! What users build today to move messages between two databases, with the Rust client: a
//! loop that leases up to 100 messages at the source, sends them to the destination with one
//! `send_batch`, and archives them at the source with the next lease (`archive_read`). The
//! links benchmark (bench/links.py) runs it against pgflow's link. It is at least once, not
//! exactly once: a crash between the remote send and the archive sends that batch again.
//!
//!   FROM_DSN="host=... dbname=a" TO_DSN="host=... dbname=c" \
//!     cargo run --release -p pgflow-client --example forward_loop -- FROM_QUEUE TO_QUEUE COUNT
//!
//! Prints `moved N messages in S s: R msg/s`.
use std::time::{Duration, Instant};

use pgflow_client::{Client, Message};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, from_queue, to_queue, count] = args.as_slice() else {
        return Err("usage: forward_loop FROM_QUEUE TO_QUEUE COUNT (FROM_DSN, TO_DSN set)".into());
    };
    let count: usize = count.parse()?;
    let from = Client::connect(&std::env::var("FROM_DSN")?).await?;
    let to = Client::connect(&std::env::var("TO_DSN")?).await?;
    let lease = Duration::from_secs(30);
    let t0 = Instant::now();
    let (mut moved, mut done) = (0usize, Vec::new());
    while moved < count {
        let batch: Vec<Message<Value>> = from
            .archive_read(from_queue, &done, lease, 100, Some(Duration::from_secs(1)))
            .await?;
        let payloads: Vec<&Value> = batch.iter().map(|m| &m.payload).collect();
        if !payloads.is_empty() {
            to.send_batch(to_queue, &payloads).await?;
        }
        moved += batch.len();
        done = batch.iter().map(|m| (m.id, m.receipt)).collect();
    }
    // The last batch's archive.
    for (id, receipt) in done {
        from.archive(from_queue, id, Some(receipt)).await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "moved {moved} messages in {secs:.3} s: {:.1} msg/s",
        moved as f64 / secs
    );
    Ok(())
}
