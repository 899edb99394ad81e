//! What the environment may override, and how a bad value is blamed: the bus URL's
//! order of precedence, `RUNYARD_*` over the unprefixed names, and errors that name
//! the variable.

use super::*;

#[test]
fn the_bus_comes_from_runyard_redis_url_then_redis_url_then_the_file() {
    assert_eq!(load("").unwrap().bus, None, "no [bus]: the in-process bus");
    let file = "[bus]\nurl = \"redis://file:6379\"\nprefix = \"prod-eu.1\"\n";
    let s = load(file).unwrap().bus.unwrap();
    assert_eq!(
        (s.url.as_str(), s.url_source, s.prefix.as_str()),
        ("redis://file:6379", "[bus] url", "prod-eu.1")
    );
    let both = |k: &str| match k {
        "RUNYARD_REDIS_URL" => Some("redis://ours:1".to_string()),
        "REDIS_URL" => Some("redis://theirs:2".to_string()),
        _ => None,
    };
    let s = load_env(file, &both).unwrap().bus.unwrap();
    assert_eq!(
        (s.url.as_str(), s.url_source),
        ("redis://ours:1", "RUNYARD_REDIS_URL")
    );
    let bare = |k: &str| (k == "REDIS_URL").then(|| "redis://theirs:2".to_string());
    let s = load_env("", &bare).unwrap().bus.unwrap();
    assert_eq!((s.url_source, s.prefix.as_str()), ("REDIS_URL", "runyard"));
    // Another program's REDIS_URL that this build cannot use is passed over, loudly;
    // with a [bus] table it is an error like any other.
    let tls = |k: &str| (k == "REDIS_URL").then(|| "rediss://addon:6380".to_string());
    let s = load_env("", &tls).unwrap();
    assert_eq!(s.bus, None);
    assert!(
        s.warnings[0].contains("REDIS_URL ignored") && s.warnings[0].contains("TLS"),
        "{:?}",
        s.warnings
    );
    assert!(load_env("[bus]\nprefix = \"p\"\n", &tls).is_err());
}

#[test]
fn a_bad_bus_fails_at_start_naming_the_key() {
    for (text, key, says) in [
        ("[bus]\nprefix = \"x\"\n", "bus.url", "missing"),
        ("[bus]\nurl = \"rediss://h:6379\"\n", "bus.url", "TLS"),
        (
            "[bus]\nurl = \"http://h\"\n",
            "bus.url",
            "expected redis://",
        ),
        (
            "[bus]\nurl = \"redis://h\"\nprefix = \"a b\"\n",
            "bus.prefix",
            "letters",
        ),
        (
            "[bus]\nurl = \"redis://h\"\nprefix = \"\"\n",
            "bus.prefix",
            "1–64",
        ),
        (
            "[bus]\nurl = \"redis://h\"\nport = 1\n",
            "port",
            "unknown field",
        ),
    ] {
        let err = load(text).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(says), "{text:?}: {err}");
    }
}

#[test]
fn env_overrides_win() {
    let env = |k: &str| match k {
        "MAX_WORKERS" => Some("7".to_string()),
        "OUTPUT_FLUSH_INTERVAL_MS" => Some("250".to_string()),
        "DATABASE_URL" => Some("sqlite:///tmp/x.db".to_string()),
        _ => None,
    };
    let s = Settings::from_toml("", Path::new("/tmp/runyard.toml"), &env).unwrap();
    assert_eq!(s.server.max_workers, 7);
    assert_eq!(s.server.output_flush_interval, Duration::from_millis(250));
    assert_eq!(s.store.url, StoreUrl::Sqlite(PathBuf::from("/tmp/x.db")));
    let bad = |k: &str| (k == "MAX_WORKERS").then(|| "lots".to_string());
    let err = Settings::from_toml("", Path::new("/tmp/r.toml"), &bad)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "environment variable MAX_WORKERS=\"lots\": not a whole number (it overrides server.max_workers)"
    );
}

#[test]
fn prefixed_env_overrides_win_over_the_unprefixed_names_and_are_blamed_by_name() {
    let env = |k: &str| match k {
        "MAX_WORKERS" => Some("7".to_string()),
        "RUNYARD_MAX_WORKERS" => Some("9".to_string()),
        "OUTPUT_FLUSH_INTERVAL_MS" => Some("250".to_string()),
        "RUNYARD_MAX_WORKERS_GLOBAL" => Some("4".to_string()),
        "RUNYARD_DATA_DIR" => Some("/srv/runyard".to_string()),
        "RUNYARD_LISTEN" => Some("127.0.0.1:9999".to_string()),
        _ => None,
    };
    let s = load_env("[server]\nmax_workers = 3\n", &env).unwrap();
    assert_eq!(s.server.max_workers, 9);
    assert_eq!(s.server.max_workers_global, 4);
    assert_eq!(s.server.output_flush_interval, Duration::from_millis(250));
    assert_eq!(s.server.data_dir, PathBuf::from("/srv/runyard"));
    assert_eq!(s.server.listen.port(), 9999);
    // An out-of-range value from the environment names the variable, not a line.
    let zero = |k: &str| (k == "RUNYARD_MAX_WORKERS").then(|| "0".to_string());
    let err = load_env("[server]\nmax_workers = 3\n", &zero)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "environment variable RUNYARD_MAX_WORKERS=\"0\": must be between 1 and 1024"
        ),
        "{err}"
    );
    let slow = |k: &str| (k == "RUNYARD_OUTPUT_FLUSH_INTERVAL_MS").then(|| "5".to_string());
    let err = load_env("", &slow).unwrap_err().to_string();
    assert!(
        err.contains("RUNYARD_OUTPUT_FLUSH_INTERVAL_MS") && !err.contains(":0:"),
        "{err}"
    );
    // The same value in the file is blamed on its line.
    let err = load("[server]\nmax_workers = 0\n").unwrap_err().to_string();
    assert!(err.contains(":2: server.max_workers"), "{err}");
}
