//! The commands README.md and docs/*.md show, run as shown: through the real binary
//! against a live node (the README's tour on `examples/runyard.toml` itself, every
//! `--json` of docs/cli.md's table checked against the OpenAPI operation it names, a node
//! on PostgreSQL from `RUNYARD_DATABASE_URL`, a token hashed with `sha256sum`, …), and
//! guards against drift: every `runyard …` invocation, every `curl` route and every
//! `METHOD /path` the docs show must exist (subcommand, flags, route, method, query
//! parameters), and the cargo commands must name targets and profiles that exist.
//!
//! The documented commands that no test runs, and why, are named in docs/development.md.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{BinServer, EventWatcher};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_runyard");
/// The longest one command or one wait may take.
const T: Duration = Duration::from_secs(60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What a command did.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `runyard ARGS` with `RUNYARD_URL=base` (none when `None`) and `env`; killed and a
/// failure if it runs longer than [`T`].
async fn runyard_env(base: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_remove("RUNYARD_URL")
        .env_remove("RUNYARD_TOKEN")
        .env_remove("RUNYARD_LOG_FORMAT")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(base) = base {
        cmd.env("RUNYARD_URL", base);
    }
    cmd.envs(env.iter().copied());
    let out = tokio::time::timeout(T, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("runyard {args:?} did not end within {T:?}"))
        .expect("run runyard");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn runyard(base: &str, args: &[&str]) -> Out {
    runyard_env(Some(base), args, &[]).await
}

/// Like [`runyard`], and the command must exit with `code`.
async fn expect(base: &str, args: &[&str], code: i32) -> Out {
    let out = runyard(base, args).await;
    assert_eq!(out.code, Some(code), "runyard {args:?}: {out}");
    out
}

/// The JSON a `--json` command printed.
fn json_of(out: &Out) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// What `curl -d BODY` sends: a POST whose body is labelled as a form (curl's default
/// `Content-Type` for `-d`), not as JSON.
async fn curl_post(base: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(format!("{base}{path}"));
    if let Some(body) = body {
        req = req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn run_view(base: &str, run: &str) -> Value {
    let (status, view) =
        common::get(&reqwest::Client::new(), &format!("{base}/api/runs/{run}")).await;
    assert_eq!(status, 200, "{view}");
    view
}

/// The short id runyard shows: the run id's last 8 hex digits.
fn short(run_id: &str) -> String {
    run_id.replace('-', "")[24..].to_string()
}

fn is_run_id(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// The README's tour, on the example config as the README starts it
/// (`serve -c examples/runyard.toml` from the repository), with a fresh data directory:
/// every command of the tour and its `curl` twins, `runyard logs RUN:finalize` and
/// `runyard rerun RUN` of docs/pipelines.md, and the dashboard's page.
#[tokio::test]
async fn the_readme_tour_runs_on_the_example_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = common::free_port();
    let mut server = BinServer::start_from(
        Some(repo()),
        "examples/runyard.toml",
        &dir.path().join("server.log"),
        port,
        &[("RUNYARD_DATA_DIR", data.to_str().unwrap())],
    )
    .await;
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let mut events = EventWatcher::connect(&base, 0);

    // "dashboard at http://127.0.0.1:7878"
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );

    // runyard pipelines: what the config offers, with queued/running counts.
    let out = expect(&base, &["pipelines"], 0).await;
    let header = out.stdout.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("PIPELINE") && header.contains("QUEUED") && header.contains("RUNNING"),
        "{out}"
    );
    for name in ["hello", "sleeper", "sharded", "flaky", "report"] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{name} "))),
            "{name}: {out}"
        );
    }

    // runyard trigger hello -p name=Ada --wait: a bar per shard, exit 0.
    let out = expect(&base, &["trigger", "hello", "-p", "name=Ada", "--wait"], 0).await;
    assert!(out.stderr.contains("s0 ["), "a bar: {out}");
    let waited = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("run ")?.strip_suffix(" queued"))
        .unwrap_or_else(|| panic!("run … queued: {out}"))
        .to_string();
    assert!(
        out.stderr.contains(&format!("run {waited} completed in ")),
        "{out}"
    );

    // runyard trigger sharded --follow: 4 shards, at most 2 at once, output live.
    let out = expect(&base, &["trigger", "sharded", "--follow"], 0).await;
    for i in 0..4 {
        for step in 1..=3 {
            let line = format!("[s{i}] shard {i}/4 step {step}\n");
            assert!(out.stdout.contains(&line), "{line:?}: {out}");
        }
    }
    assert!(
        out.stdout.contains("[s0] ->  33% step 1\n"),
        "progress lines rendered: {out}"
    );
    let sharded = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("run ")?.strip_suffix(" queued"))
        .unwrap_or_else(|| panic!("run … queued: {out}"))
        .to_string();
    let view = run_view(&base, &sharded).await;
    assert_eq!(view["status"], "completed", "{view}");
    let jobs = view["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 4);
    assert!(common::max_overlap(jobs) <= 2, "concurrency 2: {view}");

    // runyard runs: newest first.
    let out = expect(&base, &["runs"], 0).await;
    let mut lines = out.stdout.lines();
    assert!(lines.next().unwrap_or_default().starts_with("ID"), "{out}");
    let newest = lines.next().unwrap_or_default();
    assert!(
        newest.starts_with(&short(&sharded)) && newest.contains(" sharded "),
        "{out}"
    );

    // runyard show RUN_ID: the run and its jobs.
    let out = expect(&base, &["show", &sharded], 0).await;
    assert!(
        out.stdout.contains(&format!(
            "run       {sharded} (short id {})",
            short(&sharded)
        )),
        "{out}"
    );
    for i in 0..4 {
        let row = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{sharded}:s{i} ")))
            .unwrap_or_else(|| panic!("s{i}: {out}"));
        assert!(row.contains("completed"), "{row}");
    }

    // curl -s -XPOST localhost:7878/api/pipelines/hello/trigger -d '{"parameters": {"name": "Ada"}}'
    let (status, t) = curl_post(
        &base,
        "/api/pipelines/hello/trigger",
        Some(r#"{"parameters": {"name": "Ada"}}"#),
    )
    .await;
    assert_eq!(status, 202, "{t}");
    for key in [
        "jobId",
        "runId",
        "jobIds",
        "pipelineId",
        "status",
        "timestamp",
    ] {
        assert!(t.get(key).is_some(), "{key}: {t}");
    }
    assert_eq!(
        (&t["pipelineId"], &t["status"]),
        (&json!("hello"), &json!("queued"))
    );
    let hello = t["runId"].as_str().unwrap().to_string();
    let job = t["jobId"].as_str().unwrap().to_string();

    // runyard wait RUN_ID: a run started elsewhere; exit 0.
    let out = expect(&base, &["wait", &hello], 0).await;
    assert!(
        out.stderr.contains(&format!("run {hello} completed")),
        "{out}"
    );
    // curl -s localhost:7878/api/runs/RUN_ID
    let view = run_view(&base, &hello).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["parameters"], json!({"name": "Ada"}));

    // runyard logs JOB_ID --tail 20: stored stdout to stdout, stderr to stderr.
    let out = expect(&base, &["logs", &job, "--tail", "20"], 0).await;
    let mut want = vec!["hello, Ada (shard 0 of 1, attempt 1)".to_string()];
    want.extend((1..=4).map(|i| format!("::progress {} step {i} of 4", i * 25)));
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), want, "{out}");
    assert_eq!(out.stderr.trim(), "done", "{out}");
    // runyard logs JOB_ID -f: until the job ends; exit by its status.
    let out = expect(&base, &["logs", &job, "-f"], 0).await;
    assert!(
        out.stdout
            .starts_with("hello, Ada (shard 0 of 1, attempt 1)\n")
            && out.stdout.contains("->  25% step 1 of 4"),
        "{out}"
    );
    // runyard logs RUN_ID: every shard, prefixed.
    let out = expect(&base, &["logs", &sharded], 0).await;
    for i in 0..4 {
        assert!(
            out.stdout.contains(&format!("[s{i}] shard {i}/4 step 1\n")),
            "{out}"
        );
    }

    // docs/pipelines.md: `runyard logs RUN_ID:finalize`, and `runyard rerun RUN`
    // (every shard; prints the new run's id).
    let out = expect(&base, &["trigger", "report"], 0).await;
    let report = out.stdout.trim().to_string();
    assert!(is_run_id(&report), "{out}");
    expect(&base, &["wait", &report], 0).await;
    let out = expect(&base, &["logs", &format!("{report}:finalize")], 0).await;
    assert_eq!(
        out.stdout, "shards ended: completed\ntests passed over all shards: 12\n",
        "{out}"
    );
    let out = expect(&base, &["rerun", &short(&report)], 0).await;
    let again = out.stdout.trim().to_string();
    assert!(is_run_id(&again) && again != report, "{out}");
    expect(&base, &["wait", &again], 0).await;
    let view = run_view(&base, &again).await;
    assert_eq!(
        (
            &view["rerunOf"],
            &view["shardCount"],
            &view["finalizer"]["status"]
        ),
        (&json!(report), &json!(3), &json!("completed")),
        "{view}"
    );

    // runyard trigger sleeper -p seconds=300: prints the run id …
    let out = expect(&base, &["trigger", "sleeper", "-p", "seconds=300"], 0).await;
    let sleeper = out.stdout.trim().to_string();
    assert!(is_run_id(&sleeper), "{out}");
    common::eventually(T, "the sleeper to run", || async {
        let job = &run_view(&base, &sleeper).await["jobs"][0];
        job["status"] == "running" && job["pid"].is_u64()
    })
    .await;
    let pid = run_view(&base, &sleeper).await["jobs"][0]["pid"]
        .as_u64()
        .unwrap() as u32;
    assert!(!common::group_members(pid).is_empty());
    // … runyard abort 9c1d2e3f: stops every shard's process tree (a short id).
    let out = expect(&base, &["abort", &short(&sleeper)], 0).await;
    assert!(
        out.stdout.contains(&format!(
            "run {sleeper} aborted: 0 queued job(s) aborted, 1 running job(s) told to stop"
        )),
        "{out}"
    );
    common::eventually(T, "the sleeper's process group to be gone", || async {
        common::group_members(pid).is_empty()
    })
    .await;
    events
        .wait_for("run:completed", |d| d["runId"] == sleeper.as_str(), T)
        .await;
    assert_eq!(run_view(&base, &sleeper).await["status"], "aborted");
    // curl -s -XPOST localhost:7878/api/runs/RUN_ID/abort: again is 202 with all three
    // 0; a completed run is 409.
    let (status, a) = curl_post(&base, &format!("/api/runs/{sleeper}/abort"), None).await;
    assert_eq!(status, 202, "{a}");
    assert_eq!(
        (
            &a["abortedJobs"],
            &a["queuedAborted"],
            &a["runningStopping"]
        ),
        (&json!(0), &json!(0), &json!(0)),
        "{a}"
    );
    let (status, a) = curl_post(&base, &format!("/api/runs/{hello}/abort"), None).await;
    assert_eq!(status, 409, "{a}");

    // curl -N localhost:7878/api/events, reconnecting with Last-Event-ID: N resumes
    // right after N.
    let cut = events
        .wait_for("run:completed", |d| d["runId"] == hello.as_str(), T)
        .await
        .id
        .expect("an event id");
    let mut resumed = EventWatcher::connect(&base, cut);
    let last = resumed
        .wait_for("run:completed", |d| d["runId"] == sleeper.as_str(), T)
        .await
        .id
        .unwrap();
    let ids: Vec<i64> = resumed.seen.iter().filter_map(|e| e.id).collect();
    let expected: Vec<i64> = events
        .seen
        .iter()
        .filter_map(|e| e.id)
        .filter(|i| *i > cut && *i <= last)
        .collect();
    assert_eq!(ids, expected, "resumed right after {cut}");

    // runyard workers: the nodes sharing this store.
    let out = expect(&base, &["workers"], 0).await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("CONFIG"),
        "{out}"
    );
    assert_eq!(lines.len(), 2, "one node: {out}");
    assert!(lines[1].contains("/2 "), "2 slots: {out}");

    server.signal("TERM");
    assert_eq!(server.wait_exit(T).await, Some(0));
}

