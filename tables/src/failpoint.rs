//! Crash points for the crash tests: with `GRIDMETER_CRASH_AT=<name>` in the environment the
//! process kills itself with SIGKILL (as `kill -9` would) when it reaches the point of that
//! name. Unset (always, in production) a crash point costs one cached environment lookup.
//!
//! Points: `collector_after_data_files` (data files of a segment written, not committed),
//! `aggregator_after_history_commit` (history committed, current table not).

use std::sync::OnceLock;

/// Kills the process with SIGKILL if `GRIDMETER_CRASH_AT` names this point.
pub fn crash_point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("GRIDMETER_CRASH_AT").ok());
    if at.as_deref() == Some(name) {
        eprintln!("GRIDMETER_CRASH_AT={name}: killing this process (SIGKILL)");
        // SAFETY: getpid and kill have no preconditions; SIGKILL does not return.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
