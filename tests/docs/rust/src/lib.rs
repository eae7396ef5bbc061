//! The Rust blocks of the docs, compiled (see build.rs): the docs layer builds this crate.
//! `support` holds what the blocks take from their surroundings, as a reader's program would
//! have it.

/// What a document's fragments use without defining it.
pub mod support {
    pub use serde_json::Value;
    pub use std::time::Duration;

    /// A job, as the examples send and read it.
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    pub struct Job {
        pub id: i64,
    }

    /// A handler: whatever the message, done.
    pub async fn handle<T>(_: T) -> pgflow_client::Outcome {
        Ok(())
    }

    /// The Genesis runner's analysis of a request.
    pub async fn analyse(payload: &Value) -> Result<Value, String> {
        Ok(payload.clone())
    }

    /// A shutdown signal that never comes.
    pub async fn shutdown_signal() {
        std::future::pending::<()>().await
    }
}

include!(concat!(env!("OUT_DIR"), "/blocks.rs"));
