//! The statements whose SQLite text differs from PostgreSQL's, and why.

use crate::storage::dialect::{Ledger, Migration, Sql};
use crate::storage::migrate::{additions, migrations};

/// The migrations, in order: `migrations/`, which wrangler applies too.
pub static MIGRATIONS: &[Migration] = migrations!(
    "",
    "0001_videos.sql",
    "0002_fleet.sql",
    "0003_counts.sql",
    "0004_warnings.sql",
    "0005_hosts.sql",
    "0006_checks.sql",
    "0007_beats.sql",
    "0008_layouts.sql",
    "0009_reads.sql",
    "0010_counts_unknown.sql",
);

pub(crate) static SQL: Sql = Sql {
    // `UPDATE ... WHERE video_id IN (SELECT ... LIMIT n) RETURNING ...`, never a read
    // followed by a write. `INDEXED BY` the partial index on `(video_id % N, run_after)`
    // over pending rows, built for this fleet's N: a claim seeks straight to its own
    // shard's due rows instead of scanning past the other shards' in a shared status
    // index. `octet_length` reads a value's size from the record header, and `typeof`
    // tells a text from a blob another tool wrote, so an oversized or non-text row is
    // rejected without being read.
    claim: |workers, shard, limit, max_source, max_payload| {
        format!(
            "UPDATE videos SET status = 'running', attempts = attempts + 1, lease_owner = ?1, \
             lease_token = ?2, lease_expires_at = ?3, started_at = ?4, finished_at = NULL, duration_ms = NULL \
             WHERE video_id IN (SELECT video_id FROM videos INDEXED BY videos_pending_mod{workers} \
             WHERE status = 'pending' AND video_id % {workers} = {shard} AND run_after <= ?4 \
             ORDER BY run_after, video_id LIMIT {limit}) \
             RETURNING video_id, \
             CASE WHEN typeof(source) = 'text' AND octet_length(source) <= {max_source} THEN source END, \
             CASE WHEN typeof(payload) = 'text' AND octet_length(payload) <= {max_payload} THEN payload END, \
             attempts, octet_length(source), octet_length(payload), typeof(source), typeof(payload)"
        )
    },
    shard_index: |name, workers| {
        format!(
            "CREATE INDEX IF NOT EXISTS {name} ON videos ((video_id % {workers}), run_after) WHERE status = 'pending'"
        )
    },
    index_exists: "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = $1",
    // The write lock, taken at BEGIN IMMEDIATE, is the lock.
    index_lock: &[],
    // SQLite's planner needs no statistics for the index: the claim names it.
    analyze: "",
    table_exists: "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
    tables: "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
    recount_lock: &[],
    // Every slot of the layout exists (the triggers only update), numbered as the
    // triggers number them: shard * 4 + the status's place. A rowid seek measured a third
    // cheaper than a `(shard, status)` key in the triggers, and cheaper than an upsert.
    recount: &[
        "DELETE FROM video_counts",
        "INSERT OR REPLACE INTO video_counts_layout (id, workers) VALUES (1, $1)",
        "INSERT INTO video_counts (slot, shard, status, videos) \
         WITH RECURSIVE shards(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM shards WHERE k + 1 < $1) \
         SELECT k * 4 + s.column1, k, s.column2, 0 FROM shards, \
         (VALUES (0, 'pending'), (1, 'running'), (2, 'done'), (3, 'failed')) AS s",
        "UPDATE video_counts SET videos = c.n \
         FROM (SELECT video_id % $1 AS shard, status, count(*) AS n FROM videos GROUP BY 1, 2) AS c \
         WHERE video_counts.shard = c.shard AND video_counts.status = c.status",
    ],
    // One file, one host: this host's clock is the database's.
    now_ms: "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
    // The write lock, taken at BEGIN IMMEDIATE, is the lock.
    decide_lock: &[],
    // The write lock taken at BEGIN IMMEDIATE covers every row.
    lock_rows: "",
    column_exists: "SELECT count(*) FROM pragma_table_info($1) WHERE name = $2",
    import_setup: &[
        // The ids seen so far go to a temporary file, whatever the build's default: an
        // import of any length runs in constant memory.
        "PRAGMA temp_store = FILE",
        // The import writes video_id, source and payload; the table's only CHECK is on
        // status, which it leaves at its default, 'pending'. SQLite builds that CHECK's
        // IN list anew for every row, a third of the insert's time.
        "PRAGMA ignore_check_constraints = ON",
        "CREATE TEMP TABLE import_seen (video_id INTEGER PRIMARY KEY, line INTEGER NOT NULL)",
    ],
    import_begin: &["BEGIN IMMEDIATE"],
    rejects_nul: false,
    contains: "instr(source, $5) > 0",
    // wrangler's bookkeeping table, with the definition it uses, so either tool
    // recognises what the other applied. The write lock, taken at BEGIN IMMEDIATE, is the
    // lock. Any object a file adds is evidence, whatever its type.
    ledger: Ledger {
        files: MIGRATIONS,
        table: "d1_migrations",
        create: "CREATE TABLE IF NOT EXISTS d1_migrations(
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT UNIQUE,
    applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL
)",
        record: "INSERT INTO d1_migrations (name) VALUES ($1)",
        lock: &[],
        object_exists: "SELECT count(*) FROM sqlite_master WHERE name = $1",
        evidence: |m| additions(m.sql),
        strict: false,
    },
};

#[cfg(test)]
mod tests {
    use super::SQL;
    use crate::status::VideoStatus;

    /// Each status with its place, in the order Rust lists them.
    fn places() -> Vec<(usize, &'static str)> {
        VideoStatus::ALL.iter().enumerate().map(|(i, s)| (i, s.as_str())).collect()
    }

    #[test]
    fn the_kept_counts_slot_order_of_the_sql_is_the_rust_status_order() {
        // The triggers of migrations 0003 and 0010 cannot change (wrangler records
        // applied files by name), so this holds them to the Rust order instead. 0003's
        // last status is its ELSE; 0010, which replaces them, names every status.
        let (first, now) = (
            include_str!("../../../../migrations/0003_counts.sql"),
            include_str!("../../../../migrations/0010_counts_unknown.sql"),
        );
        let last = places().len() - 1;
        let case: Vec<String> = places()
            .iter()
            .map(|&(i, s)| if i == last { format!("ELSE {i} END") } else { format!("WHEN '{s}' THEN {i}") })
            .collect();
        assert_eq!(first.matches(&case.join(" ")).count(), 4, "every trigger numbers the slots as Rust does");
        assert_eq!(first.matches("CASE").count(), 4, "and no other way");
        let named: Vec<String> = places().iter().map(|&(i, s)| format!("WHEN '{s}' THEN {i}")).collect();
        assert_eq!(now.matches(&format!("{} END", named.join(" "))).count(), 4, "0010 names each status");
        assert_eq!(now.matches("CASE").count(), 4, "and has no ELSE");
        let values: Vec<String> = places().iter().map(|(i, s)| format!("({i}, '{s}')")).collect();
        assert!(SQL.recount.iter().any(|s| s.contains(&values.join(", "))), "the recount numbers them so too");
    }
}
