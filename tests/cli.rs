//! The `runyard` binary as users run it: client commands against a live node,
//! `--wait` exit codes, and config errors at start.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::TestServer;
use serde_json::{Value, json};

const PIPELINES: &str = r#"
[pipelines.ok]
command = ["sh", "-c", "echo ::progress 50 half; echo out; echo err >&2"]
shards = 2

[pipelines.bad]
command = ["sh", "-c", "exit 3"]

[pipelines.slow]
command = ["sleep", "60"]

[pipelines.greet]
command = ["echo", "hello {name}"]
[pipelines.greet.params.name]
pattern = "[a-z]+"

[pipelines.mixed]
command = ["sh", "-c", "echo line of $RUNYARD_SHARD_INDEX; echo ::progress 40 warming; test $RUNYARD_SHARD_INDEX = 0 || exit 5"]
shards = 2
max_attempts = 2
retry_backoff = "100ms"
"#;

async fn cli(server: &TestServer, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runyard"));
    cmd.args(args)
        .env("RUNYARD_URL", &server.base)
        .stdin(Stdio::null());
    run(cmd).await
}

/// The binary with `args` and no server in its environment.
fn runyard(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runyard"));
    cmd.args(args)
        .env_remove("RUNYARD_URL")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    cmd
}

async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn trigger_wait_exits_by_run_status() {
    let s = TestServer::start("max_workers = 2", PIPELINES).await;
    let ok = cli(&s, &["trigger", "ok", "--wait"]).await;
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let progress = String::from_utf8_lossy(&ok.stderr);
    assert!(
        progress.contains("s0 [") && progress.contains("s1 ["),
        "a bar per shard: {progress}"
    );
    assert!(progress.contains("completed"));

    let bad = cli(&s, &["trigger", "bad", "--wait", "--json"]).await;
    assert_eq!(bad.status.code(), Some(1));
    let run: Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(
        (run["status"].clone(), run["jobs"][0]["exitCode"].clone()),
        (json!("failed"), json!(3))
    );

    // Abort a waited run from elsewhere: the waiting CLI exits 130.
    let mut events = s.events();
    let base = s.base.clone();
    let waiter = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_runyard"))
            .args(["trigger", "slow", "--wait"])
            .env("RUNYARD_URL", base)
            .output()
            .unwrap()
    });
    let started = events
        .wait_for(
            "job:started",
            |d| d["pipelineId"] == "slow",
            Duration::from_secs(20),
        )
        .await;
    let run_id = started.data["runId"].as_str().unwrap().to_string();
    let abort = cli(&s, &["abort", &run_id]).await;
    assert_eq!(abort.status.code(), Some(0));
    assert!(
        stdout(&abort).contains("aborted: 0 queued job(s) aborted, 1 running job(s) told to stop"),
        "{}",
        stdout(&abort)
    );
    let again = cli(&s, &["abort", &run_id]).await;
    assert_eq!(again.status.code(), Some(0), "a second abort is 202");
    assert!(
        stdout(&again).contains("was already aborted"),
        "{}",
        stdout(&again)
    );
    let (_, view) = s.get(&format!("/api/runs/{run_id}")).await;
    assert_eq!(view["abortedBy"]["via"], "cli", "{view}");
    let waited = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(waited.status.code(), Some(130));
    s.stop().await;
}

