//! The bus's wire format: channel names and the JSON on them.
//!
//! Messages are untrusted input (any client of the Redis server may publish):
//! [`decode`] accepts at most [`MAX_PAYLOAD`] bytes of JSON, takes only the fields
//! it knows and ignores the rest, and says why it refused anything else, so the
//! dispatcher can count the drop and carry on.
//!
//! - `{prefix}:run-abort`: `{"runId": "…", "origin": "…"}`, the documented
//!   abort contract other services may publish too. `origin` may be missing (another service that never sends one);
//!   such a message is foreign to every node.
//! - `{prefix}:changes`: `{"origin": "…", "kinds": N}`, `kinds` the bits of
//!   [`crate::store::change`]: "something of these kinds was committed; read the
//!   store". Never data.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::RunId;
use crate::store::change;

/// Largest payload read; anything longer is dropped unread.
pub const MAX_PAYLOAD: usize = 4096;

/// The two channels under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channels {
    /// `{prefix}:run-abort`.
    pub abort: String,
    /// `{prefix}:changes`.
    pub changes: String,
}

impl Channels {
    /// The channels of `prefix`.
    pub fn new(prefix: &str) -> Channels {
        Channels {
            abort: format!("{prefix}:run-abort"),
            changes: format!("{prefix}:changes"),
        }
    }
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Abort this run (the durable mark first), cancel its local shards.
    RunAbort {
        /// The run.
        run_id: String,
        /// Who sent it; `None` from a publisher that does not say.
        origin: Option<String>,
    },
    /// Something of these kinds was committed by `origin`.
    Changes {
        /// Who committed it.
        origin: Option<String>,
        /// [`crate::store::change`] bits.
        kinds: u8,
    },
}

impl Message {
    /// The sender's origin, if it gave one.
    pub fn origin(&self) -> Option<&str> {
        match self {
            Message::RunAbort { origin, .. } | Message::Changes { origin, .. } => origin.as_deref(),
        }
    }
}

/// Why a message was dropped (the `reason` label of `runyard_bus_dropped_total`).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Longer than [`MAX_PAYLOAD`].
    #[error("payload over {MAX_PAYLOAD} bytes")]
    TooLong,
    /// Not JSON of the channel's shape.
    #[error("not a JSON object of the channel's shape")]
    NotJson,
    /// `runId` is not a run id.
    #[error("runId is not a run id")]
    BadRunId,
    /// On a channel this node did not subscribe to.
    #[error("unknown channel")]
    UnknownChannel,
}

// `Cow` with `borrow`: a string without escapes is borrowed, one with escapes
// (`\u00e9`, `\/`, as Python's and PHP's encoders write them) is decoded owned.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AbortJson<'a> {
    #[serde(borrow)]
    run_id: Cow<'a, str>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    origin: Option<Cow<'a, str>>,
}

#[derive(Serialize, Deserialize)]
struct ChangesJson<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    origin: Option<Cow<'a, str>>,
    kinds: u8,
}

/// The abort channel's payload.
pub fn encode_abort(run_id: &str, origin: &str) -> String {
    serde_json::to_string(&AbortJson {
        run_id: Cow::Borrowed(run_id),
        origin: Some(Cow::Borrowed(origin)),
    })
    .unwrap_or_default()
}

/// The changes channel's payload.
pub fn encode_changes(kinds: u8, origin: &str) -> String {
    serde_json::to_string(&ChangesJson {
        origin: Some(Cow::Borrowed(origin)),
        kinds,
    })
    .unwrap_or_default()
}

/// Parses a message that arrived on `channel`.
pub fn decode(channels: &Channels, channel: &str, payload: &[u8]) -> Result<Message, Malformed> {
    if payload.len() > MAX_PAYLOAD {
        return Err(Malformed::TooLong);
    }
    if channel == channels.abort {
        let m: AbortJson = serde_json::from_slice(payload).map_err(|_| Malformed::NotJson)?;
        let run = RunId::parse(&m.run_id).map_err(|_| Malformed::BadRunId)?;
        Ok(Message::RunAbort {
            run_id: run.to_string(),
            origin: m.origin.map(Cow::into_owned),
        })
    } else if channel == channels.changes {
        let m: ChangesJson = serde_json::from_slice(payload).map_err(|_| Malformed::NotJson)?;
        Ok(Message::Changes {
            origin: m.origin.map(Cow::into_owned),
            kinds: m.kinds & change::ALL,
        })
    } else {
        Err(Malformed::UnknownChannel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "0192d4a8-7b3c-7def-8123-456789abcdef";

    #[test]
    fn the_abort_payload_is_exactly_the_documented_contract() {
        assert_eq!(
            encode_abort(RUN, "o1"),
            format!(r#"{{"runId":"{RUN}","origin":"o1"}}"#)
        );
        let ch = Channels::new("runyard");
        assert_eq!(ch.abort, "runyard:run-abort");
        assert_eq!(
            decode(&ch, &ch.abort, encode_abort(RUN, "o1").as_bytes()),
            Ok(Message::RunAbort {
                run_id: RUN.into(),
                origin: Some("o1".into())
            })
        );
    }

    #[test]
    fn extra_fields_are_ignored_and_a_missing_origin_is_foreign() {
        let ch = Channels::new("p");
        let m = format!(r#"{{"runId":"{RUN}","reason":"ops","n":[1,2]}}"#);
        assert_eq!(
            decode(&ch, "p:run-abort", m.as_bytes()),
            Ok(Message::RunAbort {
                run_id: RUN.into(),
                origin: None
            })
        );
        assert_eq!(
            decode(&ch, "p:changes", br#"{"kinds":255,"jobs":[]}"#),
            Ok(Message::Changes {
                origin: None,
                kinds: change::ALL
            })
        );
    }

    #[test]
    fn json_escapes_are_decoded_not_refused() {
        let ch = Channels::new("p");
        let m = format!(r#"{{"runId":"{RUN}","origin":"caf\u00e9\/billing"}}"#);
        assert_eq!(
            decode(&ch, "p:run-abort", m.as_bytes()),
            Ok(Message::RunAbort {
                run_id: RUN.into(),
                origin: Some("café/billing".into())
            })
        );
    }

    #[test]
    fn malformed_messages_say_why() {
        let ch = Channels::new("p");
        assert_eq!(
            decode(&ch, "p:run-abort", b"not json"),
            Err(Malformed::NotJson)
        );
        assert_eq!(
            decode(&ch, "p:run-abort", br#"{"runId":7}"#),
            Err(Malformed::NotJson)
        );
        assert_eq!(
            decode(&ch, "p:run-abort", br#"{"runId":"../etc"}"#),
            Err(Malformed::BadRunId)
        );
        assert_eq!(
            decode(&ch, "p:run-abort", &vec![b' '; MAX_PAYLOAD + 1]),
            Err(Malformed::TooLong)
        );
        assert_eq!(
            decode(&ch, "q:run-abort", br#"{}"#),
            Err(Malformed::UnknownChannel)
        );
    }
}
