-- shardfleet schema on PostgreSQL, version 4: changing a running fleet's number of
-- shards (`supervisor scale N`), as migrations/0008_layouts.sql on SQLite.
ALTER TABLE fleet_runs ADD COLUMN IF NOT EXISTS scale_to BIGINT;
ALTER TABLE fleet_runs ADD COLUMN IF NOT EXISTS scale_ids TEXT;

CREATE TABLE IF NOT EXISTS fleet_layouts (
    layout_id  BIGSERIAL PRIMARY KEY,
    run_id     BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    workers    BIGINT NOT NULL,
    worker_ids TEXT
);
CREATE INDEX IF NOT EXISTS fleet_layouts_run ON fleet_layouts (run_id);
