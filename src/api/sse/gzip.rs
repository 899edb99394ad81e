//! gzip for event streams, compressed once per batch and shared by every client.
//!
//! Watching must be nearly free, and on `/api/events` what it costs is bytes:
//! every event goes to every client, so a thousand dashboards move a thousand
//! copies of the stream through the kernel (the sender pays for the copy and,
//! on loopback, for the receiver's TCP processing too). SSE text is JSON with
//! the same keys and ids over and over; deflated in batches it is about a
//! tenth of its size. But a deflate stream per client would cost a compression
//! per client — the very cost the tailer's shared batches remove.
//!
//! **Why segments can be shared.** A deflate stream is a sequence of blocks,
//! and a block that refers to no earlier byte may follow any byte-aligned
//! block boundary. A [`Segment`] is made by a compressor with an empty
//! dictionary and ended with a sync flush, which byte-aligns and leaves the
//! stream open (no block is marked final). So any sequence of segments is a
//! valid deflate stream, and a client's body is: the gzip header, then
//! segments in order — a broadcast batch's, compressed once (by the tailer
//! while gzip clients listen) and then shared (`Bytes` are reference counted),
//! the keep-alive's (one per process), or one of its own (a slice of a batch,
//! a replay, a `resync`) — and, when the
//! server ends the stream, a final empty block and the trailer: the CRC-32 and
//! length of everything sent, combined from the segments' own CRCs, so no
//! client ever reads the bytes it sends.
//!
//! **Invariant: a client's gzip body decodes to exactly the bytes an identity
//! client in its place would get, and every segment is decodable as soon as it
//! arrives** (the sync flush: an event is never held back in a compressor).
//! Tests: the unit tests below (segments from independent compressors decode
//! as one stream with a valid trailer), and
//! `streams_and_connections::a_gzip_client_decodes_the_same_events_as_an_identity_client_and_a_valid_trailer_at_shutdown`.

use std::cell::RefCell;

use axum::body::Bytes;
use flate2::{Compress, Compression, FlushCompress};

/// A run of deflate blocks that depends on nothing before it and leaves the stream open.
#[derive(Debug, Clone)]
pub struct Segment {
    deflated: Bytes,
    /// CRC-32 of the plain bytes.
    crc: u32,
    /// Length of the plain bytes.
    len: u64,
}

thread_local! {
    /// One compressor per thread, reset for every segment: it saves allocating its few
    /// hundred KiB of state each time, not clearing them (a reset still writes them, so
    /// even a tiny segment costs some tens of µs; per-client segments are rare).
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
}

impl Segment {
    /// Compresses `plain` on its own (an empty dictionary) and sync-flushes it.
    pub fn of(plain: &[u8]) -> Segment {
        let deflated = COMPRESSOR.with_borrow_mut(|c| {
            c.reset();
            let mut out = Vec::with_capacity(plain.len() / 4 + 64);
            loop {
                let consumed = c.total_in() as usize;
                c.compress_vec(&plain[consumed..], &mut out, FlushCompress::Sync)
                    .expect("deflate into memory does not fail");
                // Done when all input is in and the flush did not fill the output.
                if c.total_in() as usize == plain.len() && out.len() < out.capacity() {
                    break;
                }
                out.reserve(out.capacity());
            }
            out
        });
        Segment {
            deflated: Bytes::from(deflated),
            crc: crc32fast::hash(plain),
            len: plain.len() as u64,
        }
    }
}

/// The gzip header: deflate, no name, no time, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// An empty fixed-Huffman block marked final: what closes a stream of segments.
const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// One client's gzip body: what it has sent so far, for the trailer.
pub struct GzipStream {
    crc: crc32fast::Hasher,
    /// Plain bytes sent.
    len: u64,
}

impl GzipStream {
    /// A stream and the header that must be its first bytes.
    pub fn start() -> (GzipStream, Bytes) {
        (
            GzipStream {
                crc: crc32fast::Hasher::new(),
                len: 0,
            },
            Bytes::from_static(&HEADER),
        )
    }

    /// The bytes that send `segment` next (shared with every other sender of it).
    pub fn send(&mut self, segment: &Segment) -> Bytes {
        self.crc.combine(&crc32fast::Hasher::new_with_initial_len(
            segment.crc,
            segment.len,
        ));
        self.len += segment.len;
        segment.deflated.clone()
    }

