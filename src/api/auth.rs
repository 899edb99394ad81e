//! Access control: bearer tokens and dashboard sessions.
//!
//! With `[auth] tokens` set, every route but `/healthz` and the dashboard's
//! static shell (`/`, `/assets/…`, which hold no data and must load to show
//! the login form) needs either `Authorization: Bearer <token>` or the
//! dashboard's session cookie. Tokens are configured as SHA-256 hashes; a
//! presented token is hashed and compared with every configured hash in
//! constant time (no early exit), so timing tells nothing about which bytes
//! matched.
//!
//! The session cookie is stateless: `v1.<label>.<expiry>.<HMAC-SHA256(key,
//! "v1.<label>.<expiry>")>`. The key is derived from a random secret that is
//! *not* in the config (`data_dir/session.key`, created 0600 on first start and
//! shared by the processes on that data directory) together with the token
//! hashes (changing the tokens ends every session); knowing the config is not
//! enough to mint a cookie. A cookie's label must still be a configured token's. It is `HttpOnly` (scripts cannot read it) and
//! `SameSite=Strict` (no cross-site sends), and a state-changing request
//! authenticated by the cookie must also carry an `Origin` equal to the
//! server's own (`http(s)://{Host}`), which closes CSRF even for browsers
//! that ignore SameSite. Bearer requests need no Origin check: a browser
//! never attaches that header cross-site on its own.
//!
//! Whatever the auth setting, a state-changing request that carries a foreign
//! `Origin` is refused (a web page cannot make a visitor's browser trigger
//! runs here), and without tokens — when the server listens on loopback only —
//! a request whose `Host` is not a loopback name or address is refused, so a
//! DNS-rebinding page cannot read the API either.
//!
//! Nothing here logs a token, a cookie or an Authorization header.
//!
//! Tests that would catch a violation: `access::*` (401 without a token, 401
//! with a wrong one, `/healthz` open, cookie login, CSRF refusal, SSE with the
//! cookie, the actor recorded on runs, non-loopback refused without tokens).

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::AppState;
use crate::config::{AuthSettings, token_sha256};

/// The session cookie's name.
pub const COOKIE: &str = "runyard_session";

/// Who made a request (the token's label), attached to the request by [`require`].
#[derive(Debug, Clone)]
pub struct Actor(pub Option<String>);

/// The checker built from `[auth]`.
#[derive(Clone)]
pub struct Auth {
    settings: AuthSettings,
    session_key: [u8; 32],
}

impl Auth {
    /// From the config's tokens and the node's session secret ([`session_secret`]).
    pub fn new(settings: &AuthSettings, secret: &[u8]) -> Auth {
        let mut h = Sha256::new();
        h.update(b"runyard-session-v1");
        h.update((secret.len() as u64).to_be_bytes());
        h.update(secret);
        for t in &settings.tokens {
            h.update(t.sha256);
        }
        Auth {
            settings: settings.clone(),
            session_key: h.finalize().into(),
        }
    }

    /// True when tokens are configured.
    pub fn required(&self) -> bool {
        self.settings.required()
    }

    /// The label of the configured token equal to `token`, compared in constant time.
    pub fn check_token(&self, token: &str) -> Option<&str> {
        let digest = token_sha256(token);
        let mut found = None;
        for t in &self.settings.tokens {
            let diff = t
                .sha256
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            // No early exit: every configured token is compared.
            if diff == 0 && found.is_none() {
                found = Some(t.label.as_str());
            }
        }
        found
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.session_key).expect("HMAC takes any key length");
        mac.update(payload.as_bytes());
        mac
    }

    /// A session cookie value for `label`, valid until `now + session_ttl`.
    pub fn issue(&self, label: &str, now_secs: u64) -> String {
        let expiry = now_secs + self.settings.session_ttl.as_secs();
        let payload = format!("v1.{}.{expiry}", URL_SAFE_NO_PAD.encode(label));
        let sig = URL_SAFE_NO_PAD.encode(self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{sig}")
    }

    /// The label of a valid, unexpired session cookie.
    pub fn verify(&self, cookie: &str, now_secs: u64) -> Option<String> {
        let (payload, sig) = cookie.rsplit_once('.')?;
        let mut parts = payload.split('.');
        let (Some("v1"), Some(label), Some(expiry), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        self.mac(payload).verify_slice(&sig).ok()?;
        if expiry.parse::<u64>().ok()? <= now_secs {
            return None;
        }
        let label = String::from_utf8(URL_SAFE_NO_PAD.decode(label).ok()?).ok()?;
        self.settings
            .tokens
            .iter()
            .any(|t| t.label == label)
            .then_some(label)
    }

    /// The `Set-Cookie` value that starts a session.
    pub(super) fn set_cookie(&self, value: &str) -> String {
        format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            self.settings.session_ttl.as_secs()
        )
    }
}

