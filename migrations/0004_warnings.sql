-- shardfleet schema, version 4: the warnings of successful attempts. A handler can
-- succeed and still say something went wrong (ffmpeg exits 0 after "File ended
-- prematurely" on a truncated file); that used to vanish with the attempt.

-- The tail of what a successful --exec handler wrote to stderr, NULL when it wrote
-- nothing but whitespace, so "done with warnings" is `warnings IS NOT NULL`. Only done
-- attempts carry it: a failed attempt's stderr is already in its error. On videos it is
-- the attempt that finished the video; on attempts, each attempt's own.
ALTER TABLE videos ADD COLUMN warnings TEXT;
ALTER TABLE attempts ADD COLUMN warnings TEXT;

-- The history trigger of 0001, now also copying the warnings of a done attempt. SQLite
-- cannot alter a trigger; dropping and creating it in one migration (one transaction
-- when the fleet applies it) leaves no moment without it.
DROP TRIGGER IF EXISTS videos_record_attempt;

CREATE TRIGGER videos_record_attempt
AFTER UPDATE OF status ON videos
WHEN OLD.status = 'running' AND NEW.status <> 'running'
BEGIN
    INSERT INTO attempts (video_id, attempt, worker, started_at, finished_at, duration_ms, outcome, error, warnings)
    VALUES (OLD.video_id, OLD.attempts, OLD.lease_owner, OLD.started_at, NEW.finished_at,
            NEW.duration_ms, COALESCE(NEW.last_outcome, 'unknown'),
            CASE WHEN NEW.status = 'done' THEN NULL ELSE NEW.last_error END,
            CASE WHEN NEW.status = 'done' THEN NEW.warnings END);
END;
