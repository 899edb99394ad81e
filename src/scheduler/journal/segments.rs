//! The journal's segment files: appending an end and, once the store has it, its
//! answer; retiring a full segment and removing it with its last answer; reading
//! what a segment leaves unanswered. See the module above for why segments.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::Entry;

/// Past this size a segment takes no more ends; it goes once every end in it is answered.
pub(super) const SEGMENT_BYTES: u64 = 4 << 20;

/// One line of a segment.
#[derive(Debug, Deserialize)]
enum Record {
    End(Entry),
    Done { job_id: String, claim_seq: i64 },
}

/// [`Record`] as written, borrowing what it writes.
#[derive(Serialize)]
enum RecordRef<'a> {
    End(&'a Entry),
    Done { job_id: &'a str, claim_seq: i64 },
}

/// This life's segments.
#[derive(Debug)]
pub(super) struct Segments {
    dir: PathBuf,
    /// When this life began (ms), zero-padded: segment names sort in the order written.
    life: String,
    state: Mutex<State>,
}

impl Segments {
    /// This life's segments in `dir`, named after the moment it began.
    pub(super) fn new(dir: PathBuf) -> Segments {
        let life = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Segments {
            dir,
            life: format!("{life:015}"),
            state: Mutex::default(),
        }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `entry`'s line to the current segment.
    pub(super) fn append_end(&self, entry: &Entry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&RecordRef::End(entry)).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut state = self.state.lock().expect("journal lock");
        let number = state.append_end(self, &line)?;
        state
            .open
            .insert((entry.job_id.clone(), entry.claim_seq), number);
        Ok(())
    }

    /// The store answered this end (see [`State::answer`]).
    pub(super) fn answer(&self, job_id: &str, claim_seq: i64) {
        self.state
            .lock()
            .expect("journal lock")
            .answer(job_id, claim_seq);
    }
}

#[derive(Debug, Default)]
struct State {
    /// The segment new ends go to.
    current: Option<Segment>,
    /// Full segments that still hold unanswered ends, by number.
    retired: HashMap<u64, Segment>,
    next: u64,
    /// Each unanswered end's segment.
    open: HashMap<(String, i64), u64>,
}

#[derive(Debug)]
struct Segment {
    number: u64,
    path: PathBuf,
    file: File,
    bytes: u64,
    /// Ends written here and not yet answered.
    unanswered: usize,
    /// A write failed part way (a full disk): the next line starts on a line of its own,
    /// so the part written never runs into a whole line.
    cut: bool,
}

impl Segment {
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.cut {
            self.file.write_all(b"\n")?;
            self.bytes += 1;
            self.cut = false;
        }
        if let Err(e) = self.file.write_all(line) {
            self.cut = true;
            return Err(e);
        }
        self.bytes += line.len() as u64;
        Ok(())
    }

    fn mark_answered(&mut self, job_id: &str, claim_seq: i64) {
        if let Err(e) = self.append(&done_line(job_id, claim_seq)) {
            // Without its `Done` the end is replayed at the next start, where its fence
            // refuses it: only that work is wasted.
            tracing::warn!(
                "cannot mark a journaled end answered in {}: {e}",
                self.path.display()
            );
        }
    }
}

impl State {
    /// Appends an end to the current segment (opening one when there is none or it is
    /// full); returns the segment's number.
    fn append_end(&mut self, segments: &Segments, line: &[u8]) -> std::io::Result<u64> {
        if self
            .current
            .as_ref()
            .is_none_or(|c| c.bytes >= SEGMENT_BYTES)
        {
            self.open_segment(segments)?;
        }
        let current = self.current.as_mut().expect("a segment was just opened");
        current.append(line)?;
        current.unanswered += 1;
        Ok(current.number)
    }

    fn open_segment(&mut self, segments: &Segments) -> std::io::Result<()> {
        // A name a kept segment already has (a clock set back since that life, or a
        // replica on the same `data_dir` that began in the same millisecond) is skipped;
        // the directory is made when a segment finds it missing.
        let (number, path, file) = loop {
            let number = self.next;
            self.next += 1;
            let path = segments
                .dir
                .join(format!("{}.{number:08}.log", segments.life));
            match open_locked(&path) {
                Ok(file) => break (number, path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(&segments.dir)?;
                    break (number, path.clone(), open_locked(&path)?);
                }
                Err(e) => return Err(e),
            }
        };
        let fresh = Segment {
            number,
            path,
            file,
            bytes: 0,
            unanswered: 0,
            cut: false,
        };
        if let Some(full) = self.current.replace(fresh) {
            if full.unanswered == 0 {
                remove_segment(&full.path);
            } else {
                self.retired.insert(full.number, full);
            }
        }
        Ok(())
    }

