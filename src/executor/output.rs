//! Capturing a job's stdout and stderr into bounded memory.
//!
//! Readers split the pipes into lines (a line longer than [`MAX_LINE_BYTES`]
//! is cut into pieces), convert them to text (invalid UTF-8 becomes U+FFFD,
//! NUL becomes U+FFFD, a trailing CR is dropped) and push them into a
//! [`Collector`]. The collector keeps at most `max_stream_bytes` per stream
//! for storage; past that it only counts bytes and marks the stream
//! truncated, so the pipe keeps draining at full speed and the child never
//! blocks on us. Lines wait in memory only until the owner's flusher takes
//! them; when more than [`HIGH_WATER_BYTES`] are pending the reader asks for
//! an early flush and waits for it, so memory stays bounded even when the
//! store is slower than the job.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;

use super::progress;
use super::redact::Redactor;

/// Longest stored line; longer lines are split.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Pending bytes (both streams) that trigger an early flush and pause the readers.
pub const HIGH_WATER_BYTES: usize = 256 * 1024;

/// A child's output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

#[derive(Default)]
struct StreamState {
    pending: Vec<String>,
    pending_bytes: usize,
    kept: u64,
    total: u64,
    truncated: bool,
}

#[derive(Default)]
struct State {
    out: StreamState,
    err: StreamState,
    progress: Option<(u8, String)>,
    /// When the oldest line not yet taken arrived.
    oldest: Option<std::time::Instant>,
}

/// Lines taken from a collector for one flush.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// New stdout lines.
    pub stdout: Vec<String>,
    /// New stderr lines.
    pub stderr: Vec<String>,
    /// When the oldest of them arrived (for the flush-lag metric).
    pub oldest: Option<std::time::Instant>,
}

