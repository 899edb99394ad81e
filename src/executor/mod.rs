//! Running one job attempt as an OS process.
//!
//! The executor knows nothing of the store: it spawns argv (never a shell) in
//! a fresh process group with a cleared environment ([`spawn`]), feeds the
//! child's stdout and stderr line by line into a bounded [`output::Collector`]
//! that the caller drains on its own timer, and ends the process group on
//! timeout or cancellation with SIGTERM, then SIGKILL after a grace period
//! ([`process`]). A job ends when its leader exits; the group is then killed
//! and the pipes drained for at most [`DRAIN_LIMIT`], so a grandchild that
//! keeps stdout open cannot hang it.

pub mod output;
pub mod process;
pub mod progress;
pub mod reaper;
pub mod redact;
pub mod spawn;

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Child;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use output::Collector;
pub use spawn::SpawnSpec;

/// How long pipes are drained after the leader exits.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Why the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It exited (or died of a signal) on its own.
    Exited,
    /// The timeout expired and we ended it.
    TimedOut,
    /// The cancellation token fired and we ended it.
    Cancelled,
}

/// The result of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Why it ended.
    pub ending: Ending,
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
}

impl Exit {
    /// True for a natural exit with code 0.
    pub fn success(&self) -> bool {
        self.ending == Ending::Exited && self.code == Some(0)
    }
}

/// A spawned job process with its output readers.
pub struct Running {
    child: Child,
    /// The execution (`RUNYARD_JOB_ID`, `RUNYARD_CLAIM_SEQ`) this process belongs to, if any.
    execution: Option<(String, String)>,
    /// Leader pid, also the process group id.
    pub pid: u32,
    /// Leader start time (clock ticks since boot), for pid-reuse checks at recovery.
    pub proc_start: u64,
    readers: Vec<JoinHandle<()>>,
}

impl Running {
    /// Spawns `spec`, sending its output to `collector`.
    pub fn spawn(spec: &SpawnSpec, collector: Arc<Collector>) -> std::io::Result<Running> {
        let env = |key: &str| {
            spec.env
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let execution = env("RUNYARD_JOB_ID").zip(env("RUNYARD_CLAIM_SEQ"));
        let mut command = spawn::command(spec);
        let window = process::StartWindow::open();
        let mut child = reaper::spawn_tracked(&mut command, execution.clone())?;
        let pid = child.id().unwrap_or(0);
        let proc_start = window.start_of(pid).unwrap_or(0);
        let mut readers = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(output::read_stream(
                out,
                output::Stream::Stdout,
                collector.clone(),
            )));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(output::read_stream(
                err,
                output::Stream::Stderr,
                collector,
            )));
        }
        Ok(Running {
            child,
            execution,
            pid,
            proc_start,
            readers,
        })
    }

    /// Waits for the leader to exit, ending the group on timeout or cancellation.
    /// `grace` (SIGTERM to SIGKILL) is asked for when the process must be ended, so a
    /// caller can shorten it by why it ends.
    pub async fn wait(
        mut self,
        timeout: Option<Duration>,
        grace: impl Fn() -> Duration,
        cancel: CancellationToken,
    ) -> Exit {
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let (ending, status) = tokio::select! {
            status = self.child.wait() => (Ending::Exited, status),
            _ = deadline => (Ending::TimedOut, self.terminate(grace()).await),
            _ = cancel.cancelled() => (Ending::Cancelled, self.terminate(grace()).await),
        };
        // The leader is gone: end whatever it left behind in its group (and let the
        // subreaper sweep end what escaped the group).
        process::signal_group(self.pid, process::Sig::Kill);
        reaper::untrack(self.pid, self.execution.as_ref());
        let drain = futures_util::future::join_all(self.readers.iter_mut());
        if tokio::time::timeout(DRAIN_LIMIT, drain).await.is_err() {
            for r in &self.readers {
                r.abort();
            }
        }
        let (code, signal) = match status {
            Ok(s) => (s.code(), s.signal()),
            Err(_) => (None, None),
        };
        Exit {
            ending,
            code,
            signal,
        }
    }

    async fn terminate(&mut self, grace: Duration) -> std::io::Result<std::process::ExitStatus> {
        process::signal_group(self.pid, process::Sig::Term);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                process::signal_group(self.pid, process::Sig::Kill);
                self.child.wait().await
            }
        }
    }
}