#[tokio::test]
async fn client_commands_show_runs_logs_and_errors() {
    let s = TestServer::start("", PIPELINES).await;
    let t = cli(&s, &["trigger", "greet", "-p", "name=ada"]).await;
    assert_eq!(t.status.code(), Some(0));
    let run_id = stdout(&t).trim().to_string();
    let mut events = s.events();
    s.wait_run(&mut events, &run_id, Duration::from_secs(20))
        .await;

    let logs = cli(&s, &["logs", &run_id]).await;
    assert_eq!(stdout(&logs), "hello ada\n");
    let follow = cli(&s, &["logs", &run_id, "-f"]).await;
    assert_eq!(
        stdout(&follow),
        "hello ada\n",
        "a finished job's stream replays and ends"
    );

    let runs = cli(&s, &["runs", "--json"]).await;
    let v: Value = serde_json::from_slice(&runs.stdout).unwrap();
    assert_eq!(v["runs"][0]["runId"], run_id.as_str());
    // One short form everywhere: the last 8 hex digits, shown by `runs` and `show`, and
    // accepted wherever a run id goes.
    let short = run_id.replace('-', "")[24..].to_string();
    let table = cli(&s, &["runs"]).await;
    assert!(stdout(&table).starts_with("ID") && stdout(&table).contains("greet"));
    let row = stdout(&table).lines().nth(1).unwrap().to_string();
    assert!(row.starts_with(&short), "{row}");
    let show = cli(&s, &["show", &short]).await;
    assert!(stdout(&show).contains("completed"));
    assert!(
        stdout(&show).contains(&format!("(short id {short})")),
        "{}",
        stdout(&show)
    );
    let job_row = stdout(&show)
        .lines()
        .find(|l| l.starts_with(&run_id))
        .unwrap()
        .to_string();
    assert!(
        !job_row.contains("exit_code"),
        "no reason for a completed job: {job_row}"
    );
    let pipelines = cli(&s, &["pipelines"]).await;
    assert!(stdout(&pipelines).contains("slow"));
    let workers = cli(&s, &["workers", "--json"]).await;
    let w: Value = serde_json::from_slice(&workers.stdout).unwrap();
    assert_eq!(w["workers"].as_array().unwrap().len(), 1);

    // Server-side refusals come back as a message and exit code 4.
    let bad = cli(&s, &["trigger", "greet", "-p", "name=NOPE"]).await;
    assert_eq!(bad.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("does not match"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let unknown = cli(&s, &["trigger", "nope"]).await;
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("Unknown pipeline: nope"));
    s.stop().await;
}

#[test]
fn a_corrupt_config_fails_at_start_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runyard.toml");
    std::fs::write(&config, "[server]\nmax_workers = 2\n\n[pipelines.x]\ncommand = [\"echo\"]\ntimeout = \"5 parsecs\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_runyard"))
        .args(["serve", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runyard.toml:6: pipelines.x.timeout"), "{err}");

    std::fs::write(&config, "[server\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_runyard"))
        .args(["serve", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The README's way: `serve -c <relative path>`. A job and a finalizer with their own
/// `cwd` still reach `$RUNYARD_RESULT_FILE` and `$RUNYARD_SUMMARY_FILE` (absolute paths).
#[tokio::test]
async fn jobs_with_their_own_cwd_get_absolute_result_and_summary_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("conf/jobs")).unwrap();
    std::fs::write(
        dir.path().join("conf/runyard.toml"),
        r#"
[server]
data_dir = "data"
output_flush_interval_ms = 100

[pipelines.results]
command = ["sh", "-c", "case $RUNYARD_RESULT_FILE in /*) ;; *) exit 7;; esac; echo \"{{\\\"shard\\\": $RUNYARD_SHARD_INDEX, \\\"cwd\\\": \\\"$(pwd)\\\"}}\" > \"$RUNYARD_RESULT_FILE\""]
cwd = "jobs"
shards = 2
finalizer = ["sh", "-c", "case $RUNYARD_SUMMARY_FILE in /*) ;; *) exit 7;; esac; grep -q '\"shard\": 1' \"$RUNYARD_SUMMARY_FILE\""]

[pipelines.hooked]
command = ["true"]
callback_url = "https://ci.example.com/runyard"
"#,
    )
    .unwrap();
    let port = common::free_port();
    let _server = common::BinServer::start_from(
        Some(dir.path()),
        "conf/runyard.toml",
        &dir.path().join("server.log"),
        port,
        &[],
    )
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let mut events = common::EventWatcher::connect(&base, 0);
    let http = reqwest::Client::new();
    let (status, body) = common::post(
        &http,
        &format!("{base}/api/pipelines/results/trigger"),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let run_id = body["runId"].as_str().unwrap().to_string();
    events
        .wait_for(
            "run:completed",
            |d| d["runId"] == run_id.as_str(),
            Duration::from_secs(30),
        )
        .await;
    let (_, run) = common::get(&http, &format!("{base}/api/runs/{run_id}")).await;
    assert_eq!(run["status"], "completed", "{run:#}");
    let jobs_dir = dir.path().join("conf/jobs").canonicalize().unwrap();
    for (i, job) in run["jobs"].as_array().unwrap().iter().enumerate() {
        assert_eq!(job["result"]["shard"], i, "{job:#}");
        assert_eq!(
            job["result"]["cwd"],
            jobs_dir.to_str().unwrap(),
            "ran in its cwd"
        );
    }
    assert_eq!(run["finalizer"]["status"], "completed", "{run:#}");

    // The server's log (a file): no colour codes, the dashboard's URL, and a warning
    // that webhooks go out unsigned.
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(!log.contains('\x1b'), "escape codes in a log file: {log:?}");
    assert!(
        log.contains(&format!(
            "listening addr=127.0.0.1:{port} dashboard=http://127.0.0.1:{port}/"
        )),
        "{log}"
    );
    assert!(
        log.contains("WARN")
            && log.contains("webhooks will be sent unsigned")
            && log.contains("pipelines=hooked"),
        "{log}"
    );
}

/// `runyard show RUN | head -1`: every command stops quietly (exit 0, nothing on
/// stderr) when its stdout is a pipe nobody reads any more.
#[tokio::test]
async fn every_command_exits_quietly_on_a_closed_stdout() {
    let s = TestServer::start("", PIPELINES).await;
    let t = cli(&s, &["trigger", "ok", "--wait"]).await;
    assert_eq!(t.status.code(), Some(0), "{}", stderr(&t));
    let runs = cli(&s, &["runs", "--json"]).await;
    let v: Value = serde_json::from_slice(&runs.stdout).unwrap();
    let run_id = v["runs"][0]["runId"].as_str().unwrap().to_string();
    let shard = format!("{run_id}:s0");
    for args in [
        vec!["show", run_id.as_str()],
        vec!["show", run_id.as_str(), "--json"],
        vec!["runs"],
        vec!["logs", run_id.as_str()],
        vec!["logs", shard.as_str(), "-f"],
        vec!["pipelines"],
        vec!["workers"],
        vec!["trigger", "greet", "-p", "name=ada"],
        vec!["wait", run_id.as_str(), "--json"],
        vec!["completions", "bash"],
        vec!["man"],
        vec!["--help"],
    ] {
        // The reading end is closed before the command starts: its first write fails.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = runyard(&args);
        cmd.env("RUNYARD_URL", &s.base).stdout(writer);
        let out = run(cmd).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("panicked") && !stderr(&out).contains("Broken pipe"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    s.stop().await;
}

/// Nothing listening, or something that is not runyard: one line with the URL and
/// what to do, exit 3; a refusal by runyard is exit 4; a usage error exit 2.
#[tokio::test]
async fn server_trouble_is_one_line_with_the_url_and_its_own_exit_code() {
    let port = common::free_port();
    let out = run(runyard(&["runs", "--server", &format!("127.0.0.1:{port}")])).await;
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("http://127.0.0.1:{port}"))
            && err.contains("is `runyard serve` running? set --server or RUNYARD_URL"),
        "{err}"
    );

    // Something else on the port: an HTTP server answering 404 with HTML.
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_addr = other.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = other.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let body = "<html>nope</html>";
            let _ = sock
                .write_all(
                    format!(
                        "HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    // The URL before the command, as it always worked, and without a scheme; a flag
    // wins over RUNYARD_URL wherever it is written.
    let mut cmd = runyard(&["--server", &other_addr.to_string(), "show", "0190abcd"]);
    cmd.env("RUNYARD_URL", format!("http://127.0.0.1:{port}"));
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "http://{other_addr} is not a runyard server (HTTP 404"
        )) && !err.contains("null"),
        "{err}"
    );

    let s = TestServer::start("", PIPELINES).await;
    let out = cli(&s, &["show", "ffffffff"]).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("Run not found"), "{}", stderr(&out));
    let out = cli(&s, &["trigger"]).await;
    assert_eq!(out.status.code(), Some(2), "clap's usage errors are 2");
    let out = run(runyard(&["runs", "--server", "ftp://x"])).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid server URL"),
        "{}",
        stderr(&out)
    );
    s.stop().await;
}

