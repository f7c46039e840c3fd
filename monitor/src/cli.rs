//! The monitor's command line, and the validated configuration `run` takes.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use reqwest::Url;
use shared::storage::DbLocation;
use shared::units::{duration_arg, format_duration};

/// Polls shorter than this would cost more than they show: people read a dashboard at
/// most a few times a second.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// A poll answered later than this is not worth waiting for: a worker serves `/status`
/// from memory, so a slower one is as good as down.
const MAX_DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_BASE_PORT: u16 = 3001;
/// Where `--serve` listens when given no address: loopback, so that nothing is exposed
/// until asked for.
pub const DEFAULT_SERVE_ADDR: &str = "127.0.0.1:8080";

/// Watches a shardfleet: polls every worker's /status and shows the fleet's progress, as
/// a dashboard when stdout is a terminal, as plain text lines otherwise.
///
/// Workers are found through the fleet's database (--db), a port range (--base-port and
/// --workers) or a list of URLs (--targets). With none of these it reads the database
/// in $FLEET_DB or ./fleet.db.
#[derive(Parser, Debug, Clone)]
#[command(name = "monitor", version)]
pub struct Cli {
    /// The fleet's database (a SQLite file or a postgres:// URL): the supervisor's
    /// records of its latest run say how many workers there are, where they listen and
    /// the control token.
    #[arg(long, value_name = "PATH|URL", conflicts_with_all = ["workers", "base_port", "targets"])]
    pub db: Option<DbLocation>,

    /// Port of worker 0; worker K listens on base-port + K on 127.0.0.1.
    #[arg(long, value_name = "PORT", requires = "workers")]
    pub base_port: Option<u16>,

    /// Number of workers listening from --base-port (3001 unless given) upwards.
    #[arg(long, value_name = "N", conflicts_with = "targets")]
    pub workers: Option<u32>,

    /// Workers' base URLs, comma-separated (http://host:port); for workers on other
    /// hosts or on ports that do not follow each other. A URL without a scheme gets
    /// http://.
    #[arg(long, value_name = "URL,...", value_delimiter = ',')]
    pub targets: Vec<String>,

    /// How often every worker is polled.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = duration_arg)]
    pub interval: Duration,

    /// How long one worker may take to answer before it shows as down; default: the
    /// interval, at most 2s.
    #[arg(long, value_name = "DUR", value_parser = duration_arg)]
    pub timeout: Option<Duration>,

    /// Poll once, print one plain-text snapshot and exit.
    #[arg(long)]
    pub once: bool,

    /// Poll once, print the fleet as JSON (per-worker statuses and totals) and exit;
    /// --once alongside changes nothing.
    // --json polls once anyway, so a script spelling out both is served, not refused.
    #[arg(long)]
    pub json: bool,

    /// Bearer token for pausing and resuming workers from the dashboard (p / r). With
    /// --db the run's own token is used unless this is given.
    #[arg(long, value_name = "TOKEN", env = "FLEET_CONTROL_TOKEN", hide_env_values = true)]
    pub control_token: Option<String>,

    /// Serve the fleet as a live web page on ADDR (default 127.0.0.1:8080) instead of
    /// drawing a dashboard; runs until stopped.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_SERVE_ADDR)]
    pub serve: Option<SocketAddr>,

    /// With --serve: no controls; pause, resume, drain and retry answer 404.
    #[arg(long, requires = "serve")]
    pub read_only: bool,

    /// With --serve: serve everything under this path (e.g. /fleet), for a reverse proxy
    /// that forwards that path unchanged.
    #[arg(long, value_name = "/PATH", requires = "serve")]
    pub prefix: Option<String>,

    /// With --serve: also answer requests whose Host is NAME (the name a reverse proxy or
    /// a browser uses); repeatable, or a comma list. The bound address and localhost are
    /// always answered; other names are refused, against DNS rebinding.
    #[arg(long, value_name = "NAME", value_delimiter = ',', requires = "serve")]
    pub allow_host: Vec<String>,
}

/// How `--serve` serves the page.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    /// No control routes at all.
    pub read_only: bool,
    /// `""`, or a path like `/fleet` with no trailing slash, that every route hangs below.
    pub prefix: String,
    /// Extra names a request's Host may carry, lowercased, without a port.
    pub allow_hosts: Vec<String>,
}

/// Where the workers are.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The supervisor's records in this database.
    Db(DbLocation),
    /// `workers` workers on 127.0.0.1 from port `base` upwards.
    Ports { base: u16, workers: u32 },
    /// Explicit base URLs, one per worker.
    Urls(Vec<Url>),
}

/// What the monitor prints, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The ratatui dashboard, until `q`.
    Dashboard,
    /// A plain-text snapshot per interval, until interrupted.
    Plain,
    /// One plain-text snapshot.
    Once,
    /// One JSON report.
    Json,
    /// The web page (`--serve`), until stopped.
    Serve,
}

/// Everything `run` needs, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    pub interval: Duration,
    pub timeout: Duration,
    pub mode: Mode,
    pub control_token: Option<String>,
    /// Set with `--serve` (and `mode` is then `Mode::Serve`).
    pub serve: Option<ServeConfig>,
}

