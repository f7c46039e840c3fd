-- shardfleet schema, version 5: fleets that span hosts. Each `supervisor start` runs
-- some of the fleet's worker ids (all of them by default) and keeps its run record
-- alive with a heartbeat, so supervisors on other hosts can tell a live run from a dead
-- one, and `supervisor stop` can ask every host's supervisor to stop through the
-- database.

-- The worker ids this run starts, as `--worker-ids` writes them ("3-5", "0,2"); NULL:
-- all of 0..workers-1 (runs from before this migration).
ALTER TABLE fleet_runs ADD COLUMN worker_ids TEXT;
-- When the supervisor last wrote that it is alive (every second while it runs).
ALTER TABLE fleet_runs ADD COLUMN heartbeat_at INTEGER;
-- Set by `supervisor stop`; the supervisor polls for it and drains.
ALTER TABLE fleet_runs ADD COLUMN stop_requested_at INTEGER;
-- The host name or address other hosts reach this run's workers at (`--advertise`).
ALTER TABLE fleet_runs ADD COLUMN advertise TEXT;
