//! Pacing calls to an external API: the hard caps from `--rate` and `--min-delay`, and
//! under them a pace learnt from the server's push-back (429, 503, refused connections).
//!
//! Workers share nothing but the server's answers, so each one must find its own share
//! of whatever rate the server allows. The pace is a rate of calls run by AIMD (additive
//! increase, multiplicative decrease: the rule that makes TCP flows share a link), with
//! TCP's slow start in front:
//!
//! - **Until the first push-back there is no pace**: calls go as fast as the worker's
//!   concurrency and the caps allow.
//! - **The first push-back stops the worker once** for the server's `Retry-After` (or
//!   a second), then starts it again at one call a second, doubling every quarter of a
//!   second. A first burst says only that the server has a limit, not what it is, and
//!   the jobs it refused are all waiting out their Retry-After while the lucky ones go
//!   on: without the common pause, whichever worker had its calls accepted first would
//!   keep the server to itself. After it every worker climbs from the same pace at the
//!   same speed.
//! - **Every later burst cuts the pace once, to `BETA` of what it was.** Push-back of
//!   calls sent before the cut, or within the server's `Retry-After` of it
//!   (`burst_until`), answers the same burst: while the server's bucket drains it is
//!   expected, and cutting again for each answer (what the old doubling delay did)
//!   throttled workers to a crawl. The pace holds until the burst window ends: the
//!   server said when to come back, so probing before then only draws more refusals.
//! - **Then the pace grows by `GROWTH` times the square root of the pace it was cut
//!   from, per second.** Fairness comes from here. Workers pushing one server see its
//!   bursts about equally often; between two bursts each gains `GROWTH * sqrt(w) * T`
//!   and loses `(1 - BETA) * w`, which balance at one pace only, the same for every
//!   worker, so larger shares shrink and smaller ones grow towards it. Growth in
//!   proportion to the pace itself (what a scale-free design would pick) balances at
//!   any pace and keeps whatever split the first bursts made; a constant step balances
//!   too but takes minutes to climb back on an API that allows thousands of calls a
//!   second. With the square root, a pace cut from 10/s is back in one second, one cut
//!   from 1000/s in ten.
//! - **Each worker sends at its learnt pace times its share of the work left.** Who is
//!   refused in a burst is chance, and over a run of a few dozen bursts chance alone
//!   left one of four equal workers a third behind the others (the simulation below: a
//!   finish spread of 1.25, up to 1.7). Growing the pace of a worker that is behind
//!   faster did not help: the one ahead, not refused for a while, kept its pace. But the
//!   workers do share one thing besides the server: the database, whose kept counts say
//!   how much each shard has left. Once a second each worker sets its share
//!   ([`work_share`]): its work left over the mean work left, held within 1/4 and 4.
//!   Its calls go at the learnt pace times that share. The learnt pace still finds the
//!   server's limit (every worker's is cut by the same bursts, so they stay alike), and
//!   the calls are then split in proportion to the work each has left, which is what
//!   makes every shard end at the same moment. Shards nobody works (a dead worker's:
//!   work left, nothing claimed) are left out of the mean, so a worker alone on the
//!   server is not held back for them; finished shards count as nothing left, so the
//!   last workers take the room the finished ones leave. In the simulation it took the
//!   four workers' finish spread to a median of 1.04 (at most 1.10 over 48 seeds; two
//!   workers 1.02), at the same 92-96% of the rate.
//! - **The gaps between calls are spread** evenly over half to one and a half times the
//!   pace's spacing. Calls at exact even spacing lock into step with a server's leaky
//!   bucket, and the worker whose calls arrive just after the others' have filled it
//!   is refused every time: in the simulation below, one of three equal workers was
//!   refused 71 times in 99 calls and another never, until the gaps were spread.
//! - A pace far above what the worker sends (a slow handler, few jobs) would not limit
//!   anything and would grow without bound; it is held at twice the rate of calls sent
//!   over the last `WINDOW`.
//!
//! `Retry-After` is honoured per call after that first pause: the call that was pushed
//! back is not sent again before the server said (`HttpHandler::run` waits that long),
//! and the span it names is the burst window above. Other calls go on at the reduced
//! pace rather than stopping the whole worker again: nginx, for one, sends a fixed
//! `Retry-After: 1` while its bucket empties in a fraction of that, and pausing every
//! worker for the full second on every burst costs a tenth or more of the allowed rate.
//!
//! `--rate` is still worth setting when the allowed rate is known, or when push-back
//! itself is costly (an API that bans, or bills for, rejected calls): under a cap that
//! holds the server never pushes back, while the learnt pace keeps probing above the
//! server's rate and draws a refusal every few seconds.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use shared::units::Rate;
use tokio::time::Instant;

