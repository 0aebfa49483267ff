//! Where mail for a domain goes: static routes, the smart host, then MX
//! (RFC 5321 §5.1) with implicit MX, null MX (RFC 7505) and NXDOMAIN.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use umail_core::config::{DeliveryConfig, DnsConfig, RouteConfig};

use crate::client::TlsPolicy;

/// A DNS answer failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist.
    #[error("domain does not exist (NXDOMAIN)")]
    NxDomain,
    /// The name exists but has no records of the type asked.
    #[error("no records")]
    NoRecords,
    /// Timeout, SERVFAIL, network: try again later.
    #[error("temporary DNS failure: {0}")]
    Temporary(String),
}

/// The lookups routing needs; the tests substitute their own.
#[async_trait]
pub trait DnsLookup: Send + Sync {
    /// MX records as (preference, exchange) pairs; the exchange has no trailing dot.
    async fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsError>;
    /// A and AAAA addresses.
    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, DnsError>;
}

/// [`DnsLookup`] over hickory-resolver.
pub struct HickoryDns(TokioResolver);

impl std::fmt::Debug for HickoryDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HickoryDns")
    }
}

impl HickoryDns {
    /// A resolver for `[dns]`: the listed nameservers (each `ip:port`,
    /// UDP and TCP) or the system configuration, with its timeout.
    pub fn new(config: &DnsConfig) -> Result<HickoryDns, DnsError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if config.nameservers.is_empty() {
            Resolver::builder(provider).map_err(|e| DnsError::Temporary(e.to_string()))?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|sa| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = sa.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = sa.port();
                    NameServerConfig::new(sa.ip(), true, vec![udp, tcp])
                })
                .collect();
            Resolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let opts = builder.options_mut();
        if config.timeout_secs > 0 {
            opts.timeout = Duration::from_secs(config.timeout_secs);
        }
        opts.attempts = 2;
        // Routing decisions must see fresh data in tests; a small cache is enough.
        opts.cache_size = 256;
        builder
            .build()
            .map(HickoryDns)
            .map_err(|e| DnsError::Temporary(e.to_string()))
    }
}

fn classify(e: &hickory_resolver::net::NetError) -> DnsError {
    if e.is_nx_domain() {
        DnsError::NxDomain
    } else if e.is_no_records_found() {
        DnsError::NoRecords
    } else {
        DnsError::Temporary(e.to_string())
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

#[async_trait]
impl DnsLookup for HickoryDns {
    async fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsError> {
        let lookup = self
            .0
            .mx_lookup(fqdn(domain))
            .await
            .map_err(|e| classify(&e))?;
        let mut out = Vec::new();
        for record in lookup.answers() {
            if let hickory_resolver::proto::rr::RData::MX(mx) = &record.data {
                let name = mx.exchange.to_ascii();
                out.push((mx.preference, name.trim_end_matches('.').to_string()));
            }
        }
        Ok(out)
    }

    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let lookup = self
            .0
            .lookup_ip(fqdn(host))
            .await
            .map_err(|e| classify(&e))?;
        Ok(lookup.iter().collect())
    }
}

/// One host to try, with everything needed to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// Host name (SNI, logs, `Remote-MTA`).
    pub name: String,
    /// Addresses to try, in order.
    pub addrs: Vec<SocketAddr>,
    /// TLS policy.
    pub tls: TlsPolicy,
    /// Certificate verification.
    pub verify_certificate: bool,
    /// AUTH credentials.
    pub auth: Option<(String, String)>,
    /// True for the smart host.
    pub relay: bool,
}

/// Why a domain cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Bounce now (`5.1.2` bad destination, `5.1.10` null MX).
    #[error("{status} {text}")]
    Permanent {
        /// Enhanced status.
        status: &'static str,
        /// Explanation.
        text: String,
    },
    /// Retry later (`4.4.3`).
    #[error("4.4.3 {0}")]
    Temporary(String),
}

