//! A per-backend cache of parsed contract schemas, keyed by (queue, version) and checked
//! against the row's revision (a fresh sequence value on every `set_contract`, also within one
//! transaction), so only the first message after a change reads and parses the schema; reading
//! and parsing it is most of the cost of validating (bench W9). The checker itself is pure
//! (`queue::contract`); this is the part that needs the database.
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

type SchemaCache = HashMap<(i32, String), (i64, Rc<serde_json::Value>)>;

thread_local! {
    static SCHEMAS: RefCell<SchemaCache> = RefCell::new(HashMap::new());
}
/// Entries kept per backend before the cache starts over.
const SCHEMA_CACHE_MAX: usize = 1024;

/// The parsed schema of contract `version` of queue `queue_id` at `revision`, from this
/// backend's cache or, on a miss, read (SPI) and parsed.
pub fn schema(
    queue_id: i32,
    version: &str,
    revision: i64,
) -> Result<Rc<serde_json::Value>, ErrorReport> {
    let key = (queue_id, version.to_owned());
    let hit = SCHEMAS.with(|c| {
        c.borrow()
            .get(&key)
            .filter(|(rev, _)| *rev == revision)
            .map(|(_, s)| Rc::clone(s))
    });
    if let Some(schema) = hit {
        return Ok(schema);
    }
    // A read-only SPI query under the caller's snapshot, which found this revision. The schema
    // comes as text and is parsed here (see `api::parse_json`).
    let text = Spi::connect(|client| {
        client
            .select(
                "SELECT schema::text FROM pgflow.contract \
                  WHERE queue_id = $1 AND version = $2 AND revision = $3",
                Some(1),
                &[queue_id.into(), version.into(), revision.into()],
            )?
            .first()
            .get_one::<String>()
    })
    .map_err(|e| {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("reading contract version {version} of queue {queue_id}: {e}"),
            "pgflow._validate_contract",
        )
    })?
    .ok_or_else(|| {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("queue {queue_id} has no contract version {version} at revision {revision}"),
            "pgflow._validate_contract",
        )
    })?;
    let schema = crate::queue::contract::parse(&text).map_err(|reason| {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("contract version {version} of queue {queue_id} cannot be used: {reason}"),
            "pgflow._validate_contract",
        )
    })?;
    let schema = Rc::new(schema);
    SCHEMAS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= SCHEMA_CACHE_MAX {
            c.clear();
        }
        c.insert(key, (revision, Rc::clone(&schema)));
    });
    Ok(schema)
}
