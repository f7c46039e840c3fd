-- shardfleet schema, version 1.
-- Plain SQLite that Cloudflare D1 also accepts: no PRAGMA, no BEGIN/COMMIT.
-- Times are Unix milliseconds (INTEGER) written by the workers' clock.

-- One row per item of work. A worker owns the rows where video_id % N = its id.
CREATE TABLE IF NOT EXISTS videos (
    video_id         INTEGER PRIMARY KEY,
    source           TEXT    NOT NULL,
    payload          TEXT,
    status           TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'done', 'failed')),
    -- Attempts started so far; the claim increments it.
    attempts         INTEGER NOT NULL DEFAULT 0,
    result           TEXT,
    last_error       TEXT,
    -- Outcome of the last attempt (done, error, timeout, expired, released, crashed,
    -- memory); the history trigger copies it.
    last_outcome     TEXT,
    -- A pending row is claimable once run_after <= now: retry backoff lives here.
    run_after        INTEGER NOT NULL DEFAULT 0,
    -- The lease of a running row: who holds it, the token of the claim that produced
    -- it (completions are fenced on it) and when it lapses unless renewed.
    lease_owner      TEXT,
    lease_token      INTEGER,
    lease_expires_at INTEGER,
    started_at       INTEGER,
    finished_at      INTEGER,
    duration_ms      INTEGER,
    created_at       INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER) * 1000)
);

-- Running rows are few; renewals, expiry sweeps and releases look only here.
CREATE INDEX IF NOT EXISTS videos_running ON videos (lease_expires_at) WHERE status = 'running';

-- One row per attempt: who ran it, when, how long, how it ended.
CREATE TABLE IF NOT EXISTS attempts (
    id          INTEGER PRIMARY KEY,
    video_id    INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    worker      TEXT,
    started_at  INTEGER,
    finished_at INTEGER,
    duration_ms INTEGER,
    outcome     TEXT    NOT NULL,
    error       TEXT
);

CREATE INDEX IF NOT EXISTS attempts_video ON attempts (video_id);

-- Every transition out of 'running' records its attempt in the same statement, so the
-- history can never disagree with the videos table, even on D1, which has no BEGIN.
CREATE TRIGGER IF NOT EXISTS videos_record_attempt
AFTER UPDATE OF status ON videos
WHEN OLD.status = 'running' AND NEW.status <> 'running'
BEGIN
    INSERT INTO attempts (video_id, attempt, worker, started_at, finished_at, duration_ms, outcome, error)
    VALUES (OLD.video_id, OLD.attempts, OLD.lease_owner, OLD.started_at, NEW.finished_at,
            NEW.duration_ms, COALESCE(NEW.last_outcome, 'unknown'),
            CASE WHEN NEW.status = 'done' THEN NULL ELSE NEW.last_error END);
END;
