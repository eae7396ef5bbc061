//! In-backend tests (`cargo pgrx test`): behaviour of the SQL API and every SQLSTATE it raises
//! (`api`), failure handling (`failure`), and the background workers as seen from a backend
//! (`worker`). Each file holds one `#[pg_schema] mod tests`, as pgrx's own test suite does.
use pgrx::prelude::*;

mod api;
mod failure;
mod worker;

/// Runs `stmt` and returns its SQLSTATE ("00000" when it succeeds). The statement runs in a
/// subtransaction (PL/pgSQL's EXCEPTION block), so the test can go on afterwards.
pub fn sqlstate(stmt: &str) -> String {
    Spi::run(
        "CREATE OR REPLACE FUNCTION pg_temp.sqlstate_of(stmt text) RETURNS text
         LANGUAGE plpgsql AS $$
         BEGIN EXECUTE stmt; RETURN '00000';
         EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $$",
    )
    .unwrap();
    Spi::get_one_with_args::<String>("SELECT pg_temp.sqlstate_of($1)", &[stmt.into()])
        .unwrap()
        .unwrap()
}

pub fn one_i64(q: &str) -> i64 {
    Spi::get_one::<i64>(q)
        .unwrap()
        .unwrap_or_else(|| panic!("NULL from {q}"))
}

pub fn one_bool(q: &str) -> bool {
    Spi::get_one::<bool>(q)
        .unwrap()
        .unwrap_or_else(|| panic!("NULL from {q}"))
}

pub fn setup_queue(name: &str) {
    Spi::run(&format!("SELECT pgflow.create_queue('{name}')")).unwrap();
}