/// `runyard wait` on a run started elsewhere (by a short id): retries announced, a
/// summary per shard, the command for the failed shard's log, exit 1. `logs RUN` of the
/// sharded run shows both shards prefixed; `-f` exits by status.
#[tokio::test]
async fn wait_summarises_shards_and_logs_of_a_sharded_run_show_every_shard() {
    let s = TestServer::start("max_workers = 2", PIPELINES).await;
    let (status, t) = s.trigger("mixed", json!({})).await;
    assert_eq!(status, 202);
    let run_id = t["runId"].as_str().unwrap().to_string();
    // Unique: the only run on this server.
    let short = &run_id[..8];
    let out = cli(&s, &["wait", short]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("s1 attempt 1 failed (exit 5); retrying: attempt 2/2"),
        "{err}"
    );
    let summary: Vec<&str> = err
        .lines()
        .skip_while(|l| !l.starts_with("SHARD"))
        .collect();
    assert!(
        summary[0].starts_with("SHARD  STATUS     EXIT  DURATION  ATTEMPTS"),
        "{err}"
    );
    assert!(summary[1].starts_with("s0     completed  0 "), "{err}");
    assert!(summary[2].starts_with("s1     failed     5 "), "{err}");
    assert!(summary[2].contains("2/2"), "{err}");
    assert!(
        summary[0].contains("EXECUTIONS") && summary[2].contains("  2  "),
        "s1 ran twice: {err}"
    );
    assert!(
        summary
            .iter()
            .any(|l| l.starts_with(&format!("run {run_id} failed in "))),
        "{err}"
    );
    assert!(
        err.contains(&format!("see its log: runyard logs {run_id}:s1")),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "no colour into a pipe: {err:?}");

    let logs = cli(&s, &["logs", short]).await;
    assert_eq!(logs.status.code(), Some(0), "{}", stderr(&logs));
    let text = stdout(&logs);
    assert!(
        text.contains("[s0] line of 0\n") && text.contains("[s1] line of 1\n"),
        "{text}"
    );
    assert!(
        text.contains("[s0] ::progress 40 warming") && text.contains("[s1] ::progress 40 warming"),
        "stored output is verbatim: {text}"
    );
    // s1 ran twice: its second execution is set apart (on stderr).
    assert_eq!(text.matches("[s1] line of 1\n").count(), 2, "{text}");
    assert!(
        stderr(&logs).contains("[s1] --- next execution (claim 2) ---"),
        "{}",
        stderr(&logs)
    );
    let follow = cli(&s, &["logs", &run_id, "-f"]).await;
    assert_eq!(follow.status.code(), Some(1), "by the run's status");
    let text = stdout(&follow);
    assert!(
        text.contains("[s0] line of 0\n") && text.contains("[s1] line of 1\n"),
        "{text}"
    );
    assert!(
        text.contains("[s1] ->  40% warming") && !text.contains("::progress"),
        "progress rendered: {text}"
    );
    let s0 = cli(&s, &["logs", &format!("{short}:s0"), "-f"]).await;
    assert_eq!(s0.status.code(), Some(0));
    let s1 = cli(&s, &["logs", &format!("{short}:s1"), "-f"]).await;
    assert_eq!(s1.status.code(), Some(1));
    s.stop().await;
}

