//! The SQLite backend, whose schema is also Cloudflare D1's: every statement the fleet
//! makes on SQLite, the migrations and their D1-compatible bookkeeping, and the busy
//! handler. Each state change that must be atomic is one statement, since D1 has no
//! BEGIN; transactions here only batch statements that are correct on their own.

mod beats;
mod busy;
mod claim;
mod counts;
mod export;
mod finish;
mod fleet;
mod import;
mod lease;
mod migrate;
mod open;
mod requeue;
mod shard;
mod summary;

pub use import::SqliteImport;
pub use migrate::{MIGRATIONS, Migration};
pub use open::SqliteStore;
pub use shard::SqliteShard;
