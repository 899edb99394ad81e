//! The config loader, end to end: example configs, errors with their lines, environment
//! overrides, templates and parameters, durations and sizes.

use std::path::Path;
use std::time::Duration;

use super::*;

mod environment;
mod workflows;

pub(super) fn load(text: &str) -> Result<Settings, ConfigError> {
    Settings::from_toml(text, Path::new("/tmp/runyard.toml"), &|_| None)
}

pub(super) fn load_env(text: &str, env: EnvLookup<'_>) -> Result<Settings, ConfigError> {
    Settings::from_toml(text, Path::new("/tmp/runyard.toml"), env)
}

#[test]
fn example_style_config_loads() {
    let s = load(
        r#"
[server]
max_workers = 3
[pipelines.hello]
command = ["echo", "hi {name}", "{shard_number}/{shard_count}"]
timeout = "5m"
shards = 2
[pipelines.hello.params.name]
default = "world"
pattern = "[a-z]+"
"#,
    )
    .unwrap();
    assert_eq!(s.server.max_workers, 3);
    let p = &s.pipelines["hello"];
    assert!(p.program.is_absolute());
    assert_eq!(p.timeout, Some(Duration::from_secs(300)));
    assert_eq!(p.params["name"].default.as_deref(), Some("world"));
}

#[test]
fn errors_name_key_and_line() {
    let err =
        load("[server]\nmax_workers = 2\n\n[pipelines.x]\ncommand = [\"echo\", \"{nope}\"]\n")
            .unwrap_err()
            .to_string();
    assert!(
        err.contains(":5: pipelines.x.command") && err.contains("{nope}"),
        "{err}"
    );
    let err = load("[pipelines.x]\ncommand = [\"echo\"]\ntimeout = \"5 parsecs\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains(":3: pipelines.x.timeout"), "{err}");
    let err = load("[server]\nmax_wrkers = 2\n").unwrap_err().to_string();
    assert!(
        err.contains("line 2") && err.contains("max_wrkers"),
        "{err}"
    );
    let err = load("[pipelines.x]\ncommand = [\"definitely-not-a-program-xyz\"]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not found on PATH"), "{err}");
}

