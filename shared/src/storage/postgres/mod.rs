//! The PostgreSQL backend, for fleets that span hosts: the same tables, columns and
//! guarantees as the SQLite backend, with PostgreSQL's own ways to get them.
//!
//! - Claims are one statement: `FOR UPDATE SKIP LOCKED` picks due rows no one else is
//!   locking, the outer `UPDATE` checks `status = 'pending'` again after the lock, and N
//!   is a literal so the partial index on `(video_id % N)` is used (`claim.rs`).
//! - Finishes and settlements bind arrays (`unnest`), fenced on the claim's token
//!   (`finish.rs`, `lease.rs`); the history and counts triggers are per statement, over
//!   transition tables (`migrations/postgres/`).
//! - Migrations run in one transaction under an advisory lock (`../migrate.rs`), so hosts
//!   that start at the same moment apply them once.
//! - What PostgreSQL refuses for now (a deadlock, a serialization failure) is retried
//!   like SQLite's "database is locked" (`crate::error::is_busy`).

mod conn;
mod open;
mod sql;

pub(crate) use conn::Link;
pub(crate) use open::PgStore;
#[cfg(feature = "testing")]
pub(crate) use sql::MIGRATE_LOCK;
#[cfg(feature = "testing")]
pub use sql::PG_MIGRATIONS;
pub(crate) use sql::SQL;
