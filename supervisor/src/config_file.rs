//! `fleet.toml`: everything `supervisor start` takes on its command line, in a file, as
//! PM2's ecosystem file does. Precedence: flags, then environment, then the file, then
//! the defaults. The file is applied by inserting its settings as flags before the real
//! ones, for exactly those flags the user did not give on the command line or in the
//! environment, and parsing again, so every value goes through the same validation.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::CommandFactory;
use clap::parser::ValueSource;

use crate::cli::Cli;

/// The handler flags are one choice: any of them given elsewhere overrides all three.
const HANDLER_FLAGS: [&str; 3] = ["exec", "http", "sleep"];

/// Returns the argv to parse: `argv` itself, or with the config file's settings merged
/// in when the command is `start` and a config file applies.
pub fn merge(argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Some(start_at) = argv.iter().position(|a| a == "start") else { return Ok(argv) };
    let Some(path) = config_path(&argv[start_at + 1..]) else { return Ok(argv) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("config file {} is not valid TOML: {}", path.display(), e.message()))?;

    // What the user set without the file, and how.
    let lenient = Cli::command().ignore_errors(true).try_get_matches_from(&argv).ok();
    let start = lenient.as_ref().and_then(|m| m.subcommand_matches("start"));
    let given = |id: &str| {
        start
            .and_then(|m| m.value_source(id))
            .is_some_and(|s| matches!(s, ValueSource::CommandLine | ValueSource::EnvVariable))
    };
    let cmd = Cli::command();
    let start_cmd = cmd.find_subcommand("start").expect("start is a subcommand");
    let handler_given = HANDLER_FLAGS.iter().any(|f| given(f));
    // The file's CA serves the file's or the command line's --http; a handler other than
    // --http chosen elsewhere leaves it out rather than be refused for it.
    let other_handler_given = handler_given && !given("http");

    let mut extra: Vec<OsString> = Vec::new();
    for (key, value) in &table {
        let id = key.replace('-', "_");
        let Some(arg) = start_cmd.get_arguments().find(|a| a.get_id().as_str() == id) else {
            bail!("config file {}: unknown setting {key:?}", path.display());
        };
        let long = arg.get_long().unwrap_or(key);
        if id == "config" {
            bail!("config file {}: \"config\" cannot be set inside a config file", path.display());
        }
        if given(&id)
            || (HANDLER_FLAGS.contains(&id.as_str()) && handler_given)
            || (id == "ca_cert" && other_handler_given)
        {
            continue;
        }
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => {
                if arg.get_action().takes_values() {
                    b.to_string()
                } else {
                    if *b {
                        extra.push(format!("--{long}").into());
                    }
                    continue;
                }
            }
            other => bail!(
                "config file {}: {key} must be a string, number or boolean, not {}",
                path.display(),
                other.type_str()
            ),
        };
        extra.push(format!("--{long}").into());
        extra.push(text.into());
    }
    let mut merged = argv[..=start_at].to_vec();
    merged.extend(extra);
    merged.extend_from_slice(&argv[start_at + 1..]);
    Ok(merged)
}

/// `--config FILE` if given, else `fleet.toml` in the working directory if it exists.
fn config_path(start_args: &[OsString]) -> Option<PathBuf> {
    let mut it = start_args.iter();
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    let default = Path::new("fleet.toml");
    default.exists().then(|| default.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;
    use clap::Parser;

    fn parse_with(file: &str, args: &[&str]) -> anyhow::Result<crate::cli::StartArgs> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["supervisor".into(), "start".into(), "--config".into(), path.clone().into()];
        argv.extend(args.iter().map(OsString::from));
        let merged = merge(argv)?;
        match Cli::try_parse_from(merged)?.command {
            Command::Start(s) => Ok(*s),
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_file_fills_what_the_flags_leave_out() {
        let s = parse_with(
            "workers = 3\nmem_limit = \"300M\"\nsleep = \"10ms\"\nexit-when-done = true\nconcurrency = 9\n\
             steal = \"idle\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            (s.workers, s.mem_limit.to_string(), s.job.concurrency, s.exit_when_done, s.job.steal),
            (3, "300M".into(), 9, true, shared::config::Steal::Idle)
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let s =
            parse_with("workers = 3\nmem_limit = \"300M\"\nsleep = \"10ms\"\n", &["--workers", "5", "--exec", "true"])
                .unwrap();
        assert_eq!(s.workers, 5);
        assert_eq!(s.handler.exec.as_deref(), Some("true"));
        assert_eq!(s.handler.sleep, None, "a handler flag replaces the file's handler");
    }

    #[test]
    fn the_files_ca_cert_serves_an_http_handler_and_stays_out_of_any_other() {
        let file = "workers = 1\nmem-limit = \"100M\"\nhttp = \"https://127.0.0.1:8443/\"\nca-cert = \"ca.pem\"\n";
        let s = parse_with(file, &[]).unwrap();
        assert_eq!(s.handler.ca_cert.as_deref(), Some(Path::new("ca.pem")));
        let s = parse_with(file, &["--http", "https://127.0.0.1:9443/"]).unwrap();
        assert_eq!(
            s.handler.ca_cert.as_deref(),
            Some(Path::new("ca.pem")),
            "the command line's --http uses the file's CA"
        );
        let s = parse_with(file, &["--sleep", "1ms"]).unwrap();
        assert_eq!((s.handler.http, s.handler.ca_cert), (None, None));
    }

    #[test]
    fn the_log_format_is_a_setting_like_any_other() {
        let s = parse_with("workers = 1\nmem-limit = \"100M\"\nsleep = \"1ms\"\nlog-format = \"json\"\n", &[]).unwrap();
        assert_eq!(s.log_format, shared::logging::LogFormat::Json);
        let e =
            parse_with("workers = 1\nmem-limit = \"100M\"\nsleep = \"1ms\"\nlog-format = \"xml\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("invalid value 'xml' for '--log-format"), "{e}");
    }

    #[test]
    fn the_example_config_of_the_systemd_unit_is_one_the_supervisor_takes() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/fleet.toml");
        let argv = ["supervisor", "start", "--config"].map(OsString::from).into_iter().chain([path.into()]).collect();
        let s = match Cli::try_parse_from(merge(argv).unwrap()).unwrap().command {
            Command::Start(s) => *s,
            _ => unreachable!(),
        };
        assert_eq!((s.workers, s.mem_limit.to_string(), s.job.grace.as_secs()), (4, "250M".into(), 30));
        assert_eq!(s.handler.exec.as_deref(), Some("/opt/shardfleet/analyse.sh {video_id} {source}"));
    }

    #[test]
    fn unknown_settings_and_bad_values_are_named() {
        let e = parse_with("workerz = 3\n", &[]).unwrap_err().to_string();
        assert!(e.contains("unknown setting \"workerz\""), "{e}");
        let e = parse_with("workers = 2\nmem_limit = \"12Q\"\nsleep = \"1s\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("invalid size \"12Q\""), "{e}");
    }
}
