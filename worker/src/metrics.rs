//! Prometheus metrics of one worker, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shared::status::{Outcome, Pacing, ShardCounts};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Attempts written, by outcome (done, error, timeout, expired, ...).
    attempts: Family<OutcomeLabel, Counter>,
    /// The counters of `attempts`, looked up once: a label lookup per video showed up
    /// in profiles.
    by_outcome: Vec<(Outcome, Counter)>,
    pub job_seconds: Histogram,
    pub in_flight: Gauge,
    /// Claim statements that took at least one video.
    pub claims: Counter,
    pub claimed: Counter,
    pub lease_reclaims: Counter,
    /// Videos claimed from other shards (`--steal`).
    pub stolen: Counter,
    /// Results discarded because the lease had been taken over.
    pub fenced: Counter,
    busy_retries: Counter,
    lock_waits: Counter,
    shard: Family<StatusLabel, Gauge>,
    rss: Gauge,
    /// 1 while the database answers, 0 while the worker waits it out.
    pub database_up: Gauge,
    /// The http handler's pace and push-back, mirrored from its pacer at each render;
    /// registered only for an http handler.
    pace: Gauge<f64, std::sync::atomic::AtomicU64>,
    push_backs: Counter,
    slowdowns: Counter,
    /// HTTP requests served, by route.
    http_requests: Family<EndpointLabel, Counter>,
}

impl Metrics {
    /// `paced`: whether the handler has a pacer (`--http`), whose figures are then
    /// registered too.
    pub fn new(worker_id: u32, paced: bool) -> Metrics {
        let mut registry = Registry::with_prefix_and_labels(
            "shardfleet",
            [(std::borrow::Cow::Borrowed("worker"), std::borrow::Cow::Owned(worker_id.to_string()))].into_iter(),
        );
        let m = Metrics {
            attempts: Family::default(),
            by_outcome: Vec::new(),
            job_seconds: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0]),
            in_flight: Gauge::default(),
            claims: Counter::default(),
            claimed: Counter::default(),
            lease_reclaims: Counter::default(),
            stolen: Counter::default(),
            fenced: Counter::default(),
            busy_retries: Counter::default(),
            lock_waits: Counter::default(),
            shard: Family::default(),
            rss: Gauge::default(),
            database_up: Gauge::default(),
            pace: Gauge::default(),
            push_backs: Counter::default(),
            slowdowns: Counter::default(),
            http_requests: Family::default(),
            registry: Registry::default(),
        };
        registry.register("attempts", "Attempts finished, by outcome", m.attempts.clone());
        registry.register("job_duration_seconds", "Handler run time", m.job_seconds.clone());
        registry.register("in_flight", "Videos running now", m.in_flight.clone());
        registry.register("claims", "Claim statements that took at least one video", m.claims.clone());
        registry.register("videos_claimed", "Videos claimed", m.claimed.clone());
        registry.register("lease_reclaims", "Videos taken back after their lease lapsed", m.lease_reclaims.clone());
        registry.register(
            "videos_taken_from_other_shards",
            "Videos claimed from other shards (--steal)",
            m.stolen.clone(),
        );
        registry.register(
            "fenced_results",
            "Results discarded because the lease had been taken over",
            m.fenced.clone(),
        );
        registry.register(
            "db_busy_retries",
            "Statements retried because the database was locked",
            m.busy_retries.clone(),
        );
        registry.register(
            "db_lock_waits",
            "Statements that waited for SQLite's write lock inside its busy handler, however long",
            m.lock_waits.clone(),
        );
        registry.register("shard_videos", "Videos of this worker's shard by status", m.shard.clone());
        registry.register("rss_bytes", "Resident memory of the worker process", m.rss.clone());
        registry.register(
            "database_up",
            "Whether the worker's database answers (1), or the worker is waiting it out (0)",
            m.database_up.clone(),
        );
        m.database_up.set(1);
        registry.register("http_requests", "HTTP requests served, by endpoint", m.http_requests.clone());
        if paced {
            registry.register(
                "http_pace_calls_per_second",
                "Calls per second the http handler allows itself now (0: nothing limits them)",
                m.pace.clone(),
            );
            registry.register(
                "http_push_backs",
                "Answers that pushed back: 429, 503, failed connections",
                m.push_backs.clone(),
            );
            registry.register("http_slowdowns", "Bursts of push-back the pace was cut for", m.slowdowns.clone());
        }
        let by_outcome = Outcome::ALL
            .iter()
            .copied()
            .map(|o| (o, m.attempts.get_or_create(&OutcomeLabel { outcome: o.as_str().into() }).clone()))
            .collect();
        Metrics { registry, by_outcome, ..m }
    }

    /// Exports the memory limit the worker is held to, beside its RSS, so that an alert
    /// can compare the two. Without a limit there is no series: a 0 would read as a
    /// limit every RSS is above.
    pub fn with_memory_limit(mut self, bytes: Option<u64>) -> Metrics {
        if let Some(bytes) = bytes {
            let limit: Gauge = Gauge::default();
            limit.set(i64::try_from(bytes).unwrap_or(i64::MAX));
            self.registry.register("memory_limit_bytes", "Memory limit of the worker's process tree", limit);
        }
        self
    }

    /// Counts one HTTP request to `endpoint` (its route).
    pub fn http_request(&self, endpoint: &str) {
        self.http_requests.get_or_create(&EndpointLabel { endpoint: endpoint.to_string() }).inc();
    }

    /// The attempts counter of one outcome.
    pub fn attempt(&self, outcome: Outcome) -> &Counter {
        &self.by_outcome.iter().find(|(o, _)| *o == outcome).expect("every outcome has a counter").1
    }

    /// Prometheus text format, with the gauges that mirror other state brought up to date.
    pub fn render(&self, counts: ShardCounts, rss: u64, pacing: Option<Pacing>) -> String {
        let busy = shared::storage::BUSY_RETRIES.load(std::sync::atomic::Ordering::Relaxed);
        self.busy_retries.inner().store(busy, std::sync::atomic::Ordering::Relaxed);
        let waits = shared::storage::LOCK_WAITS.load(std::sync::atomic::Ordering::Relaxed);
        self.lock_waits.inner().store(waits, std::sync::atomic::Ordering::Relaxed);
        for (s, n) in
            [("pending", counts.pending), ("running", counts.running), ("done", counts.done), ("failed", counts.failed)]
        {
            self.shard.get_or_create(&StatusLabel { status: s.into() }).set(n as i64);
        }
        self.rss.set(rss as i64);
        if let Some(p) = pacing {
            self.pace.set(p.calls_per_sec.unwrap_or(0.0));
            self.push_backs.inner().store(p.push_backs, std::sync::atomic::Ordering::Relaxed);
            self.slowdowns.inner().store(p.slowdowns, std::sync::atomic::Ordering::Relaxed);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
