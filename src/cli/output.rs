//! Human-readable tables for the client commands, written through [`term::out`] (a
//! closed stdout stops them quietly) with statuses coloured on a terminal.

use serde_json::Value;

use super::term::{self, Closed};

/// Pretty JSON.
pub fn print_json(v: &Value) -> Result<(), Closed> {
    term::out(serde_json::to_string_pretty(v).unwrap_or_default())
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints rows under headers; the column named `STATUS` is coloured on a terminal.
pub(super) fn table(headers: &[&str], rows: Vec<Vec<String>>) -> Result<(), Closed> {
    let colour = term::colour_on_stdout();
    let status_col = headers.iter().position(|h| *h == "STATUS");
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>, paint: bool| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if paint && Some(i) == status_col {
                    term::status(c, widths[i], colour)
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    term::out(line(headers.iter().map(|h| h.to_string()).collect(), false))?;
    for r in rows {
        term::out(line(r, true))?;
    }
    Ok(())
}

/// `runyard runs`.
pub fn runs_table(v: &Value) -> Result<(), Closed> {
    let rows = v["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                short_id(&s(&r["runId"])),
                s(&r["runId"]),
                s(&r["pipelineId"]),
                s(&r["status"]),
                format!("{}/{}", r["shardsDone"], r["shardCount"]),
                s(&r["triggeredBy"]),
                s(&r["createdAt"]),
            ]
        })
        .collect();
    table(
        &["ID", "RUN", "PIPELINE", "STATUS", "SHARDS", "BY", "CREATED"],
        rows,
    )
}

/// The short form of a run id shown everywhere (the dashboard too): its last 8 hex
/// digits, the random end of a UUIDv7 (its start is the time, shared by runs made
/// together). Every route and command accepts it.
pub fn short_id(run_id: &str) -> String {
    let digits: String = run_id.chars().filter(char::is_ascii_hexdigit).collect();
    digits[digits.len().saturating_sub(8)..].to_string()
}