/// A smart host parsed from `smtp://user:pass@host:port` (or `smtps://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartHost {
    /// Host name or address.
    pub host: String,
    /// Port (default 587 for smtp, 465 for smtps).
    pub port: u16,
    /// Credentials.
    pub auth: Option<(String, String)>,
    /// Implicit TLS.
    pub implicit_tls: bool,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && s.is_char_boundary(i + 1)
            && s.is_char_boundary(i + 3)
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl SmartHost {
    /// Parses the `[delivery] relay` URL.
    pub fn parse(url: &str) -> Result<SmartHost, String> {
        let (implicit_tls, rest) = if let Some(r) = url.strip_prefix("smtp://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("smtps://") {
            (true, r)
        } else {
            return Err(format!(
                "relay URL must start with smtp:// or smtps://: {url}"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((cred, hp)) => {
                let (u, p) = cred
                    .split_once(':')
                    .ok_or("relay URL credentials must be user:password")?;
                (Some((percent_decode(u), percent_decode(p))), hp)
            }
            None => (None, rest),
        };
        let default_port = if implicit_tls { 465 } else { 587 };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, p) = h.split_once(']').ok_or("bad IPv6 literal in relay URL")?;
            (
                h.to_string(),
                p.strip_prefix(':')
                    .map(str::parse)
                    .transpose()
                    .map_err(|_| "bad relay port")?
                    .unwrap_or(default_port),
            )
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| "bad relay port")?),
                None => (hostport.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err("relay URL has no host".into());
        }
        Ok(SmartHost {
            host,
            port,
            auth,
            implicit_tls,
        })
    }
}

/// The routing table.
pub struct Router {
    routes: Vec<RouteConfig>,
    dns: Arc<dyn DnsLookup>,
    smart_host: Option<SmartHost>,
    /// Port used for MX hosts (25; tests change it).
    pub mx_port: u16,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

fn split_host_port(s: &str, default: u16) -> (String, u16) {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return (sa.ip().to_string(), sa.port());
    }
    match s.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (
            h.trim_matches(['[', ']']).to_string(),
            p.parse().unwrap_or(default),
        ),
        _ => (s.to_string(), default),
    }
}

/// A routing configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RouterConfigError {
    /// The resolver could not be set up from `[dns]`.
    #[error("DNS resolver: {0}")]
    Dns(DnsError),
    /// `[delivery] relay` is not a valid smart host URL.
    #[error("{0}")]
    SmartHost(String),
}

impl Router {
    /// The router `[delivery]` and `[dns]` describe: static routes, the
    /// smart host (`relay`), the MX port, and [`HickoryDns`] over the
    /// configured nameservers.
    pub fn from_config(
        delivery: &DeliveryConfig,
        dns: &DnsConfig,
    ) -> Result<Router, RouterConfigError> {
        let resolver = HickoryDns::new(dns).map_err(RouterConfigError::Dns)?;
        let smart = match &delivery.relay {
            Some(url) => Some(SmartHost::parse(url).map_err(RouterConfigError::SmartHost)?),
            None => None,
        };
        let mut router = Router::new(delivery.route.clone(), smart, Arc::new(resolver));
        router.mx_port = delivery.mx_port;
        Ok(router)
    }

    /// A router with static routes, an optional smart host and a resolver.
    pub fn new(
        routes: Vec<RouteConfig>,
        smart_host: Option<SmartHost>,
        dns: Arc<dyn DnsLookup>,
    ) -> Router {
        Router {
            routes,
            dns,
            smart_host,
            mx_port: 25,
        }
    }

    /// The static route for a domain, if any (exact match, case-insensitive).
    pub fn static_route(&self, domain: &str) -> Option<&RouteConfig> {
        self.routes
            .iter()
            .find(|r| r.domain.eq_ignore_ascii_case(domain))
    }

