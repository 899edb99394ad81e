//! Webhook delivery against real sockets: a DNS stub we program
//! (`common::dns`), axum receivers on 127.0.0.1, and bare listeners that
//! must never see a connection. No sleeps: every wait is an await under a
//! timeout, and "no connection happened" is read from the listener's accept
//! queue after `deliver` has returned.

mod common;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt as _;
use hmac::{Hmac, Mac};
use runyard::webhook::{AllowList, PolicyError, WebhookPolicy, Webhooks, secret_key};
use sha2::Sha256;
use tokio::sync::mpsc;

use common::dns::DnsStub;

const WAIT: Duration = Duration::from_secs(10);
const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A request as the receiver saw it.
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// How a receiver answers.
#[derive(Clone)]
enum Reply {
    Ok(&'static str),
    Redirect(String),
    /// 200 with `first` bytes of body, then the body never ends.
    Trickle {
        first: usize,
    },
    /// 200 with a body that never ends, as fast as the socket takes it.
    Endless,
    /// Never answers at all.
    Never,
}

/// An HTTP receiver on 127.0.0.1:0 that reports each request on a channel.
async fn receiver(reply: Reply) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Arc::new((reply, tx));
    let app = axum::Router::new()
        .fallback(
            |axum::extract::State(state): axum::extract::State<
                Arc<(Reply, mpsc::UnboundedSender<Received>)>,
            >,
             headers: HeaderMap,
             body: Bytes| async move {
                let (reply, tx) = &*state;
                let _ = tx.send(Received { headers, body });
                let ok = Response::builder().status(StatusCode::OK);
                match reply.clone() {
                    Reply::Ok(text) => ok.body(Body::from(text)).unwrap(),
                    Reply::Redirect(to) => Response::builder()
                        .status(StatusCode::FOUND)
                        .header(header::LOCATION, to)
                        .body(Body::empty())
                        .unwrap(),
                    Reply::Trickle { first } => {
                        let head = futures_util::stream::iter(
                            (0..first.div_ceil(8192))
                                .map(|_| Ok::<_, Infallible>(Bytes::from(vec![b'a'; 8192]))),
                        );
                        ok.body(Body::from_stream(
                            head.chain(futures_util::stream::pending()),
                        ))
                        .unwrap()
                    }
                    Reply::Endless => ok
                        .body(Body::from_stream(futures_util::stream::repeat_with(|| {
                            Ok::<_, Infallible>(Bytes::from(vec![b'e'; 16384]))
                        })))
                        .unwrap(),
                    Reply::Never => std::future::pending().await,
                }
            },
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, rx)
}

/// A listener nobody serves: connections would queue in the kernel, so an
/// empty accept queue after `deliver` returned proves none was made.
struct Untouched(std::net::TcpListener);

impl Untouched {
    fn bind() -> Untouched {
        let l = std::net::TcpListener::bind((LOCAL, 0)).unwrap();
        l.set_nonblocking(true).unwrap();
        Untouched(l)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }

