//! The SQLite backend, whose schema is also Cloudflare D1's: every statement the fleet
//! makes on SQLite, the migrations and their D1-compatible bookkeeping, and the busy
//! handler. Each state change that must be atomic is one statement, since D1 has no
//! BEGIN; transactions here only batch statements that are correct on their own.

mod busy;
mod conn;
mod open;
mod sql;
mod turns;

pub use busy::LOCK_WAITS;
pub(crate) use conn::Link;
pub(crate) use open::SqliteStore;
#[cfg(feature = "testing")]
pub use sql::MIGRATIONS;
pub(crate) use sql::SQL;