/// The OpenAPI document's answer schema of `operation` (its 200 or 202).
fn answer_schema<'a>(doc: &'a Value, operation: &str) -> &'a Value {
    let op = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .find(|op| op["operationId"] == operation)
        .unwrap_or_else(|| panic!("no operation {operation} in the OpenAPI document"));
    ["200", "202"]
        .iter()
        .map(|code| &op["responses"][code]["content"]["application/json"]["schema"])
        .find(|s| !s.is_null())
        .unwrap_or_else(|| panic!("{operation} has no JSON answer"))
}

/// The properties a schema requires, through `$ref` and `allOf`.
fn required(doc: &Value, schema: &Value) -> BTreeSet<String> {
    let schema = match schema["$ref"].as_str() {
        Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
        None => schema,
    };
    let mut out: BTreeSet<String> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        out.extend(required(doc, part));
    }
    out
}

/// `v` carries every property `operation`'s answer schema requires.
fn assert_answer(doc: &Value, operation: &str, v: &Value, what: &str) {
    let schema = answer_schema(doc, operation);
    let required = required(doc, schema);
    assert!(
        !required.is_empty(),
        "{operation}: no required properties in {schema}"
    );
    for key in &required {
        assert!(
            v.get(key).is_some(),
            "{what}: `{key}` (required by {operation}) is missing from {v:#}"
        );
    }
}

