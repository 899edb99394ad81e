//! A job execution's private files under `data_dir/work/`: where the job may
//! write its JSON result (`$RUNYARD_RESULT_FILE`, DESIGN decision 20) and
//! where a finalizer finds the run summary (`$RUNYARD_SUMMARY_FILE`). Named
//! per `(job, claim_seq)`, so a stale execution never reads another's files;
//! removed when the execution ends. Plain files in one shared directory, not a
//! directory per job: nothing is created for a job that writes no result.

use std::path::{Path, PathBuf};

use crate::store::ClaimedJob;

/// Largest accepted result file.
pub const MAX_RESULT_BYTES: u64 = 64 * 1024;

/// The files of one execution; deleted on drop.
pub(crate) struct WorkDir {
    /// `data_dir/work/<job id>.<claim_seq>`: the files are this plus a suffix.
    stem: PathBuf,
    /// For a finalizer: the run's status it is told (`RUNYARD_RUN_STATUS`).
    pub run_status: String,
}

impl WorkDir {
    /// The files of this execution under `data_dir/work/` (created if missing); a stale
    /// result left by a crashed execution with the same name is removed.
    pub fn create(data_dir: &Path, job: &ClaimedJob) -> std::io::Result<WorkDir> {
        let dir = data_dir.join("work");
        std::fs::create_dir_all(&dir)?;
        let work = WorkDir {
            stem: dir.join(format!("{}.{}", job.id.replace(':', "_"), job.claim_seq)),
            run_status: String::new(),
        };
        work.remove();
        Ok(work)
    }

    fn file(&self, suffix: &str) -> PathBuf {
        let mut name = self.stem.clone().into_os_string();
        name.push(suffix);
        name.into()
    }

    /// Where the job may write its result.
    pub fn result_path(&self) -> PathBuf {
        self.file(".result.json")
    }

    /// Where a finalizer reads the run summary.
    pub fn summary_path(&self) -> PathBuf {
        self.file(".summary.json")
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(self.result_path());
        let _ = std::fs::remove_file(self.summary_path());
    }

    /// Writes the run summary for a finalizer and remembers the status to tell it.
    pub fn write_summary(&mut self, summary: &serde_json::Value) -> std::io::Result<()> {
        let status = summary["status"].as_str().unwrap_or_default();
        self.run_status = if status == "aborted" {
            status.to_string()
        } else {
            summary["shardsStatus"]
                .as_str()
                .unwrap_or(status)
                .to_string()
        };
        std::fs::write(self.summary_path(), serde_json::to_vec_pretty(summary)?)
    }

    /// The result the job wrote, with `mask` applied to its text before it is parsed, and
    /// compacted: `Ok(None)` when it wrote none, `Err` with the reason when it is too
    /// large or not JSON (the job's own status is not changed).
    pub fn read_result(&self, mask: impl Fn(&str) -> String) -> Result<Option<String>, String> {
        let path = self.result_path();
        let Ok(meta) = std::fs::metadata(&path) else {
            return Ok(None);
        };
        if meta.len() > MAX_RESULT_BYTES {
            return Err(format!(
                "result file ignored: {} bytes is over the {MAX_RESULT_BYTES}-byte limit",
                meta.len()
            ));
        }
        let raw = std::fs::read(&path).map_err(|e| format!("result file unreadable: {e}"))?;
        let text = mask(&String::from_utf8_lossy(&raw));
        if text.trim().is_empty() {
            return Ok(None);
        }
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("result file ignored: not JSON ({e})"))?;
        Ok(Some(value.to_string()))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        self.remove();
    }
}