    fn assert_no_connection(&self) {
        match self.0.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok((_, from)) => panic!("a connection was made from {from}"),
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn policy(stub: &DnsStub, allow_http: bool, allow: &[&str]) -> WebhookPolicy {
    WebhookPolicy {
        allow_http,
        allow_hosts: AllowList::parse(&allow.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap(),
        nameservers: vec![stub.addr],
        timeout: Duration::from_secs(5),
        ..WebhookPolicy::default()
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("receiver saw a request in time")
        .expect("receiver alive")
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn dns_answer_changing_to_loopback_after_validation_is_refused_at_delivery() {
    let stub = DnsStub::start().await;
    let local = Untouched::bind();
    stub.set("flip.test", Ipv4Addr::new(1, 1, 1, 1));
    let hooks = Webhooks::new(policy(&stub, true, &[]), None).unwrap();
    let url = format!("http://flip.test:{}/hook", local.port());

    hooks.validate(&url).await.expect("a global answer passes");
    stub.set("flip.test", LOCAL);
    let out = tokio::time::timeout(WAIT, hooks.deliver("msg_flip", &url, b"{}"))
        .await
        .unwrap();

    let err = out.error.as_deref().expect("delivery refused");
    assert!(
        err.contains("resolves to 127.0.0.1, a loopback address") && err.contains("allow_hosts"),
        "{err}"
    );
    assert_eq!(out.status, None);
    assert_eq!(out.address, None);
    assert!(out.retryable, "DNS may change back; each retry re-checks");
    assert_eq!(stub.lookups("flip.test"), 2, "delivery re-resolved");
    local.assert_no_connection();
}

#[tokio::test]
async fn delivery_is_pinned_to_the_checked_address_and_signed() {
    let stub = DnsStub::start().await;
    stub.set("hook.test", LOCAL);
    let (addr, mut rx) = receiver(Reply::Ok("thanks")).await;
    let raw_key = b"integration-test-key".to_vec();
    let secret = format!("whsec_{}", STANDARD.encode(&raw_key));
    let hooks = Webhooks::new(
        policy(&stub, true, &["hook.test"]),
        Some(secret_key(&secret).unwrap()),
    )
    .unwrap();
    let url = format!("http://hook.test:{}/done?x=1", addr.port());
    let body = br#"{"runId":"r1","status":"succeeded"}"#;

    hooks.validate(&url).await.unwrap();
    assert_eq!(stub.lookups("hook.test"), 1);
    for round in 1..=2 {
        let out = tokio::time::timeout(WAIT, hooks.deliver("msg_pin", &url, body))
            .await
            .unwrap();
        assert!(out.is_success(), "{out:?}");
        assert_eq!(out.status, Some(200));
        assert_eq!(out.response_excerpt, "thanks");
        assert_eq!(out.address, Some(addr));
        // validate + one lookup per delivery: the HTTP client made none of
        // its own (and could not have reached 127.0.0.1 for hook.test through
        // the system resolver, which has never heard of it).
        assert_eq!(stub.lookups("hook.test"), 1 + round);

        let got = next(&mut rx).await;
        assert_eq!(&got.body[..], body);
        assert_eq!(header(&got, "host"), format!("hook.test:{}", addr.port()));
        assert_eq!(header(&got, "content-type"), "application/json");
        assert!(header(&got, "user-agent").starts_with("runyard-webhook/"));
        assert_eq!(header(&got, "webhook-id"), "msg_pin");
        let ts: i64 = header(&got, "webhook-timestamp").parse().unwrap();
        let now = runyard::clock::now_ms() / 1000;
        assert!((now - ts).abs() < 60, "timestamp {ts} vs now {now}");
        // Verify as a receiver would, without runyard's `sign`.
        let sig = header(&got, "webhook-signature");
        let mac_b64 = sig.strip_prefix("v1,").expect("v1 signature");
        let mut mac = Hmac::<Sha256>::new_from_slice(&raw_key).unwrap();
        mac.update(format!("msg_pin.{ts}.").as_bytes());
        mac.update(&got.body);
        mac.verify_slice(&STANDARD.decode(mac_b64).unwrap())
            .expect("signature verifies");
    }
}

#[tokio::test]
async fn allowlisted_address_is_delivered_unsigned_without_a_secret() {
    let stub = DnsStub::start().await;
    let (addr, mut rx) = receiver(Reply::Ok("")).await;
    let hooks = Webhooks::new(policy(&stub, true, &["127.0.0.0/8"]), None).unwrap();
    let url = format!("http://{addr}/");

    hooks.validate(&url).await.unwrap();
    let out = tokio::time::timeout(WAIT, hooks.deliver("msg_plain", &url, b"{}"))
        .await
        .unwrap();
    assert!(out.is_success(), "{out:?}");
    let got = next(&mut rx).await;
    assert_eq!(header(&got, "webhook-id"), "msg_plain");
    assert!(got.headers.contains_key("webhook-timestamp"));
    assert!(!got.headers.contains_key("webhook-signature"));
    assert_eq!(stub.queries(), 0, "IP literals need no DNS");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let stub = DnsStub::start().await;
    let elsewhere = Untouched::bind();
    let (addr, mut rx) = receiver(Reply::Redirect(format!(
        "http://127.0.0.1:{}/",
        elsewhere.port()
    )))
    .await;
    let hooks = Webhooks::new(policy(&stub, true, &["127.0.0.1"]), None).unwrap();

    let out = tokio::time::timeout(WAIT, hooks.deliver("m", &format!("http://{addr}/"), b"{}"))
        .await
        .unwrap();
    assert_eq!(out.status, Some(302));
    let err = out.error.as_deref().expect("3xx is a failure");
    assert!(err.contains("redirects are not followed"), "{err}");
    assert!(out.retryable);
    next(&mut rx).await;
    elsewhere.assert_no_connection();
}

#[tokio::test]
async fn response_body_is_read_only_up_to_the_limit() {
    let stub = DnsStub::start().await;
    let mut p = policy(&stub, true, &["127.0.0.1"]);
    p.max_response_bytes = 64 * 1024;
    p.timeout = Duration::from_secs(30);
    let hooks = Webhooks::new(p, None).unwrap();

    // A body that never ends, and one that stalls after 100 KiB: both must
    // return as soon as the limit is read, long before the 30 s timeout.
    for (reply, fill) in [
        (Reply::Endless, 'e'),
        (Reply::Trickle { first: 100 * 1024 }, 'a'),
    ] {
        let (addr, _rx) = receiver(reply).await;
        let started = Instant::now();
        let out = tokio::time::timeout(WAIT, hooks.deliver("m", &format!("http://{addr}/"), b"{}"))
            .await
            .expect("deliver returns without reading the whole body");
        assert!(started.elapsed() < WAIT);
        assert!(out.is_success(), "{out:?}");
        assert_eq!(out.status, Some(200));
        assert_eq!(out.response_excerpt, fill.to_string().repeat(512));
    }
}

#[tokio::test]
async fn a_receiver_that_never_answers_is_cut_off_at_the_timeout() {
    let stub = DnsStub::start().await;
    let (addr, mut rx) = receiver(Reply::Never).await;
    let mut p = policy(&stub, true, &["127.0.0.1"]);
    p.timeout = Duration::from_secs(1);
    let hooks = Webhooks::new(p, None).unwrap();

    let started = Instant::now();
    let out = tokio::time::timeout(WAIT, hooks.deliver("m", &format!("http://{addr}/"), b"{}"))
        .await
        .expect("deliver bounds itself");
    let took = started.elapsed();
    next(&mut rx).await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(out.status, None);
    assert!(
        out.error.as_deref().unwrap().contains("timed out after 1s"),
        "{out:?}"
    );
    assert!(out.retryable);
    assert_eq!(out.address, Some(addr));
}

#[tokio::test]
async fn loopback_userinfo_and_plain_http_are_refused() {
    let stub = DnsStub::start().await;
    let local = Untouched::bind();
    let port = local.port();
    stub.set("loop.test", LOCAL);
    let hooks = Webhooks::new(policy(&stub, true, &[]), None).unwrap();

    // Loopback as a literal, in disguise, and behind a name.
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://[::1]:{port}/"),
    ] {
        let err = hooks.validate(&url).await.unwrap_err();
        assert!(
            matches!(err, PolicyError::Address { literal: true, .. }),
            "{url}: {err}"
        );
        let out = tokio::time::timeout(WAIT, hooks.deliver("m", &url, b"{}"))
            .await
            .unwrap();
        assert!(
            out.error.as_deref().unwrap().contains("loopback"),
            "{out:?}"
        );
        assert!(!out.retryable, "a literal address never changes");
    }
    let named = format!("http://loop.test:{port}/");
    let err = hooks.validate(&named).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("resolves to 127.0.0.1, a loopback address"),
        "{err}"
    );
    let out = hooks.deliver("m", &named, b"{}").await;
    assert!(out.error.unwrap().contains("loopback"));

    let with_user = format!("http://user:pw@127.0.0.1:{port}/");
    assert_eq!(hooks.validate(&with_user).await, Err(PolicyError::Userinfo));
    assert!(!hooks.deliver("m", &with_user, b"{}").await.retryable);

    let strict = Webhooks::new(policy(&stub, false, &["hook.test"]), None).unwrap();
    let before = stub.queries();
    assert_eq!(
        strict.validate("http://hook.test/").await,
        Err(PolicyError::HttpNotAllowed)
    );
    let out = strict.deliver("m", "http://hook.test/", b"{}").await;
    assert!(out.error.unwrap().contains("must use https"));
    assert_eq!(stub.queries(), before, "refused URLs are not even resolved");

    local.assert_no_connection();
}

#[tokio::test]
async fn unknown_names_fail_validation_with_the_host_named() {
    let stub = DnsStub::start().await;
    let hooks = Webhooks::new(policy(&stub, false, &[]), None).unwrap();
    let err = hooks.validate("https://nowhere.test/").await.unwrap_err();
    assert!(matches!(err, PolicyError::Resolve { .. }), "{err:?}");
    assert!(err.to_string().contains("nowhere.test"), "{err}");
    assert!(err.retryable());
}

#[tokio::test]
async fn https_goes_through_tls_to_the_pinned_address() {
    // The receiver speaks plain HTTP, so the TLS handshake must fail: this
    // proves the rustls client is built (crypto provider present) and used
    // for https URLs with the pinned address, without needing the internet.
    let stub = DnsStub::start().await;
    stub.set("hook.test", LOCAL);
    let (addr, _rx) = receiver(Reply::Ok("")).await;
    let hooks = Webhooks::new(policy(&stub, false, &["hook.test"]), None).unwrap();
    let out = tokio::time::timeout(
        WAIT,
        hooks.deliver("m", &format!("https://hook.test:{}/", addr.port()), b"{}"),
    )
    .await
    .unwrap();
    assert_eq!(out.status, None, "{out:?}");
    assert_eq!(out.address, Some(addr));
    assert!(out.retryable);
    // rustls's complaint about the plaintext HTTP answer to its ClientHello.
    let err = out.error.unwrap();
    assert!(err.contains("corrupt message"), "{err}");
}
