//! What a backend supplies, as data: the statements whose text differs from the other
//! backend's ([`Sql`]) and its migrations with how it records them ([`Ledger`]). The
//! logic that runs them is written once, elsewhere in `storage`; this module depends on
//! none of it.

/// The statements whose text differs between the backends, with why beside each in the
/// backend's own module. Everything else is written once, in `$n` placeholders, which
/// the SQLite backend reads as `?n`.
#[derive(Debug)]
pub(crate) struct Sql {
    /// A claim of up to `limit` due, pending videos of shard `shard` of `workers`,
    /// binding `$1` owner, `$2` token, `$3` lease expiry, `$4` now; returning
    /// `video_id, source (or NULL past max_source), payload (or NULL past max_payload),
    /// attempts, octet_length(source), octet_length(payload), typeof(source),
    /// typeof(payload)`.
    pub claim: fn(workers: u32, shard: u32, limit: usize, max_source: u64, max_payload: u64) -> String,
    /// Creates the pending-shard index `name` for a fleet of `workers`.
    pub shard_index: fn(name: &str, workers: u32) -> String,
    /// 1 if the index `$1` exists.
    pub index_exists: &'static str,
    /// Run first in the transaction that builds a shard index.
    pub index_lock: &'static [&'static str],
    /// Run after a bulk change so the planner sees it (empty: nothing to run).
    pub analyze: &'static str,
    /// 1 if the table `$1` exists.
    pub table_exists: &'static str,
    /// The names of the tables of the schema the connection works in.
    pub tables: &'static str,
    /// Run first in the transaction that recounts the kept counts.
    pub recount_lock: &'static [&'static str],
    /// The recount of the kept counts for `$1` shards, after the lock and the check.
    pub recount: &'static [&'static str],
    /// The database's clock in milliseconds since the epoch, as an expression.
    pub now_ms: &'static str,
    /// Run first in the transaction that decides whether a run may start.
    pub decide_lock: &'static [&'static str],
    /// Appended to a read of rows a transaction will change: ` FOR UPDATE` where the
    /// database locks rows (SQLite's write lock already covers the whole file).
    pub lock_rows: &'static str,
    /// 1 if the table `$1` has the column `$2`.
    pub column_exists: &'static str,
    /// Run on an import's own connection before its transaction.
    pub import_setup: &'static [&'static str],
    /// Begin an import's transaction and what lives in it (`import_seen`, the ids met
    /// so far, with the first line of each). Retried whole while refused for now.
    pub import_begin: &'static [&'static str],
    /// The database cannot store the NUL character in text (PostgreSQL).
    pub rejects_nul: bool,
    /// Whether `source` contains `$5`, literally and case-sensitively (`LIKE` is neither).
    pub contains: &'static str,
    /// The migrations and their record (`migrate.rs`).
    pub ledger: Ledger,
}

/// A backend's migrations and how it records them.
#[derive(Debug)]
pub(crate) struct Ledger {
    pub files: &'static [Migration],
    /// The record table's name, and its definition (created if missing).
    pub table: &'static str,
    pub create: &'static str,
    /// Records `$1` as applied.
    pub record: &'static str,
    /// Run first in the transaction that migrates.
    pub lock: &'static [&'static str],
    /// A count of the objects named `$1`: evidence of a file applied by hand.
    pub object_exists: &'static str,
    /// What a file applied by hand leaves to be seen.
    pub evidence: fn(&Migration) -> Additions,
    /// Whether a recorded migration this build does not know is refused (else only
    /// warned about).
    pub strict: bool,
}

/// One migration file, embedded at build time.
#[derive(Debug)]
pub struct Migration {
    /// The file name, as the record table keeps it.
    pub name: &'static str,
    pub sql: &'static str,
}

/// What a migration adds to a schema: what shows, in a database that does not record
/// it, whether it was applied.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Additions {
    /// Tables, indexes, triggers and views it creates, except those it drops first.
    pub objects: Vec<String>,
    /// Columns it adds with `ALTER TABLE t ADD [COLUMN] c`, as (table, column).
    pub columns: Vec<(String, String)>,
}

impl Additions {
    pub(crate) fn len(&self) -> usize {
        self.objects.len() + self.columns.len()
    }

    /// Every addition by name, columns as `table.column`.
    pub(crate) fn names(&self) -> Vec<String> {
        let columns = self.columns.iter().map(|(t, c)| format!("{t}.{c}"));
        self.objects.iter().cloned().chain(columns).collect()
    }
}
