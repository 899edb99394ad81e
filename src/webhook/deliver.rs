//! Checking and sending: [`Webhooks`] (DNS and the pinned resolver are in `resolve.rs`).
//!
//! The check and the connection must concern the same address, or DNS
//! rebinding walks around the policy (answer 1.1.1.1 to the check, 127.0.0.1
//! to the HTTP client's own lookup a moment later). So delivery resolves once
//! itself, checks every answer, and hands the HTTP client a resolver that can
//! only return that one checked address for that one host and refuses any
//! other lookup. TLS SNI and the Host header still use the host name.
//!
//! A fresh client per delivery keeps that pin per request and means no
//! pooled connection outlives its check; deliveries are rare enough that the
//! handshake is cheap next to a run.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use tokio::time::Instant;

use super::policy::{Target, check_url};
use super::resolve::{Pinned, resolve, resolver_for};
use super::sign::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, sign};
use super::{PolicyError, WebhookPolicy};

/// The `User-Agent` every delivery sends.
pub const USER_AGENT: &str = concat!("runyard-webhook/", env!("CARGO_PKG_VERSION"));

/// How many bytes of the response body [`DeliveryOutcome::response_excerpt`] keeps.
pub const EXCERPT_BYTES: usize = 512;

/// Checks and delivers completion webhooks. Cheap to share behind an `Arc`;
/// holds the policy, a DNS resolver and the signing key.
pub struct Webhooks {
    policy: WebhookPolicy,
    resolver: TokioResolver,
    key: Option<Vec<u8>>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("policy", &self.policy)
            .field("signed", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// What one delivery attempt did; the caller records it and decides on retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOutcome {
    /// The HTTP status, if a response arrived (also for 3xx/4xx/5xx).
    pub status: Option<u16>,
    /// `None` on a 2xx; otherwise why the attempt failed (policy refusal,
    /// DNS, connect, TLS, timeout, non-2xx status).
    pub error: Option<String>,
    /// Whether another attempt could succeed without a config or URL change.
    /// Policy refusals of the URL itself (scheme, userinfo, a non-global IP
    /// literal) are final; refusals of *resolved* addresses are retryable,
    /// because DNS answers change and each attempt re-resolves and re-checks,
    /// so retrying never bypasses the policy. Network errors, timeouts and
    /// every non-2xx status are retryable. Meaningless when `error` is `None`.
    pub retryable: bool,
    /// Wall time of the attempt, DNS included.
    pub duration_ms: u64,
    /// At most [`EXCERPT_BYTES`] of the response body, lossily decoded.
    pub response_excerpt: String,
    /// The checked address the request was sent to, once one was chosen.
    pub address: Option<SocketAddr>,
}

impl DeliveryOutcome {
    /// True on a 2xx response.
    pub fn is_success(&self) -> bool {
        self.error.is_none()
    }
}

/// A failure before any response, with whether a retry could help.
struct Failure {
    error: String,
    retryable: bool,
}

impl From<PolicyError> for Failure {
    fn from(e: PolicyError) -> Self {
        Failure {
            retryable: e.retryable(),
            error: e.to_string(),
        }
    }
}

impl Webhooks {
    /// Builds the DNS resolver from `policy.nameservers` (or the system
    /// configuration) and keeps `secret` as the signing key: pass the bytes
    /// from [`super::secret_key`]; `None` sends unsigned requests.
    pub fn new(policy: WebhookPolicy, secret: Option<Vec<u8>>) -> Result<Self, PolicyError> {
        if let Some(key) = &secret
            && key.is_empty()
        {
            return Err(PolicyError::Secret {
                reason: "the key is empty".to_string(),
            });
        }
        let resolver = resolver_for(&policy)?;
        Ok(Webhooks {
            policy,
            resolver,
            key: secret,
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> &WebhookPolicy {
        &self.policy
    }

    /// Trigger-time check; on `Err` the caller answers 400 with the message.
    /// Parses the URL (https, or http when allowed; no userinfo; a host),
    /// resolves the host and requires every address to be global or
    /// allowlisted. IP-literal hosts are checked without DNS. Never connects.
    pub async fn validate(&self, url: &str) -> Result<(), PolicyError> {
        let checked = check_url(&self.policy, url)?;
        match tokio::time::timeout(
            self.policy.timeout,
            resolve(&self.resolver, &self.policy, &checked),
        )
        .await
        {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(PolicyError::Resolve {
                host: checked.url.host_str().unwrap_or_default().to_string(),
                reason: format!("timed out after {:?}", self.policy.timeout),
            }),
        }
    }

    /// One delivery attempt: re-parses and re-resolves `url`, checks every
    /// address again, then POSTs `body` as JSON to the first address with the
    /// connection pinned to it. Signed per Standard Webhooks when a key is
    /// set. No redirects, no proxy, at most `policy.timeout` in total, at
    /// most `policy.max_response_bytes` of the response read.
    pub async fn deliver(&self, message_id: &str, url: &str, body: &[u8]) -> DeliveryOutcome {
        let started = Instant::now();
        let deadline = started + self.policy.timeout;
        let mut outcome = DeliveryOutcome {
            status: None,
            error: None,
            retryable: false,
            duration_ms: 0,
            response_excerpt: String::new(),
            address: None,
        };
        let sent = tokio::time::timeout_at(
            deadline,
            self.send(message_id, url, body, deadline, &mut outcome.address),
        )
        .await;
        match sent {
            Err(_) => {
                outcome.error = Some(self.timed_out());
                outcome.retryable = true;
            }
            Ok(Err(failure)) => {
                outcome.error = Some(failure.error);
                outcome.retryable = failure.retryable;
            }
            Ok(Ok(mut response)) => {
                let status = response.status();
                outcome.status = Some(status.as_u16());
                let (excerpt, cut_short) = self.read_body(&mut response, deadline).await;
                outcome.response_excerpt = excerpt;
                if !status.is_success() {
                    outcome.retryable = true;
                    outcome.error = Some(if status.is_redirection() {
                        let to = response
                            .headers()
                            .get(reqwest::header::LOCATION)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("nowhere");
                        format!(
                            "receiver answered {status} redirecting to {to}; \
                             redirects are not followed, use the final URL"
                        )
                    } else {
                        format!("receiver answered {status}")
                    });
                } else if let Some(why) = cut_short {
                    tracing::debug!(url, "webhook response body not read to the end: {why}");
                }
            }
        }
        outcome.duration_ms = started.elapsed().as_millis() as u64;
        outcome
    }

    fn timed_out(&self) -> String {
        format!(
            "timed out after {:?} (DNS, connect, send and response together)",
            self.policy.timeout
        )
    }

    /// Everything up to the response head; `address` is set once chosen so a
    /// timeout still reports it.
    async fn send(
        &self,
        message_id: &str,
        url: &str,
        body: &[u8],
        deadline: Instant,
        address: &mut Option<SocketAddr>,
    ) -> Result<reqwest::Response, Failure> {
        let checked = check_url(&self.policy, url)?;
        let addrs = resolve(&self.resolver, &self.policy, &checked).await?;
        let addr = SocketAddr::new(addrs[0], checked.port);
        *address = Some(addr);
        let pinned = Pinned {
            host: match &checked.target {
                Target::Name { host, .. } => Some(host.clone()),
                Target::Literal(_) => None,
            },
            addr,
        };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .https_only(!self.policy.allow_http)
            .pool_max_idle_per_host(0)
            .timeout(deadline.saturating_duration_since(Instant::now()))
            .user_agent(USER_AGENT)
            .dns_resolver(Arc::new(pinned))
            .build()
            .map_err(|e| Failure {
                error: format!("could not build the HTTP client: {}", chain(&e)),
                retryable: true,
            })?;
        let timestamp = crate::clock::now_ms().div_euclid(1000);
        let mut request = client
            .post(checked.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_ID, message_id)
            .header(HEADER_TIMESTAMP, timestamp.to_string());
        if let Some(key) = &self.key {
            request = request.header(HEADER_SIGNATURE, sign(key, message_id, timestamp, body));
        }
        request
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| Failure {
                error: if e.is_timeout() {
                    self.timed_out()
                } else if e.is_connect() {
                    format!("could not connect to {addr}: {}", chain(&e))
                } else {
                    format!("request to {addr} failed: {}", chain(&e))
                },
                retryable: true,
            })
    }

    /// Reads at most `max_response_bytes` of the body, stopping at the
    /// deadline; returns the excerpt and why reading stopped early, if it did.
    async fn read_body(
        &self,
        response: &mut reqwest::Response,
        deadline: Instant,
    ) -> (String, Option<String>) {
        let limit = self.policy.max_response_bytes;
        let mut buf: Vec<u8> = Vec::new();
        let mut cut_short = None;
        while buf.len() < limit {
            match tokio::time::timeout_at(deadline, response.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    let take = chunk.len().min(limit - buf.len());
                    buf.extend_from_slice(&chunk[..take]);
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    cut_short = Some(chain(&e));
                    break;
                }
                Err(_) => {
                    cut_short = Some(self.timed_out());
                    break;
                }
            }
        }
        if buf.len() >= limit && cut_short.is_none() {
            cut_short = Some(format!("stopped after max_response_bytes ({limit})"));
        }
        let end = buf.len().min(EXCERPT_BYTES);
        (String::from_utf8_lossy(&buf[..end]).into_owned(), cut_short)
    }
}

/// An error and its sources, joined with ": " (reqwest's own message alone
/// is just "error sending request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_outside_a_runtime_and_refuses_an_empty_key() {
        let policy = WebhookPolicy {
            nameservers: vec!["127.0.0.1:53".parse().unwrap()],
            ..WebhookPolicy::default()
        };
        assert!(Webhooks::new(policy.clone(), Some(b"k".to_vec())).is_ok());
        assert!(matches!(
            Webhooks::new(policy, Some(Vec::new())),
            Err(PolicyError::Secret { .. })
        ));
    }
}
