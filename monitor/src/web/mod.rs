//! `monitor --serve`: the fleet as a live web page, for a browser on this host or
//! through a tunnel or a reverse proxy.
//!
//! Where things are: starting and stopping it all: `server.rs`; the one poll loop and
//! what it publishes: `feed.rs`; the router and its thin handlers: `routes.rs`; the
//! HTML: `page.rs`; host, origin, headers and token checks: `security.rs`; the settings, the shared state
//! and the error answer they all use: `state.rs`; the embedded
//! stylesheet, script and icon: `assets.rs`.

pub mod assets;
pub mod feed;
pub mod page;
pub mod routes;
pub mod security;
pub mod server;
pub mod state;
#[cfg(test)]
mod tests;

pub use feed::Snapshot;
pub use routes::{Settings, WebState, app};
pub use server::run;
