-- shardfleet schema on PostgreSQL, version 3: worker heartbeats (as migrations/
-- 0007_beats.sql on SQLite). Every worker writes its row when it starts and then every
-- third of its lease; with `--steal orphaned` (the default) the other workers take the
-- due videos of a shard whose owner has not beaten for longer than its lease.
CREATE TABLE IF NOT EXISTS worker_beats (
    workers BIGINT NOT NULL,
    worker_id BIGINT NOT NULL,
    owner TEXT NOT NULL,
    beat_at BIGINT NOT NULL,
    lease_ms BIGINT NOT NULL,
    PRIMARY KEY (workers, worker_id)
);
