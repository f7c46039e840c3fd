-- shardfleet schema, version 6: the words the code writes, enforced by the database,
-- as migrations/postgres/0001_schema.sql does with CHECK constraints. SQLite cannot add
-- a CHECK to an existing table without copying it (and `attempts` holds the whole
-- history), and a copy would refuse an old database over one odd row; so each check is
-- a trigger that aborts the write, for new rows and changes only. The conditions are
-- CASE expressions, not `IN (...)` lists, which SQLite rebuilds as a small b-tree for
-- every row it checks. The words match the Rust types (shared/src/storage/fleet.rs,
-- shared/src/status.rs); shared/tests/checks.rs holds both to it.

CREATE TRIGGER IF NOT EXISTS attempts_outcome_check
BEFORE INSERT ON attempts
WHEN CASE NEW.outcome WHEN 'done' THEN 0 WHEN 'error' THEN 0 WHEN 'timeout' THEN 0 WHEN 'memory' THEN 0
     WHEN 'expired' THEN 0 WHEN 'released' THEN 0 WHEN 'crashed' THEN 0 WHEN 'rejected' THEN 0
     WHEN 'unknown' THEN 0 ELSE 1 END
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: attempts.outcome');
END;

CREATE TRIGGER IF NOT EXISTS videos_last_outcome_check
BEFORE UPDATE OF last_outcome ON videos
WHEN NEW.last_outcome IS NOT NULL
     AND CASE NEW.last_outcome WHEN 'done' THEN 0 WHEN 'error' THEN 0 WHEN 'timeout' THEN 0 WHEN 'memory' THEN 0
         WHEN 'expired' THEN 0 WHEN 'released' THEN 0 WHEN 'crashed' THEN 0 WHEN 'rejected' THEN 0 ELSE 1 END
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: videos.last_outcome');
END;

CREATE TRIGGER IF NOT EXISTS videos_attempts_check
BEFORE UPDATE OF attempts ON videos
WHEN NEW.attempts < 0
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: videos.attempts');
END;

CREATE TRIGGER IF NOT EXISTS fleet_runs_insert_check
BEFORE INSERT ON fleet_runs
WHEN CASE NEW.state WHEN 'running' THEN 0 WHEN 'stopping' THEN 0 WHEN 'stopped' THEN 0 WHEN 'done' THEN 0
     WHEN 'failed' THEN 0 WHEN 'errored' THEN 0 WHEN 'crashed' THEN 0 WHEN 'damaged' THEN 0 ELSE 1 END
  OR CASE NEW.mem_enforce WHEN 'cgroup-v2' THEN 0 WHEN 'cgroup-v1' THEN 0 WHEN 'sample' THEN 0 WHEN 'none' THEN 0
     ELSE 1 END
  OR NEW.workers <= 0
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: fleet_runs');
END;

CREATE TRIGGER IF NOT EXISTS fleet_runs_state_check
BEFORE UPDATE OF state ON fleet_runs
WHEN CASE NEW.state WHEN 'running' THEN 0 WHEN 'stopping' THEN 0 WHEN 'stopped' THEN 0 WHEN 'done' THEN 0
     WHEN 'failed' THEN 0 WHEN 'errored' THEN 0 WHEN 'crashed' THEN 0 WHEN 'damaged' THEN 0 ELSE 1 END
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: fleet_runs.state');
END;

CREATE TRIGGER IF NOT EXISTS fleet_workers_insert_check
BEFORE INSERT ON fleet_workers
WHEN CASE NEW.state WHEN 'starting' THEN 0 WHEN 'not-ready' THEN 0 WHEN 'running' THEN 0 WHEN 'backoff' THEN 0
     WHEN 'errored' THEN 0 WHEN 'stopped' THEN 0 ELSE 1 END
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: fleet_workers.state');
END;

CREATE TRIGGER IF NOT EXISTS fleet_workers_state_check
BEFORE UPDATE OF state ON fleet_workers
WHEN CASE NEW.state WHEN 'starting' THEN 0 WHEN 'not-ready' THEN 0 WHEN 'running' THEN 0 WHEN 'backoff' THEN 0
     WHEN 'errored' THEN 0 WHEN 'stopped' THEN 0 ELSE 1 END
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: fleet_workers.state');
END;

CREATE TRIGGER IF NOT EXISTS fleet_events_kind_check
BEFORE INSERT ON fleet_events
WHEN CASE NEW.kind WHEN 'restart' THEN 0 WHEN 'errored' THEN 0 WHEN 'crash' THEN 0 WHEN 'kill' THEN 0
     WHEN 'memory_kill' THEN 0 ELSE 1 END
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: fleet_events.kind');
END;
