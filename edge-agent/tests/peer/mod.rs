//! Real protocol peers for the source tests: Python processes (pymodbus, pymeterbus, gurux)
//! and socat pty pairs standing in for a serial line.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory of the peer scripts.
pub fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// A peer process, killed when dropped. It prints `ready` once it serves.
pub struct Peer {
    child: Child,
    _stdin: Option<ChildStdin>,
}

impl Peer {
    /// Runs `python3 tests/peers/<script> args...` and waits for its `ready` line.
    pub fn python(script: &str, args: &[&str]) -> Peer {
        let mut child = Command::new("python3")
            .arg(scripts().join(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 {script}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("peer stdout");
        assert_eq!(line.trim(), "ready", "{script} did not start");
        Peer {
            child,
            _stdin: stdin,
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two connected ptys (`socat pty,raw,echo=0 pty,raw,echo=0`): what is written to one end
/// is read at the other, like the two ends of a serial cable.
pub struct PtyPair {
    child: Child,
    pub a: PathBuf,
    pub b: PathBuf,
}

impl PtyPair {
    pub fn new(dir: &Path) -> PtyPair {
        let a = dir.join("tty-a");
        let b = dir.join("tty-b");
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (Debian package socat) is installed");
        // Set-up, not a timed assertion: wait for socat to create both links.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(a.exists() && b.exists()) {
            assert!(Instant::now() < deadline, "socat made no ptys");
            std::thread::sleep(Duration::from_millis(10));
        }
        PtyPair { child, a, b }
    }

    pub fn a(&self) -> String {
        self.a.display().to_string()
    }
    pub fn b(&self) -> String {
        self.b.display().to_string()
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    gridmeter_core::testkit::free_port()
}