/// `jq FILTER` over `input`, when jq is installed (the filters of docs/cli.md).
fn jq(filter: &str, input: &Value) -> Option<Value> {
    let mut child = std::process::Command::new("jq")
        .args(["-c", filter])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "jq {filter}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Several results (a stream) become one array.
    let results: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Some(Value::Array(results))
}

/// docs/cli.md's `--json` table, row by row: each command prints the answer of the
/// operation the table names (its required properties present), and the `jq` filters
/// the page shows read a run as it says.
#[tokio::test]
async fn every_json_output_is_the_answer_the_cli_page_names() {
    let dir = tempfile::tempdir().unwrap();
    let fixed = dir.path().join("fixed");
    let config = common::write_config(
        dir.path(),
        "max_workers = 2",
        &format!(
            r#"
[pipelines.pair]
command = ["sh", "-c", "echo out $RUNYARD_SHARD_INDEX; echo err >&2; test $RUNYARD_SHARD_INDEX = 0 || test -f {}"]
shards = 2
max_attempts = 2
retry_backoff = "100ms"
finalizer = ["sh", "-c", "echo final"]

[pipelines.slow]
command = ["sleep", "60"]
"#,
            fixed.display()
        ),
    );
    let server = BinServer::start(&config, common::free_port()).await;
    let base = server.base.as_str();
    let http = reqwest::Client::new();
    let (status, doc) = common::get(&http, &format!("{base}/api/openapi.json")).await;
    assert_eq!(status, 200);

    // `trigger --json`: the 202 answer (triggerPipeline).
    let t = json_of(&expect(base, &["trigger", "pair", "--json"], 0).await);
    assert_answer(&doc, "triggerPipeline", &t, "trigger --json");
    assert_eq!(t["status"], "queued");
    let run = t["runId"].as_str().unwrap().to_string();

    // `wait --json`: the run when it ended (getRun); shard 1 fails twice: exit 1.
    let ended = json_of(&expect(base, &["wait", &run, "--json"], 1).await);
    assert_answer(&doc, "getRun", &ended, "wait --json");
    assert_eq!(ended["status"], "failed", "{ended:#}");

    // `show --json`: the run (getRun).
    let shown = json_of(&expect(base, &["show", &run, "--json"], 0).await);
    assert_answer(&doc, "getRun", &shown, "show --json");
    assert_eq!(shown["runId"], run.as_str());

    // The page's jq filters, on that run: every job, finalizer included; executions
    // per job; requeued executions (none here); the failed shards.
    let every = json!([
        shown["jobs"][0]["id"],
        shown["jobs"][1]["id"],
        shown["finalizer"]["id"]
    ]);
    let per_job = json!(BTreeMap::from([
        (format!("{run}:s0"), 1),
        (format!("{run}:s1"), 2),
        (format!("{run}:finalize"), 1),
    ]));
    let failed = json!([format!("{run}:s1")]);
    // The same, read in Rust (what the filters rely on: the field names and shapes).
    let jobs: Vec<&Value> = shown["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(Some(&shown["finalizer"]).filter(|f| !f.is_null()))
        .collect();
    assert_eq!(
        json!(jobs.iter().map(|j| &j["id"]).collect::<Vec<_>>()),
        every
    );
    let counts: BTreeMap<&str, usize> = shown["attempts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_array().unwrap().len()))
        .collect();
    assert_eq!(json!(counts), per_job, "{shown:#}");
    for e in shown["executions"].as_array().unwrap() {
        assert!(e["jobId"].is_string() && e["outcome"].is_string(), "{e}");
    }
    match jq("[.jobs[], .finalizer | select(. != null)]", &shown) {
        Some(v) => {
            let ids: Vec<&Value> = v[0].as_array().unwrap().iter().map(|j| &j["id"]).collect();
            assert_eq!(json!(ids), every);
            assert_eq!(
                jq(".attempts | map_values(length)", &shown).unwrap(),
                json!([per_job])
            );
            assert_eq!(
                jq(r#".executions[] | select(.outcome == "requeued")"#, &shown).unwrap(),
                json!([])
            );
            assert_eq!(
                jq(r#"[.jobs[] | select(.status == "failed") | .id]"#, &shown).unwrap(),
                json!([failed])
            );
        }
        None => println!("jq is not installed: its filters were checked in Rust only"),
    }

    // `logs --json`: one job, its logs (getJobLogs); a run's several jobs,
    // `{"jobs": [<logs>, …]}`.
    let one = json_of(&expect(base, &["logs", &format!("{run}:s0"), "--json"], 0).await);
    assert_answer(&doc, "getJobLogs", &one, "logs JOB --json");
    assert_eq!(one["stdout"], json!(["out 0"]), "{one:#}");
    let several = json_of(&expect(base, &["logs", &run, "--json"], 0).await);
    let logs = several["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("{several:#}"));
    assert_eq!(logs.len(), 3, "two shards and the finalizer: {several:#}");
    for l in logs {
        assert_answer(&doc, "getJobLogs", l, "logs RUN --json");
    }

    // `runs --json` (listRuns), `runs --pipeline --json` (listPipelineRuns).
    let runs = json_of(&expect(base, &["runs", "--json"], 0).await);
    assert_answer(&doc, "listRuns", &runs, "runs --json");
    assert_eq!(runs["runs"][0]["runId"], run.as_str());
    let (_, slow) = common::post(
        &http,
        &format!("{base}/api/pipelines/slow/trigger"),
        json!({}),
    )
    .await;
    let slow = slow["runId"].as_str().unwrap().to_string();
    let pair = json_of(&expect(base, &["runs", "--pipeline", "pair", "--json"], 0).await);
    assert_answer(&doc, "listPipelineRuns", &pair, "runs --pipeline --json");
    let ids: Vec<&Value> = pair["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["runId"])
        .collect();
    assert_eq!(ids, vec![&json!(run)], "only pair's runs: {pair:#}");

    // `abort --json`: the 202 answer (abortRun).
    common::eventually(T, "the slow job to run", || async {
        run_view(base, &slow).await["jobs"][0]["status"] == "running"
    })
    .await;
    let a = json_of(&expect(base, &["abort", &slow, "--json"], 0).await);
    assert_answer(&doc, "abortRun", &a, "abort --json");
    assert_eq!(
        (&a["queuedAborted"], &a["runningStopping"]),
        (&json!(0), &json!(1))
    );

    // `rerun --json` (rerunRun), and `rerun --wait --json` (getRun): with the fix in
    // place both complete; `--failed` keeps the completed shard.
    std::fs::write(&fixed, "").unwrap();
    let r = json_of(&expect(base, &["rerun", &run, "--json"], 0).await);
    assert_answer(&doc, "rerunRun", &r, "rerun --json");
    assert_eq!(r["rerunOf"], run.as_str());
    let r = json_of(&expect(base, &["rerun", &run, "--failed", "--wait", "--json"], 0).await);
    assert_answer(&doc, "getRun", &r, "rerun --failed --wait --json");
    assert_eq!(r["status"], "completed", "{r:#}");
    assert_eq!(
        r["jobs"][0]["keptFrom"],
        format!("{run}:s0").as_str(),
        "{r:#}"
    );

    // `trigger --wait --json` and `trigger --follow --json`: the run when it ended.
    let w = json_of(&expect(base, &["trigger", "pair", "--wait", "--json"], 0).await);
    assert_answer(&doc, "getRun", &w, "trigger --wait --json");
    assert_eq!(w["status"], "completed");
    let out = expect(base, &["trigger", "pair", "--follow", "--json"], 0).await;
    // The jobs' output comes first on stdout, then the run.
    let start = out
        .stdout
        .find("\n{\n")
        .map(|i| i + 1)
        .or_else(|| out.stdout.starts_with("{\n").then_some(0))
        .unwrap_or_else(|| panic!("no run in {out}"));
    let f: Value =
        serde_json::from_str(&out.stdout[start..]).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_answer(&doc, "getRun", &f, "trigger --follow --json");
    assert_eq!(f["status"], "completed");
    assert!(out.stdout[..start].contains("[s1] out 1\n"), "{out}");

    // `pipelines --json`, `workers --json`: the lists.
    let p = json_of(&expect(base, &["pipelines", "--json"], 0).await);
    assert_answer(&doc, "listPipelines", &p, "pipelines --json");
    assert_eq!(p["pipelines"].as_array().unwrap().len(), 2, "{p:#}");
    let w = json_of(&expect(base, &["workers", "--json"], 0).await);
    assert_answer(&doc, "listWorkers", &w, "workers --json");
    assert_eq!(w["workers"].as_array().unwrap().len(), 1, "{w:#}");
}

/// docs/cli.md's `--json` rows for workflows: `trigger` of a workflow (triggerWorkflow),
/// `wait`/`show` of a workflow run (getWorkflowRun), `workflow-runs` (listWorkflowRuns),
/// `abort` (abortWorkflowRun) and `rerun` (rerunWorkflowRun) of a workflow run.
#[tokio::test]
async fn every_workflow_json_output_is_the_answer_the_cli_page_names() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(
        dir.path(),
        "max_workers = 2",
        r#"
[pipelines.quick]
command = ["true"]
[pipelines.slow]
command = ["sleep", "60"]
[workflows.pair.steps.one]
pipeline = "quick"
[workflows.pair.steps.two]
pipeline = "quick"
needs = ["one"]
[workflows.held.steps.nap]
pipeline = "slow"
"#,
    );
    let server = BinServer::start(&config, common::free_port()).await;
    let base = server.base.as_str();
    let http = reqwest::Client::new();
    let (_, doc) = common::get(&http, &format!("{base}/api/openapi.json")).await;

    let t = json_of(&expect(base, &["trigger", "pair", "--json"], 0).await);
    assert_answer(&doc, "triggerWorkflow", &t, "trigger WORKFLOW --json");
    let id = t["workflowRunId"].as_str().unwrap().to_string();
    let ended = json_of(&expect(base, &["wait", &id, "--json"], 0).await);
    assert_answer(&doc, "getWorkflowRun", &ended, "wait WORKFLOW_RUN --json");
    assert_eq!(ended["status"], "completed", "{ended:#}");
    let shown = json_of(&expect(base, &["show", &id, "--json"], 0).await);
    assert_answer(&doc, "getWorkflowRun", &shown, "show WORKFLOW_RUN --json");
    let w = json_of(&expect(base, &["trigger", "pair", "--wait", "--json"], 0).await);
    assert_answer(&doc, "getWorkflowRun", &w, "trigger WORKFLOW --wait --json");
    let listed =
        json_of(&expect(base, &["workflow-runs", "--workflow", "pair", "--json"], 0).await);
    assert_answer(&doc, "listWorkflowRuns", &listed, "workflow-runs --json");
    assert_eq!(
        listed["workflowRuns"].as_array().unwrap().len(),
        2,
        "{listed:#}"
    );
    let table = expect(base, &["workflow-runs"], 0).await;
    assert!(
        table.stdout.contains("pair") && table.stdout.contains("2/2"),
        "{table}"
    );
    let r = json_of(&expect(base, &["rerun", &id, "--json"], 0).await);
    assert_answer(&doc, "rerunWorkflowRun", &r, "rerun WORKFLOW_RUN --json");
    assert_eq!(r["rerunOf"], id.as_str());

    let held = json_of(&expect(base, &["trigger", "held", "--json"], 0).await);
    let held = held["workflowRunId"].as_str().unwrap().to_string();
    let a = json_of(&expect(base, &["abort", &held, "--json"], 0).await);
    assert_answer(&doc, "abortWorkflowRun", &a, "abort WORKFLOW_RUN --json");
    let words = expect(base, &["__complete", "targets"], 0).await;
    assert!(
        words.stdout.lines().any(|l| l == "pair") && words.stdout.lines().any(|l| l == "quick"),
        "trigger completes workflows and pipelines: {words}"
    );
}

/// README: `runyard completions bash` "(or zsh, fish, elvish, powershell)".
#[tokio::test]
async fn completions_print_a_script_for_every_shell_the_readme_names() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = runyard_env(None, &["completions", shell], &[]).await;
        assert_eq!(out.code, Some(0), "{shell}: {out}");
        assert!(
            out.stdout.contains("runyard") && out.stdout.contains("abort-on-interrupt"),
            "{shell}: {out}"
        );
    }
}

/// docs/security.md: the config holds `echo -n "$TOKEN" | sha256sum`, in either form
/// (`"sha256:<hex>"`, labelled `token-<first 8 hex>`, or `{ label, sha256 }`); the
/// CLI sends `RUNYARD_TOKEN` (docs/cli.md).
#[tokio::test]
async fn tokens_hashed_with_sha256sum_open_the_api_and_the_cli() {
    let hash = |token: &str| {
        let out = std::process::Command::new("sh")
            .args(["-c", r#"echo -n "$TOKEN" | sha256sum"#])
            .env("TOKEN", token)
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let hex = text.split_whitespace().next().unwrap().to_string();
        assert_eq!(hex.len(), 64, "{text}");
        hex
    };
    let (plain, labelled) = ("docs-plain-token-0123456789", "docs-ci-token-0123456789");
    let (plain_hash, ci_hash) = (hash(plain), hash(labelled));
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(
        dir.path(),
        &format!(
            "\n[auth]\ntokens = [\n  \"sha256:{plain_hash}\",\n  {{ label = \"ci\", sha256 = \"{ci_hash}\" }},\n]\n"
        ),
        "[pipelines.quick]\ncommand = [\"true\"]\n",
    );
    let server = BinServer::start(&config, common::free_port()).await;
    let base = server.base.as_str();
    let http = reqwest::Client::new();
    let runs = format!("{base}/api/runs");
    assert_eq!(http.get(&runs).send().await.unwrap().status(), 401);
    assert_eq!(
        http.get(&runs)
            .bearer_auth("not-the-token")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    for (token, actor) in [
        (plain, format!("token-{}", &plain_hash[..8])),
        (labelled, "ci".to_string()),
    ] {
        let t: Value = http
            .post(format!("{base}/api/pipelines/quick/trigger"))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let run = t["runId"].as_str().unwrap_or_else(|| panic!("{t}"));
        let view: Value = http
            .get(format!("{runs}/{run}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(view["actor"], actor.as_str(), "{view}");
    }
    let out = runyard_env(Some(base), &["runs"], &[]).await;
    assert_eq!(out.code, Some(4), "refused without a token: {out}");
    let out = runyard_env(Some(base), &["runs"], &[("RUNYARD_TOKEN", labelled)]).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.stdout.lines().count(), 3, "two runs: {out}");
}

/// Ends a process started by a test when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// docs/security.md: `--log-format json` prints one JSON object per line.
#[tokio::test]
async fn serve_with_log_format_json_logs_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "", "[pipelines.quick]\ncommand = [\"true\"]\n");
    let log = dir.path().join("server.log");
    let port = common::free_port();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["serve", "--log-format", "json", "-c"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUNYARD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for var in [
        "RUNYARD_LOG_FORMAT",
        "DATABASE_URL",
        "RUNYARD_DATABASE_URL",
        "REDIS_URL",
        "RUNYARD_REDIS_URL",
        "RUNYARD_LISTEN",
        "RUNYARD_DATA_DIR",
        "RUNYARD_CONFIG",
        "MAX_WORKERS",
        "RUNYARD_MAX_WORKERS",
    ] {
        cmd.env_remove(var);
    }
    let mut child = Killed(cmd.spawn().unwrap());
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/healthz");
    common::eventually(T, "the server to answer", || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    assert!(child.0.try_wait().unwrap().is_none());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["fields"].is_object()),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "listening"),
        "{text}"
    );
}

/// Drops a PostgreSQL schema when the test ends, passed or not.
struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Its own thread and runtime: a test's runtime may be ending.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    if let Ok((client, conn)) =
                        tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(conn);
                        let _ = client
                            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                            .await;
                    }
                })
        })
        .join();
    }
}

