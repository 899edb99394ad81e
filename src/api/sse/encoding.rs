//! How a batch reaches a client: as it is (identity), or gzip — a batch deflated
//! once and shared by every gzip client, a client's own bytes compressed for it alone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use axum::body::Bytes;
use axum::http::{HeaderMap, header};

use super::gzip::{GzipStream, Segment, accepts_gzip};

use super::*;

/// How one client's stream is written: as is, or as gzip whose batches are compressed
/// once for every gzip client (`gzip.rs`).
pub(super) enum Encoding {
    Identity,
    Gzip {
        stream: GzipStream,
        /// Held for its `Drop`: the stream is counted while it lives.
        _counted: GzipClient,
    },
}

/// Counts a gzip client in [`EventTailer::gzip_clients`] while it lives.
pub(super) struct GzipClient(pub(super) Arc<AtomicUsize>);

impl Drop for GzipClient {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Encoding {
    /// gzip when the request accepts it, with the bytes that must open the body. Every
    /// `Accept-Encoding` line counts, as one list.
    pub(super) fn negotiate(
        headers: &HeaderMap,
        tailer: &EventTailer,
    ) -> (Encoding, Option<Bytes>) {
        let accepted: Vec<&str> = headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if accepts_gzip(&accepted.join(",")) {
            tailer.gzip_clients.fetch_add(1, Ordering::AcqRel);
            let (stream, header) = GzipStream::start();
            let client = GzipClient(tailer.gzip_clients.clone());
            (
                Encoding::Gzip {
                    stream,
                    _counted: client,
                },
                Some(header),
            )
        } else {
            (Encoding::Identity, None)
        }
    }

    /// A whole broadcast batch: for gzip, the segment every gzip client shares.
    pub(super) fn batch(&mut self, batch: &Batch) -> Bytes {
        match self {
            Encoding::Identity => batch.wire.clone(),
            Encoding::Gzip { stream, .. } => stream.send(batch.gzip()),
        }
    }

    /// Bytes only this client sends (a slice, a replay, a `resync`).
    pub(super) fn own(&mut self, plain: Bytes) -> Bytes {
        match self {
            Encoding::Identity => plain,
            Encoding::Gzip { stream, .. } => stream.send(&Segment::of(&plain)),
        }
    }

    pub(super) fn keep_alive(&mut self) -> Bytes {
        static GZIP: LazyLock<Segment> = LazyLock::new(|| Segment::of(KEEP_ALIVE_COMMENT));
        match self {
            Encoding::Identity => Bytes::from_static(KEEP_ALIVE_COMMENT),
            Encoding::Gzip { stream, .. } => stream.send(&GZIP),
        }
    }

    /// What ends the body when the server ends the stream.
    pub(super) fn finish(self) -> Option<Bytes> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip { stream, .. } => Some(stream.finish()),
        }
    }

    pub(super) fn content_encoding(&self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip { .. } => Some("gzip"),
        }
    }
}
