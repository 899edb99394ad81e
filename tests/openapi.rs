//! `/api/openapi.json`: a valid OpenAPI 3 document that lists every route the
//! router serves (and nothing it does not), whose schemas match real answers.
//!
//! The route list is not kept here: documented operations come from the served
//! document, and routes registered outside `routes!` are found by reading the
//! `.route(` calls of `src/api/`, so a route added without documentation fails.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::TestServer;
use serde_json::{Value, json};

const PIPELINES: &str = r#"
[pipelines.echo]
command = ["echo", "{word}"]
[pipelines.echo.params.word]
default = "hi"
pattern = "[a-z]{1,10}"

[pipelines.sharded]
command = ["sh", "-c", "echo out; echo err >&2"]
shards = 2
setup = ["true"]

[workflows.flow.steps.first]
pipeline = "echo"
[workflows.flow.steps.second]
pipeline = "sharded"
needs = ["first"]
"#;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

async fn document(s: &TestServer) -> Value {
    let resp = s
        .http
        .get(format!("{}/api/openapi.json", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    resp.json().await.unwrap()
}

/// Every `(METHOD, path)` the document lists.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                ops.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// The schema a `$ref` names (`#/components/schemas/X` only: all this document uses).
fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let name = reference
        .strip_prefix("#/components/schemas/")
        .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
    let schema = &doc["components"]["schemas"][name];
    assert!(!schema.is_null(), "dangling $ref {reference}");
    schema
}

/// Every `$ref` anywhere under `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// Property names an object may have under `schema`, or `None` when it is open
/// (`additionalProperties` set to a schema or `true`). A struct schema is closed: an
/// answer field the schema does not name is drift.
fn known_properties(doc: &Value, schema: &Value) -> Option<BTreeSet<String>> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return known_properties(doc, resolve(doc, r));
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        let mut names = BTreeSet::new();
        for s in all {
            names.extend(known_properties(doc, s)?);
        }
        return Some(names);
    }
    match schema.get("additionalProperties") {
        Some(Value::Bool(false)) | None => Some(
            schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default(),
        ),
        Some(_) => None,
    }
}

/// Checks `value` against `schema` for the keywords utoipa emits (type, properties,
/// required, additionalProperties, items, allOf, oneOf, enum, minimum, maximum), and,
/// when `strict`, that an object has no property its schema does not name.
/// Returns the first violation with its JSON path.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, strict: bool) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return check(doc, resolve(doc, r), value, at, strict);
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            check(doc, s, value, at, false)?;
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = one
            .iter()
            .filter(|s| check(doc, s, value, at, strict).is_ok())
            .count();
        if matching != 1 {
            return Err(format!("{at}: {matching} oneOf branches match {value}"));
        }
    }
    if let Some(ty) = schema.get("type") {
        let types: Vec<&str> = match ty {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            other => panic!("{at}: odd type {other}"),
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let ok = types.contains(&actual) || (actual == "integer" && types.contains(&"number"));
        if !ok {
            return Err(format!("{at}: {value} is not of type {types:?}"));
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array)
        && !values.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {values:?}"));
    }
    if let (Some(min), Some(n)) = (schema.get("minimum"), value.as_f64())
        && n < min.as_f64().unwrap()
    {
        return Err(format!("{at}: {n} < minimum {min}"));
    }
    if let (Some(max), Some(n)) = (schema.get("maximum"), value.as_f64())
        && n > max.as_f64().unwrap()
    {
        return Err(format!("{at}: {n} > maximum {max}"));
    }
    if let Value::Object(obj) = value {
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name.as_str().unwrap();
            if !obj.contains_key(name) {
                return Err(format!("{at}: required property {name:?} is missing"));
            }
        }
        if strict
            && (schema.get("properties").is_some() || schema.get("allOf").is_some())
            && let Some(known) = known_properties(doc, schema)
            && let Some(extra) = obj.keys().find(|k| !known.contains(*k))
        {
            return Err(format!("{at}: property {extra:?} is not in the schema"));
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, v) in obj {
            match (
                props.and_then(|p| p.get(k)),
                schema.get("additionalProperties"),
            ) {
                (Some(sub), _) => check(doc, sub, v, &format!("{at}.{k}"), true)?,
                (None, Some(extra @ Value::Object(_))) => {
                    check(doc, extra, v, &format!("{at}.{k}"), true)?
                }
                _ => {}
            }
        }
    }
    if let (Some(items), Value::Array(values)) = (schema.get("items"), value) {
        for (i, v) in values.iter().enumerate() {
            check(doc, items, v, &format!("{at}[{i}]"), true)?;
        }
    }
    Ok(())
}

