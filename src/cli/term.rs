//! Writing to the terminal: stdout that stops quietly when its reader goes away, and
//! colour only where a person looks at it.
//!
//! `println!` panics when stdout is a closed pipe (`runyard show RUN | head -1`), so
//! every client command writes through [`out`], which reports a closed stdout as
//! [`Closed`]; the command unwinds with it and exits 0 without a message, like `head`'s
//! other writers do. stderr is best effort: nothing is left to report a failure on.
//!
//! Colour is for terminals: statuses are painted only when the stream they go to is a
//! terminal, `NO_COLOR` is unset (or empty) and `TERM` is not `dumb` — never into a
//! file or pipe. The server's own log lines follow the same rule
//! ([`colour_on_stderr`]).

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

/// stdout was closed by its reader: the command stops and exits quietly.
#[derive(Debug, thiserror::Error)]
#[error("stdout is closed")]
pub struct Closed;

/// Writes one line to stdout; [`Closed`] when nobody reads it any more.
pub fn out(line: impl Display) -> Result<(), Closed> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").map_err(|_| Closed)?;
    // stdout is line-buffered, but a write without a newline in it must not linger.
    stdout.flush().map_err(|_| Closed)
}

/// Writes one line to stderr, ignoring failures (there is nowhere left to report them).
pub fn err(line: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Writes to stderr without a newline (in-place redraws), ignoring failures.
pub fn err_raw(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
    let _ = stderr.flush();
}

fn colour_allowed() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
    !no_color && !dumb
}

/// Whether stdout gets colour (a terminal, `NO_COLOR` unset, `TERM` not `dumb`).
pub fn colour_on_stdout() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| colour_allowed() && std::io::stdout().is_terminal())
}

/// Whether stderr gets colour (progress bars, summaries, the server's log lines).
pub fn colour_on_stderr() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| colour_allowed() && std::io::stderr().is_terminal())
}

/// The SGR colour of a job or run status.
fn status_sgr(status: &str) -> Option<&'static str> {
    Some(match status {
        "completed" => "32",                                  // green
        "failed" => "31",                                     // red
        "aborted" => "33",                                    // yellow
        "running" => "36",                                    // cyan
        "queued" | "retrying" | "waiting" | "skipped" => "2", // dim
        _ => return None,
    })
}

/// `status` padded to `width`, painted when `colour` (the padding stays outside the
/// escape codes, so columns line up either way).
pub fn status(status: &str, width: usize, colour: bool) -> String {
    let pad = " ".repeat(width.saturating_sub(status.chars().count()));
    match status_sgr(status).filter(|_| colour) {
        Some(sgr) => format!("\x1b[{sgr}m{status}\x1b[0m{pad}"),
        None => format!("{status}{pad}"),
    }
}

/// `text` in bold when `colour`.
pub fn bold(text: &str, colour: bool) -> String {
    if colour {
        format!("\x1b[1m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::status;

    #[test]
    fn statuses_are_painted_only_when_asked_and_keep_their_width() {
        assert_eq!(status("failed", 9, false), "failed   ");
        assert_eq!(status("failed", 9, true), "\x1b[31mfailed\x1b[0m   ");
        assert_eq!(status("weird", 3, true), "weird");
    }
}
