//! The operator's escape hatch from the webhook policy (`[webhooks] allow_hosts`):
//! exact host names, IP literals and CIDR networks that a callback may reach even
//! though they are not global. Parsed once at start; a bad entry fails the start with
//! a hint.

use std::net::IpAddr;

use url::Host;

use super::PolicyError;

/// The operator's allowlist (`[webhooks] allow_hosts`): host names that may
/// resolve anywhere, and IP addresses/networks that may be reached even
/// though they are not global.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    /// Lower-case, no trailing dot, IDNA (punycode) form.
    names: Vec<String>,
    nets: Vec<Cidr>,
}

/// An IP network; a single address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                net.to_bits() & mask == ip.to_bits() & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                net.to_bits() & mask == ip.to_bits() & mask
            }
            _ => false,
        }
    }
}

impl AllowList {
    /// Parses entries: exact host names (case-insensitive, no wildcards), IP
    /// literals (`127.0.0.1`, `::1`, `[::1]`) or CIDR networks (`10.0.0.0/8`).
    pub fn parse(entries: &[String]) -> Result<AllowList, PolicyError> {
        let mut list = AllowList::default();
        for entry in entries {
            let bad = |reason: &str| PolicyError::AllowEntry {
                entry: entry.clone(),
                reason: reason.to_string(),
            };
            let e = entry.trim();
            if e.is_empty() {
                return Err(bad("empty entry"));
            }
            if e.contains("://") || e.contains('@') {
                return Err(bad("give a bare host name, without scheme, port or user"));
            }
            if let Some((addr, prefix)) = e.split_once('/') {
                let net: IpAddr = unbracket(addr).parse().map_err(|_| {
                    bad("a network must be an IP address and prefix length, e.g. 10.0.0.0/8")
                })?;
                let max = if net.is_ipv4() { 32 } else { 128 };
                let prefix: u8 = prefix
                    .parse()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| bad(&format!("prefix length must be 0..={max}")))?;
                let masked = Cidr { net, prefix };
                let canonical = mask(net, prefix);
                if canonical != net {
                    return Err(bad(&format!(
                        "host bits are set; did you mean {canonical}/{prefix}?"
                    )));
                }
                list.nets.push(masked);
                continue;
            }
            if let Ok(ip) = unbracket(e).parse::<IpAddr>() {
                list.nets.push(Cidr {
                    net: ip,
                    prefix: if ip.is_ipv4() { 32 } else { 128 },
                });
                continue;
            }
            if e.contains('*') {
                return Err(bad("wildcards are not supported; list each host name"));
            }
            if e.contains(':') {
                return Err(bad("give a bare host name, without scheme, port or user"));
            }
            match Host::parse(e) {
                Ok(Host::Domain(d)) => list.names.push(normalise_name(&d)),
                Ok(Host::Ipv4(ip)) => list.nets.push(Cidr {
                    net: ip.into(),
                    prefix: 32,
                }),
                Ok(Host::Ipv6(ip)) => list.nets.push(Cidr {
                    net: ip.into(),
                    prefix: 128,
                }),
                Err(err) => return Err(bad(&format!("not a valid host name ({err})"))),
            }
        }
        Ok(list)
    }

    /// True when no entry is configured.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.nets.is_empty()
    }

    /// Whether `host` (a URL's host name) is listed by name.
    pub fn allows_name(&self, host: &str) -> bool {
        let host = normalise_name(host);
        self.names.contains(&host)
    }

    /// Whether `ip` is inside a listed address or network. IPv4-mapped IPv6
    /// addresses also match the IPv4 entries.
    pub fn allows_addr(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.nets
            .iter()
            .any(|c| c.contains(ip) || c.contains(canonical))
    }
}

fn unbracket(s: &str) -> &str {
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s)
}

fn normalise_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((v4.to_bits() & m).into())
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((v6.to_bits() & m).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Result<AllowList, PolicyError> {
        AllowList::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn allowlist_parses_names_addresses_and_networks() {
        let l = list(&[
            "Hooks.Internal",
            "hooks.example.",
            "127.0.0.1",
            "::1",
            "[fd00::1]",
            "10.0.0.0/8",
            "fd12::/16",
        ])
        .unwrap();
        assert!(l.allows_name("hooks.internal"));
        assert!(l.allows_name("HOOKS.INTERNAL."));
        assert!(l.allows_name("hooks.example"));
        assert!(!l.allows_name("evil.hooks.internal"));
        assert!(!l.allows_name("hooks.internal.evil"));
        for ok in [
            "127.0.0.1",
            "::1",
            "fd00::1",
            "10.0.0.5",
            "10.255.255.255",
            "fd12:1::9",
        ] {
            assert!(l.allows_addr(ok.parse().unwrap()), "{ok}");
        }
        // Mapped IPv6 forms match IPv4 entries.
        assert!(l.allows_addr("::ffff:10.1.2.3".parse().unwrap()));
        for no in ["127.0.0.2", "11.0.0.1", "fd00::2", "fd13::1", "192.168.0.1"] {
            assert!(!l.allows_addr(no.parse().unwrap()), "{no}");
        }
        // Names do not allow addresses and vice versa.
        assert!(!l.allows_name("10.0.0.5"));
        assert!(list(&[]).unwrap().is_empty());
        assert!(
            list(&["0.0.0.0/0"])
                .unwrap()
                .allows_addr("8.8.4.4".parse().unwrap())
        );
    }

    #[test]
    fn allowlist_rejects_bad_entries_with_a_hint() {
        for (entry, hint) in [
            ("", "empty"),
            ("*.example.com", "wildcards"),
            ("https://hooks.internal", "bare host name"),
            ("hooks.internal:8080", "bare host name"),
            ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
            ("10.0.0.0/33", "0..=32"),
            ("fd00::/129", "0..=128"),
            ("hooks/8", "IP address and prefix"),
            ("bad host", "not a valid host name"),
        ] {
            let err = list(&[entry]).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(hint), "{entry:?}: {msg}");
            assert!(msg.contains("allow_hosts"), "{msg}");
        }
    }
}