    /// The bytes that end the stream: a final empty block and the trailer.
    pub fn finish(self) -> Bytes {
        let mut end = Vec::with_capacity(10);
        end.extend_from_slice(&FINAL_BLOCK);
        end.extend_from_slice(&self.crc.finalize().to_le_bytes());
        // ISIZE is the length modulo 2^32.
        end.extend_from_slice(&(self.len as u32).to_le_bytes());
        Bytes::from(end)
    }
}

/// Whether an `Accept-Encoding` value accepts gzip (`gzip`, `x-gzip` or `*`, with a
/// q-value above zero; an explicit `gzip;q=0` refuses it even when `*` is accepted).
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    let mut star = false;
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        // A q-value that does not parse counts as a refusal.
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
            .map(|v| v.trim().parse::<f32>().unwrap_or(0.0))
            .next()
            .unwrap_or(1.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            return q > 0.0;
        }
        if coding == "*" {
            star = q > 0.0;
        }
    }
    star
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn decode(body: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn independent_segments_decode_as_one_stream_with_a_valid_trailer() {
        let parts: Vec<Vec<u8>> = (0..50)
            .map(|i| {
                let mut p = Vec::new();
                for k in 0..(i * 7 % 23) {
                    p.extend_from_slice(
                        format!("id: {i}{k}\nevent: job:created\ndata: {{\"n\":{k}}}\n\n")
                            .as_bytes(),
                    );
                }
                p.push(b'\n');
                p
            })
            .collect();
        // Each segment made on its own; one of them shared by "two clients".
        let segments: Vec<Segment> = parts.iter().map(|p| Segment::of(p)).collect();
        let (mut a, header) = GzipStream::start();
        let mut body = header.to_vec();
        for s in &segments {
            body.extend_from_slice(&a.send(s));
        }
        body.extend_from_slice(&a.finish());
        assert_eq!(decode(&body).unwrap(), parts.concat());

        // A client that joined later (its own first segment, then the shared ones).
        let (mut b, header) = GzipStream::start();
        let mut late = header.to_vec();
        late.extend_from_slice(&b.send(&Segment::of(b"a slice of its own\n")));
        for s in &segments[30..] {
            late.extend_from_slice(&b.send(s));
        }
        late.extend_from_slice(&b.finish());
        let mut want = b"a slice of its own\n".to_vec();
        want.extend(parts[30..].concat());
        assert_eq!(decode(&late).unwrap(), want);
    }

    #[test]
    fn a_wrong_trailer_would_be_caught_by_the_decoder() {
        // The decode above is a real check: a corrupted CRC fails.
        let (mut s, header) = GzipStream::start();
        let mut body = header.to_vec();
        body.extend_from_slice(&s.send(&Segment::of(b"hello\n")));
        let mut end = s.finish().to_vec();
        end[3] ^= 0xff;
        body.extend_from_slice(&end);
        assert!(decode(&body).is_err());
    }

    #[test]
    fn every_segment_decodes_as_soon_as_it_arrives() {
        // The sync flush: the bytes so far decode to everything sent so far.
        let (mut s, header) = GzipStream::start();
        let mut body = header.to_vec();
        let mut sent = Vec::new();
        for i in 0..5 {
            let plain = format!("event: n\ndata: {i}\n\n").repeat(100 * i + 1);
            body.extend_from_slice(&s.send(&Segment::of(plain.as_bytes())));
            sent.extend_from_slice(plain.as_bytes());
            let mut d = flate2::read::GzDecoder::new(&body[..]);
            let mut got = vec![0; sent.len()];
            d.read_exact(&mut got).unwrap();
            assert_eq!(got, sent);
        }
    }

    #[test]
    fn a_segment_larger_than_its_first_output_buffer_is_whole() {
        // Incompressible input makes compress_vec fill its buffer and ask again.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (mut s, header) = GzipStream::start();
        let mut body = header.to_vec();
        body.extend_from_slice(&s.send(&Segment::of(&noise)));
        body.extend_from_slice(&s.finish());
        assert_eq!(decode(&body).unwrap(), noise);
    }

    #[test]
    fn accept_encoding_is_read_as_http_says() {
        assert!(accepts_gzip("gzip, deflate, br, zstd"));
        assert!(accepts_gzip("br;q=1.0, GZIP;q=0.5"));
        assert!(accepts_gzip("x-gzip"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("identity"));
        assert!(!accepts_gzip(""));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("gzip;q=0, *"));
        assert!(!accepts_gzip("*;q=0"));
        assert!(!accepts_gzip("gzipper"));
        assert!(!accepts_gzip("gzip;q=x"));
        // Several header lines are one list (joined by the caller).
        assert!(!accepts_gzip("gzip;q=0,*"));
    }
}
