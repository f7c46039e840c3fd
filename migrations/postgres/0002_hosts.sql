-- shardfleet schema on PostgreSQL, version 2: fleets that span hosts (as migrations/
-- 0005_hosts.sql on SQLite). Each `supervisor start` runs some of the fleet's worker
-- ids and keeps its run record alive with a heartbeat; `supervisor stop` asks every
-- host's supervisor to stop through the database.

-- The worker ids this run starts ("3-5", "0,2"); NULL: all of 0..workers-1.
ALTER TABLE fleet_runs ADD COLUMN worker_ids TEXT;
-- When the supervisor last wrote that it is alive (every second while it runs).
ALTER TABLE fleet_runs ADD COLUMN heartbeat_at BIGINT;
-- Set by `supervisor stop`; the supervisor polls for it and drains.
ALTER TABLE fleet_runs ADD COLUMN stop_requested_at BIGINT;
-- The host name or address other hosts reach this run's workers at (`--advertise`).
ALTER TABLE fleet_runs ADD COLUMN advertise TEXT;

-- Live runs are few and looked up at every start and stop.
CREATE INDEX fleet_runs_live ON fleet_runs (run_id) WHERE state IN ('running', 'stopping');
