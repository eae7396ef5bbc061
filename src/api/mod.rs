//! The `#[pg_extern]` shims the SQL layer calls. Each checks its arguments, calls one core
//! function and returns; errors carry their SQLSTATE through `ErrorReport`.
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::error::PgflowError;
use crate::queue::name;

pub mod access;
pub mod cursor;
pub mod stats;
pub mod wait;
pub mod worker;

/// Raises 22023 (with the broken rule) for an invalid queue name, 22004 for NULL.
#[pg_extern(immutable, parallel_safe)]
fn _check_queue_name(queue_name: Option<&str>) -> Result<(), ErrorReport> {
    let queue_name = queue_name.ok_or(PgflowError::NullArgument("queue_name"))?;
    name::validate(queue_name).map_err(|reason| {
        PgflowError::InvalidQueueName {
            name: queue_name.to_owned(),
            reason,
        }
        .into()
    })
}

/// Seconds before retry number `attempt` under a queue's policy, for a jitter draw `u` in
/// [0, 1). The formula is in `queue::retry`; SQL passes `random()` as `u`.
#[pg_extern(immutable, strict, parallel_safe)]
fn _retry_delay(
    delay: f64,
    backoff: f64,
    max_delay: f64,
    jitter: f64,
    attempt: i32,
    u: f64,
) -> f64 {
    crate::queue::retry::RetryPolicy {
        delay,
        backoff,
        max_delay,
        jitter,
    }
    .delay_secs(attempt, u)
}

/// The receipt of a delivery (`queue::receipt`): what read returns and what archive, delete,
/// set_vt and nack check when a consumer names it.
#[pg_extern(immutable, strict, parallel_safe)]
fn _receipt(enqueued_at: TimestampWithTimeZone, read_ct: i32) -> i64 {
    crate::queue::receipt::receipt(enqueued_at.into(), read_ct)
}

/// Raises 22023 (with the reason) for a topic `publish` cannot route, 22004 for NULL.
#[pg_extern(immutable, parallel_safe)]
fn _check_topic(topic: Option<&str>) -> Result<(), ErrorReport> {
    let topic = topic.ok_or(PgflowError::NullArgument("topic"))?;
    crate::queue::topic::validate_topic(topic).map_err(|e| {
        PgflowError::InvalidTopic {
            what: "topic",
            value: topic.to_owned(),
            reason: e.to_string(),
        }
        .into()
    })
}

/// Raises 22023 (with the reason) for a pattern `bind` cannot use, 22004 for NULL.
#[pg_extern(immutable, parallel_safe)]
fn _check_topic_pattern(pattern: Option<&str>) -> Result<(), ErrorReport> {
    let pattern = pattern.ok_or(PgflowError::NullArgument("pattern"))?;
    crate::queue::topic::validate_pattern(pattern).map_err(|e| {
        PgflowError::InvalidTopic {
            what: "pattern",
            value: pattern.to_owned(),
            reason: e.to_string(),
        }
        .into()
    })
}

/// Whether a topic matches a bound pattern (`*` one word, `#` zero or more). 22023 for either
/// longer than the 255 bytes `publish` and `bind` accept, so no call can ask for much work.
#[pg_extern(immutable, strict, parallel_safe)]
fn _topic_matches(pattern: &str, topic: &str) -> Result<bool, ErrorReport> {
    use crate::queue::topic::MAX_LEN;
    for (what, s) in [("pattern", pattern), ("topic", topic)] {
        if s.len() > MAX_LEN {
            return Err(PgflowError::TooLong {
                what,
                len: s.len(),
                max: MAX_LEN,
            }
            .into());
        }
    }
    Ok(crate::queue::topic::matches(pattern, topic))
}

/// JSON text (a jsonb's output) as a value; 22023 naming `what` where it cannot be one:
/// nested deeper than the parser's limit, or a number outside a double's range. Taken as text,
/// not as pgrx's `JsonB`, whose conversion panics (XX000) on those.
fn parse_json(text: &str, what: &'static str) -> Result<serde_json::Value, ErrorReport> {
    crate::queue::contract::parse(text)
        .map_err(|reason| PgflowError::UncheckableJson { what, reason }.into())
}

/// Raises 22023 (naming the place and the problem) for a contract that uses JSON Schema
/// beyond the supported subset (`queue::contract`), 22004 for NULL. SQL passes the jsonb as
/// text (`parse_json`).
#[pg_extern(immutable, parallel_safe, name = "_check_contract_schema")]
fn _check_contract_schema_text(schema: Option<&str>) -> Result<(), ErrorReport> {
    let schema = schema.ok_or(PgflowError::NullArgument("contract"))?;
    check_contract_schema(&parse_json(schema, "contract")?)
}

fn check_contract_schema(schema: &serde_json::Value) -> Result<(), ErrorReport> {
    crate::queue::contract::check_schema(schema)
        .map_err(|reason| PgflowError::InvalidContract { reason }.into())
}

/// 0.1.0's `_check_contract_schema(jsonb)`, kept for its install script until `ALTER
/// EXTENSION pgflow UPDATE` replaces it (no SQL of its own in 0.2.0).
#[pg_extern(immutable, parallel_safe, sql = false)]
fn _check_contract_schema(schema: Option<pgrx::JsonB>) -> Result<(), ErrorReport> {
    check_contract_schema(&schema.ok_or(PgflowError::NullArgument("contract"))?.0)
}

/// Raises 23514 when `message` breaks version `version` (at `revision`) of queue `queue_id`'s
/// contract, naming the queue, version, element (`pos`, for send_batch), field and rule; 22023
/// for a message no contract can be checked against (`parse_json`).
///
/// The parsed schema is cached in the backend by (queue, version) and checked against the
/// row's revision (a fresh sequence value on every `set_contract`), so only the first message
/// after a change reads and parses the schema; reading and parsing it is most of the cost of
/// validating (bench W9).
#[pg_extern(stable, parallel_safe, name = "_validate_contract")]
fn _validate_contract_text(
    queue_id: i32,
    queue_name: &str,
    version: &str,
    revision: i64,
    message: &str,
    pos: Option<i32>,
) -> Result<(), ErrorReport> {
    let message = parse_json(message, "message")?;
    validate_contract(queue_id, queue_name, version, revision, &message, pos)
}

/// 0.1.0's `_validate_contract(..., jsonb, ...)`, kept for its install script until `ALTER
/// EXTENSION pgflow UPDATE` replaces it (no SQL of its own in 0.2.0).
#[pg_extern(stable, parallel_safe, sql = false)]
fn _validate_contract(
    queue_id: i32,
    queue_name: &str,
    version: &str,
    revision: i64,
    message: pgrx::JsonB,
    pos: Option<i32>,
) -> Result<(), ErrorReport> {
    validate_contract(queue_id, queue_name, version, revision, &message.0, pos)
}

fn validate_contract(
    queue_id: i32,
    queue_name: &str,
    version: &str,
    revision: i64,
    message: &serde_json::Value,
    pos: Option<i32>,
) -> Result<(), ErrorReport> {
    let schema = crate::contract_cache::schema(queue_id, version, revision)?;
    crate::queue::contract::validate(&schema, message).map_err(|v| {
        let element = pos.map(|p| format!(" (messages[{p}])")).unwrap_or_default();
        PgflowError::ContractViolation {
            label: format!("{queue_name} version {version}{element}"),
            violation: v.to_string(),
        }
        .into()
    })
}
