//! Applying `migrations/` the way Cloudflare's wrangler does, so that either tool can
//! set up a database and the other recognises it.
//!
//! Applied migrations are recorded in wrangler's own `d1_migrations` table. A migration
//! that is not recorded but whose additions all exist (someone ran the files with
//! `sqlite3`) is adopted: recorded, never run twice. Its additions are the tables,
//! indexes, triggers and views it creates and the columns it adds; an object it drops
//! and creates again (a trigger it replaces) existed before it ran, so it tells nothing.
//! One whose additions exist only in part is refused, since that schema is neither ours
//! nor empty. Every pending migration runs inside one write transaction, so a failure
//! leaves the database as it was.

use super::Link;
use super::open::SqliteStore;
use crate::error::DbError;
use crate::storage::busy::retrying;
use crate::storage::conn::{Begin, Conn, ConnExt, args};

/// One file of `migrations/`, embedded at build time.
#[derive(Debug)]
pub struct Migration {
    /// The file name, as wrangler records it in `d1_migrations.name`.
    pub name: &'static str,
    pub sql: &'static str,
}

pub static MIGRATIONS: &[Migration] = &[
    Migration { name: "0001_videos.sql", sql: include_str!("../../../../migrations/0001_videos.sql") },
    Migration { name: "0002_fleet.sql", sql: include_str!("../../../../migrations/0002_fleet.sql") },
    Migration { name: "0003_counts.sql", sql: include_str!("../../../../migrations/0003_counts.sql") },
    Migration { name: "0004_warnings.sql", sql: include_str!("../../../../migrations/0004_warnings.sql") },
    Migration { name: "0005_hosts.sql", sql: include_str!("../../../../migrations/0005_hosts.sql") },
    Migration { name: "0006_checks.sql", sql: include_str!("../../../../migrations/0006_checks.sql") },
    Migration { name: "0007_beats.sql", sql: include_str!("../../../../migrations/0007_beats.sql") },
    Migration { name: "0008_layouts.sql", sql: include_str!("../../../../migrations/0008_layouts.sql") },
    Migration { name: "0009_reads.sql", sql: include_str!("../../../../migrations/0009_reads.sql") },
];

/// wrangler's bookkeeping table, created with the same definition it uses.
const D1_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS d1_migrations(
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT UNIQUE,
    applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL
)";

pub(crate) async fn run(db: &SqliteStore) -> Result<(), DbError> {
    let mut conn: Box<dyn Conn> = Box::new(Link(db.pool().acquire().await?, None));
    // The common case, an up-to-date database, is answered by a read: no write lock.
    let known = recorded(&mut *conn).await?;
    for r in known.iter().filter(|r| !MIGRATIONS.iter().any(|m| m.name == r.as_str())) {
        tracing::warn!(migration = %r, "database records a migration this build does not know; leaving it alone");
    }
    if MIGRATIONS.iter().all(|m| known.iter().any(|r| r == m.name)) {
        return Ok(());
    }
    retrying!(conn, |c| {
        let mut tx = c.begin(Begin::Write).await?;
        tx.script(D1_MIGRATIONS_TABLE).await?;
        let applied = recorded(&mut *tx).await?;
        for m in MIGRATIONS.iter().filter(|m| !applied.iter().any(|r| r == m.name)) {
            let adds = additions(m.sql);
            let mut present = Vec::new();
            for name in &adds.objects {
                let sql = "SELECT count(*) FROM sqlite_master WHERE name = $1";
                if tx.scalar(sql, args![name.as_str()]).await?.int() > Some(0) {
                    present.push(name.clone());
                }
            }
            for (table, column) in &adds.columns {
                let sql = "SELECT count(*) FROM pragma_table_info($1) WHERE name = $2";
                if tx.scalar(sql, args![table.as_str(), column.as_str()]).await?.int() > Some(0) {
                    present.push(format!("{table}.{column}"));
                }
            }
            if present.is_empty() {
                tx.script(m.sql).await.map_err(|e| match e {
                    DbError::Sql(source) => DbError::Migration { migration: m.name.into(), source },
                    other => other,
                })?;
                tracing::info!(migration = m.name, "applied migration");
            } else if present.len() < adds.len() {
                return Err(DbError::PartialSchema {
                    db: db.path().display().to_string(),
                    migration: m.name.into(),
                    adds: adds.names().join(", "),
                    found: present.join(", "),
                });
            } else {
                tracing::info!(migration = m.name, "schema already present; recording it as applied");
            }
            tx.execute("INSERT INTO d1_migrations (name) VALUES ($1)", args![m.name]).await?;
        }
        tx.commit().await
    })
}

/// The migrations `d1_migrations` records: none before wrangler's table exists.
async fn recorded<C: Conn + ?Sized>(c: &mut C) -> Result<Vec<String>, DbError> {
    let exists = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'd1_migrations'";
    if c.scalar(exists, &[]).await?.int() == Some(0) {
        return Ok(Vec::new());
    }
    Ok(c.fetch("SELECT name FROM d1_migrations", &[]).await?.iter().map(|r| r.text(0)).collect())
}

