//! Applying a backend's migrations, written once for both: every pending file in one
//! transaction, under the backend's lock, each recorded in the backend's own table, so a
//! failure leaves the database as it was and two hosts that start at the same moment
//! apply each file once.
//!
//! SQLite records them in wrangler's `d1_migrations`, so that either tool can set up a
//! database and the other recognises it; PostgreSQL in `fleet_migrations`, under an
//! advisory lock. A migration that is not recorded but whose additions all exist
//! (someone ran the files with `sqlite3`) is adopted: recorded, never run twice. On
//! SQLite its additions are the tables, indexes, triggers and views it creates and the
//! columns it adds; an object it drops and creates again (a trigger it replaces) existed
//! before it ran, so it tells nothing. On PostgreSQL only the first file is adopted so
//! (`psql -f 0001_schema.sql`), by its tables; a later file run by hand fails when it
//! is applied again. One whose additions exist only in part is refused, since that
//! schema is neither ours nor empty.

use super::busy::retrying;
use super::conn::{Begin, Conn, ConnExt, args};
use super::dialect::{Additions, Ledger};
use crate::error::DbError;

/// The migrations of `migrations/$dir`, in order: `migrations!("postgres/", "0001_schema.sql", ...)`.
macro_rules! migrations {
    ($dir:literal, $($name:literal),+ $(,)?) => {
        &[$($crate::storage::dialect::Migration {
            name: $name,
            sql: include_str!(concat!("../../../../migrations/", $dir, $name)),
        }),+]
    };
}
pub(crate) use migrations;

/// Applies what the ledger of `conn`'s backend has not recorded on the database shown
/// as `db`.
pub(crate) async fn run(conn: &mut dyn Conn, db: &str) -> Result<(), DbError> {
    let sql = conn.backend().sql();
    let ledger = &sql.ledger;
    // The common case, an up-to-date database, is answered by a read: no lock.
    let known = recorded(conn).await?;
    check_known(ledger, &known, db)?;
    if ledger.files.iter().all(|m| known.iter().any(|r| r == m.name)) {
        return Ok(());
    }
    retrying!(conn, |c| {
        let mut tx = c.begin_under(Begin::Write, ledger.lock).await?;
        tx.script(ledger.create).await?;
        let applied = recorded(&mut *tx).await?;
        if ledger.strict {
            check_known(ledger, &applied, db)?;
        }
        for m in ledger.files.iter().filter(|m| !applied.iter().any(|r| r == m.name)) {
            let adds = (ledger.evidence)(m);
            let mut present = Vec::new();
            for name in &adds.objects {
                if tx.scalar(ledger.object_exists, args![name.as_str()]).await?.int() > Some(0) {
                    present.push(name.clone());
                }
            }
            for (table, column) in &adds.columns {
                if tx.scalar(sql.column_exists, args![table.as_str(), column.as_str()]).await?.int() > Some(0) {
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
                    db: db.into(),
                    migration: m.name.into(),
                    adds: adds.names().join(", "),
                    found: present.join(", "),
                });
            } else {
                tracing::info!(migration = m.name, "schema already present; recording it as applied");
            }
            tx.execute(ledger.record, args![m.name]).await?;
        }
        tx.commit().await
    })
}

/// The migrations the record table holds: none before it exists.
async fn recorded(c: &mut dyn Conn) -> Result<Vec<String>, DbError> {
    let sql = c.backend().sql();
    if c.scalar(sql.table_exists, args![sql.ledger.table]).await?.int() == Some(0) {
        return Ok(Vec::new());
    }
    let names = format!("SELECT name FROM {}", sql.ledger.table);
    Ok(c.fetch(&names, &[]).await?.iter().map(|r| r.text(0)).collect())
}

/// A recorded migration this build does not know: a newer build's. SQLite leaves it
/// alone (wrangler users may keep their own files in `d1_migrations`); PostgreSQL,
/// whose record is ours alone, refuses a schema it cannot vouch for.
fn check_known(ledger: &Ledger, recorded: &[String], db: &str) -> Result<(), DbError> {
    for r in recorded.iter().filter(|r| !ledger.files.iter().any(|m| m.name == r.as_str())) {
        if ledger.strict {
            return Err(DbError::UnknownMigration { db: db.into(), migration: r.clone() });
        }
        tracing::warn!(migration = %r, "database records a migration this build does not know; leaving it alone");
    }
    Ok(())
}

/// Reads a migration file's additions from its statements (comments skipped).
pub(crate) fn additions(sql: &str) -> Additions {
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
    use crate::storage::sqlite::MIGRATIONS;

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
