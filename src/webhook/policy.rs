//! What a callback URL may be: the settings ([`WebhookPolicy`]) and the URL checks
//! that need no network ([`check_url`], [`check_addr`]); the operator's allowlist is
//! [`AllowList`](super::AllowList).
//!
//! URL checks run on the `url` crate's parsed form, never on the raw string:
//! it normalises the spellings people use to sneak past string filters
//! (`http://2130706433/`, `http://0x7f.1/`, `http://[::ffff:127.0.0.1]/` all
//! become 127.0.0.1), so what we check is what we later connect to.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use url::{Host, Url};

use super::{AllowList, address};

/// Delivery settings, validated once at start-up by [`super::Webhooks::new`].
#[derive(Debug, Clone)]
pub struct WebhookPolicy {
    /// Accept `http://` URLs. Off by default: the payload and its signature
    /// would otherwise cross the network in clear text.
    pub allow_http: bool,
    /// The only way to reach non-global addresses (in-cluster receivers).
    pub allow_hosts: AllowList,
    /// DNS servers to ask (UDP, falling back to TCP). Empty means the
    /// system's resolver configuration (`/etc/resolv.conf`). Tests point this
    /// at a stub they control.
    pub nameservers: Vec<SocketAddr>,
    /// Bound on one whole delivery: DNS, connect, send and reading the
    /// response. Also bounds the DNS step of [`super::Webhooks::validate`].
    pub timeout: Duration,
    /// At most this much of a response body is read; the rest is dropped
    /// with the connection, so a hostile receiver cannot stall or bloat us.
    pub max_response_bytes: usize,
}

impl Default for WebhookPolicy {
    fn default() -> Self {
        WebhookPolicy {
            allow_http: false,
            allow_hosts: AllowList::default(),
            nameservers: Vec::new(),
            timeout: Duration::from_secs(10),
            max_response_bytes: 64 * 1024,
        }
    }
}

/// Why a callback URL, secret or policy setting is refused. Every message
/// says what to change; the API answers 400 with it at trigger time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The string does not parse as an absolute URL.
    #[error("callbackUrl is not a valid absolute URL: {reason}")]
    InvalidUrl {
        /// The parser's complaint.
        reason: String,
    },
    /// A scheme other than http(s).
    #[error("callbackUrl scheme {scheme:?} is not supported; use https")]
    Scheme {
        /// The scheme found.
        scheme: String,
    },
    /// `http://` while `allow_http` is off.
    #[error("callbackUrl must use https; set [webhooks] allow_http = true to allow plain http")]
    HttpNotAllowed,
    /// `https://user:pass@host/`: credentials would be sent to, and logged
    /// with, the URL.
    #[error(
        "callbackUrl must not contain a user name or password (the part before '@'); \
         receivers authenticate requests by their webhook-signature header"
    )]
    Userinfo,
    /// No host part.
    #[error("callbackUrl has no host")]
    NoHost,
    /// The host is, or resolves to, a non-global address not in the allowlist.
    #[error(
        "callbackUrl {} {addr}, {why}; add {} to [webhooks] allow_hosts to allow it",
        if *literal { "points at" } else { "resolves to" },
        if *literal { addr.to_string() } else { format!("the host ({host})") }
    )]
    Address {
        /// The URL's host as written (after normalisation).
        host: String,
        /// The refused address.
        addr: IpAddr,
        /// What kind of address it is, e.g. "a private address".
        why: String,
        /// The host was an IP literal (no DNS involved).
        literal: bool,
    },
    /// DNS failed (no such name, server unreachable, timeout).
    #[error("could not resolve callbackUrl host {host}: {reason}")]
    Resolve {
        /// The host looked up.
        host: String,
        /// The resolver's error.
        reason: String,
    },
    /// DNS answered but with no A/AAAA records.
    #[error("callbackUrl host {host} has no IPv4 or IPv6 address")]
    NoAddresses {
        /// The host looked up.
        host: String,
    },
    /// A bad `[webhooks] allow_hosts` entry.
    #[error("invalid [webhooks] allow_hosts entry {entry:?}: {reason}")]
    AllowEntry {
        /// The entry as configured.
        entry: String,
        /// What is wrong with it and what to write instead.
        reason: String,
    },
    /// A bad signing secret.
    #[error("invalid webhook secret: {reason}")]
    Secret {
        /// What is wrong with it.
        reason: String,
    },
    /// The DNS resolver could not be set up (e.g. unreadable resolv.conf).
    #[error("could not set up the DNS resolver for webhooks: {reason}")]
    Resolver {
        /// The resolver's error.
        reason: String,
    },
}

impl PolicyError {
    /// Whether a later attempt could succeed without anyone changing the URL
    /// or the configuration: true only for outcomes that depend on DNS, whose
    /// answers legitimately change (failover, split horizon, a fixed typo in
    /// a zone). Retrying a refusal is safe because every attempt re-resolves
    /// and re-checks. Everything about the URL itself is permanent.
    pub fn retryable(&self) -> bool {
        match self {
            PolicyError::Address { literal, .. } => !literal,
            PolicyError::Resolve { .. } | PolicyError::NoAddresses { .. } => true,
            _ => false,
        }
    }
}

/// Where a checked URL points before DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The host was an IP literal; it has already passed [`check_addr`].
    Literal(IpAddr),
    /// A host name to resolve; `allowed` when listed by name in the allowlist.
    Name { host: String, allowed: bool },
}

/// A URL that passed every check that needs no DNS.
#[derive(Debug, Clone)]
pub(crate) struct CheckedUrl {
    pub url: Url,
    pub target: Target,
    pub port: u16,
}

