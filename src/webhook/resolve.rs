//! DNS for webhooks: the resolver, the checked lookup, and the pinned resolver the HTTP
//! client gets. The check and the connection must concern the same address, or DNS
//! rebinding walks around the policy; so a delivery resolves once here, checks every
//! answer, and the client can only reach that one address for that one host.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use super::policy::{CheckedUrl, Target, check_addr};
use super::{PolicyError, WebhookPolicy};

/// The resolver for `policy`: its `nameservers` (or the system configuration), no cache.
pub(super) fn resolver_for(policy: &WebhookPolicy) -> Result<TokioResolver, PolicyError> {
    let setup = |e: hickory_resolver::net::NetError| PolicyError::Resolver {
        reason: e.to_string(),
    };
    let mut builder = if policy.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(setup)?
    } else {
        let servers = policy
            .nameservers
            .iter()
            .map(|sa| {
                let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                for conn in &mut ns.connections {
                    conn.port = sa.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    // Every check asks DNS afresh: the answer we check is the answer we
    // use. The system's stub resolver caches if it wants to.
    opts.cache_size = 0;
    // A and AAAA in parallel, so every address the name has is checked;
    // A first, so the pinned (first) address is IPv4 when there is one,
    // which works on hosts without IPv6 routes.
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = opts.timeout.min(policy.timeout);
    builder.build().map_err(setup)
}

/// Resolves and checks a URL that passed [`check_url`]; returns the
/// addresses in resolver order.
pub(super) async fn resolve(
    resolver: &TokioResolver,
    policy: &WebhookPolicy,
    checked: &CheckedUrl,
) -> Result<Vec<IpAddr>, PolicyError> {
    let (host, allowed) = match &checked.target {
        Target::Literal(ip) => return Ok(vec![*ip]),
        Target::Name { host, allowed } => (host, *allowed),
    };
    let lookup = resolver.lookup_ip(host.as_str()).await.map_err(|e| {
        if e.is_no_records_found() && !e.is_nx_domain() {
            PolicyError::NoAddresses { host: host.clone() }
        } else {
            PolicyError::Resolve {
                host: host.clone(),
                reason: if e.is_nx_domain() {
                    "no such host (NXDOMAIN)".to_string()
                } else {
                    e.to_string()
                },
            }
        }
    })?;
    let mut addrs: Vec<IpAddr> = Vec::new();
    for ip in lookup.iter() {
        if !addrs.contains(&ip) {
            addrs.push(ip);
        }
    }
    if addrs.is_empty() {
        return Err(PolicyError::NoAddresses { host: host.clone() });
    }
    if !allowed {
        for ip in &addrs {
            check_addr(policy, host, *ip, false)?;
        }
    }
    Ok(addrs)
}

/// The HTTP client's only resolver: the checked address for the checked
/// host, and a refusal for any other lookup (so nothing unchecked can ever
/// be resolved, even if hyper asks for a name we did not expect).
pub(super) struct Pinned {
    pub(super) host: Option<String>,
    pub(super) addr: SocketAddr,
}

impl reqwest::dns::Resolve for Pinned {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let result: Result<reqwest::dns::Addrs, _> = match &self.host {
            Some(host) if host.eq_ignore_ascii_case(name.as_str()) => {
                Ok(Box::new(std::iter::once(self.addr)))
            }
            _ => Err(format!("refusing an unchecked DNS lookup of {}", name.as_str()).into()),
        };
        Box::pin(std::future::ready(result))
    }
}
