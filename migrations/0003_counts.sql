-- shardfleet schema, version 3: videos counted by shard and status, kept exact by
-- triggers, so `supervisor status`, the monitor and the done check read a few rows
-- instead of counting the whole table. See shared/src/db/counts.rs.

-- The shard layout the counts are kept for: shard = video_id % workers. One row at most.
CREATE TABLE IF NOT EXISTS video_counts_layout (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    workers INTEGER NOT NULL CHECK (workers > 0)
);

-- Videos per (shard, status) under that layout. A handful of rows, so every trigger
-- below is a primary-key seek in a tiny b-tree.
CREATE TABLE IF NOT EXISTS video_counts (
    shard  INTEGER NOT NULL,
    status TEXT    NOT NULL,
    videos INTEGER NOT NULL,
    PRIMARY KEY (shard, status)
) WITHOUT ROWID;

-- Every write to `videos`, from the fleet or from anyone else (wrangler d1 execute, an
-- app), moves the counts in the same statement. With no layout recorded the shard is
-- NULL and nothing is counted. (An INSERT OR REPLACE that replaces a row is not seen as
-- a delete: SQLite fires no delete trigger for it unless recursive_triggers is on.)
CREATE TRIGGER IF NOT EXISTS video_counts_insert
AFTER INSERT ON videos
BEGIN
    UPDATE video_counts SET videos = videos + 1
    WHERE shard = NEW.video_id % (SELECT workers FROM video_counts_layout) AND status = NEW.status;
END;

CREATE TRIGGER IF NOT EXISTS video_counts_update
AFTER UPDATE OF status, video_id ON videos
WHEN OLD.status <> NEW.status OR OLD.video_id <> NEW.video_id
BEGIN
    UPDATE video_counts SET videos = videos - 1
    WHERE shard = OLD.video_id % (SELECT workers FROM video_counts_layout) AND status = OLD.status;
    UPDATE video_counts SET videos = videos + 1
    WHERE shard = NEW.video_id % (SELECT workers FROM video_counts_layout) AND status = NEW.status;
END;

CREATE TRIGGER IF NOT EXISTS video_counts_delete
AFTER DELETE ON videos
BEGIN
    UPDATE video_counts SET videos = videos - 1
    WHERE shard = OLD.video_id % (SELECT workers FROM video_counts_layout) AND status = OLD.status;
END;

-- Start with layout 1 (totals), counted now, so that totals are kept before any fleet
-- ran; a fleet of N workers recounts for N once, when it starts.
INSERT INTO video_counts_layout (id, workers) VALUES (1, 1);
INSERT INTO video_counts (shard, status, videos)
SELECT 0, status, count(*) FROM videos GROUP BY status;
INSERT OR IGNORE INTO video_counts (shard, status, videos)
VALUES (0, 'pending', 0), (0, 'running', 0), (0, 'done', 0), (0, 'failed', 0);
