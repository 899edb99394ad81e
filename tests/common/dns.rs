//! A tiny real DNS server on UDP 127.0.0.1:0 for tests that must control
//! what a name resolves to, and when (rebinding), and count the lookups.
//!
//! Just enough of RFC 1035: parse the header and the single question, echo
//! the question, and answer an A query for a programmed name with one A
//! record (TTL 0). Other types for a programmed name get an empty NOERROR
//! answer; unknown names get NXDOMAIN.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

const TYPE_A: u16 = 1;

#[derive(Default)]
struct Shared {
    answers: Mutex<HashMap<String, Ipv4Addr>>,
    /// (lower-case name without trailing dot, qtype) per query, in order.
    log: Mutex<Vec<(String, u16)>>,
    queries: AtomicUsize,
}

/// The running server; stops when dropped.
pub struct DnsStub {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsStub {
    pub async fn start() -> DnsStub {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(serve(socket, shared.clone()));
        DnsStub { addr, shared, task }
    }

    /// From now on, A queries for `name` answer `ip`.
    pub fn set(&self, name: &str, ip: Ipv4Addr) {
        self.shared
            .answers
            .lock()
            .unwrap()
            .insert(normalise(name), ip);
    }

    /// A queries received for `name`: one per address lookup (a resolver
    /// asking for A and AAAA sends one of each).
    pub fn lookups(&self, name: &str) -> usize {
        let name = normalise(name);
        self.shared
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, t)| *n == name && *t == TYPE_A)
            .count()
    }

    /// All queries received.
    pub fn queries(&self) -> usize {
        self.shared.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

async fn serve(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            return;
        };
        if let Some(reply) = answer(&buf[..n], &shared) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

/// The reply to one query, or `None` for something that is not a query.
fn answer(query: &[u8], shared: &Shared) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let flags = u16::from_be_bytes([query[2], query[3]]);
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    if flags & 0x8000 != 0 || qdcount != 1 {
        return None;
    }
    // QNAME: labels up to a zero byte (queries carry no compression).
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let question_end = pos + 4;
    let question = query.get(12..question_end)?;
    let name = labels.join(".");
    shared.queries.fetch_add(1, Ordering::SeqCst);
    shared.log.lock().unwrap().push((name.clone(), qtype));
    let known = shared.answers.lock().unwrap().get(&name).copied();

    let opcode_rd = flags & 0x7900; // opcode bits + RD, copied from the query
    let rcode: u16 = if known.is_some() { 0 } else { 3 }; // NOERROR / NXDOMAIN
    let answer_a = known.filter(|_| qtype == TYPE_A);
    let mut out = Vec::with_capacity(question_end + 16);
    out.extend_from_slice(&query[0..2]); // id
    // QR | opcode | AA | RD (copied) | RA | rcode
    out.extend_from_slice(&(0x8000 | opcode_rd | 0x0400 | 0x0080 | rcode).to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    out.extend_from_slice(&u16::from(answer_a.is_some()).to_be_bytes()); // ANCOUNT
    out.extend_from_slice(&0u16.to_be_bytes()); // NSCOUNT
    out.extend_from_slice(&0u16.to_be_bytes()); // ARCOUNT
    out.extend_from_slice(question);
    if let Some(ip) = answer_a {
        out.extend_from_slice(&0xc00cu16.to_be_bytes()); // name: pointer to the question
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes()); // class IN
        out.extend_from_slice(&0u32.to_be_bytes()); // TTL 0
        out.extend_from_slice(&4u16.to_be_bytes()); // RDLENGTH
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}
