//! Flags that both the worker and the supervisor take: which handler runs a video, and
//! how jobs are retried and timed out. The supervisor passes them through to each worker
//! with `to_args`, so the two binaries cannot disagree on a name.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args};
use serde::{Deserialize, Serialize};

use crate::retry::RetryPolicy;
use crate::tls::TrustedRoots;
use crate::units::{ByteSize, DurationRange, Rate, duration_arg, format_duration};

/// The largest source a video may have, by default: a path or a URL, with room to spare.
pub const DEFAULT_MAX_SOURCE: ByteSize = ByteSize(64 << 10);
/// The largest payload a video may have, by default.
pub const DEFAULT_MAX_PAYLOAD: ByteSize = ByteSize(1 << 20);

/// Exactly one handler runs every video. `--ca-cert` goes with `--http`, so the group
/// of which exactly one is given is spelled out instead of being every field.
#[derive(Args, Debug, Clone, PartialEq)]
#[group(skip)]
#[command(group(ArgGroup::new("handler").required(true).multiple(false).args(["exec", "http", "sleep"])))]
pub struct HandlerArgs {
    /// Run CMD for each video. CMD is split into words once (shell quoting rules);
    /// {video_id}, {source}, {attempt} and {worker_id} are replaced inside words, and no
    /// shell ever sees them. The payload JSON goes to stdin; stdout becomes the result;
    /// exit 0 is success.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,

    /// POST each video as JSON to URL (http:// or https://); a 2xx answer is success and
    /// its body the result. 429, 503 and connection errors are retried, honouring
    /// Retry-After. https trusts the system's CA certificates, and --ca-cert.
    #[arg(long, value_name = "URL")]
    pub http: Option<String>,

    /// With --http: also trust the CA certificates in FILE (PEM, one or more), for an
    /// https service whose certificate a private CA signed. The system's roots stay
    /// trusted.
    #[arg(long, env = "FLEET_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// Built-in handler for demos and benchmarks: sleep DURATION (or a random time in a
    /// range such as 50ms..200ms) and succeed.
    #[arg(long, value_name = "DURATION")]
    pub sleep: Option<DurationRange>,
}

impl HandlerArgs {
    /// The flags that recreate this choice on another command line. The CA file's path
    /// is made absolute, so a process started in another directory finds it too.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = match (&self.exec, &self.http, &self.sleep) {
            (Some(cmd), _, _) => vec!["--exec".into(), cmd.into()],
            (_, Some(url), _) => vec!["--http".into(), url.into()],
            (_, _, Some(range)) => vec!["--sleep".into(), range.to_string().into()],
            _ => Vec::new(),
        };
        if let Some(path) = &self.ca_cert {
            args.push("--ca-cert".into());
            args.push(std::path::absolute(path).unwrap_or_else(|_| path.clone()).into());
        }
        args
    }

    /// Checks what can be checked before any worker starts: that an --exec command splits
    /// into words, an --http URL is http or https, and the certificates it would trust
    /// can be read.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(cmd) = &self.exec {
            let words =
                shell_words::split(cmd).map_err(|e| format!("--exec {cmd:?} cannot be split into words: {e}"))?;
            let Some(program) = words.first() else {
                return Err("--exec needs a command".into());
            };
            check_program(program)?;
        }
        match (&self.http, &self.ca_cert) {
            (Some(url), ca_cert) => {
                // Schemes are case-insensitive (RFC 3986): HTTP:// is as good as http://.
                let https = match url.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase()).as_deref() {
                    Some("http") => false,
                    Some("https") => true,
                    _ => return Err(format!("--http {url:?}: only http:// and https:// URLs are supported")),
                };
                TrustedRoots::load(ca_cert.as_deref(), https).map_err(|e| e.to_string())?;
            }
            (None, Some(path)) => {
                return Err(format!(
                    "--ca-cert {} (or FLEET_CA_CERT) goes only with --http, and the handler here is {}",
                    path.display(),
                    self.describe()
                ));
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// The handler in words, for status output.
    pub fn describe(&self) -> String {
        match (&self.exec, &self.http, &self.sleep) {
            (Some(cmd), _, _) => format!("exec: {cmd}"),
            (_, Some(url), _) => format!("http: {url}"),
            (_, _, Some(range)) => format!("sleep: {range}"),
            _ => "none".into(),
        }
    }
}

/// Refuses an --exec program that does not exist or cannot be executed, before any
/// video spends an attempt on it. A program named by a placeholder is only known per
/// video, so it is left to the attempt.
fn check_program(program: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('{') {
        return Ok(());
    }
    let executable =
        |p: &std::path::Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let path = std::path::Path::new(program);
        return match std::fs::metadata(path) {
            Err(_) => Err(format!("--exec: the program {program} does not exist")),
            Ok(m) if m.is_dir() => Err(format!("--exec: the program {program} is a directory")),
            Ok(_) if !executable(path) => {
                Err(format!("--exec: the program {program} is not executable (chmod +x {program})"))
            }
            Ok(_) => Ok(()),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| executable(&dir.join(program))) {
        Ok(())
    } else {
        Err(format!("--exec: the program {program} is not found in PATH"))
    }
}

