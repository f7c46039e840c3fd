//! Which host this is, as run records name it: a fleet on PostgreSQL may span machines,
//! and a run's pids and loopback address mean something only on the host that recorded
//! it.

/// This host's name, as runs record it: `FLEET_HOST` if set, else the kernel's.
/// FLEET_HOST names the host where the kernel's name is no use (a container's random
/// one; it must then differ between containers that share a database) or, in tests,
/// plays a second host on one machine.
pub fn name() -> Option<String> {
    if let Some(name) = std::env::var("FLEET_HOST").ok().filter(|h| !h.trim().is_empty()) {
        return Some(name.trim().to_string());
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string())
}

/// Whether a run recorded on `host` ran here, so its pids and loopback mean something
/// here. A run that recorded no host is taken for this host's (SQLite fleets are one
/// host's).
pub fn is_this_host(host: Option<&str>) -> bool {
    host.is_none() || host == name().as_deref()
}

/// Whether `host` is a host name or an IP address (what `--advertise` takes): letters,
/// digits, dots and hyphens in labels that neither start nor end with a hyphen, or an
/// address that parses.
pub fn is_valid(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_and_addresses_are_valid_and_urls_ports_and_zones_are_not() {
        for ok in ["host-a", "db1.internal", "10.0.0.7", "::1", "fe80::1"] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in ["", "db-host:8080", "fe80::1%eth0", "http://a", "a b", "-a", "a..b", "a_b"] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
