//! The statements whose PostgreSQL text differs from SQLite's, and why.

use crate::storage::dialect::{Additions, Ledger, Migration, Sql};
use crate::storage::migrate::migrations;
use crate::storage::schema::OUR_TABLES;

/// The migrations, in order: `migrations/postgres/`.
pub static PG_MIGRATIONS: &[Migration] = migrations!(
    "postgres/",
    "0001_schema.sql",
    "0002_hosts.sql",
    "0003_beats.sql",
    "0004_layouts.sql",
    "0005_reads.sql",
);

/// The advisory lock key every migrating process takes ("SFMIGRAT" in a number), as
/// the ledger's lock statement writes it (a test holds the lock by this number).
#[cfg(any(test, feature = "testing"))]
pub(crate) const MIGRATE_LOCK: i64 = 0x5346_4d49_4752_4154;

pub(crate) static SQL: Sql = Sql {
    // ```sql
    // WITH due AS MATERIALIZED (SELECT video_id FROM videos
    //       WHERE status = 'pending' AND video_id % 4 = 1 AND run_after <= $4
    //       ORDER BY run_after, video_id LIMIT 64 FOR UPDATE SKIP LOCKED)
    // UPDATE videos v SET status = 'running', ... FROM due
    // WHERE v.video_id = due.video_id AND v.status = 'pending' RETURNING ...
    // ```
    // The CTE is MATERIALIZED, run once. As a subquery in `FROM` the planner may put it
    // on the inner side of a nested loop and run it again for each outer row; each rerun
    // skips the rows this statement already updated and locks new ones, so `LIMIT 1`
    // claimed a whole shard (seen in this crate's tests). `SKIP LOCKED` passes over rows
    // another transaction holds (a supervisor handing back, a stealing worker), so claims
    // never queue behind each other. The outer `status = 'pending'` is checked again on
    // the row as locked: under READ COMMITTED the subquery's snapshot may be older than
    // the lock. N and K are literals: the partial index `videos_pending_mod{N}` is only
    // used for a literal `video_id % N` (a bound N defeats it, checked on PostgreSQL 15).
    // PostgreSQL's text is always valid text, so only size rejects a row.
    claim: |workers, shard, limit, max_source, max_payload| {
        format!(
            "WITH due AS MATERIALIZED (SELECT video_id FROM videos \
                   WHERE status = 'pending' AND video_id % {workers} = {shard} AND run_after <= $4 \
                   ORDER BY run_after, video_id LIMIT {limit} FOR UPDATE SKIP LOCKED) \
             UPDATE videos v SET status = 'running', attempts = v.attempts + 1, lease_owner = $1, \
             lease_token = $2, lease_expires_at = $3, started_at = $4, finished_at = NULL, duration_ms = NULL \
             FROM due WHERE v.video_id = due.video_id AND v.status = 'pending' \
             RETURNING v.video_id, \
             CASE WHEN octet_length(v.source) <= {max_source} THEN v.source END, \
             CASE WHEN octet_length(v.payload) <= {max_payload} THEN v.payload END, \
             v.attempts, octet_length(v.source)::BIGINT, octet_length(v.payload)::BIGINT, \
             'text', CASE WHEN v.payload IS NULL THEN 'null' ELSE 'text' END"
        )
    },
    shard_index: |name, workers| {
        format!(
            "CREATE INDEX IF NOT EXISTS {name} ON videos ((video_id % {workers}), run_after, video_id) \
             WHERE status = 'pending'"
        )
    },
    index_exists: "SELECT (to_regclass($1) IS NOT NULL)::INT",
    // Two workers starting together must not race to create the same index.
    index_lock: &["SELECT pg_advisory_xact_lock(6000564154019436544)"],
    // Statistics for the index's expression: without them the planner takes
    // `video_id % N = K` for 0.5% of the rows and prefers a bitmap scan and a sort of
    // the whole shard to the index's order.
    analyze: "ANALYZE videos",
    table_exists: "SELECT count(*)::INT FROM information_schema.tables \
                   WHERE table_schema = current_schema() AND table_name = $1",
    // `search_path`'s first schema: the one the fleet's tables are made in.
    tables: "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1",
    // The SHARE ROW EXCLUSIVE lock on `videos` waits for writers in flight and holds off
    // new ones until the counts are in, so the recount is exact; it conflicts with
    // itself, so two starters never both recount.
    recount_lock: &["LOCK TABLE videos IN SHARE ROW EXCLUSIVE MODE"],
    recount: &[
        "DELETE FROM video_counts",
        "UPDATE video_counts_layout SET workers = $1",
        "INSERT INTO video_counts (shard, status, videos) \
         SELECT k, s.status, coalesce(c.n, 0) \
         FROM generate_series(0, $1 - 1) AS k \
         CROSS JOIN (VALUES ('pending'), ('running'), ('done'), ('failed')) AS s(status) \
         LEFT JOIN (SELECT video_id % $1 AS shard, status, count(*) AS n FROM videos GROUP BY 1, 2) c \
                ON c.shard = k AND c.status = s.status",
    ],
    // The server's clock: every host's heartbeat is stamped and judged by it, so clocks
    // that disagree between hosts never make a live run look dead.
    now_ms: "(extract(epoch from clock_timestamp()) * 1000)::BIGINT",
    // Row locks cannot stop a second supervisor inserting beside the first: every start
    // takes this one lock ("RUNS") for its decision, at READ COMMITTED.
    decide_lock: &["SELECT pg_advisory_xact_lock(91561494138451)"],
    lock_rows: " FOR UPDATE",
    column_exists: "SELECT count(*)::INT FROM information_schema.columns \
                    WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2",
    import_setup: &[],
    // Imports take an advisory lock ("FIMPORT"), so two imports into one database run
    // one after the other, as on SQLite.
    import_begin: &[
        "BEGIN",
        "SELECT pg_advisory_xact_lock(6000564149926449748)",
        "CREATE TEMP TABLE import_seen (video_id BIGINT PRIMARY KEY, line BIGINT NOT NULL) ON COMMIT DROP",
    ],
    rejects_nul: true,
    contains: "strpos(source, $5) > 0",
    // Hosts that start at the same moment take turns on MIGRATE_LOCK, so each file is
    // applied once and neither sees half a schema. A schema made by hand from the first
    // file (psql -f) shows by its tables.
    ledger: Ledger {
        files: PG_MIGRATIONS,
        table: "fleet_migrations",
        create: "CREATE TABLE IF NOT EXISTS fleet_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        record: "INSERT INTO fleet_migrations (name, applied_at) \
                 VALUES ($1, (extract(epoch from clock_timestamp()) * 1000)::BIGINT)",
        lock: &["SELECT pg_advisory_xact_lock(6000568530642288980)"],
        object_exists: "SELECT count(*)::INT FROM information_schema.tables \
                        WHERE table_schema = current_schema() AND table_name = $1",
        evidence: |m| Additions {
            objects: if m.name == "0001_schema.sql" {
                OUR_TABLES.iter().map(|t| t.to_string()).collect()
            } else {
                Vec::new()
            },
            columns: Vec::new(),
        },
        strict: true,
    },
};

#[cfg(test)]
#[test]
fn the_migrations_lock_statement_takes_the_key_tests_hold() {
    assert_eq!(SQL.ledger.lock, [format!("SELECT pg_advisory_xact_lock({MIGRATE_LOCK})")]);
}