/// The answer's schema as documented for this operation and status, checked against `body`.
fn conforms(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let response = &doc["paths"][path][method.to_lowercase()]["responses"][status.to_string()];
    assert!(
        !response.is_null(),
        "{method} {path}: status {status} is not documented"
    );
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "{method} {path} {status}: no JSON schema"
    );
    if let Err(e) = check(doc, schema, body, "$", true) {
        panic!("{method} {path} {status}: answer does not match its schema: {e}\n{body:#}");
    }
}

/// A value for `{id}` that reaches the handler: a configured pipeline or a well-formed id.
fn concrete(path: &str) -> String {
    if path.starts_with("/api/pipelines/") {
        path.replace("{id}", "echo")
    } else {
        path.replace("{id}", "01a20b86-eb74-734c-b052-15e5f4f42ed5")
    }
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_and_lists_exactly_the_served_routes() {
    let s = TestServer::start("", PIPELINES).await;
    let doc = document(&s).await;

    // What the library builds for this config is what is served.
    let config = s.dir.path().join("runyard.toml");
    let settings = runyard::config::Settings::from_toml(
        &std::fs::read_to_string(&config).unwrap(),
        &config,
        &|_| None,
    )
    .unwrap();
    assert_eq!(
        doc,
        serde_json::to_value(runyard::api::openapi(&settings)).unwrap()
    );

    // OpenAPI 3 structure.
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(doc["info"]["title"], "runyard");
    assert!(doc["info"]["version"].is_string());
    let mut operation_ids = BTreeSet::new();
    let ops = operations(&doc);
    assert!(ops.len() >= 14, "{ops:?}");
    for (method, path) in &ops {
        let op = &doc["paths"][path][method.to_lowercase()];
        let id = op["operationId"].as_str().unwrap();
        assert!(operation_ids.insert(id), "operationId {id} used twice");
        let responses = op["responses"].as_object().unwrap();
        assert!(!responses.is_empty(), "{method} {path}: no responses");
        for (status, response) in responses {
            assert!(
                response["description"].is_string(),
                "{method} {path} {status}"
            );
            let code: u16 = status.parse().unwrap();
            if code >= 400 {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/Error",
                    "{method} {path} {status}: every error answer is an Error"
                );
            }
        }
        // Every `{param}` of the path is a required path parameter.
        for name in path
            .split('{')
            .skip(1)
            .map(|p| p.split('}').next().unwrap())
        {
            let declared = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true);
            assert!(
                declared,
                "{method} {path}: path parameter {name} undeclared"
            );
        }
    }
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    for r in &all_refs {
        resolve(&doc, r);
    }
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], json!(["error"]));
    assert_eq!(error["properties"]["error"]["type"], "string");

    // bearerAuth everywhere but /healthz.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"],
        json!({"type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"]})
    );
    assert_eq!(doc["security"], json!([{"bearerAuth": []}]));
    assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([]));

    // The pipeline `{id}` is a string with this node's pipelines as examples, not an
    // enum: a generated client must not need regenerating when a pipeline is added.
    let trigger = &doc["paths"]["/api/pipelines/{id}/trigger"]["post"];
    let id = &trigger["parameters"][0]["schema"];
    assert_eq!(id["type"], "string", "{id}");
    assert_eq!(id["examples"], json!(["echo", "sharded"]), "{id}");
    assert!(id.get("enum").is_none(), "{id}");
    // A trigger's status is the run-status schema.
    let triggered = &doc["components"]["schemas"]["Triggered"]["properties"]["status"];
    assert_eq!(
        triggered["$ref"], "#/components/schemas/RunStatus",
        "{triggered}"
    );

    // Documented ⊆ served: no documented operation reaches the router's fallbacks.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for (method, path) in &ops {
        let url = format!("{}{}", s.base, concrete(path));
        let resp = http
            .request(method.parse().unwrap(), &url)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let documented = doc["paths"][path][method.to_lowercase()]["responses"]
            .get(status.to_string())
            .is_some();
        assert!(documented, "{method} {path} answered undocumented {status}");
        let json = resp
            .headers()
            .get("content-type")
            .is_some_and(|t| t.to_str().unwrap_or("").starts_with("application/json"));
        if !json {
            continue; // a stream, Prometheus text or 204: the status is the answer
        }
        let body: Value = resp.json().await.unwrap();
        assert_ne!(
            body["error"], "no such route",
            "{method} {path} is not routed"
        );
    }

    // Served ⊆ documented, method by method: what the document does not list is a 405.
    for path in doc["paths"].as_object().unwrap().keys() {
        for m in METHODS {
            if ops.contains(&(m.to_uppercase(), path.clone())) {
                continue;
            }
            let url = format!("{}{}", s.base, concrete(path));
            let resp = http
                .request(m.to_uppercase().parse().unwrap(), &url)
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                405,
                "{m} {path} is served but not documented"
            );
        }
    }
    s.stop().await;
}

