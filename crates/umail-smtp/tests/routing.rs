//! Routing against a DNS test responder on loopback: MX with preferences,
//! implicit MX (A only), null MX (RFC 7505), NXDOMAIN, SERVFAIL, static
//! routes and the smart host.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use umail_core::config::{DnsConfig, RouteConfig};
use umail_smtp::client::TlsPolicy;
use umail_smtp::routing::{HickoryDns, RouteError, Router, SmartHost};

#[path = "../../../tests/common/dns.rs"]
mod dns;
use dns::{Answer, a, mx};

fn zone(name: &str, qtype: u16) -> Answer {
    let recs = match name {
        "mx.test" => vec![
            mx(20, "mx3.mx.test"),
            mx(10, "mx1.mx.test"),
            mx(10, "mx2.mx.test"),
        ],
        "mx1.mx.test" => vec![a([127, 0, 0, 2])],
        "mx2.mx.test" => vec![a([127, 0, 0, 3])],
        "mx3.mx.test" => vec![a([127, 0, 0, 4])],
        "amx.test" => vec![a([127, 0, 0, 5])],
        "null.test" => vec![mx(0, ".")],
        "relay.test" => vec![a([127, 0, 0, 9])],
        "nx.test" | "gone.test" => return Answer::NxDomain,
        "broken.test" => return Answer::ServFail,
        "dangling.test" => vec![mx(10, "nowhere.gone.test")],
        _ => return Answer::NxDomain,
    };
    dns::only(recs, qtype)
}

async fn router(routes: Vec<RouteConfig>, smart: Option<SmartHost>) -> Router {
    let ns = dns::start(zone);
    let dns = HickoryDns::new(&DnsConfig {
        nameservers: vec![ns],
        timeout_secs: 2,
    })
    .unwrap();
    Router::new(routes, smart, Arc::new(dns))
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

#[tokio::test]
async fn mx_preference_order_with_shuffled_equals() {
    let r = router(Vec::new(), None).await;
    let mut firsts = std::collections::HashSet::new();
    for _ in 0..30 {
        let hops = r.resolve("mx.test").await.unwrap();
        let names: Vec<&str> = hops.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names.len(), 3);
        assert_eq!(names[2], "mx3.mx.test", "preference 20 last");
        assert!(names[..2].contains(&"mx1.mx.test") && names[..2].contains(&"mx2.mx.test"));
        firsts.insert(names[0].to_string());
        assert_eq!(hops[2].addrs, vec![SocketAddr::new(ip(4), 25)]);
        assert_eq!(hops[0].tls, TlsPolicy::Opportunistic);
    }
    // 30 shuffles of two equals: both orders appear (probability of failure 2^-29).
    assert_eq!(firsts.len(), 2);
}

#[tokio::test]
async fn implicit_mx_from_a_record() {
    let r = router(Vec::new(), None).await;
    let hops = r.resolve("amx.test").await.unwrap();
    assert_eq!(hops.len(), 1);
    assert_eq!(hops[0].name, "amx.test");
    assert_eq!(hops[0].addrs, vec![SocketAddr::new(ip(5), 25)]);
}

#[tokio::test]
async fn null_mx_and_nxdomain_fail_at_once() {
    let r = router(Vec::new(), None).await;
    match r.resolve("null.test").await {
        Err(RouteError::Permanent { status, .. }) => assert_eq!(status, "5.1.10"),
        other => panic!("null MX: {other:?}"),
    }
    match r.resolve("nx.test").await {
        Err(RouteError::Permanent { status, .. }) => assert_eq!(status, "5.1.2"),
        other => panic!("NXDOMAIN: {other:?}"),
    }
    match r.resolve("dangling.test").await {
        Err(RouteError::Permanent { status, .. }) => assert_eq!(status, "5.1.2"),
        other => panic!("MX without address: {other:?}"),
    }
}

#[tokio::test]
async fn servfail_is_temporary() {
    let r = router(Vec::new(), None).await;
    assert!(matches!(
        r.resolve("broken.test").await,
        Err(RouteError::Temporary(_))
    ));
}

#[tokio::test]
async fn static_route_wins_over_dns_and_smart_host_resolves() {
    let route = RouteConfig {
        domain: "MX.test".into(),
        host: "127.0.0.1:2526".into(),
        require_tls: true,
        verify_certificate: true,
        user: Some("u".into()),
        password: Some("p".into()),
    };
    let smart = SmartHost::parse("smtp://user:p%40ss@relay.test:2587").unwrap();
    assert_eq!(smart.auth, Some(("user".into(), "p@ss".into())));
    let r = router(vec![route], Some(smart)).await;
    let hops = r.resolve("mx.test").await.unwrap();
    assert_eq!(hops.len(), 1);
    assert_eq!(hops[0].addrs, vec!["127.0.0.1:2526".parse().unwrap()]);
    assert_eq!(hops[0].tls, TlsPolicy::Required);
    assert!(hops[0].verify_certificate);
    assert_eq!(hops[0].auth, Some(("u".into(), "p".into())));
    let relay = r.smart_host().await.unwrap().unwrap();
    assert!(relay.relay);
    assert_eq!(relay.addrs, vec![SocketAddr::new(ip(9), 2587)]);
    assert_eq!(
        relay.tls,
        TlsPolicy::Required,
        "credentials never go out in clear"
    );
}

#[test]
fn smart_host_urls() {
    let s = SmartHost::parse("smtps://relay.example.net").unwrap();
    assert_eq!(
        (s.host.as_str(), s.port, s.implicit_tls, s.auth),
        ("relay.example.net", 465, true, None)
    );
    let s = SmartHost::parse("smtp://[::1]:2525").unwrap();
    assert_eq!((s.host.as_str(), s.port), ("::1", 2525));
    assert!(SmartHost::parse("http://x").is_err());
    assert!(SmartHost::parse("smtp://user@host").is_err());
    assert!(SmartHost::parse("smtp://host:notaport").is_err());
}
