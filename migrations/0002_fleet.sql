-- shardfleet schema, version 2: the supervisor's records of its runs, so that
-- `supervisor status`, `supervisor stop` and `monitor --db` work from the database alone,
-- while a fleet runs and after it has stopped.

-- One row per `supervisor start`.
CREATE TABLE IF NOT EXISTS fleet_runs (
    run_id          INTEGER PRIMARY KEY,
    supervisor_pid  INTEGER NOT NULL,
    host            TEXT,
    started_at      INTEGER NOT NULL,
    stopped_at      INTEGER,
    -- running | stopping | stopped | done | failed (done with failed videos) | crashed
    state           TEXT    NOT NULL,
    workers         INTEGER NOT NULL,
    base_port       INTEGER NOT NULL,
    bind            TEXT    NOT NULL,
    mem_limit_bytes INTEGER,
    -- cgroup-v2 | cgroup-v1 | sample | none
    mem_enforce     TEXT    NOT NULL,
    handler         TEXT    NOT NULL,
    concurrency     INTEGER NOT NULL,
    log_dir         TEXT,
    -- Bearer token for the workers' control endpoints, generated per run.
    control_token   TEXT
);

-- One row per worker slot of a run, refreshed by the supervisor every second.
CREATE TABLE IF NOT EXISTS fleet_workers (
    run_id        INTEGER NOT NULL,
    worker_id     INTEGER NOT NULL,
    pid           INTEGER,
    port          INTEGER NOT NULL,
    -- starting | running | backoff | errored | stopped
    state         TEXT    NOT NULL,
    started_at    INTEGER,
    restarts      INTEGER NOT NULL DEFAULT 0,
    last_reason   TEXT,
    last_restart_at INTEGER,
    rss_bytes     INTEGER,
    memory_kills  INTEGER NOT NULL DEFAULT 0,
    updated_at    INTEGER,
    PRIMARY KEY (run_id, worker_id)
);

-- Every restart and memory-limit kill, with its reason.
CREATE TABLE IF NOT EXISTS fleet_events (
    id        INTEGER PRIMARY KEY,
    run_id    INTEGER NOT NULL,
    worker_id INTEGER NOT NULL,
    at        INTEGER NOT NULL,
    -- restart | memory_kill | errored | unhealthy
    kind      TEXT    NOT NULL,
    reason    TEXT    NOT NULL
);
