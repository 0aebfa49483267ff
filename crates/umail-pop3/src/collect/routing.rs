//! DomainPOP routing: which local users a message from a catch-all
//! mailbox is for, read from its header fields.

use umail_core::ingest::LocalTarget;
use umail_core::{Address, Directory, DirectoryError, Principal, Resolution};

#[cfg(doc)]
use super::CollectionState;

/// How DomainPOP routes a collected message.
#[derive(Debug, Clone)]
pub struct DomainPopRouting {
    /// Who gets messages no header routes to a local user (the
    /// postmaster, usually). `None`: such messages are refused, left on
    /// the server and reported.
    pub fallback: Option<Address>,
    /// Deliver a Message-ID only once (default on): a message sent to
    /// several local users sits in the catch-all mailbox once per copy.
    pub dedupe_message_id: bool,
    /// Most Message-IDs remembered for de-duplication, oldest forgotten
    /// first (0 = no bound; see [`CollectionState::mark_seen_bounded`]).
    pub max_message_ids: u64,
    /// Most local recipients one message is delivered to.
    pub max_recipients: usize,
    /// Header fields recipients are read from, in order (case-insensitive;
    /// empty = [`ROUTING_HEADERS`]). The `for` clause of `Received` is
    /// always read last.
    pub headers: Vec<String>,
    /// `Received` fields to ignore, counted from the top (the newest): the
    /// hops added by the catch-all's own provider, whose `for` clause names
    /// the catch-all mailbox rather than the real recipient.
    pub skip_received: usize,
}

impl Default for DomainPopRouting {
    fn default() -> Self {
        DomainPopRouting {
            fallback: None,
            dedupe_message_id: true,
            max_message_ids: 0,
            max_recipients: 100,
            headers: Vec::new(),
            skip_received: 0,
        }
    }
}

/// Header fields DomainPOP reads recipients from, most specific first.
pub const ROUTING_HEADERS: [&str; 5] =
    ["delivered-to", "x-original-to", "x-envelope-to", "to", "cc"];

/// The values of every `name` header field (case-insensitive), unfolded.
/// Only the header section is read; it is bounded to 256 KiB.
pub fn header_values(message: &[u8], name: &str) -> Vec<String> {
    const MAX_HEADER: usize = 256 * 1024;
    let head = &message[..message.len().min(MAX_HEADER)];
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for raw in head.split(|b| *b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(v) = current.as_mut() {
                v.push(' ');
                v.push_str(String::from_utf8_lossy(line).trim());
            }
            continue;
        }
        if let Some(v) = current.take() {
            out.push(v);
        }
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            let field = String::from_utf8_lossy(&line[..colon]);
            if field.trim().eq_ignore_ascii_case(name) {
                current = Some(
                    String::from_utf8_lossy(&line[colon + 1..])
                        .trim()
                        .to_string(),
                );
            }
        }
    }
    if let Some(v) = current {
        out.push(v);
    }
    out
}

/// Addresses found in a header value: `<addr>` forms and bare `a@b`
/// words; display names and comments are ignored.
pub fn addresses_in(value: &str) -> Vec<Address> {
    value
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter(|w| w.contains('@'))
        .filter_map(|w| {
            let w = w.trim_matches(|c: char| "<>\"'()[]".contains(c));
            let w = w.trim_end_matches('.');
            Address::parse(w).ok()
        })
        .collect()
}

/// The recipients DomainPOP considers for a message, in order and without
/// duplicates: `Delivered-To`, `X-Original-To`, `X-Envelope-To`, `To`,
/// `Cc`, then the `for <addr>` clause of `Received` fields.
pub fn candidate_addresses(message: &[u8]) -> Vec<Address> {
    candidate_addresses_in(message, &[], 0)
}