/// What a migration adds to a schema: what shows, in a database that does not record
/// it, whether it was applied.
#[derive(Debug, Default, PartialEq)]
struct Additions {
    /// Tables, indexes, triggers and views it creates, except those it drops first.
    objects: Vec<String>,
    /// Columns it adds with `ALTER TABLE t ADD [COLUMN] c`, as (table, column).
    columns: Vec<(String, String)>,
}

impl Additions {
    fn len(&self) -> usize {
        self.objects.len() + self.columns.len()
    }

    /// Every addition by name, columns as `table.column`.
    fn names(&self) -> Vec<String> {
        let columns = self.columns.iter().map(|(t, c)| format!("{t}.{c}"));
        self.objects.iter().cloned().chain(columns).collect()
    }
}

/// Reads a migration file's additions from its statements (comments skipped).
fn additions(sql: &str) -> Additions {
    let words: Vec<String> = sql
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == '('))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_string())
        .collect();
    let is = |j: usize, word: &str| words.get(j).is_some_and(|w| w.eq_ignore_ascii_case(word));
    let name = |j: usize| words.get(j).map(|w| w.trim_matches(|c| c == '"' || c == '`' || c == ';').to_string());
    let is_kind = |j: usize| ["table", "index", "trigger", "view"].iter().any(|k| is(j, k));
    let mut adds = Additions::default();
    let mut dropped = Vec::new();
    for i in 0..words.len() {
        if is(i, "create") {
            let mut j = i + 1;
            for skip in ["unique", "temp", "temporary"] {
                if is(j, skip) {
                    j += 1;
                }
            }
            if is_kind(j) {
                j += 1;
                if is(j, "if") {
                    j += 3; // IF NOT EXISTS
                }
                if let Some(n) = name(j).filter(|n| !dropped.contains(n)) {
                    adds.objects.push(n);
                }
            }
        } else if is(i, "drop") && is_kind(i + 1) {
            let j = if is(i + 2, "if") { i + 4 } else { i + 2 }; // IF EXISTS
            dropped.extend(name(j));
        } else if is(i, "alter") && is(i + 1, "table") && is(i + 3, "add") {
            let j = if is(i + 4, "column") { i + 5 } else { i + 4 };
            if let (Some(table), Some(column)) = (name(i + 2), name(j)) {
                adds.columns.push((table, column));
            }
        }
    }
    adds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_migration_creates_the_tables_indexes_and_trigger() {
        let adds = additions(MIGRATIONS[0].sql);
        assert_eq!(adds.objects, ["videos", "videos_running", "attempts", "attempts_video", "videos_record_attempt"]);
        assert!(adds.columns.is_empty());
        assert_eq!(additions(MIGRATIONS[1].sql).objects, ["fleet_runs", "fleet_workers", "fleet_events"]);
    }

    #[test]
    fn the_counts_migration_creates_two_tables_and_three_triggers() {
        assert_eq!(
            additions(MIGRATIONS[2].sql).objects,
            [
                "video_counts_layout",
                "video_counts",
                "video_counts_insert",
                "video_counts_update",
                "video_counts_delete"
            ]
        );
    }

    #[test]
    fn the_warnings_migration_adds_two_columns_and_replaces_a_trigger_it_does_not_count() {
        let adds = additions(MIGRATIONS[3].sql);
        assert_eq!(adds.objects, Vec::<String>::new(), "the trigger existed before: it is no evidence");
        assert_eq!(
            adds.columns,
            [("videos".to_string(), "warnings".to_string()), ("attempts".into(), "warnings".into())]
        );
        assert_eq!(adds.names(), ["videos.warnings", "attempts.warnings"]);
    }

    #[test]
    fn columns_are_read_with_or_without_the_column_keyword_and_quotes() {
        let adds =
            additions("ALTER TABLE \"t\" ADD x INT;\nalter table u add column `y` TEXT; -- ALTER TABLE v ADD z\n");
        assert_eq!(adds.columns, [("t".to_string(), "x".to_string()), ("u".into(), "y".into())]);
        let renamed = additions(
            "ALTER TABLE t RENAME TO u; DROP INDEX IF EXISTS i; CREATE INDEX i ON u (a); CREATE INDEX j ON u (b);",
        );
        assert_eq!(renamed, Additions { objects: vec!["j".into()], columns: Vec::new() });
    }

    #[test]
    fn migration_files_keep_to_what_d1_accepts() {
        for m in MIGRATIONS {
            let upper = m.sql.to_ascii_uppercase();
            let code: String = upper.lines().map(|l| l.split("--").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
            assert!(!code.contains("PRAGMA"), "{} uses PRAGMA", m.name);
            assert!(!code.contains("BEGIN TRANSACTION") && !code.contains("COMMIT"), "{} manages transactions", m.name);
            assert!(m.name.len() > 5 && m.name[..4].chars().all(|c| c.is_ascii_digit()) && &m.name[4..5] == "_");
        }
    }
}
