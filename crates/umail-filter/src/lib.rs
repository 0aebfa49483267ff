//! # umail-filter
//!
//! Policy implementations for umail's [`Filter`](umail_core::Filter) hooks
//! and the chain the reference server runs.
//!
//! Protocol crates call the hooks of a [`FilterChain`] at each stage
//! (connect, HELO, MAIL, RCPT, DATA, delivery) and honour the verdicts.
//! This crate is where umail's own policies live, so that an integrator can
//! take them, reorder them, or replace them with their own.
//!
//! Today it provides [`AccessList`], a static connection and sender access
//! list; anti-spam, anti-virus and content rules build on the same shape.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use umail_core::{Filter, FilterChain, ReversePath, SessionInfo, Verdict};

/// A static access list: refuses connections from listed client networks
/// and mail from listed sender addresses or domains.
#[derive(Debug, Clone, Default)]
pub struct AccessList {
    blocked_networks: Vec<(IpAddr, u8)>,
    blocked_senders: Vec<String>,
}

impl AccessList {
    /// An empty list (blocks nothing).
    pub fn new() -> AccessList {
        AccessList::default()
    }

    /// Blocks a network in CIDR form (`192.0.2.0/24`, `2001:db8::/32`) or a
    /// single address.
    pub fn block_network(&mut self, cidr: &str) -> Result<&mut Self, String> {
        let (ip, prefix) = match cidr.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (cidr, None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("`{cidr}` is not an IP network"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{cidr}` has a bad prefix length"))?,
            None => max,
        };
        self.blocked_networks.push((ip, prefix));
        Ok(self)
    }

    /// Blocks a sender: a full address (`spam@example.net`) or a whole
    /// domain (`@example.net`). Matching ignores case.
    pub fn block_sender(&mut self, sender: &str) -> &mut Self {
        self.blocked_senders.push(sender.to_lowercase());
        self
    }

    fn network_blocked(&self, ip: IpAddr) -> bool {
        self.blocked_networks
            .iter()
            .any(|(net, prefix)| in_network(ip, *net, *prefix))
    }

    fn sender_blocked(&self, from: &ReversePath) -> bool {
        let Some(address) = from.address() else {
            return false;
        };
        let key = address.lookup_key();
        let domain = format!("@{}", address.domain().as_str());
        self.blocked_senders
            .iter()
            .any(|b| *b == key || *b == domain)
    }
}

fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[async_trait]
impl Filter for AccessList {
    fn name(&self) -> &str {
        "access-list"
    }

    async fn on_connect(&self, session: &SessionInfo) -> Verdict {
        if self.network_blocked(session.peer.ip()) {
            // RFC 5321 §3.1: a server may refuse the connection with 554.
            return Verdict::reject(554, "5.7.1", "Connection refused by policy");
        }
        Verdict::pass()
    }

    async fn on_mail(&self, _session: &SessionInfo, from: &ReversePath) -> Verdict {
        if self.sender_blocked(from) {
            return Verdict::reject(550, "5.7.1", "Sender refused by policy");
        }
        Verdict::pass()
    }
}

/// The chain the reference server runs, in order.
pub fn default_chain(access: AccessList) -> FilterChain {
    let mut chain = FilterChain::new();
    chain.push(Arc::new(access));
    chain
}

#[cfg(test)]
mod tests {
    use super::*;
    use umail_core::Disposition;

    fn session(peer: &str) -> SessionInfo {
        SessionInfo {
            session_id: 1,
            peer: format!("{peer}:4000").parse().unwrap(),
            local: "127.0.0.1:25".parse().unwrap(),
            helo: None,
            tls: None,
            authenticated: None,
            listener: "smtp".into(),
        }
    }

    #[tokio::test]
    async fn blocks_networks_and_senders() {
        let mut acl = AccessList::new();
        acl.block_network("192.0.2.0/24").unwrap();
        acl.block_sender("@spam.example")
            .block_sender("Bad@Example.com");
        assert!(acl.on_connect(&session("192.0.2.200")).await.is_refusal());
        assert_eq!(
            acl.on_connect(&session("192.0.3.1")).await.disposition,
            Disposition::Continue
        );
        let from = |s: &str| ReversePath::Address(s.parse().unwrap());
        let s = session("198.51.100.1");
        assert!(acl.on_mail(&s, &from("x@SPAM.example")).await.is_refusal());
        assert!(acl.on_mail(&s, &from("bad@example.com")).await.is_refusal());
        assert!(
            !acl.on_mail(&s, &from("good@example.com"))
                .await
                .is_refusal()
        );
        assert!(!acl.on_mail(&s, &ReversePath::Null).await.is_refusal());
    }

    #[test]
    fn rejects_bad_networks() {
        let mut acl = AccessList::new();
        assert!(acl.block_network("300.1.1.1").is_err());
        assert!(acl.block_network("10.0.0.0/33").is_err());
        assert!(acl.block_network("2001:db8::/32").is_ok());
        assert!(acl.network_blocked("2001:db8:1::5".parse().unwrap()));
        assert!(!acl.network_blocked("2001:db9::5".parse().unwrap()));
    }
}