/// What is left of the pace after a burst of push-back.
const BETA: f64 = 0.7;
/// Growth per second, as a multiple of the square root of the pace before the cut.
const GROWTH: f64 = 1.0;
/// Where slow start begins, in calls per second, and how long it takes to double.
const SLOW_START: f64 = 1.0;
const DOUBLING: Duration = Duration::from_millis(250);
/// The span over which the rate of calls sent is measured.
const WINDOW: Duration = Duration::from_secs(2);
/// The burst window (and first pause) when the server gives no `Retry-After`.
const DEFAULT_BURST: Duration = Duration::from_secs(1);
/// The longest burst window and first pause, whatever `Retry-After` says.
const MAX_BURST: Duration = Duration::from_secs(30);
/// The slowest pace: one call every twenty seconds, so that a worker whose server
/// refuses everything still finds out when it is back.
const MIN_PACE: f64 = 0.05;
/// How often a job waiting for its slot looks at the pace again.
const RECHECK: Duration = Duration::from_millis(100);
/// Above this the pace no longer limits anything; it stops growing here.
const MAX_PACE: f64 = 1_000_000.0;

/// The bounds of [`work_share`].
const MIN_SHARE: f64 = 0.25;
const MAX_SHARE: f64 = 4.0;

/// Worker `own`'s share, the factor its learnt pace is sent at, from the work left in
/// each shard (`left[k]`: pending and running videos of shard k) and whether anyone
/// works it (`worked[k]`: some of its videos are claimed): its work left over the mean
/// of the shards that are worked or finished, within 1/4 and 4. 1 when there is nothing
/// to compare.
pub fn work_share(own: usize, left: &[u64], worked: &[bool]) -> f64 {
    let counted: Vec<f64> = left
        .iter()
        .zip(worked)
        .enumerate()
        .filter(|&(k, (&l, &w))| k == own || w || l == 0)
        .map(|(_, (&l, _))| l as f64)
        .collect();
    let mean = counted.iter().sum::<f64>() / counted.len().max(1) as f64;
    match left.get(own) {
        Some(&mine) if mean > 0.0 => (mine as f64 / mean).clamp(MIN_SHARE, MAX_SHARE),
        _ => 1.0,
    }
}

#[derive(Debug)]
pub struct Pacer {
    /// The smallest spacing the flags allow: the larger of the rate's interval and
    /// min-delay. Zero when neither is set.
    cap: Duration,
    state: Mutex<State>,
}

/// One call let through by [`Pacer::acquire`]; its push-back is reported with it.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// When the call was let go: push-back of a call sent before a cut belongs to the
    /// burst that cut answered.
    sent: Instant,
}

/// Where the learnt pace is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// No push-back yet: only the caps apply.
    Free,
    /// After the first burst: nothing goes before `from`, then the pace doubles from
    /// `SLOW_START` every `DOUBLING`.
    SlowStart { from: Instant },
    /// After a later burst: the pace is `base` until `from`, then grows by `slope`
    /// calls per second, per second.
    Growing { from: Instant, base: f64, slope: f64 },
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// When the last call was let go; the next may go one gap later.
    last_slot: Option<Instant>,
    /// The factor of the learnt spacing between the last call and the next.
    gap_spread: f64,
    /// Calls per second the learnt pace allows now (meaningless while `Free`).
    pace: f64,
    /// Push-back of calls sent before this moment does not cut the pace again.
    burst_until: Instant,
    /// When measuring began, so that a young measurement divides by its age, not the
    /// whole window.
    since: Instant,
    /// Send times of the calls of the last `WINDOW`.
    sent: VecDeque<Instant>,
    push_backs: u64,
    slowdowns: u64,
    /// This worker's share of the work left ([`work_share`]): its calls go at `pace`
    /// times this. 1 when nothing is known.
    share: f64,
    /// A xorshift generator for the spread of the gaps: cheap, and good enough to break
    /// the lockstep.
    rng: u64,
}

/// What a pacer reports on `/status` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaceReport {
    /// Calls per second allowed now (learnt pace and caps together), `None` when nothing
    /// limits them.
    pub calls_per_sec: Option<f64>,
    /// Answers that pushed back (429, 503, refused or timed-out connections).
    pub push_backs: u64,
    /// Bursts of push-back the pace was cut for.
    pub slowdowns: u64,
}

impl Pacer {
    pub fn new(rate: Option<Rate>, min_delay: Option<Duration>) -> Pacer {
        Pacer::seeded(rate, min_delay, rand::random())
    }

