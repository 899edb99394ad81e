//! Installing and running runyard as a service: the systemd unit and the container file
//! in `examples/` (what can be checked without a service manager or a container engine).

use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// `systemd-analyze verify` accepts the unit as shipped (with ExecStart pointed at the
/// binary just built); skipped where systemd-analyze is not installed.
#[test]
fn the_systemd_unit_verifies_and_keeps_jobs_from_outliving_the_node() {
    let unit = repo("examples/systemd/runyard.service");
    for setting in [
        "KillMode=mixed",
        "SendSIGKILL=yes",
        "TimeoutStopSec=60",
        "Environment=RUNYARD_DATA_DIR=/var/lib/runyard",
    ] {
        assert!(unit.lines().any(|l| l == setting), "missing {setting}");
    }
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(probe.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runyard.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/runyard", env!("CARGO_BIN_EXE_runyard")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify exits 0 on settings it ignores, but names them: nothing may be said.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// The container file builds from the repository with the lock file and serves a
/// config that exists, with its data on the volume.
#[test]
fn the_container_file_builds_from_the_repo_and_serves_the_bundled_config() {
    let file = repo("examples/Containerfile");
    assert!(file.contains("RUN cargo install --locked --path . --root /out"));
    assert!(file.contains("ENV RUNYARD_DATA_DIR=/var/lib/runyard"));
    assert!(file.contains("VOLUME /var/lib/runyard"));
    assert!(
        file.contains(r#"ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/runyard", "serve"]"#)
    );
    assert!(file.contains("COPY examples/ /usr/share/runyard/examples/"));
    assert!(file.contains(r#"CMD ["-c", "/usr/share/runyard/examples/runyard.toml"]"#));
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/runyard.toml")
            .is_file()
    );
    let ignore = repo(".dockerignore");
    assert!(
        ignore.lines().any(|l| l == "target/"),
        "the build context skips target/"
    );
}
