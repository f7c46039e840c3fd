//! What a claim hands a worker: a video it now holds a lease on. The claim itself is one
//! statement of the backend's (`sqlite/claim.rs`), made through a [`Shard`](super::Shard).

/// A video this worker now holds a lease on.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub video_id: i64,
    pub source: String,
    pub payload: Option<String>,
    /// The attempt this claim starts, from 1.
    pub attempt: u32,
    /// The token of this claim; finishing is fenced on it.
    pub token: i64,
    /// Why this video cannot run (its source or payload is above the limits, and was
    /// not read): it is to be failed at once.
    pub rejected: Option<String>,
}
