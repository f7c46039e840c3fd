//! How one attempt ended, ready to be written: finishing is fenced on the claim's token,
//! so a late finisher whose lease was taken over changes nothing (`sqlite/finish.rs`).

use crate::status::{Outcome, VideoStatus};

/// How one attempt ended, ready to be written. Its status and `run_after` come from the
/// retry decision (`crate::retry`); the storage writes them as they are.
#[derive(Debug, Clone)]
pub struct Finish {
    pub video_id: i64,
    /// The claim token; the write only lands if the video still carries it.
    pub token: i64,
    /// `done`, `pending` (retry at `run_after`) or `failed`.
    pub status: VideoStatus,
    pub outcome: Outcome,
    pub result: Option<String>,
    /// Kept only for a video that is not done.
    pub error: Option<String>,
    /// What a successful handler said on stderr (its tail); kept only for `done`.
    pub warnings: Option<String>,
    pub run_after: i64,
    pub finished_at: i64,
    pub duration_ms: i64,
}