/// docs/replicas.md: `RUNYARD_DATABASE_URL=postgres://… runyard serve -c runyard.toml`:
/// the URL from the environment wins, the node says where its store came from, and runs
/// land in the database.
#[tokio::test]
async fn serve_on_postgres_from_runyard_database_url() {
    let Ok(url) = std::env::var("TEST_DATABASE_URL") else {
        println!("SKIPPED(service): TEST_DATABASE_URL not set");
        return;
    };
    let schema = Schema {
        url: url.clone(),
        name: format!("docs_{}", std::process::id()),
    };
    let dir = tempfile::tempdir().unwrap();
    // The file names only the schema; the URL comes from the environment.
    let config = common::write_config(
        dir.path(),
        &format!("\n[store]\nschema = \"{}\"\n", schema.name),
        "[pipelines.quick]\ncommand = [\"echo\", \"on postgres\"]\n",
    );
    let port = common::free_port();
    let mut server = BinServer::start_env(&config, port, &[("RUNYARD_DATABASE_URL", &url)]).await;
    let out = expect(&server.base, &["trigger", "quick", "--wait"], 0).await;
    let run = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("run ")?.strip_suffix(" queued"))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let out = expect(&server.base, &["logs", &run], 0).await;
    assert_eq!(out.stdout, "on postgres\n");
    server.signal("TERM");
    assert_eq!(server.wait_exit(T).await, Some(0));
    let log = std::fs::read_to_string(config.with_extension(format!("{port}.log"))).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("store: PostgreSQL"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("from=\"RUNYARD_DATABASE_URL\"")
            && line.contains(&format!("schema=\"{}\"", schema.name)),
        "{line}"
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(tables > 0, "no tables in {}", schema.name);
}

