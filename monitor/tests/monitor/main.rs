//! The monitor against real things: its drawing in ratatui's `TestBackend`, the binary
//! against real `worker` processes and SQLite files over HTTP on 127.0.0.1, and the
//! dashboard in a pseudo-terminal.

mod browser;
mod dashboard;
mod helper;
mod proxy;
mod terminal;
mod usage;
mod web;
mod workers;
