//! Every error a user can cause, each mapped to a specific SQLSTATE.
//!
//! The SQL layer raises its own errors with `RAISE ... USING ERRCODE`; the codes used there are
//! listed in docs/api.md next to each function. This enum covers what Rust code reports.
use std::fmt;

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode;

use crate::queue::name::NameError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgflowError {
    /// A required argument was NULL (22004).
    NullArgument(&'static str),
    /// A queue name that breaks the naming rules (22023).
    InvalidQueueName { name: String, reason: NameError },
    /// A topic or topic pattern that breaks the syntax (22023).
    InvalidTopic {
        what: &'static str,
        value: String,
        reason: String,
    },
    /// A contract outside the supported JSON Schema subset (22023).
    InvalidContract { reason: String },
    /// A payload that breaks its queue's contract (23514).
    ContractViolation { label: String, violation: String },
    /// JSON that a contract cannot be checked against or built from (22023): nested deeper
    /// than `queue::contract::MAX_DEPTH`, or a number outside a double's range.
    UncheckableJson { what: &'static str, reason: String },
    /// A topic or pattern longer than `queue::topic::MAX_LEN` given to a matcher (22023).
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

impl PgflowError {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            PgflowError::NullArgument(_) => PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            PgflowError::InvalidQueueName { .. }
            | PgflowError::InvalidTopic { .. }
            | PgflowError::InvalidContract { .. }
            | PgflowError::UncheckableJson { .. }
            | PgflowError::TooLong { .. } => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            PgflowError::ContractViolation { .. } => PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
        }
    }

    fn hint(&self) -> Option<&'static str> {
        match self {
            PgflowError::InvalidQueueName { .. } => Some(crate::queue::name::RULE),
            PgflowError::InvalidTopic { .. } => {
                Some("Words are 1-64 of A-Z a-z 0-9 _ - separated by dots; in a pattern, * is one word and # zero or more.")
            }
            PgflowError::InvalidContract { .. } => Some(
                "Supported: type, properties, required, additionalProperties, items, minItems, maxItems, \
                 minLength, maxLength, format (date-time, uuid), minimum, maximum, exclusiveMinimum, \
                 exclusiveMaximum, enum, const; annotations are ignored.",
            ),
            PgflowError::UncheckableJson { .. } => Some(
                "A queue with a contract accepts JSON nested at most 128 levels deep, with \
                 numbers a double can hold (about 1.8e308).",
            ),
            PgflowError::NullArgument(_)
            | PgflowError::ContractViolation { .. }
            | PgflowError::TooLong { .. } => None,
        }
    }
}

impl fmt::Display for PgflowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgflowError::NullArgument(arg) => write!(f, "{arg} must not be NULL"),
            PgflowError::InvalidQueueName { name, reason } => {
                // Quote with {:?} so control characters in a hostile name stay visible.
                write!(f, "invalid queue name {name:?}: {reason}")
            }
            PgflowError::InvalidTopic {
                what,
                value,
                reason,
            } => {
                write!(f, "invalid {what} {value:?}: {what} {reason}")
            }
            PgflowError::InvalidContract { reason } => write!(f, "invalid contract: {reason}"),
            PgflowError::ContractViolation { label, violation } => {
                write!(f, "message does not match contract {label}: {violation}")
            }
            PgflowError::UncheckableJson { what, reason } => {
                write!(f, "{what} cannot be checked: {reason}")
            }
            PgflowError::TooLong { what, len, max } => {
                write!(f, "{what} is {len} bytes long; the limit is {max}")
            }
        }
    }
}

impl From<PgflowError> for ErrorReport {
    #[track_caller]
    fn from(e: PgflowError) -> Self {
        let report = ErrorReport::new(e.sqlstate(), e.to_string(), "pgflow");
        match e.hint() {
            Some(h) => report.set_hint(h),
            None => report,
        }
    }
}
