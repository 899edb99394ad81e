//! What a wait shows: the per-shard progress bar and status, retry announcements,
//! rendered `::progress` lines, and the summary table at the end. Pure functions of the
//! run's JSON, so they are tested without a server.

use serde_json::Value;

use super::term;

/// `1.2s`, `2m03s`, `1h02m`.
pub(super) fn human_duration(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    match s {
        0..60 => format!("{:.1}s", ms as f64 / 1000.0),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub(super) fn label(job: &Value) -> String {
    if job["kind"] == "finalize" {
        "finalize".into()
    } else {
        format!("s{}", job["shardIndex"])
    }
}

/// A job waiting for its next attempt shows as `retrying`.
fn shown_status(job: &Value) -> &str {
    let status = job["status"].as_str().unwrap_or("?");
    if status == "queued" && job["attempt"].as_u64().unwrap_or(1) > 1 {
        "retrying"
    } else {
        status
    }
}

pub(super) fn bar(job: &Value, width: usize, colour: bool) -> String {
    let status = shown_status(job);
    let pct = job["progress"].as_u64().unwrap_or(0).min(100) as usize;
    let pct = if status == "completed" { 100 } else { pct };
    let filled = pct * 24 / 100;
    let msg: String = job["progressMessage"]
        .as_str()
        .unwrap_or("")
        .chars()
        .take(40)
        .collect();
    let attempts = match job["maxAttempts"].as_u64() {
        Some(max) if max > 1 => format!(" {}/{max}", job["attempt"]),
        _ => String::new(),
    };
    format!(
        "{:>width$} [{}{}] {pct:>3}% {}{attempts} {msg}",
        label(job),
        "#".repeat(filled),
        "-".repeat(24 - filled),
        term::status(status, 9, colour),
    )
    .trim_end()
    .to_string()
}

/// The line announcing a retry, when `job` moved to a later attempt than `seen`.
pub(super) fn retry_line(job: &Value, seen: u64) -> Option<String> {
    let attempt = job["attempt"].as_u64()?;
    if attempt <= seen {
        return None;
    }
    let why = match (job["reason"].as_str(), job["exitCode"].as_i64()) {
        (_, Some(code)) => format!("exit {code}"),
        (Some(reason), None) => reason.to_string(),
        (None, None) => "failed".to_string(),
    };
    Some(format!(
        "{} attempt {} failed ({why}); retrying: attempt {attempt}/{}",
        label(job),
        attempt - 1,
        job["maxAttempts"]
    ))
}

/// Renders a `::progress <n> <message>` line; `None` for an ordinary line.
pub(super) fn render_progress(line: &str) -> Option<String> {
    let (pct, msg) = crate::executor::progress::parse(line)?;
    Some(format!("-> {pct:>3}% {msg}").trim_end().to_string())
}

/// The per-shard summary at the end of a wait, on stderr.
pub(super) fn summary(run: &Value, colour: bool) {
    let run_id = run["runId"].as_str().unwrap_or_default();
    let jobs: Vec<&Value> = run["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(run["finalizer"].as_object().map(|_| &run["finalizer"]))
        .collect();
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for j in &jobs {
        let status = j["status"].as_str().unwrap_or("?");
        if status == "failed" {
            failed.push(j["id"].as_str().unwrap_or_default().to_string());
        }
        rows.push([
            label(j),
            status.to_string(),
            j["exitCode"]
                .as_i64()
                .map_or("-".to_string(), |c| c.to_string()),
            j["durationMs"]
                .as_i64()
                .map_or("-".to_string(), human_duration),
            format!("{}/{}", j["attempt"], j["maxAttempts"]),
            // Executions, requeues included: a shard re-run after its node died ran
            // twice within one attempt.
            run["attempts"][j["id"].as_str().unwrap_or_default()]
                .as_array()
                .map_or(1, Vec::len)
                .max(1)
                .to_string(),
            // A completed job's reason is always `exit_code`: only failures need one.
            match status {
                "completed" => "-".to_string(),
                _ => j["reason"].as_str().unwrap_or("-").to_string(),
            },
        ]);
    }
    let headers = [
        "SHARD",
        "STATUS",
        "EXIT",
        "DURATION",
        "ATTEMPTS",
        "EXECUTIONS",
        "REASON",
    ];
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 1 {
                    term::status(c, widths[i], colour)
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    term::err("");
    term::err(line(&headers.map(String::from)));
    for r in &rows {
        term::err(line(r));
    }
    let status = run["status"].as_str().unwrap_or("?");
    let took = match (run["createdAt"].as_str(), run["finishedAt"].as_str()) {
        (Some(a), Some(b)) => match (
            crate::clock::parse_rfc3339(a),
            crate::clock::parse_rfc3339(b),
        ) {
            (Some(a), Some(b)) => format!(" in {}", human_duration(b - a)),
            _ => String::new(),
        },
        _ => String::new(),
    };
    term::err(format_args!(
        "run {} {}{took}",
        term::bold(run_id, colour),
        term::status(status, 0, colour)
    ));
    for id in failed {
        term::err(format_args!("see its log: runyard logs {id}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_read_like_a_person_wrote_them() {
        assert_eq!(human_duration(1234), "1.2s");
        assert_eq!(human_duration(123_000), "2m03s");
        assert_eq!(human_duration(3_720_000), "1h02m");
    }

    #[test]
    fn progress_lines_are_rendered_and_others_are_not() {
        assert_eq!(
            render_progress("::progress 50 half way").as_deref(),
            Some("->  50% half way")
        );
        assert_eq!(render_progress("::progress 101 no"), None);
        assert_eq!(render_progress("plain"), None);
    }

    #[test]
    fn retries_are_announced_once_per_attempt() {
        let job = json!({"kind": "shard", "shardIndex": 1, "attempt": 2, "maxAttempts": 3,
            "status": "queued", "exitCode": 3});
        assert_eq!(
            retry_line(&job, 1).as_deref(),
            Some("s1 attempt 1 failed (exit 3); retrying: attempt 2/3")
        );
        assert_eq!(retry_line(&job, 2), None);
        assert!(
            bar(&job, 2, false).contains("retrying  2/3"),
            "{}",
            bar(&job, 2, false)
        );
    }
}
