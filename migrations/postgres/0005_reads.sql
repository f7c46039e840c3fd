-- shardfleet schema on PostgreSQL, version 5: the failed list's index, and drained
-- workers with their resume requests, as migrations/0009_reads.sql on SQLite.
CREATE INDEX IF NOT EXISTS videos_failed ON videos (video_id) WHERE status = 'failed';

ALTER TABLE fleet_workers ADD COLUMN IF NOT EXISTS resume_requested_at BIGINT;

ALTER TABLE fleet_workers DROP CONSTRAINT IF EXISTS fleet_workers_state_check;
ALTER TABLE fleet_workers ADD CONSTRAINT fleet_workers_state_check
    CHECK (state IN ('starting', 'not-ready', 'running', 'backoff', 'errored', 'stopped', 'drained'));