// ---- drift guards ----

/// README.md and docs/*.md (not docs/architecture/), with their text.
fn docs() -> Vec<(String, String)> {
    let mut files = vec![repo().join("README.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    files.extend(pages);
    files
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(repo()).unwrap().display().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// A command line a doc shows, and where.
#[derive(Debug, Clone)]
struct Shown {
    file: String,
    line: usize,
    text: String,
}

impl Shown {
    fn at(&self) -> String {
        format!("{}:{}: `{}`", self.file, self.line, self.text)
    }
}

/// The command lines of a doc: each line of a fenced block, and each inline code span
/// (joined over line breaks), as written, comments dropped.
fn shown_lines(file: &str, text: &str) -> Vec<Shown> {
    let mut out = Vec::new();
    let mut prose = String::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fenced = !fenced;
            prose.push('\n');
            continue;
        }
        if fenced {
            let command = strip_comment(line).trim().to_string();
            if !command.is_empty() {
                out.push(Shown {
                    file: file.to_string(),
                    line: i + 1,
                    text: command,
                });
            }
            prose.push('\n');
        } else {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    // Inline spans: a run of N backticks opens one, the next run of N closes it.
    let bytes = prose.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'`' {
            i += 1;
            continue;
        }
        let n = bytes[i..].iter().take_while(|b| **b == b'`').count();
        let open = i + n;
        let fence = "`".repeat(n);
        let Some(len) = prose[open..].find(&fence) else {
            break;
        };
        let span = prose[open..open + len].replace('\n', " ");
        out.push(Shown {
            file: file.to_string(),
            line: prose[..i].matches('\n').count() + 1,
            text: span.trim().to_string(),
        });
        i = open + len + n;
    }
    out
}

/// A shell line without its `# comment` (a `#` that starts a word, outside quotes).
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double, mut prev) = (false, false, ' ');
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

/// Shell words (quotes removed), up to the first pipe, redirection or list operator.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let (mut word, mut in_word) = (String::new(), false);
    let (mut single, mut double) = (false, false);
    for c in line.chars() {
        match c {
            '\'' if !double => {
                single = !single;
                in_word = true;
            }
            '"' if !single => {
                double = !double;
                in_word = true;
            }
            c if c.is_whitespace() && !single && !double => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            _ => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    let end = words
        .iter()
        .position(|w| {
            ["|", "||", "&&", ";", "&"].contains(&w.as_str())
                || w.starts_with('>')
                || w.starts_with("2>")
                || w.starts_with('<') && !w.ends_with('>')
        })
        .unwrap_or(words.len());
    words.truncate(end);
    words
}

/// The program and its arguments, leading `NAME=value` assignments skipped.
fn command_of(text: &str) -> Vec<String> {
    let mut w = words(text);
    let assignments = w
        .iter()
        .take_while(|w| {
            w.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.starts_with(|c: char| c.is_ascii_digit())
            })
        })
        .count();
    w.drain(..assignments);
    w
}

