//! The real `supervisor` binary starting real workers, on real SQLite files and (where
//! `FLEET_TEST_POSTGRES_URL` names a server) PostgreSQL databases; cgroups for real
//! where the machine allows it. One test binary, a module per concern, as pueue's
//! tests are laid out: the binaries are built and linked once.

mod commands;
mod config;
mod database;
mod drain;
mod helper;
mod hosts;
mod import;
mod kill;
mod memory;
mod outage;
mod pgbouncer;
mod postgres;
mod restart;
mod run;
mod scale;
mod stop;
mod wrangler;
