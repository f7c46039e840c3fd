//! Applying `migrations/postgres/`: every pending file in one transaction, under an
//! advisory lock, each recorded in `fleet_migrations`, so two hosts that start at the
//! same moment apply each file once and neither sees half a schema. A schema made by
//! hand from the same file (psql -f) is adopted: recorded, never run twice; one with
//! only some of its tables is refused.

use sqlx::{Acquire, AssertSqlSafe, Executor};

use super::PgStore;
use crate::error::DbError;
use crate::storage::schema::OUR_TABLES;

/// One file of `migrations/postgres/`, embedded at build time.
#[derive(Debug)]
pub struct PgMigration {
    pub name: &'static str,
    pub sql: &'static str,
}

pub static PG_MIGRATIONS: &[PgMigration] = &[
    PgMigration { name: "0001_schema.sql", sql: include_str!("../../../../migrations/postgres/0001_schema.sql") },
    PgMigration { name: "0002_hosts.sql", sql: include_str!("../../../../migrations/postgres/0002_hosts.sql") },
    PgMigration { name: "0003_beats.sql", sql: include_str!("../../../../migrations/postgres/0003_beats.sql") },
    PgMigration { name: "0004_layouts.sql", sql: include_str!("../../../../migrations/postgres/0004_layouts.sql") },
    PgMigration { name: "0005_reads.sql", sql: include_str!("../../../../migrations/postgres/0005_reads.sql") },
];

/// The table that records applied migrations.
pub(super) const RECORD_TABLE: &str = "fleet_migrations";

/// The advisory lock key every migrating process takes ("shardfleet" in a number).
pub(crate) const MIGRATE_LOCK: i64 = 0x5346_4d49_4752_4154;

pub(super) async fn run(db: &PgStore) -> Result<(), DbError> {
    // The common case, an up-to-date database, is answered by a read: no lock.
    if db.tables().await?.iter().any(|t| t == RECORD_TABLE) {
        let mut tx = db.pool().begin().await?;
        let recorded: Vec<String> = sqlx::query_scalar("SELECT name FROM fleet_migrations").fetch_all(&mut *tx).await?;
        if PG_MIGRATIONS.iter().all(|m| recorded.iter().any(|r| r == m.name)) {
            return check_known(db, &recorded);
        }
    }
    let mut conn = db.pool().acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATE_LOCK).execute(&mut *tx).await?;
    tx.execute("CREATE TABLE IF NOT EXISTS fleet_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .await?;
    let recorded: Vec<String> = sqlx::query_scalar("SELECT name FROM fleet_migrations").fetch_all(&mut *tx).await?;
    check_known(db, &recorded)?;
    for m in PG_MIGRATIONS.iter().filter(|m| !recorded.iter().any(|r| r == m.name)) {
        if m.name == "0001_schema.sql" {
            let present: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = ANY($1) ORDER BY 1",
            )
            .bind(OUR_TABLES)
            .fetch_all(&mut *tx)
            .await?;
            if present.len() == OUR_TABLES.len() {
                record(&mut tx, m.name).await?;
                tracing::info!(migration = m.name, "adopted a schema made from this migration by hand");
                continue;
            }
            if !present.is_empty() {
                return Err(DbError::PartialSchema {
                    db: db.url().to_string(),
                    migration: m.name.into(),
                    adds: OUR_TABLES.join(", "),
                    found: present.join(", "),
                });
            }
        }
        sqlx::raw_sql(AssertSqlSafe(m.sql))
            .execute(&mut *tx)
            .await
            .map_err(|source| DbError::Migration { migration: m.name.into(), source })?;
        record(&mut tx, m.name).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn record(tx: &mut sqlx::PgConnection, name: &str) -> Result<(), DbError> {
    sqlx::query("INSERT INTO fleet_migrations (name, applied_at) VALUES ($1, $2)")
        .bind(name)
        .bind(crate::storage::now_ms())
        .execute(tx)
        .await?;
    Ok(())
}

fn check_known(db: &PgStore, recorded: &[String]) -> Result<(), DbError> {
    match recorded.iter().find(|r| !PG_MIGRATIONS.iter().any(|m| m.name == r.as_str())) {
        Some(unknown) => Err(DbError::UnknownMigration { db: db.url().to_string(), migration: unknown.clone() }),
        None => Ok(()),
    }
}
