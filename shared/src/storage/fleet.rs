//! The supervisor's records as the database keeps them: runs, worker slots, events and
//! layouts (their types are `crate::records`'). Written by `supervisor start`; read by
//! `supervisor status`, `stop`, `logs` and by `monitor --db`, so they work while a fleet
//! runs and after it stopped.

use std::sync::LazyLock;

use super::busy::run;
use super::conn::{Begin, Conn, ConnExt, Row, args, word};
use super::{Store, now_ms};
use crate::error::DbError;
pub use crate::records::*;

/// The runs whose supervisor was last seen driving them, as SQL: `state IN (...)` of
/// [`RunState::is_live`]'s words, so the rule is written once.
fn live_states() -> &'static str {
    static LIVE: LazyLock<String> = LazyLock::new(|| {
        let words: Vec<String> =
            RunState::ALL.iter().filter(|s| s.is_live()).map(|s| format!("'{}'", s.as_str())).collect();
        format!("state IN ({})", words.join(", "))
    });
    &LIVE
}

fn live_runs_sql() -> &'static str {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("SELECT * FROM fleet_runs WHERE {} ORDER BY run_id", live_states()));
    &SQL
}

impl FleetRun {
    pub(crate) fn from_row(r: &Row) -> Result<FleetRun, DbError> {
        let int = |n: &str| r.named(n).int();
        let text = |n: &str| r.named(n).text();
        Ok(FleetRun {
            run_id: int("run_id").unwrap_or(0),
            supervisor_pid: int("supervisor_pid").unwrap_or(0),
            host: text("host"),
            started_at: int("started_at").unwrap_or(0),
            stopped_at: int("stopped_at"),
            state: word(text("state").unwrap_or_default())?,
            workers: int("workers").unwrap_or(0),
            base_port: int("base_port").unwrap_or(0),
            bind: text("bind").unwrap_or_default(),
            mem_limit_bytes: int("mem_limit_bytes"),
            mem_enforce: text("mem_enforce").unwrap_or_default(),
            handler: text("handler").unwrap_or_default(),
            concurrency: int("concurrency").unwrap_or(0),
            log_dir: text("log_dir"),
            control_token: text("control_token"),
            worker_ids: text("worker_ids"),
            heartbeat_at: int("heartbeat_at"),
            stop_requested_at: int("stop_requested_at"),
            advertise: text("advertise"),
        })
    }
}

impl FleetWorker {
    fn from_row(r: &Row) -> Result<FleetWorker, DbError> {
        let int = |n: &str| r.named(n).int();
        Ok(FleetWorker {
            run_id: int("run_id").unwrap_or(0),
            worker_id: int("worker_id").unwrap_or(0),
            pid: int("pid"),
            port: int("port").unwrap_or(0),
            state: word(r.named("state").text().unwrap_or_default())?,
            started_at: int("started_at"),
            restarts: int("restarts").unwrap_or(0),
            last_reason: r.named("last_reason").text(),
            last_restart_at: int("last_restart_at"),
            rss_bytes: int("rss_bytes"),
            memory_kills: int("memory_kills").unwrap_or(0),
            updated_at: int("updated_at"),
        })
    }
}

impl Store {
    /// Records a new run and its worker slots (those of `run.ids()`, all `starting`);
    /// returns the run id.
    pub async fn insert_run(&self, run: &FleetRun) -> Result<i64, DbError> {
        let begun = self.begin_run(run, |_, _| Ok::<_, std::convert::Infallible>(Vec::new())).await?;
        Ok(begun.unwrap_or_else(|never| match never {}).run_id)
    }

