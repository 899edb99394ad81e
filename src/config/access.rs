//! `[auth]`, `[webhooks]` and `[secrets]`: who may call the API, how completion
//! callbacks are signed and where they may go, and the secret values pipelines use.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::raw::{RawAuth, RawSecret, RawToken, RawWebhooks};
use super::*;

/// One accepted API token, as the SHA-256 of its value.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash {
    /// Who uses it (`actor` of runs it triggers).
    pub label: String,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({})", self.label)
    }
}

/// `[auth]` settings: with no tokens the API is open (and only loopback may listen).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Accepted tokens. Only from the config (`RUNYARD_TOKEN` is the
    /// CLI's credential, never a server setting).
    pub tokens: Vec<TokenHash>,
    /// Lifetime of a dashboard session cookie.
    pub session_ttl: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            tokens: Vec::new(),
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

impl AuthSettings {
    /// True when every route but `/healthz` needs a token.
    pub fn required(&self) -> bool {
        !self.tokens.is_empty()
    }
}

/// SHA-256 of a token's value.
pub fn token_sha256(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// `[webhooks]` settings (completion callbacks).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The config has a `[webhooks]` table (webhooks are meant to be used).
    pub configured: bool,
    /// HMAC key read from the environment variable named by `secret_env`.
    pub secret: Option<SecretValue>,
    /// Allow `http://` callback URLs (https only otherwise).
    pub allow_http: bool,
    /// Hosts, addresses or CIDRs that may be reached although not global.
    pub allow_hosts: Vec<String>,
    /// DNS servers to resolve callback hosts with; empty = the system's.
    pub nameservers: Vec<SocketAddr>,
    /// Bound on one delivery attempt (connect, send, response).
    pub timeout: Duration,
    /// Delivery attempts before a webhook is given up.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles per attempt, capped at 1 h.
    pub retry_backoff: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            configured: false,
            secret: None,
            allow_http: false,
            allow_hosts: Vec::new(),
            nameservers: Vec::new(),
            timeout: Duration::from_secs(10),
            max_attempts: 8,
            retry_backoff: Duration::from_secs(2),
        }
    }
}

/// Shortest accepted secret: shorter values would mask ordinary text.
pub const MIN_SECRET_BYTES: usize = 4;

/// A secret value: never printed by `Debug`, so it cannot reach logs by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Arc<str>);

impl SecretValue {
    /// The value itself (for the job's environment and the redactor only).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[secret]")
    }
}

/// Declared secrets by name (values read from the environment or files at start).
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, SecretValue>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.values.keys()).finish()
    }
}

impl Secrets {
    /// The value of a declared secret.
    pub fn get(&self, name: &str) -> Option<&SecretValue> {
        self.values.get(name)
    }

    /// Every secret value (to build the redactor).
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.values.values().map(SecretValue::expose)
    }

    /// True when no secret is declared.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// 32 bytes from 64 hex digits.
pub(super) fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Loader<'_> {
    pub(super) fn auth(&self, raw: Option<&RawAuth>) -> Result<AuthSettings, ConfigError> {
        let mut auth = AuthSettings::default();
        if let Some(raw) = raw {
            for token in &raw.tokens {
                let (label, text) = match token {
                    RawToken::Hash(h) => (None, h.strip_prefix("sha256:").unwrap_or("")),
                    RawToken::Labeled { label, sha256 } => (
                        Some(label.clone()),
                        sha256.strip_prefix("sha256:").unwrap_or(sha256),
                    ),
                };
                let sha256 = parse_hex32(text).ok_or_else(|| {
                    self.invalid(
                        "auth",
                        Some("tokens"),
                        "expected \"sha256:<64 hex digits>\" or { label = \"…\", sha256 = \"<64 hex digits>\" } (the SHA-256 of the token, never the token)",
                    )
                })?;
                let label = label.unwrap_or_else(|| format!("token-{}", &text[..8]));
                auth.tokens.push(TokenHash { label, sha256 });
            }
            auth.session_ttl =
                self.duration("auth", "session_ttl", &raw.session_ttl, auth.session_ttl)?;
        }
        Ok(auth)
    }

    pub(super) fn webhooks(
        &self,
        raw: Option<&RawWebhooks>,
    ) -> Result<WebhookSettings, ConfigError> {
        let t = "webhooks";
        let mut w = WebhookSettings::default();
        let Some(raw) = raw else { return Ok(w) };
        w.configured = true;
        if let Some(var) = &raw.secret_env {
            w.secret = (self.env)(var)
                .filter(|v| !v.is_empty())
                .map(|v| SecretValue(Arc::from(v)));
            if w.secret.is_none() {
                return Err(self.invalid(
                    t,
                    Some("secret_env"),
                    format!("the environment variable {var} is not set"),
                ));
            }
        }
        w.allow_http = raw.allow_http.unwrap_or(false);
        w.allow_hosts = raw.allow_hosts.clone();
        for ns in &raw.nameservers {
            let addr = ns
                .parse::<SocketAddr>()
                .or_else(|_| {
                    ns.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                })
                .map_err(|_| {
                    self.invalid(
                        t,
                        Some("nameservers"),
                        format!("{ns:?} is not an address such as \"10.0.0.2\" or \"10.0.0.2:53\""),
                    )
                })?;
            w.nameservers.push(addr);
        }
        w.timeout = self.duration(t, "timeout", &raw.timeout, w.timeout)?;
        if w.timeout.is_zero() {
            return Err(self.invalid(t, Some("timeout"), "must be positive"));
        }
        w.max_attempts = raw.max_attempts.unwrap_or(w.max_attempts);
        if !(1..=100).contains(&w.max_attempts) {
            return Err(self.invalid(t, Some("max_attempts"), "must be between 1 and 100"));
        }
        w.retry_backoff = self.duration(t, "retry_backoff", &raw.retry_backoff, w.retry_backoff)?;
        Ok(w)
    }

    pub(super) fn secrets(
        &self,
        raw: &BTreeMap<String, RawSecret>,
    ) -> Result<Secrets, ConfigError> {
        let mut values = BTreeMap::new();
        for (name, rs) in raw {
            let t = format!("secrets.{name}");
            let value = match (&rs.env, &rs.file) {
                (Some(var), None) => (self.env)(var).ok_or_else(|| {
                    self.invalid(
                        &t,
                        Some("env"),
                        format!("the environment variable {var} is not set"),
                    )
                })?,
                (None, Some(file)) => {
                    let path = self.resolve_dir(file);
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        self.invalid(
                            &t,
                            Some("file"),
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    text.strip_suffix('\n')
                        .map(|v| v.strip_suffix('\r').unwrap_or(v))
                        .unwrap_or(&text)
                        .to_string()
                }
                _ => {
                    return Err(self.invalid(
                        &t,
                        None,
                        "a secret names exactly one source: env = \"VAR\" or file = \"PATH\" (never an inline value)",
                    ));
                }
            };
            if value.len() < MIN_SECRET_BYTES {
                return Err(self.invalid(
                    &t,
                    None,
                    format!("the value is shorter than {MIN_SECRET_BYTES} bytes; masking it would mangle ordinary output"),
                ));
            }
            values.insert(name.clone(), SecretValue(Arc::from(value)));
        }
        Ok(Secrets { values })
    }
}
