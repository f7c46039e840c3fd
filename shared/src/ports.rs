//! Which port a worker listens on: worker K on `base-port + K`. Every binary that
//! derives a port (the supervisor starting or re-partitioning a fleet, `supervisor
//! scale`, a worker given `--base-port`, the monitor finding workers) asks here, so a
//! port past 65535 is refused the same way everywhere.

/// Worker `k`'s port from `base_port`, if it is one (at most 65535).
pub fn worker_port(base_port: u16, k: u32) -> Option<u16> {
    u32::from(base_port).checked_add(k).and_then(|p| u16::try_from(p).ok())
}

/// The last port a fleet of `workers` uses from `base_port`, if every one fits.
pub fn last_port(base_port: u16, workers: u32) -> Option<u16> {
    worker_port(base_port, workers.checked_sub(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_port_is_65535_and_no_further() {
        assert_eq!(worker_port(65_530, 5), Some(65_535));
        assert_eq!(worker_port(65_530, 6), None);
        assert_eq!(worker_port(3001, u32::MAX), None);
    }

    #[test]
    fn a_fleet_fits_when_its_last_worker_does() {
        assert_eq!(last_port(3001, 3), Some(3003));
        assert_eq!(last_port(65_535, 2), None);
        assert_eq!(last_port(3001, 0), None);
    }
}
