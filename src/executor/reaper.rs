//! The server as a child subreaper.
//!
//! A job's process group is killed when its leader exits, but a descendant
//! that called `setsid` has left the group and would survive. With
//! `PR_SET_CHILD_SUBREAPER` such orphans are re-parented to the server instead
//! of init, so the server can find them among its own children: a periodic
//! [`sweep`] kills (group and process) every child that carries a job's
//! `RUNYARD_JOB_ID`/`RUNYARD_CLAIM_SEQ` whose execution is no longer live
//! here, and reaps every zombie child that is not one of the job leaders
//! tokio waits on (reaping those would steal their exit status).
//!
//! Only the `runyard serve` binary enables this ([`enable`]): a test harness
//! that embeds the server has children of its own that are none of our
//! business. A descendant that also clears its environment is re-parented and
//! reaped, but not killed (nothing ties it to a job).
//!
//! The test that would catch a regression: `server_lifecycle::a_setsid_escapee_is_killed_when_its_job_ends`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use rustix::process::{Pid, Signal, WaitOptions};

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Held shared by every spawn until its pid is tracked, and exclusively by a sweep: a
/// sweep never sees a child that is not tracked yet, and spawns never wait for each
/// other, nor [`untrack`] for a spawn (a spawn takes a few hundred µs).
static SPAWNING: RwLock<()> = RwLock::new(());
static STATE: Mutex<State> = Mutex::new(State {
    tracked: None,
    live: None,
});

struct State {
    /// Pids of children a task waits on: never reaped by the sweep.
    tracked: Option<HashSet<u32>>,
    /// Live executions as `RUNYARD_JOB_ID=…`, `RUNYARD_CLAIM_SEQ=…` pairs.
    live: Option<HashSet<(String, String)>>,
}

fn lock() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes this process a child subreaper and turns the sweep on.
pub fn enable() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    ENABLED.store(true, Ordering::Release);
    Ok(())
}

/// Whether [`enable`] was called.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// Spawns `cmd` and records its pid (and the execution named by `execution`) as live,
/// before a sweep may run, so a child that exits at once is never reaped by the sweep.
pub(crate) fn spawn_tracked(
    cmd: &mut tokio::process::Command,
    execution: Option<(String, String)>,
) -> std::io::Result<tokio::process::Child> {
    let _spawning = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
    let child = cmd.spawn()?;
    let mut st = lock();
    if let Some(pid) = child.id() {
        st.tracked.get_or_insert_with(HashSet::new).insert(pid);
    }
    if let Some(e) = execution {
        st.live.get_or_insert_with(HashSet::new).insert(e);
    }
    Ok(child)
}

/// The child `pid` was waited for; its execution (if any) is over.
pub(crate) fn untrack(pid: u32, execution: Option<&(String, String)>) {
    let mut st = lock();
    if let Some(t) = st.tracked.as_mut() {
        t.remove(&pid);
    }
    if let (Some(live), Some(e)) = (st.live.as_mut(), execution) {
        live.remove(e);
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Zombie children reaped.
    pub reaped: usize,
    /// Escaped descendants of finished executions killed.
    pub killed: usize,
}

/// Kills escaped descendants of executions that ended and reaps zombie children (no-op
/// unless [`enable`]d).
pub fn sweep() -> Sweep {
    let mut out = Sweep::default();
    if !enabled() {
        return out;
    }
    // No spawn is between its fork and its tracking while this is held; `STATE` is taken
    // per child, so an ending job's [`untrack`] does not wait for the `/proc` reads.
    let _no_spawn = SPAWNING.write().unwrap_or_else(|e| e.into_inner());
    for pid in children() {
        if lock().tracked.as_ref().is_some_and(|t| t.contains(&pid)) {
            continue;
        }
        let Some(raw) = Pid::from_raw(pid as i32) else {
            continue;
        };
        if state_of(pid) == Some('Z') {
            if let Ok(Some(_)) = rustix::process::waitpid(Some(raw), WaitOptions::NOHANG) {
                out.reaped += 1;
            }
            continue;
        }
        let Some(execution) = execution_of(pid) else {
            continue;
        };
        if lock().live.as_ref().is_some_and(|l| l.contains(&execution)) {
            continue;
        }
        let _ = rustix::process::kill_process_group(raw, Signal::KILL);
        let _ = rustix::process::kill_process(raw, Signal::KILL);
        out.killed += 1;
    }
    out
}

/// This process's children, over all its threads.
fn children() -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return pids;
    };
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The state letter of `/proc/<pid>/stat` (`Z` for a zombie).
fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The execution whose environment `pid` carries, if any.
fn execution_of(pid: u32) -> Option<(String, String)> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let mut job = None;
    let mut seq = None;
    for var in environ.split(|b| *b == 0) {
        if let Some(v) = var.strip_prefix(b"RUNYARD_JOB_ID=") {
            job = Some(String::from_utf8_lossy(v).into_owned());
        } else if let Some(v) = var.strip_prefix(b"RUNYARD_CLAIM_SEQ=") {
            seq = Some(String::from_utf8_lossy(v).into_owned());
        }
    }
    Some((job?, seq?))
}