/// Ctrl-C while waiting leaves the run going and says how to abort it;
/// `--abort-on-interrupt` aborts it.
#[tokio::test]
async fn an_interrupted_wait_leaves_the_run_or_aborts_it_when_asked() {
    let s = TestServer::start("", PIPELINES).await;
    for abort in [false, true] {
        let (_, t) = s.trigger("slow", json!({})).await;
        let run_id = t["runId"].as_str().unwrap().to_string();
        let mut args = vec!["wait", run_id.as_str()];
        if abort {
            args.push("--abort-on-interrupt");
        }
        let mut cmd = runyard(&args);
        cmd.env("RUNYARD_URL", &s.base)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let (code, err) = tokio::task::spawn_blocking(move || {
            use std::io::{BufRead, Read};
            let mut child = cmd.spawn().unwrap();
            let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
            // The first bar is drawn after the handler is installed.
            let mut seen = String::new();
            while !seen.contains("s0 [") {
                assert!(err.read_line(&mut seen).unwrap() > 0, "{seen}");
            }
            let ok = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok);
            err.read_to_string(&mut seen).unwrap();
            (child.wait().unwrap().code(), seen)
        })
        .await
        .unwrap();
        assert_eq!(code, Some(130), "{err}");
        let (_, run) = s.get(&format!("/api/runs/{run_id}")).await;
        if abort {
            assert!(err.contains("aborting run"), "{err}");
            assert_eq!(run["status"], "aborted", "{err}");
        } else {
            assert!(
                err.contains(&format!("run {run_id} goes on on the server"))
                    && err.contains(&format!("runyard abort {run_id}")),
                "{err}"
            );
            assert_ne!(run["status"], "aborted");
            let (status, _) = s
                .post(&format!("/api/runs/{run_id}/abort"), json!({}))
                .await;
            assert_eq!(status, 202);
        }
    }
    s.stop().await;
}

