//! What the monitor's page reads: failed videos a page at a time, keyset-paged on the id
//! through the `videos_failed` index (migration 0009), and one video's history. Long
//! text is cut in the database, so a page never carries a megabyte of stderr.

use serde::Serialize;

use super::Store;
use super::busy::run;
use super::conn::{Arg, ConnExt, args, word};
use crate::error::DbError;
use crate::status::VideoStatus;

/// Sources, errors and warnings are read up to this many characters.
pub const CUT_CHARS: i64 = 300;
/// A history shows at most this many attempts, the latest.
pub const HISTORY_ATTEMPTS: i64 = 100;

/// Where a page of the failed list starts: the ids are the cursor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Page {
    #[default]
    First,
    /// The videos after this id.
    After(i64),
    /// The videos just before this id.
    Before(i64),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedVideo {
    pub video_id: i64,
    pub source: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// Unix milliseconds.
    pub finished_at: Option<i64>,
}

/// A page of failed videos in id order, and whether there are more on either side.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FailedPage {
    pub rows: Vec<FailedVideo>,
    pub earlier: bool,
    pub later: bool,
}

/// One ended attempt of a video.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRecord {
    pub attempt: i64,
    pub worker: Option<String>,
    pub started_at: Option<i64>,
    pub duration_ms: Option<i64>,
    pub outcome: String,
    pub error: Option<String>,
    pub warnings: Option<String>,
}

/// A video and its attempts, latest first (the one running now is not among them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoHistory {
    pub video_id: i64,
    pub source: Option<String>,
    pub status: VideoStatus,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub history: Vec<AttemptRecord>,
}

impl Store {
    /// Up to `limit` failed videos from `page`; with `search`, only those whose source
    /// contains it, or whose id it is.
    pub async fn failed_page(&self, search: Option<&str>, page: Page, limit: u32) -> Result<FailedPage, DbError> {
        let (low, high, order) = match page {
            Page::First => (i64::MIN, i64::MAX, "ASC"),
            Page::After(id) => (id, i64::MAX, "ASC"),
            Page::Before(id) => (i64::MIN, id, "DESC"),
        };
        let search = search.map(str::trim).filter(|s| !s.is_empty());
        let rows = run!(self, |c| {
            let filter = match search {
                Some(_) => format!(" AND (video_id = $4 OR {})", c.backend().sql().contains),
                None => String::new(),
            };
            let sql = format!(
                "SELECT video_id, substr(source, 1, {CUT_CHARS}), attempts, substr(last_error, 1, {CUT_CHARS}), \
                 finished_at FROM videos WHERE status = 'failed' AND video_id > $1 AND video_id < $2{filter} \
                 ORDER BY video_id {order} LIMIT $3"
            );
            let mut bound = vec![Arg::from(low), Arg::from(high), Arg::from(i64::from(limit) + 1)];
            if let Some(s) = search {
                bound.extend([Arg::Int(s.parse().ok()), Arg::from(s)]);
            }
            c.fetch(&sql, &bound).await
        })?;
        let more = rows.len() > limit as usize;
        let mut rows: Vec<FailedVideo> = rows
            .iter()
            .take(limit as usize)
            .map(|r| FailedVideo {
                video_id: r.int(0),
                source: r.opt_text(1),
                attempts: r.int(2),
                last_error: r.opt_text(3),
                finished_at: r.opt_int(4),
            })
            .collect();
        // A page before a cursor is read backwards; a cursor means rows lie beyond it.
        let (earlier, later) = match page {
            Page::First => (false, more),
            Page::After(_) => (true, more),
            Page::Before(_) => {
                rows.reverse();
                (more, true)
            }
        };
        Ok(FailedPage { rows, earlier, later })
    }

    /// Video `video_id` and its latest attempts, or None if there is no such video.
    pub async fn video_history(&self, video_id: i64) -> Result<Option<VideoHistory>, DbError> {
        let video = format!(
            "SELECT substr(source, 1, {CUT_CHARS}), status, attempts, substr(last_error, 1, {CUT_CHARS}) \
             FROM videos WHERE video_id = $1"
        );
        let tried = format!(
            "SELECT attempt, worker, started_at, duration_ms, outcome, substr(error, 1, {CUT_CHARS}), \
             substr(warnings, 1, {CUT_CHARS}) FROM attempts WHERE video_id = $1 ORDER BY id DESC \
             LIMIT {HISTORY_ATTEMPTS}"
        );
        let (video, tried) = run!(self, |c| Ok::<_, DbError>((
            c.fetch_optional(&video, args![video_id]).await?,
            c.fetch(&tried, args![video_id]).await?
        )))?;
        let Some(v) = video else { return Ok(None) };
        let history = tried
            .iter()
            .map(|r| AttemptRecord {
                attempt: r.int(0),
                worker: r.opt_text(1),
                started_at: r.opt_int(2),
                duration_ms: r.opt_int(3),
                outcome: r.text(4),
                error: r.opt_text(5),
                warnings: r.opt_text(6),
            })
            .collect();
        let (source, status, attempts, last_error) = (v.opt_text(0), word(v.text(1))?, v.int(2), v.opt_text(3));
        Ok(Some(VideoHistory { video_id, source, status, attempts, last_error, history }))
    }
}
