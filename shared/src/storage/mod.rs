//! The fleet's storage, the one place that speaks SQL. Callers hold a [`Store`] and use
//! domain verbs: a worker's [`Shard`] claims a batch, finishes it fenced, renews,
//! reclaims and hands back leases; the store counts videos, keeps the fleet's records,
//! imports, requeues, exports and sums up a run. Each verb dispatches to a backend
//! (SQLite today, in `sqlite/`), and "database is locked" is retried in here (`busy.rs`),
//! never by callers. What becomes of a failed attempt is decided by `crate::retry`, and
//! written here as decided.

mod beats;
mod busy;
mod claim;
mod conn;
mod counts;
mod dialect;
mod export;
mod finish;
mod fleet;
mod import;
mod lease;
mod migrate;
pub(crate) mod postgres;
mod reads;
mod requeue;
mod schema;
mod shard;
pub(crate) mod sqlite;
mod store;
mod summary;
#[cfg(feature = "testing")]
pub mod testing;

pub use crate::location::{DbLocation, LocationError, default_db};
pub use beats::Beat;
pub use busy::BUSY_RETRIES;
pub use claim::Claimed;
pub use export::{ExportFilter, ExportRow};
pub use finish::Finish;
pub use fleet::{
    Begun, EventKind, FleetEvent, FleetRun, FleetWorker, Layout, RunOrder, RunState, ScaleAsk, SlotStatus, UnknownWord,
};
pub use import::{EXISTING_NAMED, IMPORT_BATCH, Import, ImportReport, ImportRow, NewVideo, Repeat};
pub use lease::owner_of;
pub use reads::{AttemptRecord, CUT_CHARS, FailedPage, FailedVideo, Page, VideoHistory};
pub use requeue::RequeueOutcome;
pub use shard::{ClaimRound, STEAL_BATCH, Shard, ShardSpec};
pub use sqlite::LOCK_WAITS;
pub use store::{Store, corrupt_advice, now_ms};
pub use summary::{RunTotals, ShardAttempts};