#[test]
fn help_completions_and_man_pages_come_from_the_parser() {
    let out = runyard(&["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--config") && help.contains("--listen"),
        "{help}"
    );
    assert!(
        !help.contains("--server") && !help.contains("--json"),
        "serve --help shows only serve's options: {help}"
    );
    let out = runyard(&["--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for code in [
        "Exit codes:",
        "  3    server unreachable",
        "  4    the server refused",
    ] {
        assert!(help.contains(code), "{help}");
    }
    let out = runyard(&["trigger", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--server")
            && help.contains("--abort-on-interrupt")
            && help.contains("Exit codes:"),
        "{help}"
    );
    let out = runyard(&["completions", "bash"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let bash = String::from_utf8_lossy(&out.stdout);
    assert!(
        bash.contains("_runyard()") && bash.contains("--abort-on-interrupt"),
        "{bash}"
    );
    for shell in ["zsh", "fish"] {
        assert_eq!(
            runyard(&["completions", shell])
                .output()
                .unwrap()
                .status
                .code(),
            Some(0)
        );
    }
    let out = runyard(&["man"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(".ie"),
        "roff"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH runyard 1"));
    let dir = tempfile::tempdir().unwrap();
    let out = runyard(&["man", "--dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for page in ["runyard.1", "runyard-trigger.1", "runyard-wait.1"] {
        assert!(dir.path().join(page).is_file(), "{page}");
    }
}

/// A wait that already saw its run outlives a restart of the node: it keeps asking,
/// says so, and exits by the run's status once the node is back.
#[tokio::test]
async fn a_wait_rides_out_a_restart_of_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran-once");
    let config = common::write_config(
        dir.path(),
        "shutdown_timeout = \"100ms\"",
        &format!(
            "[pipelines.once]\ncommand = [\"sh\", \"-c\", \"test -f {m} || {{{{ touch {m}; exec sleep 60; }}}}\"]\n",
            m = marker.display()
        ),
    );
    let port = common::free_port();
    let mut server = common::BinServer::start(&config, port).await;
    let http = reqwest::Client::new();
    let (status, t) = common::post(
        &http,
        &format!("{}/api/pipelines/once/trigger", server.base),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{t}");
    let run_id = t["runId"].as_str().unwrap().to_string();
    let mut cmd = runyard(&["wait", &run_id]);
    cmd.env("RUNYARD_URL", &server.base)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(err).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut until = async |what: &str, seen: &mut Vec<String>| {
        while !seen.iter().any(|l: &String| l.contains(what)) {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what:?} in {seen:#?}"))
                .expect("wait's stderr ended");
            seen.push(line);
        }
    };
    // It saw the job running; the marker says the first attempt started.
    until("running", &mut seen).await;
    common::eventually(Duration::from_secs(20), "the job started", || {
        let m = marker.clone();
        async move { m.exists() }
    })
    .await;
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(30)).await, Some(0));
    until("retrying for up to 60s", &mut seen).await;
    // Back on the same store and port: the re-queued job runs again and completes.
    let _server = common::BinServer::start(&config, port).await;
    until("reached the server again", &mut seen).await;
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap().code())
        .await
        .unwrap();
    while let Ok(line) = lines.try_recv() {
        seen.push(line);
    }
    assert_eq!(code, Some(0), "{seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.starts_with(&format!("run {run_id} completed"))),
        "{seen:#?}"
    );
}

/// A store that cannot be used at start says why in the server's own words
/// (not the pool's), with the redacted URL, where it came from, and what to do; a
/// malformed URL in the environment is blamed on the variable, not the file.
#[test]
fn store_errors_at_start_name_their_cause_their_origin_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runyard.toml");
    let closed = common::free_port();
    let write = |url: &str| {
        std::fs::write(
            &config,
            format!("[server]\nmax_workers = 1\n\n[store]\nurl = \"{url}\"\n\n[pipelines.x]\ncommand = [\"true\"]\n"),
        )
        .unwrap()
    };
    let serve = |env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_runyard"))
            .args([
                "serve",
                "-c",
                config.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .env_remove("RUNYARD_DATABASE_URL")
            .env_remove("DATABASE_URL")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    write(&format!("postgres://u:secret@127.0.0.1:{closed}/db"));
    let err = serve(&[]);
    assert!(err.contains("Connection refused"), "{err}");
    assert!(err.contains("runyard.toml:5"), "{err}");
    assert!(err.contains("u:***@") && !err.contains("secret"), "{err}");
    assert!(err.contains("is PostgreSQL running"), "{err}");
    assert!(!err.contains("creating a new object"), "{err}");

    let err = serve(&[("RUNYARD_DATABASE_URL", "postgres://u:secret@[oops")]);
    assert!(
        err.contains("environment variable RUNYARD_DATABASE_URL"),
        "{err}"
    );
    assert!(!err.contains("runyard.toml:"), "{err}");
    assert!(!err.contains("secret"), "{err}");

    let Ok(pg) = std::env::var("TEST_DATABASE_URL") else {
        println!("SKIPPED(service): TEST_DATABASE_URL not set");
        return;
    };
    let mut missing = url::Url::parse(&pg).unwrap();
    missing.set_path(&format!("runyard_missing_{}", std::process::id()));
    write(missing.as_str());
    let err = serve(&[]);
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("createdb"), "{err}");
}

/// `runyard check` validates the config with the environment applied, reaches
/// the store and the bus without joining (no database file, no schema, no node row), and
/// prints each setting with where it came from; exit 0, or 2 naming what is wrong.
#[test]
fn check_reaches_the_store_and_bus_without_joining_and_says_where_settings_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runyard.toml");
    let check = |text: &str, env: &[(&str, &str)]| {
        std::fs::write(&config, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_runyard"))
            .args(["check", "-c", config.to_str().unwrap()])
            .env_remove("RUNYARD_DATABASE_URL")
            .env_remove("DATABASE_URL")
            .env_remove("RUNYARD_REDIS_URL")
            .env_remove("REDIS_URL")
            .env_remove("MAX_WORKERS")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out.status.code(), stdout(&out), stderr(&out))
    };
    let pipelines = "[pipelines.x]\ncommand = [\"true\"]\n";
    let (code, out, err) = check(
        &format!("[server]\nmax_workers = 3\n\n{pipelines}"),
        &[("MAX_WORKERS", "5")],
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    let workers = out
        .lines()
        .find(|l| l.starts_with("server.max_workers "))
        .unwrap();
    assert!(
        workers.contains(" 5 ") && workers.ends_with("(MAX_WORKERS)"),
        "{out}"
    );
    assert!(out.contains("does not exist yet"), "{out}");
    assert!(
        !dir.path().join(".runyard").exists(),
        "check created the data dir"
    );

    let closed = common::free_port();
    let (code, out, err) = check(
        &format!("[bus]\nurl = \"redis://127.0.0.1:{closed}\"\n\n{pipelines}"),
        &[],
    );
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(err.contains("bus:") && err.contains("refused"), "{err}");
    assert!(out.contains("runyard.toml:2"), "the bus URL's line: {out}");

    let Ok(pg) = std::env::var("TEST_DATABASE_URL") else {
        println!("SKIPPED(service): TEST_DATABASE_URL not set");
        return;
    };
    let schema = format!("check_{}", std::process::id());
    let (code, out, err) = check(
        &format!("[store]\nurl = \"{pg}\"\nschema = \"{schema}\"\n\n{pipelines}"),
        &[],
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("not set up yet"), "{out}");
    let made = Command::new("psql")
        .args([
            pg.as_str(),
            "-tAc",
            &format!("SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&made.stdout).trim(),
        "0",
        "check made the schema"
    );
}

/// Completion knows the server — pipeline names after `trigger`, recent run ids
/// (the short form) after `abort`/`logs`/`show` — through a hidden `__complete` command
/// that prints nothing, quickly, when no server answers.
#[tokio::test]
async fn completions_offer_the_servers_pipelines_and_recent_runs() {
    let s = TestServer::start("", PIPELINES).await;
    let (_, t) = s
        .trigger("greet", json!({"parameters": {"name": "ada"}}))
        .await;
    let run_id = t["runId"].as_str().unwrap().to_string();
    let pipelines = cli(&s, &["__complete", "pipelines"]).await;
    assert_eq!(pipelines.status.code(), Some(0));
    let names: Vec<&str> = std::str::from_utf8(&pipelines.stdout)
        .unwrap()
        .lines()
        .collect();
    assert!(
        names.contains(&"greet") && names.contains(&"slow"),
        "{names:?}"
    );
    let runs = cli(&s, &["__complete", "runs"]).await;
    let short = run_id.replace('-', "")[24..].to_string();
    assert_eq!(stdout(&runs).lines().next(), Some(short.as_str()));
    // No server: nothing, at once, and success.
    let started = std::time::Instant::now();
    let none = run(runyard(&[
        "--server",
        &format!("127.0.0.1:{}", common::free_port()),
        "__complete",
        "runs",
    ]))
    .await;
    assert_eq!(
        (none.status.code(), stdout(&none)),
        (Some(0), String::new())
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The scripts ask for them; the command stays out of the help.
    let bash = run(runyard(&["completions", "bash"])).await;
    assert!(stdout(&bash).contains("runyard __complete \"$what\""));
    let fish = run(runyard(&["completions", "fish"])).await;
    assert!(stdout(&fish).contains("runyard __complete pipelines"));
    let help = run(runyard(&["--help"])).await;
    assert!(!stdout(&help).contains("__complete"));
    s.stop().await;
}