/// The secret that session cookies are signed with, from `data_dir/session.key`: 32 random
/// bytes, created (mode 0600, atomically: written aside, then linked into place) when
/// missing, so every process on that data directory signs alike.
pub fn session_secret(data_dir: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("session.key");
    if let Ok(key) = std::fs::read(&path)
        && key.len() == 32
    {
        return Ok(key);
    }
    std::fs::create_dir_all(data_dir)?;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    let aside = data_dir.join(format!("session.key.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&aside)?;
    f.write_all(&key)?;
    f.sync_all()?;
    drop(f);
    // Another process may win the race: then its key is everyone's.
    let linked = std::fs::hard_link(&aside, &path);
    let _ = std::fs::remove_file(&aside);
    match linked {
        Ok(()) => Ok(key.to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(&path),
        Err(e) => Err(e),
    }
}

pub(super) fn now_secs() -> u64 {
    (crate::clock::now_ms() / 1000).max(0) as u64
}

/// The session cookie's value, if the request carries one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// True when `Origin` names this server (same scheme-less host and port as `Host`).
pub(super) fn same_origin(headers: &HeaderMap) -> bool {
    let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    origin == format!("http://{host}") || origin == format!("https://{host}")
}

/// True when `Host` names this machine's loopback (`localhost`, `*.localhost`, a loopback
/// address), with or without a port; a request without `Host` (HTTP/1.0) passes.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Routes anyone may reach: liveness, the login endpoint, and the dashboard's static shell.
fn public(method: &Method, path: &str) -> bool {
    path == "/healthz"
        || path == "/"
        || path.starts_with("/assets/")
        || (path == "/api/session" && (method == Method::GET || method == Method::POST))
}

pub(super) fn refuse(status: StatusCode, message: &str) -> Response {
    let mut resp = (status, Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"runyard\""),
        );
    }
    resp
}

/// Middleware: authenticates the request (bearer or session cookie), checks the Origin of
/// cookie-authenticated state changes, and attaches the [`Actor`].
pub async fn require(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let auth = &state.auth;
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && req.headers().contains_key(header::ORIGIN) && !same_origin(req.headers()) {
        return refuse(
            StatusCode::FORBIDDEN,
            "cross-origin request refused: state changes are accepted only from this server's own pages or from clients that send no Origin",
        );
    }
    if !auth.required() && !loopback_host(req.headers()) {
        return refuse(
            StatusCode::FORBIDDEN,
            "unexpected Host header: without API tokens this server answers only requests addressed to loopback (DNS-rebinding protection)",
        );
    }
    if !auth.required() {
        req.extensions_mut().insert(Actor(None));
        return next.run(req).await;
    }
    let headers = req.headers();
    let actor = if let Some(token) = bearer(headers) {
        match auth.check_token(token) {
            Some(label) => Some(label.to_string()),
            None => return refuse(StatusCode::UNAUTHORIZED, "invalid token"),
        }
    } else if let Some(label) = session_cookie(headers).and_then(|c| auth.verify(c, now_secs())) {
        if !safe && !same_origin(headers) {
            return refuse(
                StatusCode::FORBIDDEN,
                "cross-origin request refused: a state-changing request with a session cookie must come from this server's own pages",
            );
        }
        Some(label)
    } else {
        None
    };
    if actor.is_none() && !public(req.method(), req.uri().path()) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "authentication required: send Authorization: Bearer <token> (the CLI reads RUNYARD_TOKEN)",
        );
    }
    req.extensions_mut().insert(Actor(actor));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenHash;

    fn auth() -> Auth {
        auth_with(b"node secret")
    }

    fn auth_with(secret: &[u8]) -> Auth {
        Auth::new(
            &AuthSettings {
                tokens: vec![
                    TokenHash {
                        label: "ci".into(),
                        sha256: token_sha256("ci-token-0123456789"),
                    },
                    TokenHash {
                        label: "ops".into(),
                        sha256: token_sha256("ops-token-0123456789"),
                    },
                ],
                ..AuthSettings::default()
            },
            secret,
        )
    }

    #[test]
    fn only_loopback_hosts_pass_without_tokens() {
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
            loopback_host(&m)
        };
        for ok in [
            "127.0.0.1:7878",
            "localhost",
            "LOCALHOST:80",
            "[::1]:7878",
            "app.localhost",
            "127.1.2.3",
        ] {
            assert!(host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7878",
            "10.0.0.1:7878",
            "localhost.evil.example",
            "[::2]:1",
        ] {
            assert!(!host(bad), "{bad}");
        }
        assert!(loopback_host(&HeaderMap::new()));
    }

    #[test]
    fn tokens_match_by_hash_only() {
        let a = auth();
        assert_eq!(a.check_token("ops-token-0123456789"), Some("ops"));
        assert_eq!(a.check_token("ops-token-012345678"), None);
        assert_eq!(a.check_token(""), None);
    }

    #[test]
    fn session_cookies_verify_expire_and_resist_tampering() {
        let a = auth();
        let c = a.issue("ci", 1000);
        assert_eq!(a.verify(&c, 1001).as_deref(), Some("ci"));
        assert_eq!(a.verify(&c, 1000 + 12 * 3600), None, "expired");
        let forged = c.replace(
            &URL_SAFE_NO_PAD.encode("ci"),
            &URL_SAFE_NO_PAD.encode("ops"),
        );
        assert_eq!(a.verify(&forged, 1001), None, "label changed");
        let other = Auth::new(&AuthSettings::default(), b"node secret");
        assert_eq!(
            other.verify(&c, 1001),
            None,
            "another token set ends sessions"
        );
        assert_eq!(
            auth_with(b"another secret").verify(&c, 1001),
            None,
            "the config alone cannot mint a cookie"
        );
        let unknown = a.issue("intruder", 1000);
        assert_eq!(a.verify(&unknown, 1001), None, "labels must be configured");
        assert_eq!(a.verify("v1.x.9999999999", 1), None);
    }
}