    /// Records a new run unless a live one forbids it, atomically: under the database's
    /// write lock (SQLite) or an advisory lock (PostgreSQL), `decide` sees every live run
    /// (running or stopping) and the database's clock in ms (heartbeats are stamped by
    /// it, so hosts' clocks never disagree about their age), and says which runs it takes
    /// over (marked `crashed`) or why the new run must not start. Two supervisors
    /// starting at once never both pass. Returns the new run and the runs it took over,
    /// or `decide`'s refusal (and then nothing is written).
    pub async fn begin_run<E>(
        &self,
        run: &FleetRun,
        decide: impl Fn(&[FleetRun], i64) -> Result<Vec<i64>, E>,
    ) -> Result<Result<Begun, E>, DbError> {
        run!(self, |c| {
            let sql = c.backend().sql();
            // Row locks cannot stop a second supervisor inserting beside the first, so
            // every start takes one lock for the decision; heartbeats do not need it.
            let mut tx = c.begin_under(Begin::Decide, sql.decide_lock).await?;
            let live = live_runs(&mut *tx).await?;
            let now = clock(&mut *tx).await?;
            let taken = match decide(&live, now) {
                Ok(taken) => taken,
                Err(refusal) => return Ok(Err(refusal)),
            };
            for &run_id in &taken {
                tx.execute(
                    "UPDATE fleet_runs SET state = $1, stopped_at = $2 WHERE run_id = $3",
                    args![RunState::Crashed.as_str(), now, run_id],
                )
                .await?;
            }
            let row = tx
                .fetch_optional(
                    "INSERT INTO fleet_runs (supervisor_pid, host, started_at, state, workers, base_port, bind, \
                     mem_limit_bytes, mem_enforce, handler, concurrency, log_dir, control_token, worker_ids, \
                     heartbeat_at, advertise) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) RETURNING run_id",
                    args![
                        run.supervisor_pid,
                        &run.host,
                        run.started_at,
                        run.state.as_str(),
                        run.workers,
                        run.base_port,
                        &run.bind,
                        run.mem_limit_bytes,
                        &run.mem_enforce,
                        &run.handler,
                        run.concurrency,
                        &run.log_dir,
                        &run.control_token,
                        &run.worker_ids,
                        now,
                        &run.advertise,
                    ],
                )
                .await?;
            let id = row.map_or(0, |r| r.int(0));
            insert_slots_and_layout(&mut *tx, run, id, now).await?;
            tx.commit().await?;
            let taken = live.into_iter().filter(|r| taken.contains(&r.run_id)).collect();
            Ok(Ok(Begun { run_id: id, taken }))
        })
    }

    /// Runs whose supervisor was last seen driving them (running or stopping), oldest
    /// first: with `--worker-ids`, several hosts' runs at once.
    pub async fn live_runs(&self) -> Result<Vec<FleetRun>, DbError> {
        run!(self, |c| live_runs(c).await)
    }

    /// Stamps run `run_id` alive now, by the database's clock; returns what it must do.
    pub async fn heartbeat(&self, run_id: i64) -> Result<RunOrder, DbError> {
        let answer = run!(self, |c| {
            let sql = format!(
                "UPDATE fleet_runs SET heartbeat_at = {} WHERE run_id = $1 \
                     RETURNING stop_requested_at IS NOT NULL, {}, scale_to, scale_ids",
                c.backend().sql().now_ms,
                live_states()
            );
            c.fetch_optional(&sql, args![run_id]).await
        })?;
        let (stop, live, scale_to, scale_ids) = match &answer {
            Some(r) => (r.bool(0), r.bool(1), r.opt_int(2), r.opt_text(3)),
            None => (false, false, None, None),
        };
        Ok(match (stop, live, scale_to) {
            (_, false, _) => RunOrder::TakenOver,
            (true, true, _) => RunOrder::Stop,
            (false, true, Some(n)) if n > 0 => RunOrder::Rescale { workers: n as u32, ids: scale_ids },
            (false, true, _) => RunOrder::CarryOn,
        })
    }

    /// Asks each run of `asks` to change to its new layout (each supervisor sees it at
    /// its next heartbeat), all in one transaction.
    pub async fn request_scale(&self, asks: &[ScaleAsk]) -> Result<(), DbError> {
        run!(self, |c| {
            let mut tx = c.begin(Begin::Write).await?;
            for ask in asks {
                let sql = "UPDATE fleet_runs SET scale_to = $1, scale_ids = $2 WHERE run_id = $3";
                tx.execute(sql, args![ask.workers, &ask.ids, ask.run_id]).await?;
            }
            tx.commit().await
        })
    }