/// Routes registered with a plain `.route(…)` (outside `routes!`, which documents by
/// construction) must be in the document too. Read from the source, so a new one is seen.
#[tokio::test]
async fn routes_registered_outside_routes_macro_are_documented() {
    let s = TestServer::start("", PIPELINES).await;
    let doc = document(&s).await;
    let documented: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut files = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api")];
    let mut routed = Vec::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for piece in text.split(".route(\"").skip(1) {
            let route = piece.split('"').next().unwrap().to_string();
            routed.push((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                route,
            ));
        }
        for call in [".nest(", ".merge(", ".nest_service(", ".route_service("] {
            assert!(
                !text.contains(call),
                "{}: {call} adds routes this test cannot see; document them and extend the test",
                path.display()
            );
        }
    }
    for (file, route) in routed {
        assert!(
            documented.contains(route.as_str()),
            "src/api/{file}: route {route} is served but not in /api/openapi.json; \
             register it with routes!() and a #[utoipa::path]"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn answers_match_their_documented_schemas() {
    let s = TestServer::start("", PIPELINES).await;
    let doc = document(&s).await;
    let mut events = s.events();

    let (status, body) = s.get("/healthz").await;
    conforms(&doc, "GET", "/healthz", status, &body);

    let (status, body) = s.trigger("sharded", json!({"idempotencyKey": "k-1"})).await;
    assert_eq!(status, 202);
    conforms(&doc, "POST", "/api/pipelines/{id}/trigger", status, &body);
    let run = body["runId"].as_str().unwrap().to_string();
    let (status, replay) = s.trigger("sharded", json!({"idempotencyKey": "k-1"})).await;
    conforms(&doc, "POST", "/api/pipelines/{id}/trigger", status, &replay);
    for (bad, want) in [
        (json!({"shards": 0}), 400),
        (json!({"idempotencyKey": "k-1", "shards": 1}), 409),
        (json!({"nope": 1}), 400),
    ] {
        let (status, body) = s.trigger("sharded", bad).await;
        assert_eq!(status, want, "{body}");
        conforms(&doc, "POST", "/api/pipelines/{id}/trigger", status, &body);
    }
    s.wait_run(&mut events, &run, Duration::from_secs(20)).await;

    let job = format!("{run}:s1");
    for (path, concrete_path) in [
        ("/api/pipelines", "/api/pipelines".to_string()),
        (
            "/api/pipelines/{id}/jobs",
            "/api/pipelines/sharded/jobs".into(),
        ),
        ("/api/runs", "/api/runs?status=completed".into()),
        ("/api/runs/{id}", format!("/api/runs/{run}")),
        (
            "/api/runs/{id}/deliveries",
            format!("/api/runs/{run}/deliveries"),
        ),
        ("/api/jobs/{id}", format!("/api/jobs/{job}")),
        (
            "/api/jobs/{id}/logs",
            format!("/api/jobs/{job}/logs?tail=5"),
        ),
        ("/api/workers", "/api/workers".into()),
        ("/api/stats", "/api/stats?window=1h".into()),
        (
            "/api/runs",
            format!("/api/runs?run={}&param=word&actor=nobody", &run[..8]),
        ),
        // Errors: 400 and 404.
        ("/api/runs", "/api/runs?limit=0".into()),
        ("/api/runs", "/api/runs?run=not-hex".into()),
        ("/api/stats", "/api/stats?window=forever".into()),
        ("/api/runs/{id}", "/api/runs/not-a-uuid".into()),
        ("/api/jobs/{id}", format!("/api/jobs/{run}:s7")),
        (
            "/api/pipelines/{id}/jobs",
            "/api/pipelines/nope/jobs".into(),
        ),
    ] {
        let (status, body) = s.get(&concrete_path).await;
        assert!(status == 200 || status >= 400, "{concrete_path}: {status}");
        conforms(&doc, "GET", path, status, &body);
    }
    let (_, logs) = s.get(&format!("/api/jobs/{job}/logs")).await;
    assert_eq!(logs["stdout"], json!(["out"]));
    let (status, body) = s.post(&format!("/api/runs/{run}/abort"), json!({})).await;
    assert_eq!(status, 409);
    conforms(&doc, "POST", "/api/runs/{id}/abort", status, &body);

    // Workflows: trigger (202, 400), list, one, abort (202, then 409 for a finished
    // one), re-run (202, 409), and the 400/404 of their ids.
    let trigger = "/api/workflows/{id}/trigger";
    let (status, body) = s.post("/api/workflows/flow/trigger", json!({})).await;
    assert_eq!(status, 202, "{body}");
    conforms(&doc, "POST", trigger, status, &body);
    let flow = body["workflowRunId"].as_str().unwrap().to_string();
    for bad in [json!({"nope": 1}), json!({"parameters": {"x": "y"}})] {
        let (status, body) = s.post("/api/workflows/flow/trigger", bad).await;
        assert_eq!(status, 400, "{body}");
        conforms(&doc, "POST", trigger, status, &body);
    }
    events
        .wait_for(
            "workflow:completed",
            |d| d["workflowRunId"] == json!(flow),
            Duration::from_secs(20),
        )
        .await;
    for (path, concrete_path) in [
        ("/api/workflows", "/api/workflows".to_string()),
        (
            "/api/workflow-runs",
            "/api/workflow-runs?workflow=flow".into(),
        ),
        (
            "/api/workflow-runs",
            "/api/workflow-runs?status=later".into(),
        ),
        (
            "/api/workflow-runs/{id}",
            format!("/api/workflow-runs/{flow}"),
        ),
        ("/api/workflow-runs/{id}", "/api/workflow-runs/nope".into()),
        (
            "/api/workflow-runs/{id}",
            "/api/workflow-runs/00000000-0000-7000-8000-000000000000".into(),
        ),
    ] {
        let (status, body) = s.get(&concrete_path).await;
        assert!(status == 200 || status >= 400, "{concrete_path}: {status}");
        conforms(&doc, "GET", path, status, &body);
    }
    let (status, body) = s
        .post(&format!("/api/workflow-runs/{flow}/abort"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    conforms(&doc, "POST", "/api/workflow-runs/{id}/abort", status, &body);
    let rerun = "/api/workflow-runs/{id}/rerun";
    let (status, body) = s
        .post(&format!("/api/workflow-runs/{flow}/rerun"), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    conforms(&doc, "POST", rerun, status, &body);
    let (status, body) = s
        .post(
            &format!("/api/workflow-runs/{flow}/rerun"),
            json!({"only": "failed"}),
        )
        .await;
    assert_eq!(status, 409, "nothing failed: {body}");
    conforms(&doc, "POST", rerun, status, &body);
    s.stop().await;
}

/// The documented `{id}` patterns promise that a matching id is never refused as
/// malformed (schemathesis's positive-data check relies on it): every generated id the
/// pattern accepts gets 200 or 404, and short-id spellings the server would refuse do
/// not match it.
#[tokio::test]
async fn ids_that_match_the_documented_patterns_are_never_refused() {
    let s = TestServer::start("", PIPELINES).await;
    let doc = document(&s).await;
    let pattern = |path: &str| {
        let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
        let p = params.iter().find(|p| p["name"] == "id").unwrap();
        regex::Regex::new(p["schema"]["pattern"].as_str().unwrap()).unwrap()
    };
    let (run_re, job_re) = (pattern("/api/runs/{id}"), pattern("/api/jobs/{id}"));
    let (_, t) = s.trigger("sharded", json!({})).await;
    let real = t["runId"].as_str().unwrap().to_string();
    // A small deterministic generator (xorshift): hex digits and hyphens of many lengths,
    // half of them prefixes of the real run id with hyphens dropped or moved.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let (mut matched, mut unmatched) = (0, 0);
    for i in 0..400 {
        let len = 6 + next(32) as usize;
        let mut id: String = if i % 2 == 0 {
            real.chars().take(len).collect()
        } else {
            (0..len)
                .map(|_| b"0123456789abcdefABCDEF"[next(22) as usize] as char)
                .collect()
        };
        match next(4) {
            0 => id.retain(|c| c != '-'),
            1 => {
                let at = next(id.len() as u64) as usize;
                id.insert(at, '-');
            }
            _ => {}
        }
        if !run_re.is_match(&id) {
            unmatched += 1;
            continue;
        }
        matched += 1;
        let (status, body) = s.get(&format!("/api/runs/{id}")).await;
        assert!(status == 200 || status == 404, "{id}: {status} {body}");
        let job = format!("{id}:s1");
        assert!(job_re.is_match(&job), "{job}");
        let (status, body) = s.get(&format!("/api/jobs/{job}")).await;
        assert!(status == 200 || status == 404, "{job}: {status} {body}");
    }
    assert!(
        matched > 100 && unmatched > 50,
        "{matched} matched, {unmatched} not"
    );
    s.stop().await;
}