/// Longest control token: it is handed to each worker through a pipe, written whole
/// before the worker starts, so it must fit far inside a pipe's buffer.
pub const MAX_TOKEN_LEN: usize = 256;

/// Checks a control token given by flag or environment: it travels in an HTTP header,
/// and a short one is guessed.
pub fn validate_control_token(token: &str) -> Result<(), String> {
    if token.len() < 8 {
        return Err("--control-token must be at least 8 characters".into());
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!("--control-token must be at most {MAX_TOKEN_LEN} characters"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("--control-token may hold only printable ASCII characters without spaces".into());
    }
    Ok(())
}

/// Which other shards a worker takes videos from (`--steal`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Steal {
    /// None: the shards are strict.
    Off,
    /// Shards whose worker is gone (no heartbeat for longer than its lease).
    #[default]
    Orphaned,
    /// Orphaned shards, and when the own shard has nothing due, the busiest live one.
    Idle,
}

impl std::fmt::Display for Steal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Steal::Off => "off",
            Steal::Orphaned => "orphaned",
            Steal::Idle => "idle",
        })
    }
}

/// How jobs run: concurrency, retries, timeouts, leases and pacing.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct JobArgs {
    /// Videos run at once by each worker.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,

    /// Attempts per video before it is marked failed.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_attempts: u32,

    /// Delay before the first retry; it doubles with each further attempt (with jitter).
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = duration_arg)]
    pub backoff: Duration,

    /// Longest delay between two attempts.
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = duration_arg)]
    pub backoff_max: Duration,

    /// Kill a handler (its whole process group) that runs longer than DUR; the attempt
    /// fails with a timeout error.
    #[arg(long, value_name = "DUR", value_parser = duration_arg)]
    pub job_timeout: Option<Duration>,

    /// How long a claim holds without renewal. Leases are renewed every third of it; a
    /// worker that dies loses its videos to the next sweep once it lapses.
    #[arg(long, value_name = "DUR", default_value = "15s", value_parser = duration_arg)]
    pub lease: Duration,

    /// On SIGTERM, how long jobs in flight may run before they are killed and their
    /// videos handed back.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = duration_arg)]
    pub grace: Duration,

    /// With --http: at most this many calls per period per worker, e.g. 5/s or 300/m.
    #[arg(long, value_name = "N/PERIOD")]
    pub rate: Option<Rate>,

    /// With --http: at least this long between two calls of one worker.
    #[arg(long, value_name = "DUR", value_parser = duration_arg)]
    pub min_delay: Option<Duration>,

    /// Whether a worker also takes videos of other shards. `off`: the shards are strict,
    /// a worker runs only its own. `orphaned`: it also finishes a shard whose worker has
    /// not beaten for longer than its lease (gone for good: a dead host, a pod never
    /// scheduled), and leaves it as soon as that worker beats again. `idle`: as
    /// orphaned, and whenever its own shard has nothing due it helps the busy shards,
    /// the largest backlog first.
    #[arg(long, env = "FLEET_STEAL", value_enum, default_value_t = Steal::Orphaned)]
    pub steal: Steal,

    /// A video whose source is larger than this fails at once (outcome `rejected`)
    /// instead of running: rows written by other tools are not checked by `import`.
    #[arg(long, value_name = "SIZE", default_value_t = DEFAULT_MAX_SOURCE)]
    pub max_source_bytes: ByteSize,

    /// A video whose payload is larger than this fails at once (outcome `rejected`).
    #[arg(long, value_name = "SIZE", default_value_t = DEFAULT_MAX_PAYLOAD)]
    pub max_payload_bytes: ByteSize,
}

