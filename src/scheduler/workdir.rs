//! A job execution's private files under `data_dir/work/`: where the job may
//! write its JSON result (`$RUNYARD_RESULT_FILE`) and
//! where a finalizer finds the run summary (`$RUNYARD_SUMMARY_FILE`) and a job of a
//! run created `after` others finds their summaries (`$RUNYARD_NEEDS_FILE`). Named
//! per `(job, claim_seq)`, so a stale execution never reads another's files;
//! removed when the execution ends. Plain files in one shared directory, not a
//! directory per job: nothing is created for a job that writes no result, and only
//! the files that may exist are unlinked (a miss still costs the kernel a directory
//! search: six per job were a few percent of the server's CPU on `/bin/true` runs).

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
    /// The needs file was written (`RUNYARD_NEEDS_FILE`).
    pub has_needs: bool,
    /// The summary file was written (a finalizer's).
    has_summary: bool,
}

impl WorkDir {
    /// The files of this execution under `data_dir/work/` (created if missing); a stale
    /// result left by a crashed execution with the same name is removed.
    pub fn create(data_dir: &Path, job: &ClaimedJob) -> std::io::Result<WorkDir> {
        let dir = data_dir.join("work");
        // One `mkdir` when the directory is there (the usual case); its parents only
        // when it is not.
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(&dir)?,
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let work = WorkDir {
            stem: dir.join(format!("{}.{}", job.id.replace(':', "_"), job.claim_seq)),
            run_status: String::new(),
            has_needs: false,
            has_summary: false,
        };
        // Only the job writes its result; the summary and needs files are written
        // whole by this execution before its process starts.
        let _ = std::fs::remove_file(work.result_path());
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

    /// `RUNYARD_NEEDS_FILE`: the summaries of the runs this job's run waited for.
    pub fn needs_path(&self) -> PathBuf {
        self.file(".needs.json")
    }

    /// Writes `{"needs": [summary, …]}`: each run this job's run waited for, as a
    /// finalizer's summary shows a run (status, parameters, each shard's result).
    pub fn write_needs(&mut self, needs: Vec<serde_json::Value>) -> std::io::Result<()> {
        let body = serde_json::json!({ "needs": needs });
        // Set first: a write that fails half-way leaves a file to remove.
        self.has_needs = true;
        std::fs::write(self.needs_path(), serde_json::to_vec_pretty(&body)?)
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(self.result_path());
        if self.has_summary {
            let _ = std::fs::remove_file(self.summary_path());
        }
        if self.has_needs {
            let _ = std::fs::remove_file(self.needs_path());
        }
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
        self.has_summary = true;
        std::fs::write(self.summary_path(), serde_json::to_vec_pretty(summary)?)
    }

    /// The result file, for reading on a blocking thread.
    pub fn reader(&self) -> ResultFile {
        ResultFile(self.result_path())
    }
}

/// The path of an execution's result file.
pub(crate) struct ResultFile(PathBuf);

impl ResultFile {
    /// The result the job wrote, compacted, with `mask` applied to every string (keys
    /// too) after parsing, so no escape spelling hides a secret: `Ok(None)` when it wrote
    /// none, `Err` with the reason when it is not a regular file, too large or not JSON
    /// (the job's own status is not changed).
    ///
    /// The job controls the path, so it is opened without following a symlink and without
    /// blocking (a FIFO would otherwise hang the reader), must be a regular file, and is
    /// read through a limit (a file that grows after the check is cut, not slurped). Call
    /// it from a blocking thread.
    pub fn read_result(&self, mask: &dyn Fn(&str) -> String) -> Result<Option<String>, String> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits() as i32)
            .open(&self.0)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("result file ignored: cannot open it ({e})")),
        };
        let meta = file
            .metadata()
            .map_err(|e| format!("result file unreadable: {e}"))?;
        if !meta.file_type().is_file() {
            return Err("result file ignored: not a regular file".into());
        }
        let mut raw = Vec::new();
        file.take(MAX_RESULT_BYTES + 1)
            .read_to_end(&mut raw)
            .map_err(|e| format!("result file unreadable: {e}"))?;
        if raw.len() as u64 > MAX_RESULT_BYTES {
            return Err(format!(
                "result file ignored: over the {MAX_RESULT_BYTES}-byte limit"
            ));
        }
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let mut value: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|e| format!("result file ignored: not JSON ({e})"))?;
        mask_strings(&mut value, mask);
        Ok(Some(value.to_string()))
    }
}

/// Applies `mask` to every string and object key of `value`.
fn mask_strings(value: &mut serde_json::Value, mask: &dyn Fn(&str) -> String) {
    use serde_json::Value;
    match value {
        Value::String(s) => *s = mask(s),
        Value::Array(items) => items.iter_mut().for_each(|v| mask_strings(v, mask)),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (k, mut v) in entries {
                mask_strings(&mut v, mask);
                map.insert(mask(&k), v);
            }
        }
        _ => {}
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobKind;

    fn job(claim_seq: i64) -> ClaimedJob {
        ClaimedJob {
            id: "r1:s0".into(),
            run_id: "r1".into(),
            pipeline: "p".into(),
            shard_index: 0,
            shard_count: 1,
            attempt: 1,
            claim_seq,
            priority: 0,
            params: Default::default(),
            kind: JobKind::Shard,
            due_at: 0,
            output_lines: 0,
            has_needs: false,
        }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("work"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn every_file_an_execution_or_its_job_wrote_is_gone_when_it_ends() {
        let data = tempfile::tempdir().unwrap();
        // A stale result of the same execution's name does not pass as this one's.
        std::fs::create_dir_all(data.path().join("work")).unwrap();
        std::fs::write(data.path().join("work/r1_s0.3.result.json"), "{}").unwrap();
        let mut work = WorkDir::create(data.path(), &job(3)).unwrap();
        assert!(
            listing(data.path()).is_empty(),
            "the stale result is removed"
        );
        work.write_summary(&serde_json::json!({"status": "completed"}))
            .unwrap();
        work.write_needs(vec![serde_json::json!({"status": "completed"})])
            .unwrap();
        std::fs::write(work.result_path(), "{\"ok\": true}").unwrap();
        assert_eq!(
            listing(data.path()),
            [
                "r1_s0.3.needs.json",
                "r1_s0.3.result.json",
                "r1_s0.3.summary.json"
            ]
        );
        drop(work);
        assert!(
            listing(data.path()).is_empty(),
            "{:?}",
            listing(data.path())
        );

        // A job that writes nothing leaves nothing, and its result (if it writes one) goes.
        let plain = WorkDir::create(data.path(), &job(4)).unwrap();
        std::fs::write(plain.result_path(), "{}").unwrap();
        drop(plain);
        drop(WorkDir::create(data.path(), &job(5)).unwrap());
        assert!(
            listing(data.path()).is_empty(),
            "{:?}",
            listing(data.path())
        );
    }
}
