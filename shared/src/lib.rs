//! What the shardfleet binaries share: units on the command line, the database and its
//! statements, the handler and retry flags, and the `/status` types.

pub mod cgroup;
pub mod config;
pub mod db;
pub mod error;
pub mod exit;
pub mod signals;
pub mod status;
pub mod units;

pub use error::{DbError, ParseError};