impl Batch {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.stdout.is_empty() && self.stderr.is_empty()
    }

    /// Adds `newer`'s lines behind this batch's, stream by stream.
    pub fn append(&mut self, newer: Batch) {
        self.stdout.extend(newer.stdout);
        self.stderr.extend(newer.stderr);
        self.oldest = match (self.oldest, newer.oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Byte counts of a finished capture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Bytes the job wrote to stdout.
    pub stdout: u64,
    /// Bytes the job wrote to stderr.
    pub stderr: u64,
    /// Either stream hit the cap.
    pub truncated: bool,
}

/// Shared, bounded output buffer of one execution.
pub struct Collector {
    state: Mutex<State>,
    max_stream_bytes: u64,
    redactor: Option<Arc<Redactor>>,
    flush_wanted: Notify,
    drained: Notify,
}

impl Collector {
    /// A collector that stores at most `max_stream_bytes` per stream.
    pub fn new(max_stream_bytes: u64) -> Arc<Collector> {
        Collector::with_redactor(max_stream_bytes, None)
    }

    /// A collector that also masks the secrets known to `redactor` in every line.
    pub fn with_redactor(max_stream_bytes: u64, redactor: Option<Arc<Redactor>>) -> Arc<Collector> {
        Arc::new(Collector {
            state: Mutex::default(),
            max_stream_bytes,
            redactor: redactor.filter(|r| !r.is_empty()),
            flush_wanted: Notify::new(),
            drained: Notify::new(),
        })
    }

    /// Bytes a reader holds back at a forced line cut so no secret is split (0 without secrets).
    fn holdback(&self) -> usize {
        self.redactor
            .as_ref()
            .map_or(0, |r| r.holdback().min(MAX_LINE_BYTES / 2))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds one raw line (without its newline). Returns true when the buffer is over the high-water mark.
    pub fn push(&self, stream: Stream, raw: &[u8], newline: bool) -> bool {
        let masked = match &self.redactor {
            Some(r) => r.mask(raw),
            None => std::borrow::Cow::Borrowed(raw),
        };
        let raw = &*masked;
        let progress = if stream == Stream::Stdout && raw.starts_with(b"::progress") {
            progress::parse(&to_text(raw))
        } else {
            None
        };
        let mut st = self.lock();
        if progress.is_some() {
            st.progress = progress;
        }
        let cap = self.max_stream_bytes;
        let s = match stream {
            Stream::Stdout => &mut st.out,
            Stream::Stderr => &mut st.err,
        };
        s.total += raw.len() as u64 + u64::from(newline);
        // Past the cap only bytes are counted: no text is made, nothing is kept.
        if !s.truncated && s.kept + raw.len() as u64 <= cap {
            let text = to_text(raw);
            s.kept += text.len() as u64;
            s.pending_bytes += text.len() + 1;
            s.pending.push(text);
            if st.oldest.is_none() {
                st.oldest = Some(std::time::Instant::now());
            }
        } else {
            s.truncated = true;
        }
        st.out.pending_bytes + st.err.pending_bytes >= HIGH_WATER_BYTES
    }

    /// Takes every pending line, freeing the buffer whatever the flush's outcome.
    pub fn take(&self) -> Batch {
        let mut st = self.lock();
        let batch = Batch {
            stdout: std::mem::take(&mut st.out.pending),
            stderr: std::mem::take(&mut st.err.pending),
            oldest: st.oldest.take(),
        };
        st.out.pending_bytes = 0;
        st.err.pending_bytes = 0;
        drop(st);
        self.drained.notify_waiters();
        batch
    }

    /// Takes the latest progress report since the last call.
    pub fn take_progress(&self) -> Option<(u8, String)> {
        self.lock().progress.take()
    }

    /// After the process ended: queue a truncation marker for each capped stream and return the totals.
    pub fn finish(&self) -> Totals {
        let mut guard = self.lock();
        let st = &mut *guard;
        for s in [&mut st.out, &mut st.err] {
            if s.truncated {
                s.pending.push(format!(
                    "[runyard] output truncated: kept {} of {} bytes",
                    s.kept, s.total
                ));
            }
        }
        Totals {
            stdout: st.out.total,
            stderr: st.err.total,
            truncated: st.out.truncated || st.err.truncated,
        }
    }

    /// Resolves when a reader asks for an early flush.
    pub async fn flush_wanted(&self) {
        self.flush_wanted.notified().await
    }

    async fn wait_for_room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let st = self.lock();
                if st.out.pending_bytes + st.err.pending_bytes < HIGH_WATER_BYTES {
                    return;
                }
            }
            self.flush_wanted.notify_one();
            drained.await;
        }
    }
}

/// The first read's buffer: enough for most jobs' whole output.
const FIRST_READ_BYTES: usize = 4 * 1024;
/// A pipe's default capacity: one read drains it once output is heavy.
const FULL_READ_BYTES: usize = 64 * 1024;

/// Lossy text of a raw line: invalid UTF-8 and NUL become U+FFFD, a trailing CR is dropped.
fn to_text(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let text = String::from_utf8_lossy(raw);
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.into_owned()
    }
}