    /// A pacer whose spread of gaps comes from `seed`, so that a simulation repeats.
    fn seeded(rate: Option<Rate>, min_delay: Option<Duration>, seed: u64) -> Pacer {
        let cap = rate.map(|r| r.interval()).unwrap_or_default().max(min_delay.unwrap_or_default());
        let now = Instant::now();
        Pacer {
            cap,
            state: Mutex::new(State {
                phase: Phase::Free,
                last_slot: None,
                gap_spread: 1.0,
                pace: MAX_PACE,
                burst_until: now,
                since: now,
                sent: VecDeque::new(),
                push_backs: 0,
                slowdowns: 0,
                share: 1.0,
                rng: seed | 1,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the pace lets the next call go. Nothing is reserved ahead: a job
    /// that must wait looks again at least every `RECHECK`, since the pace may have
    /// grown (or been cut) meanwhile; a slot reserved at a slow pace would otherwise
    /// hold a job long after the pace had recovered.
    pub async fn acquire(&self) -> Call {
        loop {
            let wake = {
                let mut s = self.lock();
                let now = Instant::now();
                s.grow(now);
                let gap = s.learnt_spacing().mul_f64(s.gap_spread).max(self.cap);
                let paused_until = match s.phase {
                    Phase::SlowStart { from } if from > now => Some(from),
                    _ => None,
                };
                match (paused_until, s.last_slot.map(|last| last + gap)) {
                    (Some(from), _) => from,
                    (None, Some(at)) if at > now => at,
                    (None, due) => {
                        // A job that wakes late takes the slot it was due, so the rate
                        // holds on average; one that comes after a lull starts afresh.
                        let slot = due.filter(|at| now - *at < gap).unwrap_or(now);
                        s.last_slot = Some(slot);
                        s.gap_spread = s.spread();
                        s.sent.push_back(slot);
                        s.forget_old(now);
                        return Call { sent: slot };
                    }
                }
            };
            tokio::time::sleep_until(wake.min(Instant::now() + RECHECK)).await;
        }
    }

    /// The server pushed back on `call`. Pauses or cuts the pace if this is the first
    /// answer of a new burst; `retry_after` is what the server asked for, if anything.
    pub fn pushed_back(&self, call: Call, retry_after: Option<Duration>) {
        let mut s = self.lock();
        let now = Instant::now();
        s.push_backs += 1;
        if call.sent < s.burst_until {
            return;
        }
        let window = retry_after.unwrap_or(DEFAULT_BURST).min(MAX_BURST);
        s.burst_until = now + window;
        s.slowdowns += 1;
        if s.phase == Phase::Free {
            s.phase = Phase::SlowStart { from: now + window };
            s.pace = SLOW_START;
            // What was sent before the pause says nothing about the pace after it.
            s.since = now + window;
            s.sent.clear();
            return;
        }
        s.grow(now);
        let cut_from = s.pace;
        s.pace = (BETA * cut_from).max(MIN_PACE);
        s.phase = Phase::Growing { from: now + window, base: s.pace, slope: GROWTH * cut_from.sqrt() };
    }

    /// How long a pushed-back call waits before it is sent again: `wait` (the server's
    /// Retry-After, or the caller's backoff) and up to half as much again, so that the
    /// calls refused together do not all come back together into the next refusal.
    pub fn retry_wait(&self, wait: Duration) -> Duration {
        let spread = self.lock().spread();
        wait.mul_f64(1.0 + (spread - 0.5) / 2.0)
    }

    /// Sets this worker's share of the work left ([`work_share`]): its calls go at the
    /// learnt pace times it from now on.
    pub fn set_share(&self, share: f64) {
        self.lock().share = share.clamp(MIN_SHARE, MAX_SHARE);
    }

    pub fn report(&self) -> PaceReport {
        let mut s = self.lock();
        s.grow(Instant::now());
        let spacing = s.learnt_spacing().max(self.cap);
        PaceReport {
            calls_per_sec: (!spacing.is_zero()).then(|| 1.0 / spacing.as_secs_f64()),
            push_backs: s.push_backs,
            slowdowns: s.slowdowns,
        }
    }
}

impl State {
    /// Moves the learnt pace along its curve to `now`.
    fn grow(&mut self, now: Instant) {
        let pace = match self.phase {
            Phase::Free => return,
            Phase::SlowStart { from } => {
                let doublings = now.saturating_duration_since(from).as_secs_f64() / DOUBLING.as_secs_f64();
                SLOW_START * doublings.min(64.0).exp2()
            }
            Phase::Growing { from, base, slope } => base + slope * now.saturating_duration_since(from).as_secs_f64(),
        };
        // A pace the worker does not use says nothing; it stays within reach of what is
        // sent, so that the next burst cuts something real.
        // (Slow start is left alone: it ends at the first burst, or at the top.)
        let span = now.saturating_duration_since(self.since).min(WINDOW).max(Duration::from_millis(500));
        // What is sent is the pace times the share; the pace is held so that this stays
        // within reach.
        let held = (2.0 * self.sent.len() as f64 / span.as_secs_f64() + 1.0) / self.share;
        let pace = match self.phase {
            Phase::Growing { slope, .. } if pace > held => {
                self.phase = Phase::Growing { from: now, base: held, slope };
                held
            }
            _ => pace,
        };
        self.pace = pace.clamp(MIN_PACE, MAX_PACE);
    }

    fn learnt_spacing(&self) -> Duration {
        match self.phase {
            Phase::Free => Duration::ZERO,
            _ => Duration::from_secs_f64(1.0 / (self.pace * self.share)),
        }
    }

    /// A factor spread evenly over [0.5, 1.5).
    fn spread(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        0.5 + (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn forget_old(&mut self, now: Instant) {
        while self.sent.front().is_some_and(|t| now.saturating_duration_since(*t) > WINDOW) {
            self.sent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests;
