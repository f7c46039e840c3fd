-- shardfleet schema, version 7: worker heartbeats, so workers can tell a shard whose
-- owner is gone from one whose owner is merely busy. Every worker writes its row when
-- it starts and then every third of its lease; with `--steal orphaned` (the default)
-- the other workers take the due videos of a shard whose owner has not beaten for
-- longer than its lease, and leave the shard again as soon as it beats.
CREATE TABLE IF NOT EXISTS worker_beats (
    -- The fleet size the worker runs in, and its shard (worker id) within it.
    workers INTEGER NOT NULL,
    worker_id INTEGER NOT NULL,
    -- The lease owner name of the process that beat last (worker-K/pid:nonce).
    owner TEXT NOT NULL,
    -- Unix milliseconds of the last beat, by the worker's clock (as its leases are).
    beat_at INTEGER NOT NULL,
    -- The worker's lease: its shard is orphaned once beat_at + lease_ms has passed.
    lease_ms INTEGER NOT NULL,
    PRIMARY KEY (workers, worker_id)
);
