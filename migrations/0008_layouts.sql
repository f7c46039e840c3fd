-- shardfleet schema, version 8: changing a running fleet's number of shards
-- (`supervisor scale N`). The command writes the new size, and the worker ids each run
-- should run in it, on each live run; its supervisor sees them at its next heartbeat,
-- drains its workers, and starts the new layout at one recorded moment.

-- The fleet size this run is asked to change to; NULL: no change asked.
ALTER TABLE fleet_runs ADD COLUMN scale_to INTEGER;
-- The worker ids it should run then ("0-3"); NULL: all of 0..scale_to-1.
ALTER TABLE fleet_runs ADD COLUMN scale_ids TEXT;

-- Every re-partition of a run: when it started running `workers` shards, and which ids
-- of them (NULL: all).
CREATE TABLE IF NOT EXISTS fleet_layouts (
    layout_id  INTEGER PRIMARY KEY,
    run_id     INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    workers    INTEGER NOT NULL,
    worker_ids TEXT
);
CREATE INDEX IF NOT EXISTS fleet_layouts_run ON fleet_layouts (run_id);
