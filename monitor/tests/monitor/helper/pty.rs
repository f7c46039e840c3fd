//! The monitor in a pseudo-terminal: its output collected, keys typed into it, and the
//! terminal's modes read back after it exits.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::pty::{Winsize, openpty};
use nix::sys::termios::{LocalFlags, tcgetattr};

pub struct PtyMonitor {
    pub child: Child,
    master: std::fs::File,
    /// Kept open so the terminal's modes can be read after the monitor exits.
    slave: OwnedFd,
    output: Arc<Mutex<Vec<u8>>>,
}

impl PtyMonitor {
    /// Starts `monitor args` on a 140x40 pseudo-terminal.
    pub fn start(args: &[&str], cwd: &std::path::Path) -> PtyMonitor {
        let size = Winsize { ws_row: 40, ws_col: 140, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = openpty(&size, None).unwrap();
        let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        let child = Command::new(super::monitor_bin())
            .args(args)
            .current_dir(cwd)
            .env("TERM", "xterm-256color")
            .env_remove("FLEET_DB")
            .env_remove("FLEET_CONTROL_TOKEN")
            .stdin(io(&pty.slave))
            .stdout(io(&pty.slave))
            .stderr(io(&pty.slave))
            .spawn()
            .unwrap();
        let master = std::fs::File::from(pty.master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // Ends with EIO once every end of the slave is closed.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        PtyMonitor { child, master, slave: pty.slave, output }
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until the output contains `text`.
    pub fn wait_for_output(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.output().contains(text) {
            assert!(Instant::now() < deadline, "no {text:?} on the terminal; it shows:\n{:?}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn type_keys(&mut self, keys: &[u8]) {
        self.master.write_all(keys).unwrap();
        self.master.flush().unwrap();
    }

    /// Whether the terminal is in canonical mode with echo: the state a shell expects.
    pub fn cooked(&self) -> bool {
        let t = tcgetattr(&self.slave).unwrap();
        t.local_flags.contains(LocalFlags::ICANON | LocalFlags::ECHO)
    }

    /// Waits for the monitor to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the monitor did not exit; the terminal shows:\n{:?}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PtyMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