/// Reads `pipe` to its end, pushing lines into `collector`.
pub async fn read_stream(
    mut pipe: impl AsyncRead + Unpin,
    stream: Stream,
    collector: Arc<Collector>,
) {
    // Most jobs write little: a small buffer first, the pipe's whole capacity once a
    // read fills it. Two zeroed 64 KiB buffers per job cost the allocator (and glibc's
    // arena trimming) more than the job's own output on short jobs.
    let mut buf = vec![0u8; FIRST_READ_BYTES];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if n == buf.len() && buf.len() < FULL_READ_BYTES {
            buf.resize(FULL_READ_BYTES, 0);
        }
        let mut over = false;
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let room = MAX_LINE_BYTES - line.len();
            match rest.iter().take(room).position(|&b| b == b'\n') {
                Some(i) => {
                    over |= if line.is_empty() {
                        collector.push(stream, &rest[..i], true)
                    } else {
                        line.extend_from_slice(&rest[..i]);
                        let o = collector.push(stream, &line, true);
                        line.clear();
                        o
                    };
                    rest = &rest[i + 1..];
                }
                None if rest.len() >= room => {
                    line.extend_from_slice(&rest[..room]);
                    rest = &rest[room..];
                    let hold = collector.holdback();
                    if hold == 0 {
                        over |= collector.push(stream, &line, false);
                        line.clear();
                    } else {
                        // Mask what is whole, store all but the tail, and keep the tail
                        // (which may hold the start of a secret) for the next piece.
                        let masked = collector
                            .redactor
                            .as_ref()
                            .map(|r| r.mask(&line).into_owned())
                            .unwrap_or_default();
                        let cut = masked.len().saturating_sub(hold).max(1);
                        over |= collector.push(stream, &masked[..cut], false);
                        line = masked[cut..].to_vec();
                    }
                }
                None => {
                    line.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        if over {
            collector.wait_for_room().await;
        }
    }
    if !line.is_empty() {
        collector.push(stream, &line, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn capture(input: &[u8], cap: u64) -> (Batch, Totals) {
        let c = Collector::new(cap);
        read_stream(input, Stream::Stdout, c.clone()).await;
        let totals = c.finish();
        (c.take(), totals)
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_partial_last_line() {
        let (b, t) = capture(b"a\nb\r\n\nlast", 1 << 20).await;
        assert_eq!(b.stdout, vec!["a", "b", "", "last"]);
        assert_eq!(t.stdout, 10);
        assert!(!t.truncated);
    }

    #[tokio::test]
    async fn invalid_utf8_and_nul_never_panic() {
        let (b, _) = capture(b"ok\xff\xfe\x00end\n", 1 << 20).await;
        assert_eq!(b.stdout, vec!["ok\u{FFFD}\u{FFFD}\u{FFFD}end"]);
    }

    #[tokio::test]
    async fn long_lines_are_split_at_the_cap() {
        let input = vec![b'x'; MAX_LINE_BYTES * 2 + 10];
        let (b, _) = capture(&input, 1 << 20).await;
        assert_eq!(
            b.stdout.iter().map(String::len).collect::<Vec<_>>(),
            vec![MAX_LINE_BYTES, MAX_LINE_BYTES, 10]
        );
    }

    #[tokio::test]
    async fn cap_truncates_with_marker_and_counts_everything() {
        let input = "0123456789\n".repeat(1000);
        let (b, t) = capture(input.as_bytes(), 2048).await;
        assert!(t.truncated);
        assert_eq!(t.stdout, 11_000);
        let marker = b.stdout.last().unwrap();
        assert!(
            marker.contains("truncated") && marker.contains("of 11000 bytes"),
            "{marker}"
        );
        let kept: usize = b.stdout[..b.stdout.len() - 1].iter().map(String::len).sum();
        assert!(kept <= 2048);
    }

    #[tokio::test]
    async fn a_secret_split_across_a_long_line_cut_is_masked() {
        let secret = "s3cr3t-token-value";
        let redactor = Arc::new(Redactor::new([secret]));
        // Place the secret so that it straddles the 64 KiB cut, and another one later.
        let mut input = vec![b'x'; MAX_LINE_BYTES - 5];
        input.extend_from_slice(secret.as_bytes());
        input.extend_from_slice(&vec![b'y'; MAX_LINE_BYTES]);
        input.extend_from_slice(secret.as_bytes());
        input.extend_from_slice(b"\nnext ");
        input.extend_from_slice(secret.as_bytes());
        input.push(b'\n');
        let c = Collector::with_redactor(1 << 22, Some(redactor));
        read_stream(&input[..], Stream::Stdout, c.clone()).await;
        let joined = c.take().stdout.concat();
        assert!(!joined.contains(secret), "secret leaked");
        assert!(!joined.contains("s3cr3t"), "a piece of the secret leaked");
        assert_eq!(joined.matches(super::super::redact::MASK).count(), 3);
    }

    #[test]
    fn progress_lines_are_recorded() {
        let c = Collector::new(1024);
        c.push(Stream::Stdout, b"::progress 30 halfway-ish", true);
        c.push(Stream::Stderr, b"::progress 99 not from stderr", true);
        assert_eq!(c.take_progress(), Some((30, "halfway-ish".into())));
        assert_eq!(c.take_progress(), None);
    }
}
