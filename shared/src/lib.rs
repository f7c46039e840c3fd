//! What the shardfleet binaries share: units on the command line, the storage (every
//! SQL statement, behind `storage::Store`), the handler and retry flags and the retry
//! decision, the `/status` types, and TLS; and the rules each binary must apply alike:
//! the shard of a video (`ids`), a worker's port (`ports`), the doubling backoff
//! (`backoff`), killing a process group (`process`), how times read (`time_fmt`).

pub mod backoff;
pub mod cgroup;
pub mod config;
pub mod disk;
pub mod error;
pub mod exit;
pub mod host;
#[cfg(feature = "http")]
pub mod http;
pub mod ids;
pub mod location;
pub mod logging;
pub mod ports;
pub mod process;
pub mod records;
pub mod retry;
pub mod signals;
pub mod status;
pub mod storage;
pub mod time_fmt;
pub mod tls;
pub mod units;
pub mod words;

pub use error::{DbError, ParseError};
