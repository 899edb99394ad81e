//! The HTTP client behind the remote subcommands, including an SSE reader
//! that resumes with `Last-Event-ID` after a dropped connection.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

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
    /// A client of `base` (e.g. `http://127.0.0.1:7878`).
    /// Sends `Authorization: Bearer $RUNYARD_TOKEN` when that variable is set.
    pub fn new(base: &str) -> anyhow::Result<Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = std::env::var("RUNYARD_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
        {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("RUNYARD_TOKEN is not a valid header value")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .default_headers(headers)
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    async fn answer(
        &self,
        resp: Result<reqwest::Response, reqwest::Error>,
    ) -> anyhow::Result<Value> {
        let resp =
            resp.with_context(|| format!("cannot reach the runyard server at {}", self.base))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        Ok(body)
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.get_query(path, &[]).await
    }

    /// GET `path?query`.
    pub async fn get_query(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
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
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
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
        mut on: impl FnMut(&SseMessage) -> bool,
    ) -> anyhow::Result<()> {
        let mut last_id: Option<String> = None;
        let mut failures = 0;
        loop {
            let mut req = self.http.get(format!("{}{path}", self.base));
            if let Some(id) = &last_id {
                req = req.header("last-event-id", id);
            }
            let mut resp = match req.send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    let status = r.status();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    bail!(
                        "{} (HTTP {})",
                        body["error"].as_str().unwrap_or("stream refused"),
                        status.as_u16()
                    );
                }
                Err(e) if failures < 5 => {
                    failures += 1;
                    tracing::warn!("stream connection failed ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(500 * failures)).await;
                    continue;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot reach the runyard server at {}", self.base)
                    });
                }
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
                            if !on(&msg) {
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
                bail!("the stream from {} keeps dropping", self.base);
            }
            tokio::time::sleep(Duration::from_millis(200 * failures)).await;
        }
    }

    /// Prints a job's output as it arrives until the job ends; `prefix` labels shard lines.
    pub async fn follow_logs(
        &self,
        job: &str,
        tail: Option<usize>,
        prefix: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut path = format!("/api/jobs/{}/logs/stream", segment(job));
        if let Some(n) = tail {
            path.push_str(&format!("?tail={n}"));
        }
        self.sse(&path, |msg| match msg.event.as_str() {
            "log" => {
                let v: Value = serde_json::from_str(&msg.data).unwrap_or(Value::Null);
                let line = v["line"].as_str().unwrap_or_default();
                let p = prefix.map(|p| format!("[{p}] ")).unwrap_or_default();
                if v["stream"] == "stderr" {
                    eprintln!("{p}{line}");
                } else {
                    println!("{p}{line}");
                }
                true
            }
            "end" => false,
            _ => true,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::segment;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("0190-ab:s1"), "0190-ab:s1");
        assert_eq!(segment("../x y"), "..%2Fx%20y");
    }
}
