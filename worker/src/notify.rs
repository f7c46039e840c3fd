//! Telling a service manager how the worker is doing, over systemd's notify protocol
//! (`sd_notify`): `READY=1` once the loop runs on a database that answers, `STATUS=`
//! with the shard's progress, `WATCHDOG=1` from the loop itself, `STOPPING=1` when it
//! drains. Without `NOTIFY_SOCKET` in the environment every call is a no-op.
//!
//! The watchdog pings come from the runner's loop (`Runner::run` wakes for
//! `ping_due`), never from a timer of their own: a loop that is stuck (on a database
//! that never answers, say) stops pinging, and systemd restarts the worker.

use std::time::Duration;

use sd_notify::NotifyState;
use shared::status::{ShardCounts, WorkerState};
use tokio::time::Instant;

/// How often the progress line is sent at most: a busy worker finishes thousands of
/// videos a second, and systemd needs none of those in between.
const STATUS_EVERY: Duration = Duration::from_secs(1);

pub struct Notifier {
    /// Whether a service manager listens (`NOTIFY_SOCKET` is set); if not, nothing is sent.
    enabled: bool,
    /// Half of `WATCHDOG_USEC`, when systemd runs a watchdog for this process.
    ping_every: Option<Duration>,
    /// When the next watchdog ping is due.
    next_ping: Instant,
    /// When the progress line may be sent again.
    next_status: Instant,
    /// The progress line last sent, so an unchanged one is not sent again.
    last_status: String,
    /// "shard K/N", the start of every progress line.
    shard: String,
    /// A failed send is logged once: a socket that went away stays away.
    warned: bool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (a watchdog meant for
    /// another process, the supervisor say, is not ours).
    pub fn from_env(worker_id: u32, workers: u32) -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let ping_every = sd_notify::watchdog_enabled().filter(|d| !d.is_zero()).map(|d| d / 2);
        let now = Instant::now();
        Notifier {
            enabled,
            ping_every: ping_every.filter(|_| enabled),
            next_ping: now,
            next_status: now,
            last_status: String::new(),
            shard: format!("shard {worker_id}/{workers}"),
            warned: false,
        }
    }

    /// When the loop must wake to ping the watchdog, if there is one.
    pub fn ping_due(&self) -> Option<Instant> {
        self.ping_every.map(|_| self.next_ping)
    }

    /// The worker serves `/health` and its database answered: systemd may consider the
    /// unit started.
    pub fn ready(&mut self, state: WorkerState, counts: ShardCounts) {
        let status = self.progress(state, counts);
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.sent_status(status);
    }

    /// Called on every turn of the loop: pings the watchdog when due, and sends the
    /// progress line when it changed (at most once a second).
    pub fn tick(&mut self, state: WorkerState, counts: ShardCounts) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let ping = self.ping_every.is_some_and(|_| now >= self.next_ping);
        let status = (now >= self.next_status).then(|| self.progress(state, counts)).filter(|s| *s != self.last_status);
        let mut states = Vec::with_capacity(2);
        if ping {
            states.push(NotifyState::Watchdog);
        }
        if let Some(s) = &status {
            states.push(NotifyState::Status(s));
        }
        if states.is_empty() {
            return;
        }
        self.send(&states);
        if let Some(every) = self.ping_every.filter(|_| ping) {
            self.next_ping = now + every;
        }
        if let Some(s) = status {
            self.sent_status(s);
        }
    }

    /// The worker stopped claiming and is finishing or handing back what it holds.
    pub fn stopping(&mut self, counts: ShardCounts) {
        let status = self.progress(WorkerState::Draining, counts);
        self.send(&[NotifyState::Stopping, NotifyState::Status(&status)]);
        self.sent_status(status);
    }

    /// "shard 2/4: 120 done, 1 failed, 3 running, 40 pending", with the state when it
    /// is not plain work ("shard 2/4 paused: ...").
    fn progress(&self, state: WorkerState, c: ShardCounts) -> String {
        let state = match state {
            WorkerState::Running | WorkerState::Starting => String::new(),
            other => format!(" {other}"),
        };
        format!(
            "{}{state}: {} done, {} failed, {} running, {} pending",
            self.shard, c.done, c.failed, c.running, c.pending
        )
    }

    fn sent_status(&mut self, status: String) {
        self.last_status = status;
        self.next_status = Instant::now() + STATUS_EVERY;
    }

    fn send(&mut self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states)
            && !self.warned
        {
            tracing::warn!("cannot notify the service manager through NOTIFY_SOCKET: {e}");
            self.warned = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notifier() -> Notifier {
        let now = Instant::now();
        Notifier {
            enabled: false,
            ping_every: None,
            next_ping: now,
            next_status: now,
            last_status: String::new(),
            shard: "shard 2/4".into(),
            warned: false,
        }
    }

    #[test]
    fn the_progress_line_names_the_shard_its_counts_and_any_state_beyond_work() {
        let c = ShardCounts { pending: 40, running: 3, done: 120, failed: 1 };
        let n = notifier();
        assert_eq!(n.progress(WorkerState::Running, c), "shard 2/4: 120 done, 1 failed, 3 running, 40 pending");
        assert_eq!(
            n.progress(WorkerState::Draining, c),
            "shard 2/4 draining: 120 done, 1 failed, 3 running, 40 pending"
        );
    }

    #[test]
    fn without_a_notify_socket_there_is_no_watchdog_to_wake_for() {
        let mut n = notifier();
        assert_eq!(n.ping_due(), None);
        n.tick(WorkerState::Running, ShardCounts::default());
        assert_eq!(n.last_status, "", "nothing is sent, so nothing is remembered as sent");
    }
}