impl Cli {
    /// Checks the flags against each other; the error is one sentence for the user.
    /// `stdout_is_terminal` chooses between the dashboard and plain text.
    pub fn into_config(self, stdout_is_terminal: bool) -> Result<Config, String> {
        let source = self.source()?;
        if self.interval < MIN_INTERVAL {
            return Err(format!(
                "--interval {} is too short; use at least {}",
                format_duration(self.interval),
                format_duration(MIN_INTERVAL)
            ));
        }
        let timeout = self.timeout.unwrap_or(self.interval.min(MAX_DEFAULT_TIMEOUT));
        if timeout.is_zero() {
            return Err("--timeout must be longer than zero".into());
        }
        let serve = self.serve_config()?;
        let mode = match (self.json, self.once, stdout_is_terminal) {
            _ if serve.is_some() => Mode::Serve,
            (true, _, _) => Mode::Json,
            (_, true, _) => Mode::Once,
            (_, _, true) => Mode::Dashboard,
            _ => Mode::Plain,
        };
        let control_token = self.control_token.filter(|t| !t.is_empty());
        Ok(Config { source, interval: self.interval, timeout, mode, control_token, serve })
    }

    fn serve_config(&self) -> Result<Option<ServeConfig>, String> {
        let Some(addr) = self.serve else { return Ok(None) };
        if self.once || self.json {
            return Err("--serve runs until it is stopped and cannot be combined with --once or --json".into());
        }
        let prefix = match self.prefix.as_deref().map(|p| p.trim_end_matches('/')) {
            None | Some("") => String::new(),
            Some(p) => parse_prefix(p)?,
        };
        let allow_hosts = self
            .allow_host
            .iter()
            .map(|h| parse_allowed_host(h))
            .filter(|h| h != &Ok(String::new()))
            .collect::<Result<_, _>>()?;
        Ok(Some(ServeConfig { addr, read_only: self.read_only, prefix, allow_hosts }))
    }

    fn source(&self) -> Result<Source, String> {
        if let Some(db) = &self.db {
            return Ok(Source::Db(db.clone()));
        }
        if let Some(workers) = self.workers {
            let base = self.base_port.unwrap_or(DEFAULT_BASE_PORT);
            if workers == 0 {
                return Err("--workers must be at least 1".into());
            }
            // Port 0 is no port a worker listens on; the rest of the range is the
            // fleet's rule, decided in `shared::ports`.
            if base == 0 || shared::ports::last_port(base, workers).is_none() {
                return Err(format!(
                    "--base-port {base} with --workers {workers} does not fit: ports must lie between 1 and 65535"
                ));
            }
            return Ok(Source::Ports { base, workers });
        }
        if !self.targets.is_empty() {
            return self.targets.iter().map(|t| parse_target(t)).collect::<Result<_, _>>().map(Source::Urls);
        }
        // The supervisor keeps its records in the same database the workers use, so in
        // the fleet's directory `monitor` alone finds everything.
        let named = std::env::var("FLEET_DB").ok().filter(|d| !d.is_empty());
        let db: DbLocation =
            named.as_deref().unwrap_or(shared::storage::default_db()).parse().map_err(|e| format!("{e}"))?;
        if db.path().is_none_or(|p| p.exists()) {
            return Ok(Source::Db(db));
        }
        Err(format!(
            "no workers to watch: pass --db PATH|URL, --workers N (with --base-port, default 3001) or --targets URL,... \
             ({db} does not exist)"
        ))
    }
}

/// A `--prefix`: an absolute path of plain segments, since it is spliced into every link
/// and route.
fn parse_prefix(p: &str) -> Result<String, String> {
    let plain = |seg: &str| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg.chars().all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
    };
    match p.strip_prefix('/') {
        Some(rest) if rest.split('/').all(plain) => Ok(p.to_string()),
        _ => Err(format!(
            "--prefix {p:?} is not a plain absolute path: use segments of letters, digits, '-', '.', '_' or '~', like /fleet"
        )),
    }
}

/// An `--allow-host` name: compared with a request's Host without its port, so it must
/// not carry one, nor anything that is not part of a host name.
fn parse_allowed_host(h: &str) -> Result<String, String> {
    let h = h.trim().to_ascii_lowercase();
    let ok = h.chars().all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c))
        && (!h.contains(':') || h.starts_with('['));
    if ok {
        Ok(h)
    } else {
        Err(format!("--allow-host {h:?} is not a host name: give the name alone, without a scheme, path or port"))
    }
}