/// runyard's arguments, when `text` runs runyard (`runyard …`, `…/runyard …`, or
/// `cargo run … -- …`).
fn runyard_args(text: &str) -> Option<Vec<String>> {
    let w = command_of(text);
    let first = w.first()?;
    if first == "runyard" || first.ends_with("/runyard") {
        return (w.len() > 1).then(|| w[1..].to_vec());
    }
    if first == "cargo" && w.get(1).is_some_and(|s| s == "run") {
        let dash = w.iter().position(|s| s == "--")?;
        return (w.len() > dash + 1).then(|| w[dash + 1..].to_vec());
    }
    None
}

/// True when a help text lists the option `flag` (`--name` or `-x`).
fn help_lists(help: &str, flag: &str) -> bool {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    help.match_indices(flag).any(|(i, _)| {
        let before = help[..i].chars().next_back();
        let after = help[i + flag.len()..].chars().next();
        before.is_none_or(|c| !is_name(c)) && after.is_none_or(|c| !is_name(c))
    })
}

/// What is wrong with the runyard invocations in `shown`: unknown commands, options a
/// command does not take. `help(None)` is `runyard --help`, `help(Some(cmd))` is
/// `runyard CMD --help` (its stdout, or why it failed).
fn cli_problems(
    shown: &[Shown],
    help: &mut dyn FnMut(Option<&str>) -> Result<String, String>,
) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let mut checked = 0;
    for s in shown {
        let Some(args) = runyard_args(&s.text) else {
            continue;
        };
        checked += 1;
        // Options before the command are the top level's; --server and --log-format
        // take a value.
        let mut i = 0;
        let mut top = Vec::new();
        while i < args.len() && args[i].starts_with('-') {
            top.push(args[i].clone());
            if (args[i] == "--server" || args[i] == "--log-format") && i + 1 < args.len() {
                i += 1;
            }
            i += 1;
        }
        let top_help = help(None).unwrap_or_else(|e| panic!("runyard --help: {e}"));
        for flag in &top {
            let name = flag.split('=').next().unwrap();
            if !help_lists(&top_help, name) {
                problems.push(format!(
                    "{}: `{name}` is not an option of runyard (see `runyard --help`)",
                    s.at()
                ));
            }
        }
        let Some(command) = args.get(i) else {
            continue;
        };
        let sub_help = match help(Some(command)) {
            Ok(h) => h,
            Err(why) => {
                problems.push(format!(
                    "{}: `{command}` is not a runyard command (runyard {command} --help: {why})",
                    s.at()
                ));
                continue;
            }
        };
        for arg in &args[i + 1..] {
            if arg == "--" {
                break;
            }
            if !arg.starts_with('-') || arg == "-" {
                continue;
            }
            let name = arg.split('=').next().unwrap();
            if !help_lists(&sub_help, name) {
                problems.push(format!(
                    "{}: `{name}` is not an option of `runyard {command}` (see `runyard {command} --help`)",
                    s.at()
                ));
            }
        }
    }
    (checked, problems)
}