impl JobArgs {
    /// The flags that recreate these settings on another command line.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "--concurrency".to_string(),
            self.concurrency.to_string(),
            "--max-attempts".into(),
            self.max_attempts.to_string(),
            "--backoff".into(),
            format_duration(self.backoff),
            "--backoff-max".into(),
            format_duration(self.backoff_max),
            "--lease".into(),
            format_duration(self.lease),
            "--grace".into(),
            format_duration(self.grace),
            "--max-source-bytes".into(),
            self.max_source_bytes.bytes().to_string(),
            "--max-payload-bytes".into(),
            self.max_payload_bytes.bytes().to_string(),
            "--steal".into(),
            self.steal.to_string(),
        ];
        if let Some(t) = self.job_timeout {
            a.extend(["--job-timeout".into(), format_duration(t)]);
        }
        if let Some(r) = self.rate {
            a.extend(["--rate".into(), r.to_string()]);
        }
        if let Some(d) = self.min_delay {
            a.extend(["--min-delay".into(), format_duration(d)]);
        }
        a
    }

    /// Checks what clap cannot: relations between values.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease < Duration::from_millis(300) {
            return Err(format!("--lease {} is too short; use at least 300ms", format_duration(self.lease)));
        }
        if self.backoff > self.backoff_max {
            return Err("--backoff must not be longer than --backoff-max".into());
        }
        if self.job_timeout.is_some_and(|t| t.is_zero()) {
            return Err("--job-timeout must be longer than zero".into());
        }
        // A slip such as `64` for `64K` would fail every video of every shard at once.
        for (flag, size) in
            [("--max-source-bytes", self.max_source_bytes), ("--max-payload-bytes", self.max_payload_bytes)]
        {
            if size.bytes() < 1024 {
                return Err(format!(
                    "{flag} {size} is too small; use at least 1K (the default is 64K for sources, 1M for payloads)"
                ));
            }
        }
        Ok(())
    }

    /// The retry decision these flags make (see `crate::retry`).
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy { max_attempts: self.max_attempts, backoff: self.backoff, backoff_max: self.backoff_max }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        handler: HandlerArgs,
        #[command(flatten)]
        job: JobArgs,
    }

    #[test]
    fn flags_survive_a_round_trip_through_to_args() {
        let cli = Cli::parse_from([
            "x",
            "--sleep",
            "50ms..200ms",
            "--concurrency",
            "7",
            "--job-timeout",
            "2s",
            "--rate",
            "5/s",
            "--steal",
            "idle",
        ]);
        let mut argv: Vec<OsString> = vec!["x".into()];
        argv.extend(cli.handler.to_args());
        argv.extend(cli.job.to_args().into_iter().map(OsString::from));
        let again = Cli::parse_from(argv);
        assert_eq!(again.handler, cli.handler);
        assert_eq!(again.job, cli.job);
    }

    #[test]
    fn the_default_retry_policy_is_three_attempts_from_one_minute_up_to_an_hour() {
        let cli = Cli::parse_from(["x", "--sleep", "0"]);
        let p = cli.job.retry_policy();
        assert_eq!((p.max_attempts, p.backoff, p.backoff_max), (3, Duration::from_secs(60), Duration::from_secs(3600)));
    }

    #[test]
    fn two_handlers_at_once_are_refused() {
        assert!(Cli::try_parse_from(["x", "--sleep", "0", "--exec", "true"]).is_err());
        assert!(Cli::try_parse_from(["x"]).is_err());
    }

    /// A choice of handler as the flags would make it.
    fn handler(exec: Option<&str>, http: Option<&str>, sleep: Option<&str>, ca_cert: Option<&str>) -> HandlerArgs {
        HandlerArgs {
            exec: exec.map(Into::into),
            http: http.map(Into::into),
            sleep: sleep.map(|s| s.parse().unwrap()),
            ca_cert: ca_cert.map(Into::into),
        }
    }

    #[test]
    fn http_and_https_in_any_case_are_accepted_and_other_schemes_are_refused() {
        let http = |url: &str| handler(None, Some(url), None, None);
        assert_eq!(http("HTTP://127.0.0.1:8080/analyse").validate(), Ok(()));
        assert_eq!(http("Http://localhost/").validate(), Ok(()));
        for bad in ["ftp://127.0.0.1/", "127.0.0.1:8080", "file:///etc/passwd"] {
            let e = http(bad).validate().unwrap_err();
            assert!(e.contains("only http:// and https:// URLs are supported"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_ca_cert_goes_with_http_only_and_must_be_readable() {
        let e = handler(None, None, Some("1s"), Some("ca.pem")).validate().unwrap_err();
        assert_eq!(e, "--ca-cert ca.pem (or FLEET_CA_CERT) goes only with --http, and the handler here is sleep: 1s");
        let missing = handler(None, Some("https://127.0.0.1/"), None, Some("/no/such/ca.pem"));
        assert_eq!(missing.validate().unwrap_err(), "--ca-cert /no/such/ca.pem: the file does not exist");
    }

    #[test]
    fn the_ca_cert_reaches_another_command_line_as_an_absolute_path() {
        let cli = Cli::parse_from(["x", "--http", "https://127.0.0.1/", "--ca-cert", "certs/ca.pem"]);
        let args = cli.handler.to_args();
        assert_eq!(args[2], "--ca-cert");
        assert_eq!(PathBuf::from(&args[3]), std::env::current_dir().unwrap().join("certs/ca.pem"));
        assert!(Cli::try_parse_from(["x", "--http", "https://127.0.0.1/", "--sleep", "1s"]).is_err());
    }

    #[test]
    fn an_exec_program_that_is_missing_or_not_executable_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.txt");
        std::fs::write(&plain, "text").unwrap();
        let exec = |cmd: String| handler(Some(&cmd), None, None, None).validate();
        assert!(exec(format!("{} {{source}}", plain.display())).unwrap_err().contains("is not executable"));
        assert!(exec("/no/such/program".into()).unwrap_err().contains("does not exist"));
        assert!(exec("no-such-program-anywhere".into()).unwrap_err().contains("not found in PATH"));
        assert_eq!(exec("sh -c true".into()), Ok(()));
        assert_eq!(exec("{source} --flag".into()), Ok(()), "a program named by a placeholder is known per video");
    }
}
