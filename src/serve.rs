//! The composition root: the only place that knows the concrete store and bus.
//!
//! [`run`] builds store, bus, scheduler, event tailer and API, serves until
//! the `shutdown` future resolves, then drains in order: scheduler (stop
//! claiming, let jobs finish or re-queue them, deregister), then the HTTP
//! server (streams end), then the store. It returns instead of exiting, so
//! tests run exactly the path users run, in-process on port 0.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::listen::{self, Limits};
use crate::api::{self, AppState, Auth, EventTailer};
use crate::bus::{Bus, LocalBus, RedisBus};
use crate::config::{Settings, StoreUrl};
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use crate::store::Store;
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::sqlite::SqliteStore;
use crate::webhook::{AllowList, WebhookPolicy, Webhooks, secret_key};

/// Opens the configured store, saying which one and why.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let source = settings.store.url_source;
    match &settings.store.url {
        StoreUrl::Sqlite(path) => {
            let store = SqliteStore::open(path, settings.store.synchronous)
                .with_context(|| format!("opening {}", path.display()))?;
            tracing::info!(path = %path.display(), from = source, "store: SQLite");
            Ok(Arc::new(store))
        }
        StoreUrl::Postgres(url) => {
            let opts = PgOptions {
                url: url.clone(),
                schema: settings.store.schema.clone(),
                pool_size: settings
                    .store
                    .pool_size
                    .unwrap_or((settings.server.max_workers + 10).min(32)),
            };
            let store = PgStore::open(&opts)
                .await
                .with_context(|| format!("store URL from {}", settings.store.url_origin))?;
            tracing::info!(
                url = store.display(),
                schema = opts.schema.as_deref().unwrap_or("public"),
                pool = opts.pool_size,
                from = source,
                "store: PostgreSQL"
            );
            Ok(Arc::new(store))
        }
    }
}

/// The configured bus: Redis with `[bus]` (connecting in the background: a Redis that
/// is down at start is a warning and degraded mode, never a failed start), else the
/// in-process bus.
pub fn open_bus(settings: &Settings, store: &Arc<dyn Store>) -> Arc<dyn Bus> {
    let Some(b) = &settings.bus else {
        tracing::info!("bus: in-process (no [bus] url); replicas would rely on store polls");
        return Arc::new(LocalBus::default());
    };
    match RedisBus::start(b, store.changes().clone()) {
        Ok(bus) => {
            tracing::info!(url = bus.display(), prefix = %b.prefix, from = b.url_source, origin = bus.origin(), "bus: Redis");
            Arc::new(bus)
        }
        // The URL was checked when the config loaded; this is not expected.
        Err(e) => {
            tracing::warn!("bus: {e}; using the in-process bus");
            Arc::new(LocalBus::default())
        }
    }
}

/// The webhook checker and sender from `[webhooks]` (defaults when absent: https only,
/// global addresses only, the system's DNS). `None`, with a warning, when no DNS resolver
/// can be built: triggers with a callback URL are then refused.
pub fn webhooks(settings: &Settings) -> anyhow::Result<Option<Arc<Webhooks>>> {
    let w = &settings.webhooks;
    let allow_hosts = AllowList::parse(&w.allow_hosts).context("[webhooks] allow_hosts")?;
    let key = match &w.secret {
        Some(secret) => Some(secret_key(secret.expose()).context("[webhooks] secret_env")?),
        None => None,
    };
    // Unsigned webhooks cannot be told from forged ones by their receivers: say so at
    // start, where whoever runs the node sees it, whenever webhooks are in use.
    let hooked: Vec<&str> = settings
        .pipelines
        .values()
        .filter(|p| p.callback_url.is_some())
        .map(|p| p.name.as_str())
        .collect();
    if key.is_none() && (w.configured || !hooked.is_empty()) {
        tracing::warn!(
            pipelines = %hooked.join(","),
            "webhooks will be sent unsigned: set [webhooks] secret_env to the variable holding \
             the signing secret, so receivers can verify them"
        );
    }
    let policy = WebhookPolicy {
        allow_http: w.allow_http,
        allow_hosts,
        nameservers: w.nameservers.clone(),
        timeout: w.timeout,
        ..WebhookPolicy::default()
    };
    match Webhooks::new(policy, key) {
        Ok(hooks) => Ok(Some(Arc::new(hooks))),
        Err(e) => {
            tracing::warn!("webhooks disabled: {e}");
            Ok(None)
        }
    }
}

/// Runs a node on `listener` until `shutdown` resolves, then drains and returns.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let store = open_store(&settings).await?;
    let bus = open_bus(&settings, &store);
    let webhooks = webhooks(&settings)?;
    let metrics = Arc::new(Metrics::default());
    let scheduler = Scheduler::start(
        settings.clone(),
        store.clone(),
        bus.clone(),
        webhooks,
        metrics.clone(),
    )
    .await
    .context("starting the scheduler")?;
    let http_stop = CancellationToken::new();
    let tailer = EventTailer::start(store.clone(), http_stop.clone()).await;
    let app = api::router(AppState {
        scheduler: scheduler.clone(),
        store: store.clone(),
        tailer,
        shutdown: http_stop.clone(),
        streams: Arc::new(tokio::sync::Semaphore::new(api::sse::MAX_STREAMS)),
        auth: Auth::new(
            &settings.auth,
            &api::auth::session_secret(&settings.server.data_dir)
                .context("reading or creating the session secret in data_dir")?,
        ),
        metrics,
    });
    let addr = listener.local_addr()?;
    // An unspecified address (0.0.0.0, ::) listens on loopback too: that URL works here.
    let shown = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        ip if ip.is_unspecified() => {
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    };
    tracing::info!(addr = %addr, dashboard = %format!("http://{shown}/"), "listening");

    let stop = http_stop.clone();
    let drain = scheduler.clone();
    let limits = Limits {
        max_connections: settings.server.max_connections,
        write_stall: settings.server.client_write_timeout,
        idle: settings.server.client_idle_timeout,
    };
    let server = listen::serve(listener, app, limits, async move {
        shutdown.await;
        tracing::info!("shutting down: draining jobs");
        drain.shutdown().await;
        stop.cancel();
    });
    let result = server.await.context("HTTP server failed");
    http_stop.cancel();
    bus.close();
    store.close().await;
    result
}
