//! What a database's tables say it is, decided once for both backends: a fleet's, one
//! that may become a fleet's (empty, or holding only a tool's bookkeeping), or another
//! application's, which is refused and left as it is.

use super::conn::Conn;
use super::migrate;
use super::store::Access;
use crate::error::DbError;

/// Tables our migrations create.
pub(crate) const OUR_TABLES: &[&str] =
    &["videos", "attempts", "fleet_runs", "fleet_workers", "fleet_events", "video_counts", "video_counts_layout"];

/// The tables a database must have for commands that only read or change rows.
const FLEET_TABLES: &[&str] = &["videos", "attempts", "fleet_runs"];

/// Tables a database may hold besides ours and still be taken for a fleet's: SQLite's
/// own, wrangler's and its local D1's (`d1_migrations`, `_cf_*`), and our PostgreSQL
/// migrations' record.
fn is_bookkeeping(table: &str) -> bool {
    table.starts_with("sqlite_") || table.starts_with("_cf_") || table == "d1_migrations" || table == "fleet_migrations"
}

/// Refuses the database `db` whose tables are `tables` if it is another application's;
/// with `need_fleet`, also if it is not (yet) a fleet's. Ours in part passes when a
/// fleet is not needed: the migrations adopt it or name what is missing.
pub(crate) fn judge(db: &str, tables: &[String], need_fleet: bool) -> Result<(), DbError> {
    let has = |t: &&str| tables.iter().any(|have| have == t);
    if need_fleet && FLEET_TABLES.iter().all(has) || !need_fleet && OUR_TABLES.iter().any(has) {
        return Ok(());
    }
    let foreign: Vec<&String> =
        tables.iter().filter(|t| !is_bookkeeping(t) && !OUR_TABLES.contains(&t.as_str())).collect();
    if !foreign.is_empty() && !OUR_TABLES.iter().any(has) {
        let mut names: Vec<String> = foreign.iter().take(5).map(|t| t.to_string()).collect();
        if foreign.len() > 5 {
            names.push(format!("and {} more", foreign.len() - 5));
        }
        return Err(DbError::Foreign { db: db.into(), tables: names.join(", ") });
    }
    if need_fleet { Err(DbError::NotFleet { db: db.into() }) } else { Ok(()) }
}

/// Opens the database `db` (as shown) for `access` on `conn`: refuses it by its tables
/// ([`judge`]), then migrates it unless it is only read. The check comes first and the
/// migrations only if it passes, so another application's database is left as it was.
pub(crate) async fn prepare(conn: &mut dyn Conn, db: &str, access: Access) -> Result<(), DbError> {
    let tables: Vec<String> = conn.fetch(conn.backend().sql().tables, &[]).await?.iter().map(|r| r.text(0)).collect();
    judge(db, &tables, access != Access::Create)?;
    if access != Access::ReadOnly {
        migrate::run(conn, db).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(all: &[&str]) -> Vec<String> {
        all.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn another_applications_tables_are_refused_whether_or_not_a_fleet_is_needed() {
        let theirs = names(&["notes", "d1_migrations"]);
        for need_fleet in [false, true] {
            let err = judge("x.db", &theirs, need_fleet).unwrap_err();
            assert!(matches!(&err, DbError::Foreign { tables, .. } if tables == "notes"), "{err}");
        }
    }

    #[test]
    fn an_empty_database_may_become_a_fleets_but_is_not_one_yet() {
        assert!(judge("x.db", &names(&["d1_migrations", "_cf_KV"]), false).is_ok());
        assert!(matches!(judge("x.db", &[], true), Err(DbError::NotFleet { .. })));
        assert!(judge("x.db", &names(&["videos", "attempts", "fleet_runs", "notes"]), true).is_ok());
    }

    #[test]
    fn a_long_list_of_foreign_tables_is_cut_short() {
        let many: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
        let err = judge("x.db", &many, false).unwrap_err();
        assert!(err.to_string().contains("(t0, t1, t2, t3, t4, and 3 more)"), "{err}");
    }
}
