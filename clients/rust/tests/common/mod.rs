//! Helpers the client's test binaries share.
use std::time::Duration;

use pgflow_client::Client;

/// Works until the server's clock (on `dsn`) is `secs` past when it began, looking every
/// 300 ms: a handler slower than its lease by the server's own measure, not the client's.
pub async fn work_past_server_clock(dsn: &str, secs: i32) {
    let pg = Client::connect(dsn).await.unwrap();
    let start: std::time::SystemTime = pg
        .pg()
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let past: bool = pg
            .pg()
            .query_one(
                "SELECT clock_timestamp() > $1::timestamptz + make_interval(secs => $2)",
                &[&start, &f64::from(secs)],
            )
            .await
            .unwrap()
            .get(0);
        if past {
            return;
        }
    }
}
