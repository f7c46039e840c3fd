//! What the shardfleet binaries share: units on the command line, the storage (every
//! SQL statement, behind `storage::Store`), the handler and retry flags and the retry
//! decision, the `/status` types, and TLS.

pub mod cgroup;
pub mod config;
pub mod error;
pub mod exit;
pub mod host;
pub mod ids;
pub mod location;
pub mod logging;
pub mod records;
pub mod retry;
pub mod signals;
pub mod status;
pub mod storage;
pub mod tls;
pub mod units;
pub mod words;

pub use error::{DbError, ParseError};