    /// The store answered this end: its segment says so, or goes when it is retired
    /// and this was its last unanswered end.
    fn answer(&mut self, job_id: &str, claim_seq: i64) {
        let Some(number) = self.open.remove(&(job_id.to_string(), claim_seq)) else {
            return;
        };
        if let Some(retired) = self.retired.get_mut(&number) {
            retired.unanswered -= 1;
            if retired.unanswered > 0 {
                retired.mark_answered(job_id, claim_seq);
            } else if let Some(gone) = self.retired.remove(&number) {
                remove_segment(&gone.path);
            }
        } else if let Some(current) = self.current.as_mut().filter(|c| c.number == number) {
            current.unanswered -= 1;
            current.mark_answered(job_id, claim_seq);
        }
    }
}

/// Creates the segment at `path`, locked (`flock`) for as long as this life holds it:
/// a replica starting on the same `data_dir` replays only segments no live process
/// holds. It is made and locked under another name first and then linked into place,
/// so no replay ever finds it unlocked.
fn open_locked(path: &Path) -> std::io::Result<File> {
    let making = path.with_extension("making");
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&making)?;
    let taken = file
        .try_lock()
        .map_err(|e| std::io::Error::other(format!("cannot lock a new segment: {e}")));
    // `link` fails on a name already there (a kept segment's), where `rename` would
    // replace it.
    let placed = taken.and_then(|()| std::fs::hard_link(&making, path));
    let _ = std::fs::remove_file(&making);
    placed.map(|()| file)
}

pub(super) fn done_line(job_id: &str, claim_seq: i64) -> Vec<u8> {
    let mut line = serde_json::to_vec(&RecordRef::Done { job_id, claim_seq })
        .expect("a done record serialises");
    line.push(b'\n');
    line
}

pub(super) fn remove_segment(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove journal segment {}: {e}", path.display());
    }
}

/// What a segment's text says: the ends it leaves unanswered, in the order written.
#[derive(Debug, Default)]
pub(super) struct Read {
    pub ends: Vec<Entry>,
    /// The last line could not be read: the crash cut it short (its `write` had not
    /// returned, so the store was not asked either).
    pub cut_last: bool,
    /// Lines before the last that could not be read: a write that failed part way (a
    /// full disk) or damage. An end among them may be lost to replay.
    pub unreadable: usize,
}

/// Reads a segment's text (see [`Read`]).
pub(super) fn unanswered(text: &[u8]) -> Read {
    let mut ends: Vec<Option<Entry>> = Vec::new();
    let mut at: HashMap<(String, i64), usize> = HashMap::new();
    let mut read = Read::default();
    let lines: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_slice::<Record>(line) {
            Ok(Record::End(entry)) => {
                at.insert((entry.job_id.clone(), entry.claim_seq), ends.len());
                ends.push(Some(entry));
            }
            Ok(Record::Done { job_id, claim_seq }) => {
                if let Some(i) = at.remove(&(job_id, claim_seq)) {
                    ends[i] = None;
                }
            }
            Err(_) if i + 1 == lines.len() => read.cut_last = true,
            Err(_) => read.unreadable += 1,
        }
    }
    read.ends = ends.into_iter().flatten().collect();
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(job_id: &str) -> Entry {
        serde_json::from_value(serde_json::json!({
            "job_id": job_id, "claim_seq": 1, "output": [], "outcome": {"kind": "completed"},
            "exit_code": 0, "stdout_bytes": 0, "stderr_bytes": 0, "truncated": false,
            "result": null, "start": null
        }))
        .unwrap()
    }

    #[test]
    fn after_a_write_that_failed_part_way_the_next_line_is_whole() {
        let data = tempfile::tempdir().unwrap();
        let segments = Segments::new(data.path().join("journal"));
        segments.append_end(&entry("a")).unwrap();
        let path = {
            let mut state = segments.state.lock().unwrap();
            let current = state.current.as_mut().unwrap();
            // The disk fills: the write fails (`/dev/full`) after part of the line went
            // out (written here by hand).
            let real = std::mem::replace(
                &mut current.file,
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            );
            (&real).write_all(br#"{"Done":{"job_id":"a","cl"#).unwrap();
            current.mark_answered("a", 1);
            current.file = real;
            current.path.clone()
        };
        segments.append_end(&entry("b")).unwrap();
        let read = unanswered(&std::fs::read(path).unwrap());
        assert_eq!(read.ends.len(), 2, "a (its Done was cut) and b");
        assert_eq!(read.ends[1].job_id, "b");
        assert_eq!(read.unreadable, 1);
        assert!(!read.cut_last);
    }

    #[test]
    fn a_name_a_kept_segment_already_has_is_skipped() {
        let data = tempfile::tempdir().unwrap();
        let segments = Segments::new(data.path().join("journal"));
        std::fs::create_dir_all(segments.dir()).unwrap();
        let kept = segments
            .dir()
            .join(format!("{}.{:08}.log", segments.life, 0));
        std::fs::write(&kept, "kept\n").unwrap();
        segments.append_end(&entry("a")).unwrap();
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "kept\n");
        let next = segments
            .dir()
            .join(format!("{}.{:08}.log", segments.life, 1));
        assert_eq!(unanswered(&std::fs::read(next).unwrap()).ends.len(), 1);
    }
}