/// `runyard show`.
pub fn run_details(r: &Value) -> Result<(), Closed> {
    let colour = term::colour_on_stdout();
    let run_id = s(&r["runId"]);
    term::out(format_args!(
        "run       {run_id} (short id {})",
        short_id(&run_id)
    ))?;
    term::out(format_args!("pipeline  {}", s(&r["pipelineId"])))?;
    term::out(format_args!(
        "status    {}",
        term::status(&s(&r["status"]), 0, colour)
    ))?;
    term::out(format_args!("params    {}", r["parameters"]))?;
    if let Some(after) = r["after"].as_array() {
        let ids: Vec<String> = after.iter().map(s).collect();
        let when = r["afterWhen"].as_str().unwrap_or("success");
        term::out(format_args!("after     {} ({when})", ids.join(", ")))?;
    }
    term::out(format_args!("created   {}", s(&r["createdAt"])))?;
    term::out(format_args!("started   {}", s(&r["startedAt"])))?;
    term::out(format_args!("finished  {}", s(&r["finishedAt"])))?;
    term::out("")?;
    let rows = r["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(r["finalizer"].as_object().map(|_| &r["finalizer"]))
        .map(|j| {
            vec![
                s(&j["id"]),
                s(&j["status"]),
                format!("{}/{}", j["attempt"], j["maxAttempts"]),
                s(&j["exitCode"]),
                j["progress"]
                    .as_u64()
                    .map(|p| format!("{p}%"))
                    .unwrap_or_else(|| "-".into()),
                // A completed job's reason is always `exit_code`: nothing to say.
                if j["status"] == "completed" {
                    "-".to_string()
                } else {
                    s(&j["reason"])
                },
                match j["unplaceable"].as_str() {
                    Some(why) => format!("unplaceable: {why}"),
                    None => s(&j["error"]),
                },
                s(&j["nodeName"]),
            ]
        })
        .collect();
    table(
        &[
            "JOB", "STATUS", "ATTEMPT", "EXIT", "PROGRESS", "REASON", "ERROR", "NODE",
        ],
        rows,
    )?;
    for d in r["deliveries"].as_array().into_iter().flatten() {
        term::out("")?;
        term::out(format_args!(
            "webhook   {} {} ({} attempt(s)) → {}",
            s(&d["id"]),
            s(&d["status"]),
            d["attempts"],
            s(&d["url"])
        ))?;
        for a in d["history"].as_array().into_iter().flatten() {
            term::out(format_args!(
                "          #{} {} {} {}",
                a["attempt"],
                s(&a["startedAt"]),
                s(&a["statusCode"]),
                s(&a["error"])
            ))?;
        }
    }
    Ok(())
}

/// `runyard pipelines`.
pub fn pipelines_table(v: &Value) -> Result<(), Closed> {
    let rows = v["pipelines"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let cmd: Vec<String> = p["command"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            // Setup state per node, e.g. "ready" or "failed×3"; "-" without a setup.
            let setup: Vec<String> = p["setup"]["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| match n["failures"].as_u64() {
                    Some(f) if f > 0 => format!("{}×{f}", s(&n["setup"])),
                    _ => s(&n["setup"]),
                })
                .collect();
            let setup = match (p["setup"].is_null(), setup.is_empty()) {
                (true, _) => "-".to_string(),
                (false, true) => "pending".to_string(),
                (false, false) => setup.join(","),
            };
            vec![
                s(&p["id"]),
                s(&p["shards"]),
                match p["concurrencyKey"].as_str() {
                    Some(key) => format!(
                        "{} ({key} ≤ {})",
                        s(&p["concurrency"]),
                        s(&p["concurrencyPerKey"])
                    ),
                    None => s(&p["concurrency"]),
                },
                requires(&p["requires"]),
                s(&p["queued"]),
                s(&p["running"]),
                setup,
                s(&p["circuit"]),
                if p["paused"] == true {
                    "paused".to_string()
                } else {
                    "active".to_string()
                },
                match p["schedule"]["nextFireAt"].as_str() {
                    Some(next) => format!(
                        "{next} ({}, {})",
                        s(&p["schedule"]["cron"]),
                        s(&p["schedule"]["timeZone"])
                    ),
                    None => "-".to_string(),
                },
                cmd.join(" "),
            ]
        })
        .collect();
    table(
        &[
            "PIPELINE",
            "SHARDS",
            "CONCURRENCY",
            "REQUIRES",
            "QUEUED",
            "RUNNING",
            "SETUP",
            "CIRCUIT",
            "STATE",
            "NEXT FIRE",
            "COMMAND",
        ],
        rows,
    )
}

/// `runyard workers`.
pub fn workers_table(v: &Value) -> Result<(), Closed> {
    let rows = v["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            let running = w["runningJobs"].as_array().map(|a| a.len()).unwrap_or(0);
            let labels: Vec<String> = w["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", s(v)))
                .collect();
            vec![
                s(&w["name"]),
                s(&w["id"]),
                s(&w["host"]),
                s(&w["pid"]),
                format!("{running}/{}", w["slots"]),
                if labels.is_empty() {
                    "-".to_string()
                } else {
                    labels.join(",")
                },
                match w["configDiffers"] == true {
                    true => format!("{} (differs)", s(&w["configDigest"])),
                    false => s(&w["configDigest"]),
                },
                s(&w["heartbeat"]),
                s(&w["admission"]),
                s(&w["url"]),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "NODE",
            "HOST",
            "PID",
            "BUSY",
            "LABELS",
            "CONFIG",
            "HEARTBEAT",
            "ADMISSION",
            "URL",
        ],
        rows,
    )
}

/// A pipeline's `requires` as one cell: `gpu=*,zone=eu-1|eu-2`, or `-`.
fn requires(v: &Value) -> String {
    let items: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, r)| match r.as_array() {
            Some(any) => format!("{k}={}", any.iter().map(s).collect::<Vec<_>>().join("|")),
            None => format!("{k}={}", s(r)),
        })
        .collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}
