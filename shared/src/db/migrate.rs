//! Applying `migrations/` the way Cloudflare's wrangler does, so that either tool can
//! set up a database and the other recognises it.
//!
//! Applied migrations are recorded in wrangler's own `d1_migrations` table. A migration
//! that is not recorded but whose objects all exist (someone ran the files with
//! `sqlite3`) is adopted: recorded, never run twice. One whose objects exist only in part
//! is refused, since that schema is neither ours nor empty. Each migration runs inside
//! one write transaction, so a failure leaves the database as it was.

use sqlx::{Connection, Executor};

use super::open::Db;
use crate::error::DbError;

/// One file of `migrations/`, embedded at build time.
#[derive(Debug)]
pub struct Migration {
    /// The file name, as wrangler records it in `d1_migrations.name`.
    pub name: &'static str,
    pub sql: &'static str,
}

pub static MIGRATIONS: &[Migration] = &[
    Migration { name: "0001_videos.sql", sql: include_str!("../../../migrations/0001_videos.sql") },
    Migration { name: "0002_fleet.sql", sql: include_str!("../../../migrations/0002_fleet.sql") },
    Migration { name: "0003_counts.sql", sql: include_str!("../../../migrations/0003_counts.sql") },
];

/// wrangler's bookkeeping table, created with the same definition it uses.
const D1_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS d1_migrations(
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT UNIQUE,
    applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL
)";

pub(crate) async fn run(db: &Db) -> Result<(), DbError> {
    // The common case, an up-to-date database, is answered by a read: no write lock.
    if pending(db).await?.is_empty() {
        return Ok(());
    }
    super::retry_busy(|| async {
        let mut conn = db.pool().acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        tx.execute(D1_MIGRATIONS_TABLE).await?;
        let recorded: Vec<String> = sqlx::query_scalar("SELECT name FROM d1_migrations").fetch_all(&mut *tx).await?;
        for m in MIGRATIONS.iter().filter(|m| !recorded.iter().any(|r| r == m.name)) {
            let objects = created_objects(m.sql);
            let mut present = Vec::new();
            for name in &objects {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = ?")
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await?;
                if n > 0 {
                    present.push(name.clone());
                }
            }
            if present.is_empty() {
                sqlx::raw_sql(m.sql)
                    .execute(&mut *tx)
                    .await
                    .map_err(|source| DbError::Migration { migration: m.name.into(), source })?;
                tracing::info!(migration = m.name, "applied migration");
            } else if present.len() < objects.len() {
                return Err(DbError::PartialSchema {
                    path: db.path().into(),
                    migration: m.name.into(),
                    found: format!("{} ({})", present.len(), present.join(", ")),
                });
            } else {
                tracing::info!(migration = m.name, "schema already present; recording it as applied");
            }
            sqlx::query("INSERT INTO d1_migrations (name) VALUES (?)").bind(m.name).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    })
    .await
}

/// Names of our migrations not yet recorded in `d1_migrations`.
async fn pending(db: &Db) -> Result<Vec<&'static str>, DbError> {
    let has_table: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'd1_migrations'")
            .fetch_one(db.pool())
            .await?;
    let recorded: Vec<String> = if has_table > 0 {
        sqlx::query_scalar("SELECT name FROM d1_migrations").fetch_all(db.pool()).await?
    } else {
        Vec::new()
    };
    for r in &recorded {
        if !MIGRATIONS.iter().any(|m| m.name == r) {
            tracing::warn!(migration = %r, "database records a migration this build does not know; leaving it alone");
        }
    }
    Ok(MIGRATIONS.iter().filter(|m| !recorded.iter().any(|r| r == m.name)).map(|m| m.name).collect())
}

/// The tables, indexes, triggers and views a migration file creates.
fn created_objects(sql: &str) -> Vec<String> {
    let words: Vec<String> = sql
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == '('))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_string())
        .collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i + 1 < words.len() {
        let is_create = words[i].eq_ignore_ascii_case("create");
        if is_create {
            let mut j = i + 1;
            for skip in ["unique", "temp", "temporary"] {
                if words.get(j).is_some_and(|w| w.eq_ignore_ascii_case(skip)) {
                    j += 1;
                }
            }
            let kind = words.get(j).map(|w| w.to_ascii_lowercase());
            if matches!(kind.as_deref(), Some("table" | "index" | "trigger" | "view")) {
                j += 1;
                if words.get(j).is_some_and(|w| w.eq_ignore_ascii_case("if")) {
                    j += 3; // IF NOT EXISTS
                }
                if let Some(name) = words.get(j) {
                    names.push(name.trim_matches(|c| c == '"' || c == '`' || c == ';').to_string());
                }
            }
        }
        i += 1;
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_migration_creates_the_tables_indexes_and_trigger() {
        let names = created_objects(MIGRATIONS[0].sql);
        assert_eq!(names, ["videos", "videos_running", "attempts", "attempts_video", "videos_record_attempt"]);
        assert_eq!(created_objects(MIGRATIONS[1].sql), ["fleet_runs", "fleet_workers", "fleet_events"]);
    }

    #[test]
    fn the_counts_migration_creates_two_tables_and_three_triggers() {
        assert_eq!(
            created_objects(MIGRATIONS[2].sql),
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