/// Reads one `--targets` entry: an http URL naming a host, with or without the scheme.
pub fn parse_target(input: &str) -> Result<Url, String> {
    let trimmed = input.trim();
    let err = |reason: &str| format!("invalid target {input:?}: {reason} (example: http://127.0.0.1:3001)");
    if trimmed.is_empty() {
        return Err(err("it is empty"));
    }
    let with_scheme = if trimmed.contains("://") { trimmed.to_string() } else { format!("http://{trimmed}") };
    let url = Url::parse(&with_scheme).map_err(|e| err(&e.to_string()))?;
    if url.scheme() != "http" {
        return Err(err("only http:// is supported (workers serve plain HTTP)"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(err("it names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(err("a worker's base URL takes no query or fragment"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["monitor"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map_err(|e| e.to_string())?.into_config(false)
    }

    #[test]
    fn workers_alone_means_consecutive_ports_from_3001() {
        let c = parse(&["--workers", "3"]).unwrap();
        assert_eq!(c.source, Source::Ports { base: 3001, workers: 3 });
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!(c.mode, Mode::Plain);
    }

    #[test]
    fn zero_workers_or_ports_past_65535_are_refused_in_one_sentence() {
        assert_eq!(parse(&["--workers", "0"]).unwrap_err(), "--workers must be at least 1");
        let e = parse(&["--base-port", "65535", "--workers", "2"]).unwrap_err();
        assert!(e.starts_with("--base-port 65535 with --workers 2 does not fit"), "{e}");
    }

    #[test]
    fn ways_of_finding_workers_exclude_each_other() {
        assert!(parse(&["--db", "x.db", "--workers", "2"]).is_err());
        assert!(parse(&["--workers", "2", "--targets", "http://127.0.0.1:1"]).is_err());
        assert!(parse(&["--base-port", "4000"]).unwrap_err().contains("--workers"));
    }

    #[test]
    fn a_target_without_a_scheme_gets_http_and_other_schemes_are_refused() {
        assert_eq!(parse_target("127.0.0.1:3001").unwrap().as_str(), "http://127.0.0.1:3001/");
        assert!(parse_target("https://127.0.0.1:3001").unwrap_err().contains("only http://"));
        assert!(parse_target("http://").unwrap_err().starts_with("invalid target \"http://\""));
        assert!(parse_target("").is_err());
        assert!(parse_target("http://h:99999").is_err());
    }

    #[test]
    fn a_malformed_or_too_short_interval_is_refused() {
        assert!(parse(&["--workers", "1", "--interval", "soon"]).unwrap_err().contains("invalid duration \"soon\""));
        assert!(parse(&["--workers", "1", "--interval", "0"]).unwrap_err().contains("too short"));
    }

    #[test]
    fn json_wins_over_the_terminal_and_the_timeout_follows_a_short_interval() {
        let c = Cli::try_parse_from(["monitor", "--workers", "1", "--json", "--interval", "300ms"])
            .unwrap()
            .into_config(true)
            .unwrap();
        assert_eq!(c.mode, Mode::Json);
        assert_eq!(c.timeout, Duration::from_millis(300));
        let c = Cli::try_parse_from(["monitor", "--workers", "1"]).unwrap().into_config(true).unwrap();
        assert_eq!(c.mode, Mode::Dashboard);
    }

    #[test]
    fn serve_listens_on_loopback_unless_told_and_refuses_once_and_json() {
        let c = parse(&["--workers", "1", "--serve"]).unwrap();
        assert_eq!(c.mode, Mode::Serve);
        assert_eq!(c.serve.unwrap().addr, DEFAULT_SERVE_ADDR.parse().unwrap());
        let c = parse(&["--workers", "1", "--serve", "0.0.0.0:9000", "--read-only"]).unwrap();
        assert_eq!(c.serve.as_ref().unwrap().addr.port(), 9000);
        assert!(c.serve.unwrap().read_only);
        for flag in ["--once", "--json"] {
            let e = parse(&["--workers", "1", "--serve", flag]).unwrap_err();
            assert_eq!(e, "--serve runs until it is stopped and cannot be combined with --once or --json");
        }
        assert!(parse(&["--workers", "1", "--read-only"]).is_err(), "--read-only means nothing without --serve");
    }

    #[test]
    fn a_prefix_is_a_plain_path_and_allowed_hosts_are_names_from_a_list_or_repeats() {
        let c = parse(&[
            "--workers",
            "1",
            "--serve",
            "--prefix",
            "/fleet/",
            "--allow-host",
            "Mon.example,b",
            "--allow-host",
            "c",
        ])
        .unwrap()
        .serve
        .unwrap();
        assert_eq!(c.prefix, "/fleet");
        assert_eq!(c.allow_hosts, ["mon.example", "b", "c"]);
        assert_eq!(parse(&["--workers", "1", "--serve", "--prefix", "/"]).unwrap().serve.unwrap().prefix, "");
        for bad in ["fleet", "/a/../b", "/a b", "/\"><script>"] {
            assert!(parse(&["--workers", "1", "--serve", "--prefix", bad]).unwrap_err().contains("--prefix"), "{bad}");
        }
        for bad in ["http://x", "x:8080", "x/y"] {
            assert!(
                parse(&["--workers", "1", "--serve", "--allow-host", bad]).unwrap_err().contains("--allow-host"),
                "{bad}"
            );
        }
    }

    #[test]
    fn once_with_json_is_accepted_and_means_json() {
        assert_eq!(parse(&["--workers", "1", "--once", "--json"]).unwrap().mode, Mode::Json);
        assert_eq!(parse(&["--workers", "1", "--json", "--once"]).unwrap().mode, Mode::Json);
    }
}
