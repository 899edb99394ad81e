//! The live dashboard: static files from `web/`, compiled into the binary.
//!
//! `GET /` is `web/index.html`; `GET /assets/{file}` the scripts (ES modules),
//! the stylesheet and the icon. Nothing is fetched from elsewhere at run time.
//! Every answer carries a strict Content-Security-Policy (`default-src 'self'`:
//! no inline script or style, no other origin), `nosniff`, and an `ETag` with
//! `Cache-Control: no-cache`, so a browser revalidates (304) and a new binary's
//! files are picked up at once. The page talks to the JSON API and its SSE
//! streams with same-origin requests only.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::ApiError;

/// The policy on every dashboard answer.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'; form-action 'self'";

/// An embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// `GET /`.
const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../web/index.html"),
};

/// `GET /assets/{name}`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_bytes!("../../web/assets/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_bytes!("../../web/assets/api.js"),
    },
    Asset {
        name: "sse.js",
        content_type: JS,
        body: include_bytes!("../../web/assets/sse.js"),
    },
    Asset {
        name: "dom.js",
        content_type: JS,
        body: include_bytes!("../../web/assets/dom.js"),
    },
    Asset {
        name: "logview.js",
        content_type: JS,
        body: include_bytes!("../../web/assets/logview.js"),
    },
    Asset {
        name: "chart.js",
        content_type: JS,
        body: include_bytes!("../../web/assets/chart.js"),
    },
    Asset {
        name: "nodes.js",
        content_type: JS,
        body: include_bytes!("../../web/assets/nodes.js"),
    },
    Asset {
        name: "workflows.js",
        content_type: JS,
        body: include_bytes!("../../web/assets/workflows.js"),
    },
    Asset {
        name: "wfgraph.js",
        content_type: JS,
        body: include_bytes!("../../web/assets/wfgraph.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/assets/style.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../web/assets/favicon.svg"),
    },
];

/// Strong ETags, one per file (index first), computed once.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    std::iter::once(&INDEX)
        .chain(ASSETS)
        .map(|a| {
            let digest = Sha256::digest(a.body);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header value")
        })
        .collect()
});

/// `GET /`: the dashboard page (public: it holds no data and must load to show the login).
#[utoipa::path(
    get,
    path = "/",
    tag = "dashboard",
    operation_id = "dashboard",
    responses(
        (status = 200, description = "The dashboard page", body = String, content_type = "text/html"),
        (status = 304, description = "Unchanged since the `If-None-Match` ETag"),
    )
)]
pub(super) async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &ETAGS[0], &headers)
}

/// `GET /assets/{file}`: the dashboard's scripts, stylesheet and icon (embedded; public).
#[utoipa::path(
    get,
    path = "/assets/{file}",
    tag = "dashboard",
    operation_id = "dashboardAsset",
    params(("file" = String, Path, description = "An embedded file name, e.g. `app.js`")),
    responses(
        (status = 200, description = "The file", body = String, content_type = "application/octet-stream"),
        (status = 304, description = "Unchanged since the `If-None-Match` ETag"),
        (status = 404, description = "No such asset", body = super::ErrorBody),
    )
)]
pub(super) async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.name == file) {
        Some(i) => serve(&ASSETS[i], &ETAGS[i + 1], &headers),
        None => ApiError::NotFound(format!(
            "no such asset: {}",
            file.chars().take(100).collect::<String>()
        ))
        .into_response(),
    }
}

fn serve(asset: &Asset, etag: &HeaderValue, request: &HeaderMap) -> Response {
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == etag)
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
