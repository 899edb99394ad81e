//! Exit codes a script can branch on, and the mapping from errors to them.
//!
//! The run's outcome (0, 1, 130) is kept apart from the client's own trouble: a usage
//! mistake (2), no runyard at the URL (3), and a request runyard refused (4), so that
//! CI can tell "the tests failed" from "the runner is down" from "the job was
//! misconfigured".

use super::client::ClientError;
use super::term::Closed;

/// Success; for `--wait`, `wait` and `logs -f`: the run (or job) completed.
pub const OK: u8 = 0;
/// The run (or job) failed.
pub const FAILED: u8 = 1;
/// Usage error: bad arguments, a bad config for `serve`, an invalid server URL.
pub const USAGE: u8 = 2;
/// No runyard server answered at the URL (nothing listening, DNS, timeout, or a
/// server that is not runyard).
pub const UNREACHABLE: u8 = 3;
/// The server refused the request (unknown pipeline or run, a bad parameter, missing
/// token, …): its message is printed.
pub const REFUSED: u8 = 4;
/// The run (or job) was aborted, or the wait was interrupted (the run goes on).
pub const ABORTED: u8 = 130;

/// The table printed by `--help`.
pub const HELP: &str = "\
Exit codes:
  0    success; with --wait, wait, logs -f: the run completed
  1    the run failed, or was skipped (the runs it waited for did not end as required)
  2    usage error (bad arguments or config, invalid --server URL)
  3    server unreachable (nothing answers at --server, or it is not runyard)
  4    the server refused the request (its message is printed)
  130  the run was aborted, or you interrupted the wait (the run goes on
       unless --abort-on-interrupt)
A closed stdout (`runyard runs | head -1`) ends a command quietly with 0.";

/// The exit code of a terminal run or job status.
pub fn of_status(status: &str) -> u8 {
    match status {
        "completed" => OK,
        "aborted" => ABORTED,
        _ => FAILED,
    }
}

/// How an error ends the process: its exit code, and whether to print it (a closed
/// stdout ends quietly).
pub fn of_error(e: &anyhow::Error) -> (u8, bool) {
    if e.downcast_ref::<Closed>().is_some() {
        return (OK, false);
    }
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Closed(_)) => (OK, false),
        Some(ClientError::Unreachable { .. } | ClientError::NotRunyard { .. }) => {
            (UNREACHABLE, true)
        }
        Some(ClientError::Refused { .. }) => (REFUSED, true),
        Some(ClientError::BadUrl { .. } | ClientError::BadToken) => (USAGE, true),
        None => (USAGE, true),
    }
}
