//! Which IP addresses a webhook may reach without the operator's say-so.
//!
//! A completion webhook is a URL chosen by whoever triggers a run, so the
//! server must not become a proxy into its own network (SSRF): cloud metadata
//! at 169.254.169.254, admin ports on loopback, the private LAN. The rule is
//! an allowlist of what is *globally reachable*, not a denylist of what is
//! dangerous, so address space IANA has not handed out is refused too.
//! Addresses that embed an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged
//! by the IPv4 address they lead to, because that is where packets end up.
//!
//! `std`'s `IpAddr::is_global` is still unstable, hence this module.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// True when `ip` is a globally reachable unicast address, i.e. one a
/// webhook may be delivered to without an allowlist entry.
pub fn is_global(ip: IpAddr) -> bool {
    refusal(ip).is_none()
}

/// Why `ip` is not global, as a phrase that completes "resolves to 10.0.0.5, …"
/// (e.g. "a private address"); `None` when it is global.
pub(crate) fn refusal(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => v4_refusal(v4).map(str::to_string),
        IpAddr::V6(v6) => v6_refusal(v6),
    }
}

fn v4_refusal(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let reason = match (a, b, c) {
        (0, _, _) => "an unspecified (\"this network\", 0.0.0.0/8) address",
        (10, _, _) => "a private address",
        (100, 64..=127, _) => "a shared carrier-grade NAT (100.64.0.0/10) address",
        (127, _, _) => "a loopback address",
        (169, 254, _) => "a link-local address (cloud metadata lives here)",
        (172, 16..=31, _) => "a private address",
        (192, 0, 0) => "a reserved IETF protocol address (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (192, 88, 99) => "a reserved 6to4 relay address (192.88.99.0/24)",
        (192, 168, _) => "a private address",
        (198, 18..=19, _) => "a benchmarking address (198.18.0.0/15)",
        (224..=239, _, _) => "a multicast address",
        (255, 255, 255) if ip == Ipv4Addr::BROADCAST => "the broadcast address",
        (240..=255, _, _) => "a reserved address (240.0.0.0/4)",
        _ => return None,
    };
    Some(reason)
}

fn v6_refusal(ip: Ipv6Addr) -> Option<String> {
    let seg = ip.segments();
    let embedded =
        |v4: Ipv4Addr, form: &str| v4_refusal(v4).map(|why| format!("{form} of {v4}, {why}"));
    let fixed = |s: &str| Some(s.to_string());
    if ip.is_unspecified() {
        return fixed("an unspecified address");
    }
    if ip.is_loopback() {
        return fixed("a loopback address");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return embedded(v4, "an IPv4-mapped form");
    }
    // ::/96 minus :: and ::1 (handled above): deprecated IPv4-compatible form.
    if seg[..6] == [0; 6] {
        return fixed("a deprecated IPv4-compatible address (::/96)");
    }
    let low_v4 = Ipv4Addr::from(ip.to_bits() as u32);
    match seg {
        // NAT64 well-known prefix: the gateway forwards to the embedded IPv4.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => return embedded(low_v4, "a NAT64 form"),
        [0x64, 0xff9b, 1, ..] => return fixed("a local-use NAT64 address (64:ff9b:1::/48)"),
        [0x100, 0, 0, 0, ..] => return fixed("a discard-only address (100::/64)"),
        // Teredo tunnels to an obfuscated IPv4 endpoint; refuse outright.
        [0x2001, 0, ..] => return fixed("a Teredo address (2001::/32)"),
        [0x2001, 0..=0x1ff, ..] => {
            return fixed("a reserved IETF protocol address (2001::/23)");
        }
        [0x2001, 0xdb8, ..] => return fixed("a documentation address (2001:db8::/32)"),
        // 6to4: the relay forwards to the IPv4 address in bits 16..48.
        [0x2002, hi, lo, ..] => {
            let v4 = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            return embedded(v4, "a 6to4 form");
        }
        [0x3fff, 0..=0x0fff, ..] => return fixed("a documentation address (3fff::/20)"),
        [0x5f00, ..] => return fixed("a reserved SRv6 address (5f00::/16)"),
        _ => {}
    }
    let first = seg[0];
    if first & 0xfe00 == 0xfc00 {
        return fixed("a private (unique local, fc00::/7) address");
    }
    if first & 0xffc0 == 0xfe80 {
        return fixed("a link-local address");
    }
    if first & 0xffc0 == 0xfec0 {
        return fixed("a deprecated site-local address (fec0::/10)");
    }
    if first & 0xff00 == 0xff00 {
        return fixed("a multicast address");
    }
    // Everything outside 2000::/3 is unassigned or special-purpose.
    if first & 0xe000 != 0x2000 {
        return fixed("a reserved address outside global unicast (2000::/3)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_global_addresses() {
        // (address, expected word in the reason)
        let table = [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("10.0.0.5", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "carrier-grade"),
            ("100.127.255.255", "carrier-grade"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("192.0.0.8", "IETF"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("192.88.99.1", "6to4 relay"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.1.2.3", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("::8.8.8.8", "IPv4-compatible"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a00:1", "private"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("2002:7f00:1::", "loopback"),
            ("2002:c0a8:101::1", "private"),
            ("2001::1", "Teredo"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            ("2001:10::1", "IETF"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("100::1", "discard"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("ff0e::1", "multicast"),
            ("5f00::1", "SRv6"),
            ("4000::1", "outside global unicast"),
            ("::2", "IPv4-compatible"),
        ];
        for (addr, word) in table {
            let ip: IpAddr = addr.parse().unwrap();
            assert!(!is_global(ip), "{addr} must be refused");
            let why = refusal(ip).unwrap();
            assert!(
                why.contains(word),
                "{addr}: {why:?} should mention {word:?}"
            );
        }
    }

    #[test]
    fn passes_global_addresses() {
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.215.14",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2001:200::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2a00:1450:4001::1",
        ] {
            let ip: IpAddr = addr.parse().unwrap();
            assert!(is_global(ip), "{addr} must pass: {:?}", refusal(ip));
        }
    }
}