    async fn addrs(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let ips = self.dns.ips(host).await?;
        if ips.is_empty() {
            return Err(DnsError::NoRecords);
        }
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    /// The smart host as a hop.
    pub async fn smart_host(&self) -> Result<Option<Hop>, RouteError> {
        let Some(sh) = &self.smart_host else {
            return Ok(None);
        };
        let addrs = self
            .addrs(&sh.host, sh.port)
            .await
            .map_err(|e| RouteError::Temporary(format!("smart host {}: {e}", sh.host)))?;
        Ok(Some(Hop {
            name: sh.host.clone(),
            addrs,
            tls: if sh.implicit_tls {
                TlsPolicy::Implicit
            } else if sh.auth.is_some() {
                TlsPolicy::Required
            } else {
                TlsPolicy::Opportunistic
            },
            verify_certificate: false,
            auth: sh.auth.clone(),
            relay: true,
        }))
    }

    /// The hosts for `domain`, most preferred first.
    pub async fn resolve(&self, domain: &str) -> Result<Vec<Hop>, RouteError> {
        if let Some(r) = self.static_route(domain) {
            let (host, port) = split_host_port(&r.host, 25);
            let addrs = self
                .addrs(&host, port)
                .await
                .map_err(|e| RouteError::Temporary(format!("route host {host}: {e}")))?;
            return Ok(vec![Hop {
                name: host,
                addrs,
                tls: if r.require_tls {
                    TlsPolicy::Required
                } else {
                    TlsPolicy::Opportunistic
                },
                verify_certificate: r.verify_certificate,
                auth: r.user.clone().zip(r.password.clone()),
                relay: false,
            }]);
        }
        let mut mx = match self.dns.mx(domain).await {
            Ok(v) => v,
            // RFC 5321 §5.1: no MX records: the domain itself is the implicit MX.
            Err(DnsError::NoRecords) => Vec::new(),
            Err(DnsError::NxDomain) => {
                return Err(RouteError::Permanent {
                    status: "5.1.2",
                    text: format!("domain {domain} does not exist"),
                });
            }
            Err(DnsError::Temporary(t)) => {
                return Err(RouteError::Temporary(format!(
                    "MX lookup for {domain}: {t}"
                )));
            }
        };
        // RFC 7505 §3: a single MX "." with preference 0 means no mail.
        if mx.len() == 1 && mx[0].1.is_empty() {
            return Err(RouteError::Permanent {
                status: "5.1.10",
                text: format!("domain {domain} accepts no mail (null MX)"),
            });
        }
        mx.retain(|(_, h)| !h.is_empty());
        if mx.is_empty() {
            return match self.addrs(domain, self.mx_port).await {
                Ok(addrs) => Ok(vec![Hop {
                    name: domain.to_string(),
                    addrs,
                    tls: TlsPolicy::Opportunistic,
                    verify_certificate: false,
                    auth: None,
                    relay: false,
                }]),
                Err(DnsError::Temporary(t)) => Err(RouteError::Temporary(format!(
                    "address lookup for {domain}: {t}"
                ))),
                Err(_) => Err(RouteError::Permanent {
                    status: "5.1.2",
                    text: format!("domain {domain} has no MX and no address"),
                }),
            };
        }
        // RFC 5321 §5.1: ascending preference; equal preferences in random order.
        {
            use rand::seq::SliceRandom;
            mx.shuffle(&mut rand::rng());
        }
        mx.sort_by_key(|(p, _)| *p);
        let mut hops = Vec::new();
        let mut temporary = None;
        for (_, host) in mx {
            match self.addrs(&host, self.mx_port).await {
                Ok(addrs) => hops.push(Hop {
                    name: host,
                    addrs,
                    tls: TlsPolicy::Opportunistic,
                    verify_certificate: false,
                    auth: None,
                    relay: false,
                }),
                Err(DnsError::Temporary(t)) => temporary = Some(t),
                Err(_) => {}
            }
        }
        if hops.is_empty() {
            return Err(match temporary {
                Some(t) => RouteError::Temporary(format!("MX host lookup for {domain}: {t}")),
                None => RouteError::Permanent {
                    status: "5.1.2",
                    text: format!("no MX host of {domain} has an address"),
                },
            });
        }
        Ok(hops)
    }
}