/// `runyard [CMD] --help` from the binary, once per command.
fn binary_help() -> impl FnMut(Option<&str>) -> Result<String, String> {
    let mut cache: BTreeMap<Option<String>, Result<String, String>> = BTreeMap::new();
    move |command| {
        cache
            .entry(command.map(str::to_string))
            .or_insert_with(|| {
                let out = std::process::Command::new(BIN)
                    .args(command)
                    .arg("--help")
                    .env_remove("RUNYARD_URL")
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                if out.status.success() {
                    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
                } else {
                    Err(format!(
                        "exit {:?}: {}",
                        out.status.code(),
                        String::from_utf8_lossy(&out.stderr)
                            .lines()
                            .next()
                            .unwrap_or_default()
                    ))
                }
            })
            .clone()
    }
}

/// Every `runyard …` the README and docs/*.md show (code blocks and inline) names a
/// command the binary has, with options that command takes.
#[test]
fn every_runyard_command_in_the_docs_exists_with_its_options() {
    let mut help = binary_help();
    let mut checked = BTreeMap::new();
    let mut problems = Vec::new();
    for (file, text) in docs() {
        let (n, p) = cli_problems(&shown_lines(&file, &text), &mut help);
        checked.insert(file, n);
        problems.extend(p);
    }
    println!("runyard invocations checked per file: {checked:?}");
    assert!(
        problems.is_empty(),
        "the docs show runyard commands the binary does not accept:\n{}",
        problems.join("\n")
    );
    // The extractor still finds what it should (a guard that checks nothing passes).
    assert!(checked["README.md"] >= 15, "{checked:?}");
    assert!(checked["docs/cli.md"] >= 3, "{checked:?}");
}

/// The guard above fails naming the file, the line and the command.
#[test]
fn the_command_guard_names_the_doc_and_the_command() {
    let doc = "\
# A page

```sh
runyard trigger hello -p name=Ada --wait     # fine
runyard trigger hello --nope                 # a flag that does not exist
runyard frobnicate RUN
runyard --bogus runs
cargo run --release -- serve -c x.toml --port 1
RUNYARD_URL=http://x runyard logs RUN --tial 3 | head
```

Then `runyard wait RUN --abort-on-interrupt` (fine) and `runyard show RUN
--verbose` (not).
";
    let (checked, problems) = cli_problems(&shown_lines("docs/fake.md", doc), &mut binary_help());
    assert_eq!(checked, 8, "{problems:#?}");
    let expected = [
        "docs/fake.md:5: `runyard trigger hello --nope`: `--nope` is not an option of `runyard trigger`",
        "docs/fake.md:6: `runyard frobnicate RUN`: `frobnicate` is not a runyard command",
        "docs/fake.md:7: `runyard --bogus runs`: `--bogus` is not an option of runyard",
        "docs/fake.md:8: `cargo run --release -- serve -c x.toml --port 1`: `--port` is not an option of `runyard serve`",
        "docs/fake.md:9: `RUNYARD_URL=http://x runyard logs RUN --tial 3 | head`: `--tial` is not an option of `runyard logs`",
        "docs/fake.md:12: `runyard show RUN --verbose`: `--verbose` is not an option of `runyard show`",
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    for (p, e) in problems.iter().zip(expected) {
        assert!(p.starts_with(e), "{p}\nexpected: {e}");
    }
}

/// The operations of an OpenAPI document: (method, path template) → query parameters.
fn operations(doc: &Value) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let query = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().unwrap().to_string())
                .collect();
            out.insert((method.to_uppercase(), path.clone()), query);
        }
    }
    out
}

/// True when a path as a doc writes it (`/api/runs/RUN_ID`, `/api/runs/{id}`) is an
/// instance of the template (`/api/runs/{id}`).
fn path_matches(shown: &str, template: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) =
        (shown.split('/').collect(), template.split('/').collect());
    a.len() == b.len()
        && a.iter().zip(&b).all(|(s, t)| {
            if t.starts_with('{') {
                !s.is_empty()
            } else {
                s == t && !s.starts_with('{')
            }
        })
}

/// A request a doc shows: method, path, query parameter names.
struct Route {
    method: String,
    path: String,
    query: Vec<String>,
}

