//! A tiny authoritative DNS responder on a loopback UDP port, for tests of
//! MX routing. It answers from a zone function, in its own thread, so both
//! blocking end-to-end tests and tokio tests can use it. Shared by the
//! workspace tests (`mod common`) and `umail-smtp`'s routing tests (by path).
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};

/// Record type A.
pub const A: u16 = 1;
/// Record type MX.
pub const MX: u16 = 15;

/// What the zone says about a name and type.
pub enum Answer {
    /// These records (type, RDATA), possibly none (NODATA).
    Records(Vec<(u16, Vec<u8>)>),
    /// The name does not exist (RCODE 3).
    NxDomain,
    /// The server failed (RCODE 2): a temporary error for the resolver.
    ServFail,
}

/// A name in DNS wire format (no compression).
pub fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// An MX record; `"."` as the host makes a null MX (RFC 7505).
pub fn mx(preference: u16, host: &str) -> (u16, Vec<u8>) {
    let mut d = preference.to_be_bytes().to_vec();
    d.extend(encode_name(host));
    (MX, d)
}

/// An A record.
pub fn a(ip: [u8; 4]) -> (u16, Vec<u8>) {
    (A, ip.to_vec())
}

/// The records of `records` whose type is `qtype`: what a zone answers.
pub fn only(records: Vec<(u16, Vec<u8>)>, qtype: u16) -> Answer {
    Answer::Records(records.into_iter().filter(|(t, _)| *t == qtype).collect())
}

fn decode_question(q: &[u8]) -> Option<(String, u16, usize)> {
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    Some((labels.join("."), qtype, i + 4))
}

/// Starts a responder answering from `zone(name, qtype)` (names lower
/// case, without the final dot) and returns its address.
pub fn start(zone: impl Fn(&str, u16) -> Answer + Send + 'static) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind DNS responder");
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                return;
            };
            let q = &buf[..n];
            let Some((name, qtype, qend)) = decode_question(q) else {
                continue;
            };
            let mut resp = q[..qend].to_vec();
            // QR=1, AA=1, RD copied; RA=1.
            resp[2] = 0x84 | (q[2] & 0x01);
            let (rcode, records) = match zone(&name, qtype) {
                Answer::Records(r) => (0u8, r),
                Answer::NxDomain => (3, Vec::new()),
                Answer::ServFail => (2, Vec::new()),
            };
            resp[3] = 0x80 | rcode;
            resp[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
            // No authority or additional records (this also drops EDNS).
            resp[8..12].copy_from_slice(&[0, 0, 0, 0]);
            for (t, data) in records {
                resp.extend_from_slice(&[0xC0, 0x0C]);
                resp.extend_from_slice(&t.to_be_bytes());
                resp.extend_from_slice(&1u16.to_be_bytes());
                resp.extend_from_slice(&60u32.to_be_bytes());
                resp.extend_from_slice(&(data.len() as u16).to_be_bytes());
                resp.extend_from_slice(&data);
            }
            let _ = sock.send_to(&resp, peer);
        }
    });
    addr
}
