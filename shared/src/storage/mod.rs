//! The shared SQLite database: opening it, its schema, and the statements that move a
//! video through its life. Each state change that must be atomic is one statement.

mod admin;
mod busy;
mod claim;
mod counts;
mod finish;
pub mod fleet;
mod lease;
mod migrate;
mod open;

pub use admin::{
    EXISTING_NAMED, IMPORT_BATCH, Import, ImportReport, ImportRow, NewVideo, Repeat, RequeueOutcome,
    requeue_all_failed, requeue_ids, requeue_video,
};
pub use busy::{BUSY_RETRIES, BusyRetry, retry_busy};
pub use claim::{Claimed, Claimer};
pub use counts::{ensure_count_layout, shard_counts};
pub use finish::{Finish, finish_batch};
pub use lease::{owner_name, owner_pattern, reclaim_expired, release_matching, release_owner, renew_owner};
pub use migrate::{MIGRATIONS, Migration};
pub use open::{Db, corrupt_advice, now_ms};