#[test]
fn exit_code_retry_rules_are_one_list_of_failing_codes_or_a_start_error() {
    use crate::model::RetryOn;
    let base = "[pipelines.x]\ncommand = [\"true\"]\nmax_attempts = 3\n";
    let s = load(&format!("{base}no_retry_exit_codes = [1, 1, 2]\n")).unwrap();
    assert_eq!(s.pipelines["x"].retry_on, RetryOn::Except(vec![1, 2]));
    let s = load(&format!("{base}retry_exit_codes = [137]\n")).unwrap();
    assert_eq!(s.pipelines["x"].retry_on, RetryOn::Only(vec![137]));
    assert_eq!(load(base).unwrap().pipelines["x"].retry_on, RetryOn::Any);
    let err = load(&format!(
        "{base}retry_exit_codes = [137]\nno_retry_exit_codes = [1]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(":5: pipelines.x.no_retry_exit_codes") && err.contains("not both"),
        "{err}"
    );
    let err = load(&format!("{base}no_retry_exit_codes = [0]\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(":4: pipelines.x.no_retry_exit_codes") && err.contains("1 to 255"),
        "{err}"
    );
    let err = load(&format!("{base}retry_exit_codes = []\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("retry_exit_codes"), "{err}");
}

#[test]
fn schedules_are_checked_at_start_naming_the_key() {
    let base = "[pipelines.x]\ncommand = [\"echo\", \"{suite}\"]\n";
    let params = "[pipelines.x.params.suite]\npattern = \"[a-z]+\"\n";
    let s = load(&format!(
        "{base}schedule = \"0 2 * * *\"\nschedule_tz = \"Europe/Berlin\"\nschedule_params = {{ suite = \"nightly\" }}\n{params}"
    ))
    .unwrap();
    let p = &s.pipelines["x"];
    assert_eq!(
        p.schedule.as_ref().unwrap().key(),
        "0 2 * * * @ Europe/Berlin"
    );
    assert_eq!(p.schedule_params["suite"], "nightly");
    for (extra, key, says) in [
        (
            "schedule = \"61 * * * *\"\n",
            ":3: pipelines.x.schedule",
            "invalid cron",
        ),
        (
            "schedule = \"* * * *\"\n",
            ":3: pipelines.x.schedule",
            "4 fields",
        ),
        (
            "schedule = \"0 2 * * *\"\nschedule_tz = \"Mars/Base\"\n",
            ":4: pipelines.x.schedule_tz",
            "unknown time zone",
        ),
        (
            "schedule_tz = \"UTC\"\n",
            ":3: pipelines.x.schedule_tz",
            "needs a schedule",
        ),
        (
            "schedule = \"0 2 * * *\"\nschedule_params = { suite = \"NIGHTLY\" }\n",
            ":4: pipelines.x.schedule_params",
            "suite",
        ),
        (
            "schedule = \"0 2 * * *\"\nschedule_params = { other = \"a\" }\n",
            ":4: pipelines.x.schedule_params",
            "not a declared parameter",
        ),
        // Not written at all: the table's line.
        (
            "schedule = \"0 2 * * *\"\n",
            ":1: pipelines.x.schedule_params",
            "required",
        ),
    ] {
        let err = load(&format!("{base}{extra}{params}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key) && err.contains(says), "{extra}: {err}");
    }
}

#[test]
fn relative_config_paths_resolve_to_absolute_ones() {
    let s = Settings::from_toml(
        "[server]\ndata_dir = \"data\"\n",
        Path::new("some/dir/runyard.toml"),
        &|_| None,
    )
    .unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(s.server.data_dir, cwd.join("some/dir/data"));
    let s = Settings::from_toml("", Path::new("runyard.toml"), &|_| None).unwrap();
    assert_eq!(s.server.data_dir, cwd.join(".runyard"));
}

#[test]
fn parse_errors_keep_their_lines_and_suggest_the_nearest_key() {
    let err = load("[server]\nmax_wrkers = 2\n").unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains('\n'), "{err}");
    assert!(
        err.contains("2 | max_wrkers = 2"),
        "the snippet survives: {err}"
    );
    assert!(err.ends_with("did you mean `max_workers`?"), "{err}");
    let err = load("[pipelines.x]\ncommand = [\"true\"]\ntimout = \"5m\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.ends_with("did you mean `timeout`?"), "{err}");
    let err = load("[pipelines.x]\ncommand = [\"true\"]\non_orphan = \"requeu\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.ends_with("did you mean `requeue`?"), "{err}");
    let err = load("[sever]\n").unwrap_err().to_string();
    assert!(err.ends_with("did you mean `server`?"), "{err}");
    // Nothing close: no guess.
    let err = load("[server]\nzzzzzzzz = 1\n").unwrap_err().to_string();
    assert!(!err.contains("did you mean"), "{err}");
    let err = load("[pipelines.x]\ncommand = [\"echo\", \"{shard_numbr}\"]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("did you mean {shard_number}?"), "{err}");
    // A finalizer's placeholders, with the nearest one and the list.
    let err =
        load("[pipelines.x]\ncommand = [\"true\"]\nfinalizer = [\"cat\", \"{sumary_file}\"]\n")
            .unwrap_err()
            .to_string();
    assert!(err.contains("did you mean {summary_file}?"), "{err}");
    assert!(err.contains("available: run_id, job_id"), "{err}");
}

#[test]
fn literal_braces_are_suggested_doubled() {
    let err = load("[pipelines.x]\ncommand = [\"sh\", \"-c\", \"echo ${HOME}\"]\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(r#"written doubled: "echo ${{HOME}}""#),
        "{err}"
    );
    let err = load("[pipelines.x]\ncommand = [\"curl\", \"-d\", '{\"a\": 1}']\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains(r#"written doubled: "{{\"a\": 1}}""#), "{err}");
    let s = load("[pipelines.x]\ncommand = [\"sh\", \"-c\", \"echo ${{HOME}} {{}}\"]\n").unwrap();
    assert_eq!(s.pipelines["x"].args[1].render(|_| None), "echo ${HOME} {}");
}

#[test]
fn templates_parse_and_render() {
    let t = Template::parse("--shard={shard_number}/{shard_count} {{x}}").unwrap();
    let out = t.render(|v| {
        Some(if v == "shard_number" {
            "2".into()
        } else {
            "4".into()
        })
    });
    assert_eq!(out, "--shard=2/4 {x}");
    assert_eq!(t.to_string(), "--shard={shard_number}/{shard_count} {{x}}");
    assert!(Template::parse("{open").is_err());
    assert!(Template::parse("a}b").is_err());
}

#[test]
fn params_are_checked() {
    let spec = ParamSpec {
        kind: ParamType::String,
        default: None,
        pattern: Some(Regex::new("^(?:[a-z]+)$").unwrap()),
        allow_leading_dash: false,
    };
    assert_eq!(spec.accept(&serde_json::json!("abc")).unwrap(), "abc");
    assert!(spec.accept(&serde_json::json!("abc; rm")).is_err());
    let free = ParamSpec {
        pattern: None,
        ..spec.clone()
    };
    assert!(free.accept(&serde_json::json!("--output=/etc/x")).is_err());
    assert!(free.accept(&serde_json::json!("a\0b")).is_err());
    assert!(
        free.accept(&serde_json::json!("x".repeat(MAX_PARAM_BYTES + 1)))
            .is_err()
    );
    let int = ParamSpec {
        kind: ParamType::Integer,
        ..free
    };
    assert_eq!(int.accept(&serde_json::json!(3)).unwrap(), "3");
    assert!(int.accept(&serde_json::json!("x")).is_err());
    for negative in [serde_json::json!(-3), serde_json::json!(" -3")] {
        let err = int.accept(&negative).unwrap_err();
        assert!(err.contains("negative values are refused"), "{err}");
    }
    let signed = ParamSpec {
        allow_leading_dash: true,
        ..int
    };
    assert_eq!(signed.accept(&serde_json::json!("-3")).unwrap(), "-3");
}

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
    assert!(parse_duration("7 weeks").is_err());
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
    assert_eq!(
        parse_duration("2d12h").unwrap(),
        Duration::from_secs(216_000)
    );
    assert_eq!(
        parse_duration("1s500ms").unwrap(),
        Duration::from_millis(1500)
    );
    assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
    for bad in ["", "30m1h", "1h1h", "1h30", "5 parsecs", "h", "1.2.3s"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
    }
    assert!(
        parse_duration("5 parsecs")
            .unwrap_err()
            .contains("invalid duration unit \"parsecs\"")
    );
    assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
    assert!(parse_size("16 furlongs").is_err());
}