/// The request of a `curl …` line, if it is one against a node.
fn curl_route(text: &str) -> Option<Route> {
    let w = command_of(text);
    if w.first()? != "curl" {
        return None;
    }
    let mut method = None;
    let mut data = false;
    let mut target = None;
    let mut i = 1;
    while i < w.len() {
        let a = &w[i];
        if a == "-X" || a == "--request" {
            method = w.get(i + 1).cloned();
            i += 1;
        } else if let Some(m) = a.strip_prefix("-X") {
            method = Some(m.to_string());
        } else if ["-d", "--data", "--data-raw", "--json"].contains(&a.as_str()) {
            data = true;
            i += 1;
        } else if ["-H", "--header"].contains(&a.as_str()) {
            i += 1;
        } else if !a.starts_with('-') {
            target = Some(a.clone());
        }
        i += 1;
    }
    let target = target?;
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .unwrap_or(&target);
    let path_and_query = &rest[rest.find('/')?..];
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let query = query
        .split('&')
        .filter(|q| !q.is_empty())
        .map(|q| q.split('=').next().unwrap().to_string())
        .collect();
    let method = method.unwrap_or_else(|| if data { "POST" } else { "GET" }.to_string());
    Some(Route {
        method: method.to_uppercase(),
        path: path.to_string(),
        query,
    })
}

/// Every `curl` line and every `METHOD /path` (`GET /api/runs/{id}`,
/// `GET|POST|DELETE /api/session`) in the README and docs/*.md is a route of the OpenAPI
/// document with that method, and a curl line's query parameters are that route's.
#[tokio::test]
async fn every_route_the_docs_show_is_in_the_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "", "[pipelines.quick]\ncommand = [\"true\"]\n");
    let server = BinServer::start(&config, common::free_port()).await;
    let (status, doc) = common::get(
        &reqwest::Client::new(),
        &format!("{}/api/openapi.json", server.base),
    )
    .await;
    assert_eq!(status, 200);
    let ops = operations(&doc);
    let find = |method: &str, path: &str| {
        ops.iter()
            .find(|((m, t), _)| m == method && path_matches(path, t))
            .map(|(_, q)| q)
    };
    let spans = regex::Regex::new(
        r"\b((?:GET|POST|PUT|PATCH|DELETE)(?:\|(?:GET|POST|PUT|PATCH|DELETE))*) (/[A-Za-z0-9_{}./:$-]*)",
    )
    .unwrap();
    let mut problems = Vec::new();
    let (mut curls, mut named) = (0, 0);
    for (file, text) in docs() {
        for s in shown_lines(&file, &text) {
            let Some(route) = curl_route(&s.text) else {
                continue;
            };
            curls += 1;
            match find(&route.method, &route.path) {
                None => problems.push(format!(
                    "{}: {} {} is not a route of the OpenAPI document",
                    s.at(),
                    route.method,
                    route.path
                )),
                Some(params) => {
                    for q in route.query.iter().filter(|q| !params.contains(*q)) {
                        problems.push(format!(
                            "{}: {} {} takes no query parameter `{q}` (it takes {params:?})",
                            s.at(),
                            route.method,
                            route.path
                        ));
                    }
                }
            }
        }
        for (n, line) in text.lines().enumerate() {
            for c in spans.captures_iter(line) {
                let path = c[2].trim_end_matches(['.', ':']);
                for method in c[1].split('|') {
                    named += 1;
                    if find(method, path).is_none() {
                        problems.push(format!(
                            "{file}:{}: `{method} {path}` is not a route of the OpenAPI document",
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    println!("{curls} curl lines and {named} named routes checked");
    assert!(
        problems.is_empty(),
        "the docs show routes the server does not have:\n{}",
        problems.join("\n")
    );
    assert!(
        curls >= 15 && named >= 30,
        "{curls} curl lines, {named} routes"
    );
}

/// The cargo commands the docs show name targets and profiles that exist, put lint
/// options where cargo takes them (after `--`), and the scripts CI runs exist.
#[test]
fn cargo_commands_and_ci_scripts_in_the_docs_exist() {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo().join("Cargo.toml")).unwrap()).unwrap();
    let names = |key: &str| -> BTreeSet<String> {
        manifest
            .get(key)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|t| t.get("name")?.as_str().map(str::to_string))
            .collect()
    };
    let (benches, bins) = (names("bench"), names("bin"));
    let mut profiles: BTreeSet<String> =
        ["dev", "release", "test", "bench"].map(String::from).into();
    profiles.extend(
        manifest
            .get("profile")
            .and_then(|p| p.as_table())
            .into_iter()
            .flat_map(|t| t.keys().cloned()),
    );
    let mut problems = Vec::new();
    let mut checked = 0;
    for (file, text) in docs() {
        for s in shown_lines(&file, &text) {
            let w = command_of(&s.text);
            if w.first().map(String::as_str) == Some("cargo") && w.len() > 1 {
                checked += 1;
                let dash = w.iter().position(|a| a == "--").unwrap_or(w.len());
                for (i, a) in w[..dash].iter().enumerate() {
                    let value = w.get(i + 1).map(String::as_str).unwrap_or_default();
                    let missing = match a.as_str() {
                        "--bench" => !benches.contains(value),
                        "--bin" => !bins.contains(value),
                        "--profile" => !profiles.contains(value),
                        "--test" => !repo().join(format!("tests/{value}.rs")).is_file(),
                        "--locked" => !repo().join("Cargo.lock").is_file(),
                        "-D" | "-W" | "-A" | "-F" => {
                            problems.push(format!(
                                "{}: cargo takes lint options after `--` (`cargo {} … -- {a} …`)",
                                s.at(),
                                w[1]
                            ));
                            false
                        }
                        _ => false,
                    };
                    if missing {
                        problems.push(format!("{}: `{a} {value}` does not exist", s.at()));
                    }
                }
            }
            if let Some(script) = w.first().filter(|p| {
                p.starts_with(".ci/") || (p.starts_with("tests/") && p.ends_with(".sh"))
            }) {
                checked += 1;
                use std::os::unix::fs::PermissionsExt;
                let executable = std::fs::metadata(repo().join(script))
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
                if !executable {
                    problems.push(format!("{}: {script} is not an executable file", s.at()));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the docs show cargo commands or scripts that do not work:\n{}",
        problems.join("\n")
    );
    assert!(checked >= 10, "{checked}");
}