    /// Records that `run` runs its new layout (`workers`, `worker_ids`) from `now`: the
    /// run record, fresh slot rows for its ids, and a layout row, in one transaction.
    /// Clears the scale request.
    pub async fn rescaled(&self, run: &FleetRun, now: i64) -> Result<(), DbError> {
        run!(self, |c| {
            let mut tx = c.begin(Begin::Write).await?;
            tx.execute(
                "UPDATE fleet_runs SET workers = $1, worker_ids = $2 WHERE run_id = $3",
                args![run.workers, &run.worker_ids, run.run_id],
            )
            .await?;
            // Only the request this layout answers: a newer one stays for the heartbeat.
            tx.execute(
                "UPDATE fleet_runs SET scale_to = NULL, scale_ids = NULL \
                 WHERE run_id = $1 AND scale_to = $2 AND scale_ids IS NOT DISTINCT FROM $3",
                args![run.run_id, run.workers, &run.worker_ids],
            )
            .await?;
            tx.execute("DELETE FROM fleet_workers WHERE run_id = $1", args![run.run_id]).await?;
            insert_slots_and_layout(&mut *tx, run, run.run_id, now).await?;
            tx.commit().await
        })
    }

    /// The layouts run `run_id` ran, oldest first (runs recorded before migration 0008
    /// have none).
    pub async fn layouts(&self, run_id: i64) -> Result<Vec<Layout>, DbError> {
        let sql = "SELECT at, workers, worker_ids FROM fleet_layouts WHERE run_id = $1 ORDER BY layout_id";
        let rows = run!(self, |c| c.fetch(sql, args![run_id]).await)?;
        Ok(rows.iter().map(|r| Layout { at: r.int(0), workers: r.int(1), worker_ids: r.opt_text(2) }).collect())
    }

    /// The database's clock in ms, which heartbeats are stamped by: what their age is
    /// judged against on any host.
    pub async fn clock(&self) -> Result<i64, DbError> {
        run!(self, |c| clock(c).await)
    }

    /// Asks the supervisors of `run_ids` to stop (each sees it at its next heartbeat).
    pub async fn request_stop(&self, run_ids: &[i64], now: i64) -> Result<(), DbError> {
        run!(self, |c| {
            let mut tx = c.begin(Begin::Write).await?;
            for &id in run_ids {
                let sql = "UPDATE fleet_runs SET stop_requested_at = coalesce(stop_requested_at, $1) WHERE run_id = $2";
                tx.execute(sql, args![now, id]).await?;
            }
            tx.commit().await
        })
    }

    /// Writes a worker slot's current state.
    pub async fn update_worker(&self, w: &FleetWorker) -> Result<(), DbError> {
        run!(self, |c| {
            c.execute(
                "UPDATE fleet_workers SET pid = $1, state = $2, started_at = $3, restarts = $4, last_reason = $5, \
                 last_restart_at = $6, rss_bytes = $7, memory_kills = $8, updated_at = $9 \
                 WHERE run_id = $10 AND worker_id = $11",
                args![
                    w.pid,
                    w.state.as_str(),
                    w.started_at,
                    w.restarts,
                    &w.last_reason,
                    w.last_restart_at,
                    w.rss_bytes,
                    w.memory_kills,
                    now_ms(),
                    w.run_id,
                    w.worker_id,
                ],
            )
            .await
        })?;
        Ok(())
    }

    /// Records a restart, kill or memory kill of worker `worker_id`, now.
    pub async fn add_event(&self, run_id: i64, worker_id: u32, kind: EventKind, reason: &str) -> Result<(), DbError> {
        let sql = "INSERT INTO fleet_events (run_id, worker_id, at, kind, reason) VALUES ($1, $2, $3, $4, $5)";
        run!(self, |c| c.execute(sql, args![run_id, worker_id, now_ms(), kind.as_str(), reason]).await)?;
        Ok(())
    }

    /// Sets the run's state while it is live; `stopped` also stamps its end, now. A run
    /// that has ended, or that another supervisor took over (marked `crashed`), keeps
    /// the state it has: its own supervisor, late, must not bring it back to life.
    pub async fn set_run_state(&self, run_id: i64, state: RunState, stopped: bool) -> Result<(), DbError> {
        let sql = format!(
            "UPDATE fleet_runs SET state = $1, stopped_at = CASE WHEN $2 THEN $3 ELSE stopped_at END \
             WHERE run_id = $4 AND {}",
            live_states()
        );
        run!(self, |c| c.execute(&sql, args![state.as_str(), stopped, now_ms(), run_id]).await)?;
        Ok(())
    }

