//! The HTTP client behind the remote subcommands, including an SSE reader
//! that resumes with `Last-Event-ID` after a dropped connection.
//!
//! Failures are typed ([`ClientError`]) because a script branches on them: nothing
//! answering at the URL, or something that is not runyard, is "unreachable" (exit 3);
//! a runyard answer with an error status is "refused" (exit 4). Each says so in one
//! line with the URL and what to do, instead of an error chain or `null (HTTP 404)`.

use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

use super::term::Closed;

/// What to do when no runyard answers (every unreachable error ends with it).
const REMEDY: &str = "is `runyard serve` running? set --server or RUNYARD_URL";

/// Why a request to the server did not give an answer to use.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Nothing answered: connection refused, DNS, timeout, dropped streams.
    #[error("cannot reach runyard at {url}: {reason}; {REMEDY}")]
    Unreachable {
        /// The server URL.
        url: String,
        /// The innermost cause, e.g. "Connection refused".
        reason: String,
    },
    /// Something answered, but not with runyard's JSON: another service on that port,
    /// a proxy's error page, a wrong path prefix.
    #[error("{url} is not a runyard server (HTTP {status} without a runyard answer); {REMEDY}")]
    NotRunyard {
        /// The server URL.
        url: String,
        /// The status it answered with.
        status: u16,
    },
    /// runyard answered with an error status.
    #[error("{message} (HTTP {status})")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// runyard's `error` message.
        message: String,
    },
    /// The server URL itself is unusable.
    #[error("invalid server URL {url:?}: {reason} (e.g. http://127.0.0.1:7878)")]
    BadUrl {
        /// As given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// `RUNYARD_TOKEN` cannot be sent as a header.
    #[error("RUNYARD_TOKEN is not a valid header value")]
    BadToken,
    /// stdout closed while printing a stream (see [`Closed`]).
    #[error(transparent)]
    Closed(#[from] Closed),
}

/// A runyard server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

/// Percent-encodes one path segment.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `host:port` → `http://host:port`; the scheme must be http or https; no trailing `/`.
pub fn normalise_url(given: &str) -> Result<String, ClientError> {
    let bad = |reason: &str| ClientError::BadUrl {
        url: given.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = given.trim();
    if trimmed.is_empty() {
        return Err(bad("empty"));
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let url = url::Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("no query or fragment, please"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// The innermost cause of a transport error, without the `(os error N)` noise.
fn root_cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// One parsed SSE message.
#[derive(Debug, Default, Clone)]
pub struct SseMessage {
    /// `id:`.
    pub id: Option<String>,
    /// `event:`.
    pub event: String,
    /// `data:` lines joined by `\n`.
    pub data: String,
}

impl Client {
    /// A client of `base` (e.g. `http://127.0.0.1:7878`, or `127.0.0.1:7878`).
    /// Sends `Authorization: Bearer $RUNYARD_TOKEN` when that variable is set.
    pub fn new(base: &str) -> Result<Client, ClientError> {
        let base = normalise_url(base)?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = std::env::var("RUNYARD_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
        {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::BadToken)?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .default_headers(headers)
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: base.clone(),
                reason: root_cause(&e),
            })?;
        Ok(Client { http, base })
    }

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            reason: root_cause(e),
        }
    }

    /// A non-success answer: runyard's `{"error"}` is a refusal, anything else means
    /// this is not runyard.
    async fn refusal(&self, resp: reqwest::Response) -> ClientError {
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        match body["error"].as_str() {
            Some(message) => ClientError::Refused {
                status,
                message: message.to_string(),
            },
            None => ClientError::NotRunyard {
                url: self.base.clone(),
                status,
            },
        }
    }

    async fn answer(
        &self,
        resp: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<Value, ClientError> {
        let resp = resp.map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            return Err(self.refusal(resp).await);
        }
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        serde_json::from_slice::<Value>(&body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| ClientError::NotRunyard {
                url: self.base.clone(),
                status,
            })
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.get_query(path, &[]).await
    }

    /// GET `path?query`.
    pub async fn get_query(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Value, ClientError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        self.answer(resp).await
    }

    /// POST JSON to `path`.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("x-runyard-source", "cli")
            .json(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        self.answer(resp).await
    }

    /// Reads an SSE stream, calling `on` for each message until it returns false or the
    /// stream ends for good; reconnects with `Last-Event-ID` when the connection drops.
    pub async fn sse(
        &self,
        path: &str,
        mut on: impl FnMut(&SseMessage) -> Result<bool, ClientError>,
    ) -> Result<(), ClientError> {
        let mut last_id: Option<String> = None;
        let mut failures = 0;
        loop {
            let mut req = self.http.get(format!("{}{path}", self.base));
            if let Some(id) = &last_id {
                req = req.header("last-event-id", id);
            }
            let mut resp = match req.send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => return Err(self.refusal(r).await),
                Err(e) if failures < 5 => {
                    failures += 1;
                    tracing::warn!("stream connection failed ({}); retrying", root_cause(&e));
                    tokio::time::sleep(Duration::from_millis(500 * failures)).await;
                    continue;
                }
                Err(e) => return Err(self.unreachable(&e)),
            };
            let mut buf = String::new();
            let mut msg = SseMessage::default();
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) | Err(_) => break,
                };
                failures = 0;
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(nl) = buf.find('\n') {
                    let line: String = buf.drain(..=nl).collect();
                    let line = line.trim_end_matches(['\n', '\r']);
                    if line.is_empty() {
                        if !msg.event.is_empty() || !msg.data.is_empty() {
                            if msg.id.is_some() {
                                last_id = msg.id.clone();
                            }
                            if !on(&msg)? {
                                return Ok(());
                            }
                        }
                        msg = SseMessage::default();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !msg.data.is_empty() {
                            msg.data.push('\n');
                        }
                        msg.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    } else if let Some(v) = line.strip_prefix("event:") {
                        msg.event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        msg.id = Some(v.trim().to_string());
                    }
                }
            }
            // The server closed the stream (shutdown) or the connection dropped: resume.
            failures += 1;
            if failures > 5 {
                return Err(ClientError::Unreachable {
                    url: self.base.clone(),
                    reason: "the stream keeps dropping".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200 * failures)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{normalise_url, segment};

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("0190-ab:s1"), "0190-ab:s1");
        assert_eq!(segment("../x y"), "..%2Fx%20y");
    }

    #[test]
    fn server_urls_without_a_scheme_are_http() {
        for (given, want) in [
            ("localhost:7878", "http://localhost:7878"),
            ("127.0.0.1:7878/", "http://127.0.0.1:7878"),
            (
                "https://ci.example.com/runyard/",
                "https://ci.example.com/runyard",
            ),
            ("http://[::1]:7878", "http://[::1]:7878"),
        ] {
            assert_eq!(normalise_url(given).unwrap(), want, "{given}");
        }
        for bad in ["", "ftp://x", "http://", "http://x/?a=1", "local host:1"] {
            assert!(normalise_url(bad).is_err(), "{bad:?} accepted");
        }
    }
}
