-- shardfleet schema, version 9: what the monitor's page reads, and drained workers.

-- The failed list pages through failed videos by id (keyset: `video_id > last`), so a
-- page reads its rows and no others however many videos are done or pending.
CREATE INDEX IF NOT EXISTS videos_failed ON videos (video_id) WHERE status = 'failed';

-- A worker drained on request (`POST /drain`) exited 0 and stays down: the slot shows
-- `drained` until someone resumes it. The page's resume stamps this column on the live
-- run's slot, and that run's supervisor, on any host, restarts the worker and clears it.
ALTER TABLE fleet_workers ADD COLUMN resume_requested_at INTEGER;

-- The slot-state checks of 0006, now with `drained`. SQLite cannot alter a trigger;
-- dropping and creating each in one migration leaves no moment without it.
DROP TRIGGER IF EXISTS fleet_workers_insert_check;

CREATE TRIGGER fleet_workers_insert_check
BEFORE INSERT ON fleet_workers
WHEN CASE NEW.state WHEN 'starting' THEN 0 WHEN 'not-ready' THEN 0 WHEN 'running' THEN 0 WHEN 'backoff' THEN 0
     WHEN 'errored' THEN 0 WHEN 'stopped' THEN 0 WHEN 'drained' THEN 0 ELSE 1 END
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: fleet_workers.state');
END;

DROP TRIGGER IF EXISTS fleet_workers_state_check;

CREATE TRIGGER fleet_workers_state_check
BEFORE UPDATE OF state ON fleet_workers
WHEN CASE NEW.state WHEN 'starting' THEN 0 WHEN 'not-ready' THEN 0 WHEN 'running' THEN 0 WHEN 'backoff' THEN 0
     WHEN 'errored' THEN 0 WHEN 'stopped' THEN 0 WHEN 'drained' THEN 0 ELSE 1 END
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: fleet_workers.state');
END;