/// Like [`candidate_addresses`] with the header list `headers` instead of
/// [`ROUTING_HEADERS`] (empty = the default list), ignoring the first
/// `skip_received` `Received` fields.
pub fn candidate_addresses_in(
    message: &[u8],
    headers: &[String],
    skip_received: usize,
) -> Vec<Address> {
    let mut out: Vec<Address> = Vec::new();
    let mut push = |a: Address| {
        if !out.iter().any(|b| b.lookup_key() == a.lookup_key()) {
            out.push(a);
        }
    };
    let names: Vec<&str> = if headers.is_empty() {
        ROUTING_HEADERS.to_vec()
    } else {
        headers.iter().map(String::as_str).collect()
    };
    for name in names {
        for v in header_values(message, name) {
            addresses_in(&v).into_iter().for_each(&mut push);
        }
    }
    for v in header_values(message, "received")
        .into_iter()
        .skip(skip_received)
    {
        // RFC 5321 §4.4: "for" clause with the envelope recipient.
        let lower = v.to_ascii_lowercase();
        if let Some(i) = lower.find(" for ")
            && let Some(word) = v[i + 5..].split_whitespace().next()
        {
            addresses_in(word).into_iter().for_each(&mut push);
        }
    }
    out
}

/// The local accounts the candidates resolve to (aliases and lists expanded
/// one level to their local members), at most `max`, each as an INBOX
/// target.
pub async fn route(
    directory: &dyn Directory,
    candidates: &[Address],
    max: usize,
) -> Result<Vec<LocalTarget>, DirectoryError> {
    let mut targets: Vec<LocalTarget> = Vec::new();
    let add = |p: &Principal, targets: &mut Vec<LocalTarget>| {
        if !targets.iter().any(|t| t.account == p.account()) && targets.len() < max {
            targets.push(LocalTarget::of(p));
        }
    };
    for c in candidates {
        let expanded: Vec<Address> = match directory.resolve(c).await? {
            Resolution::Local(p) => {
                add(&p, &mut targets);
                continue;
            }
            Resolution::Alias(members) => members,
            Resolution::List(list) => list.receivers().cloned().collect(),
            _ => continue,
        };
        for t in expanded.iter().take(max) {
            if let Resolution::Local(p) = directory.resolve(t).await? {
                add(&p, &mut targets);
            }
        }
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] =
        b"Received: from mx by relay\r\n\tfor <erin@example.com>; Mon, 1 Jan 2024\r\n\
Delivered-To: dave@example.com\r\n\
To: \"Doe, John\" <bob@example.com>, carol@example.com\r\n\
Cc: (comment) Frank <frank@other.org>\r\n\
Message-ID: <abc@x>\r\n\
\r\n\
To: body@example.com\r\n";

    #[test]
    fn headers_are_unfolded_and_stop_at_body() {
        assert_eq!(
            header_values(MSG, "received"),
            vec!["from mx by relay for <erin@example.com>; Mon, 1 Jan 2024".to_string()]
        );
        assert_eq!(
            header_values(MSG, "message-id"),
            vec!["<abc@x>".to_string()]
        );
        assert_eq!(header_values(MSG, "to").len(), 1);
    }

    #[test]
    fn provider_received_hops_can_be_skipped() {
        let msg = b"Received: from edge by provider\r\n\tfor <catchall@provider.example>; Mon, 1 Jan 2024\r\n\
Received: from client by mx.example.com for <erin@example.com>; Mon, 1 Jan 2024\r\n\
Subject: x\r\n\r\nbody\r\n";
        let keys = |skip| -> Vec<String> {
            candidate_addresses_in(msg, &[], skip)
                .iter()
                .map(|a| a.lookup_key())
                .collect()
        };
        assert_eq!(
            keys(0),
            vec!["catchall@provider.example", "erin@example.com"]
        );
        assert_eq!(keys(1), vec!["erin@example.com"]);
        assert!(keys(5).is_empty());
    }

    #[test]
    fn candidates_in_order() {
        let got: Vec<String> = candidate_addresses(MSG)
            .iter()
            .map(|a| a.lookup_key())
            .collect();
        assert_eq!(
            got,
            vec![
                "dave@example.com",
                "bob@example.com",
                "carol@example.com",
                "frank@other.org",
                "erin@example.com"
            ]
        );
    }
}
