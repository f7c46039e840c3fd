//! `supervisor start`: a fleet of workers driven by one loop through the phases of its
//! run.
//!
//! Where things are: `config.rs` (the flags, checked: settings and layout), `setup.rs`
//! (the run's setup), `state.rs` (the fleet's state), `event_loop.rs` (the loop and the
//! run's end), `phase.rs` (running, draining, killing: pure steps), `end.rs` (how a run
//! ends, exit codes), `signals.rs` and `heartbeat.rs` (what the loop hears), `launch.rs`
//! (starting workers, `spawn.rs` the process itself), `health.rs` (/health, silence),
//! `memory/` (cgroups, sampling), `restart.rs` (a worker's end: restart, backoff, crash
//! loop; `exit_cause.rs` says why it ended), `recover.rs` (handing back claims, a dead
//! run), `rescale.rs` (`supervisor scale`), `takeover.rs` (who may start), `slot.rs`
//! (one worker's state), `records.rs` (bookkeeping writes), `db_watch.rs` (riding out a database
//! outage), `summary.rs`.

mod config;
mod crashes;
mod db_watch;
mod end;
mod event_loop;
mod exit_cause;
mod health;
mod health_rounds;
mod heartbeat;
mod launch;
mod memory;
mod output;
mod phase;
mod probe;
mod records;
mod recover;
mod rescale;
mod restart;
mod resume;
mod setup;
mod signals;
mod slot;
mod spawn;
mod state;
mod summary;
mod takeover;

pub use config::{FleetConfig, Layout, check_batch_has_videos, check_ports};
pub use end::{RunEnd, exit};
pub use recover::wait_for_previous_workers;
pub use state::Fleet;
