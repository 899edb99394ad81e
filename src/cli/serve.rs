//! `runyard serve`: the config with the environment and `--listen` applied, the
//! listener bound (which names the node by its port when no name is set), then the
//! node until SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::Context;

use super::exit;
use crate::config::Settings;

/// The config at `path` with the environment applied, as `serve` and `check` read it.
pub(super) fn load_settings(path: &std::path::Path) -> anyhow::Result<Settings> {
    Settings::load(path).map_err(|e| match e {
        crate::config::ConfigError::Read { path, source }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            anyhow::anyhow!(
                "config file {} not found (pass -c PATH; examples/runyard.toml is a start)",
                path.display()
            )
        }
        other => anyhow::anyhow!(other),
    })
}

pub(super) async fn serve(config: PathBuf, listen: Option<String>) -> anyhow::Result<u8> {
    // Handlers first: a SIGTERM that arrives while the node starts (store, migrations,
    // the journal's replay) then stops it gracefully once it is up, instead of killing it
    // by the signal's default action.
    let stop = shutdown_signal();
    let mut settings = load_settings(&config)?;
    if let Some(addr) = listen {
        let addr: std::net::SocketAddr = addr
            .parse()
            .with_context(|| format!("invalid --listen address {addr:?}"))?;
        anyhow::ensure!(
            addr.ip().is_loopback() || settings.auth.required(),
            "--listen {addr} is not a loopback address: set [auth] tokens before listening beyond this host"
        );
        settings.server.listen = addr;
    }
    let listener = tokio::net::TcpListener::bind(settings.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.server.listen))?;
    if settings.server.node_name.is_none() {
        let port = listener.local_addr()?.port();
        settings.server.node_name = Some(crate::config::default_node_name(
            &crate::executor::process::hostname(),
            port,
        ));
    }
    // Descendants that escape a job's process group are re-parented to us, to be swept.
    if let Err(e) = crate::executor::reaper::enable() {
        tracing::warn!(
            "cannot become a child subreaper; setsid escapees of jobs will outlive them: {e}"
        );
    }
    crate::serve::run(settings, listener, stop).await?;
    Ok(exit::OK)
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves on either (also
/// on one that arrived before it was first polled).
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