/// Parses `raw` and applies the scheme, userinfo and host rules; IP-literal
/// hosts are checked here too, so they never touch DNS.
pub(crate) fn check_url(policy: &WebhookPolicy, raw: &str) -> Result<CheckedUrl, PolicyError> {
    let url = Url::parse(raw.trim()).map_err(|e| PolicyError::InvalidUrl {
        reason: e.to_string(),
    })?;
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_http => {}
        "http" => return Err(PolicyError::HttpNotAllowed),
        other => {
            return Err(PolicyError::Scheme {
                scheme: other.to_string(),
            });
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(PolicyError::Userinfo);
    }
    let port = url.port_or_known_default().ok_or(PolicyError::NoHost)?;
    let target = match url.host() {
        None => return Err(PolicyError::NoHost),
        Some(Host::Domain("")) => return Err(PolicyError::NoHost),
        Some(Host::Domain(d)) => Target::Name {
            host: d.to_string(),
            allowed: policy.allow_hosts.allows_name(d),
        },
        Some(Host::Ipv4(ip)) => Target::Literal(ip.into()),
        Some(Host::Ipv6(ip)) => Target::Literal(ip.into()),
    };
    if let Target::Literal(ip) = target {
        check_addr(policy, &ip.to_string(), ip, true)?;
    }
    Ok(CheckedUrl { url, target, port })
}

/// Refuses `ip` unless it is global or allowlisted by address.
pub(crate) fn check_addr(
    policy: &WebhookPolicy,
    host: &str,
    ip: IpAddr,
    literal: bool,
) -> Result<(), PolicyError> {
    if policy.allow_hosts.allows_addr(ip) {
        return Ok(());
    }
    match address::refusal(ip) {
        None => Ok(()),
        Some(why) => Err(PolicyError::Address {
            host: host.to_string(),
            addr: ip,
            why,
            literal,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Result<AllowList, PolicyError> {
        AllowList::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn policy(allow_http: bool, allow: &[&str]) -> WebhookPolicy {
        WebhookPolicy {
            allow_http,
            allow_hosts: list(allow).unwrap(),
            ..WebhookPolicy::default()
        }
    }

    #[test]
    fn url_tricks_normalise_to_the_address_they_reach() {
        let p = policy(true, &[]);
        for raw in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://0x7f000001/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::1]:8080/",
            "http://[::]/",
            "http://0.0.0.0/",
            "https://169.254.169.254/latest/meta-data/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://10.0.0.5/",
            "http://[64:ff9b::7f00:1]/",
        ] {
            match check_url(&p, raw) {
                Err(PolicyError::Address { literal: true, .. }) => {}
                other => panic!("{raw} should be refused as an address, got {other:?}"),
            }
        }
        let err = check_url(&p, "http://2130706433/").unwrap_err();
        assert_eq!(
            err.to_string(),
            "callbackUrl points at 127.0.0.1, a loopback address; \
             add 127.0.0.1 to [webhooks] allow_hosts to allow it"
        );
        assert!(!err.retryable());
    }

    #[test]
    fn url_shape_rules() {
        let strict = policy(false, &[]);
        type Expect = fn(&PolicyError) -> bool;
        let cases: [(&str, Expect); 9] = [
            ("https://a@b.example/", |e| *e == PolicyError::Userinfo),
            ("https://a:b@b.example/", |e| *e == PolicyError::Userinfo),
            ("https://:b@b.example/", |e| *e == PolicyError::Userinfo),
            ("http://hooks.example/", |e| {
                *e == PolicyError::HttpNotAllowed
            }),
            ("ftp://hooks.example/", |e| {
                matches!(e, PolicyError::Scheme { .. })
            }),
            ("file:///etc/passwd", |e| {
                matches!(e, PolicyError::Scheme { .. })
            }),
            ("gopher://127.0.0.1:6379/", |e| {
                matches!(e, PolicyError::Scheme { .. })
            }),
            ("/relative/path", |e| {
                matches!(e, PolicyError::InvalidUrl { .. })
            }),
            ("https://", |e| {
                matches!(e, PolicyError::InvalidUrl { .. } | PolicyError::NoHost)
            }),
        ];
        for (raw, pred) in cases {
            let err = check_url(&strict, raw).unwrap_err();
            assert!(pred(&err), "{raw}: {err:?}");
            assert!(!err.retryable(), "{raw}");
        }
        let ok = check_url(&strict, "https://Hooks.Example:8443/x?y=1").unwrap();
        assert_eq!(ok.port, 8443);
        assert_eq!(
            ok.target,
            Target::Name {
                host: "hooks.example".into(),
                allowed: false
            }
        );
        assert_eq!(check_url(&strict, "https://8.8.8.8/").unwrap().port, 443);
        assert_eq!(
            check_url(&strict, "https://[2606:4700:4700::1111]/")
                .unwrap()
                .target,
            Target::Literal("2606:4700:4700::1111".parse().unwrap())
        );
    }

    #[test]
    fn allowlist_opens_literals_and_names() {
        let p = policy(true, &["127.0.0.1", "10.0.0.0/8", "hooks.internal"]);
        assert!(check_url(&p, "http://127.0.0.1:9/").is_ok());
        assert!(check_url(&p, "http://2130706433/").is_ok());
        assert!(check_url(&p, "http://10.9.8.7/").is_ok());
        assert!(check_url(&p, "http://127.0.0.2/").is_err());
        assert!(matches!(
            check_url(&p, "http://HOOKS.internal/").unwrap().target,
            Target::Name { allowed: true, .. }
        ));
        // A resolved private address outside the list names the host.
        let err = check_addr(&p, "x.example", "192.168.1.1".parse().unwrap(), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "callbackUrl resolves to 192.168.1.1, a private address; \
             add the host (x.example) to [webhooks] allow_hosts to allow it"
        );
        assert!(err.retryable());
    }
}