    /// The most recent run, if any fleet was ever started on this database.
    pub async fn latest_run(&self) -> Result<Option<FleetRun>, DbError> {
        let sql = "SELECT * FROM fleet_runs ORDER BY run_id DESC LIMIT 1";
        let row = run!(self, |c| c.fetch_optional(sql, &[]).await)?;
        row.as_ref().map(FleetRun::from_row).transpose()
    }

    /// The worker slots of run `run_id`, by worker id.
    pub async fn run_workers(&self, run_id: i64) -> Result<Vec<FleetWorker>, DbError> {
        let sql = "SELECT * FROM fleet_workers WHERE run_id = $1 ORDER BY worker_id";
        let rows = run!(self, |c| c.fetch(sql, args![run_id]).await)?;
        rows.iter().map(FleetWorker::from_row).collect()
    }

    /// Asks the supervisor of the live run whose slot `worker_id` is drained to start it
    /// again (it sees it within a second); false if no live run has it drained.
    pub async fn request_resume(&self, worker_id: u32) -> Result<bool, DbError> {
        let sql = format!(
            "UPDATE fleet_workers SET resume_requested_at = $1 WHERE worker_id = $2 AND state = $3 \
             AND run_id IN (SELECT run_id FROM fleet_runs WHERE {})",
            live_states()
        );
        let drained = SlotStatus::Drained.as_str();
        Ok(run!(self, |c| c.execute(&sql, args![now_ms(), worker_id, drained]).await)? > 0)
    }

    /// The slots of run `run_id` someone asked to resume since the last call: each
    /// request is handed out once.
    pub async fn take_resumes(&self, run_id: i64) -> Result<Vec<u32>, DbError> {
        let sql = "UPDATE fleet_workers SET resume_requested_at = NULL \
                   WHERE run_id = $1 AND resume_requested_at IS NOT NULL RETURNING worker_id";
        let rows = run!(self, |c| c.fetch(sql, args![run_id]).await)?;
        Ok(rows.iter().map(|r| r.int(0) as u32).collect())
    }

    /// The events of run `run_id`, oldest first.
    pub async fn run_events(&self, run_id: i64) -> Result<Vec<FleetEvent>, DbError> {
        let sql = "SELECT run_id, worker_id, at, kind, reason FROM fleet_events WHERE run_id = $1 ORDER BY id";
        let rows = run!(self, |c| c.fetch(sql, args![run_id]).await)?;
        rows.iter()
            .map(|r| {
                Ok(FleetEvent {
                    run_id: r.int(0),
                    worker_id: r.int(1),
                    at: r.int(2),
                    kind: word(r.text(3))?,
                    reason: r.text(4),
                })
            })
            .collect()
    }
}

async fn live_runs(conn: &mut dyn Conn) -> Result<Vec<FleetRun>, DbError> {
    conn.fetch(live_runs_sql(), &[]).await?.iter().map(FleetRun::from_row).collect()
}

/// The database's clock in ms: one host's for a SQLite file, the server's for
/// PostgreSQL, so clocks that disagree between hosts never make a live run look dead.
async fn clock(conn: &mut dyn Conn) -> Result<i64, DbError> {
    let sql = format!("SELECT {}", conn.backend().sql().now_ms);
    Ok(conn.scalar(&sql, &[]).await?.int().unwrap_or_else(now_ms))
}

/// The rows of run `id`'s worker slots (all `starting`) and of its layout from `now`, in
/// the caller's transaction.
async fn insert_slots_and_layout(conn: &mut dyn Conn, run: &FleetRun, id: i64, now: i64) -> Result<(), DbError> {
    for k in run.ids().iter() {
        conn.execute(
            "INSERT INTO fleet_workers (run_id, worker_id, port, state) VALUES ($1, $2, $3, $4)",
            args![id, k, run.base_port + i64::from(k), SlotStatus::Starting.as_str()],
        )
        .await?;
    }
    conn.execute(
        "INSERT INTO fleet_layouts (run_id, at, workers, worker_ids) VALUES ($1, $2, $3, $4)",
        args![id, now, run.workers, &run.worker_ids],
    )
    .await?;
    Ok(())
}
