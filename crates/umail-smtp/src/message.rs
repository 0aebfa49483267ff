//! Header helpers used at delivery: trace fields (`Received`,
//! `Return-Path`), loop counting and the changes filters ask for.

use std::net::IpAddr;

use umail_core::{Address, Priority, ReversePath, TlsInfo};

/// Length of the header section including the empty line that ends it
/// (the whole message when there is no body).
pub fn header_len(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 2;
    }
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(message.len())
}

/// Header lines (unfolded starts only) of the header section.
fn header_starts(message: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let head = &message[..header_len(message)];
    let mut offset = 0;
    head.split_inclusive(|&b| b == b'\n').map(move |line| {
        let start = offset;
        offset += line.len();
        (start, line)
    })
}

fn is_field(line: &[u8], name: &str) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    // RFC 5322 §4.5.3 (obsolete syntax) allows WSP before the colon.
    let field = line[..colon].trim_ascii_end();
    field.eq_ignore_ascii_case(name.as_bytes())
}

/// Number of `Received` fields in the header section (RFC 5321 §6.3 loop detection).
pub fn count_received(message: &[u8]) -> usize {
    header_starts(message)
        .filter(|(_, l)| !l.starts_with(b" ") && !l.starts_with(b"\t") && is_field(l, "Received"))
        .count()
}

/// The unfolded value of the first `name` field, trimmed.
fn header_value(message: &[u8], name: &str) -> Option<String> {
    let mut value: Option<Vec<u8>> = None;
    for (_, line) in header_starts(message) {
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        match &mut value {
            Some(v) if continuation => v.extend_from_slice(line.trim_ascii()),
            Some(_) => break,
            None if !continuation && is_field(line, name) => {
                let colon = line.iter().position(|&b| b == b':').unwrap_or(0);
                value = Some(line[colon + 1..].trim_ascii().to_vec());
            }
            None => {}
        }
    }
    value.map(|v| String::from_utf8_lossy(&v).trim().to_ascii_lowercase())
}

/// The queue priority a message asks for in its header.
///
/// Bulk markers (`Precedence: bulk`, `list` or `junk`, RFC 2076 §3.9) and
/// low-priority markers always count: lowering is safe. Raising to `High`
/// (`Priority: urgent`, RFC 2156; `Importance: high`; `X-Priority: 1` or
/// `2`) counts only when `may_raise`, which the SMTP policy sets for
/// authenticated submissions, so mail arriving from outside cannot jump
/// ahead of local users' mail.
pub fn priority_of(message: &[u8], may_raise: bool) -> Priority {
    if let Some(p) = header_value(message, "Precedence")
        && matches!(p.as_str(), "bulk" | "list" | "junk")
    {
        return Priority::Low;
    }
    let mut asked = Priority::Normal;
    if let Some(p) = header_value(message, "Priority") {
        match p.as_str() {
            "urgent" => asked = Priority::High,
            "non-urgent" => return Priority::Low,
            _ => {}
        }
    }
    if let Some(p) = header_value(message, "Importance") {
        match p.as_str() {
            "high" => asked = Priority::High,
            "low" => return Priority::Low,
            _ => {}
        }
    }
    // "1 (Highest)", "2 (High)", "4 (Low)", "5 (Lowest)".
    if let Some(p) = header_value(message, "X-Priority") {
        match p.bytes().next() {
            Some(b'1' | b'2') => asked = Priority::High,
            Some(b'4' | b'5') => return Priority::Low,
            _ => {}
        }
    }
    if asked == Priority::High && !may_raise {
        Priority::Normal
    } else {
        asked
    }
}

/// Makes a header value safe to put on one line (no CR/LF or controls).
pub fn sanitize_value(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `name: value` CRLF, with the value sanitized.
pub fn header_line(name: &str, value: &str) -> Vec<u8> {
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != ':')
        .collect();
    format!("{name}: {}\r\n", sanitize_value(value)).into_bytes()
}

/// Prefixes the Subject with `tag` (adds a Subject when there is none).
pub fn tag_subject(message: &[u8], tag: &str) -> Vec<u8> {
    let tag = sanitize_value(tag);
    let found = header_starts(message)
        .find(|(_, l)| is_field(l, "Subject"))
        .map(|(start, l)| {
            let colon = l.iter().position(|&b| b == b':').unwrap_or(0);
            let mut at = start + colon + 1;
            while message.get(at).is_some_and(|b| *b == b' ' || *b == b'\t') {
                at += 1;
            }
            at
        });
    match found {
        Some(at) => {
            let mut out = Vec::with_capacity(message.len() + tag.len() + 1);
            out.extend_from_slice(&message[..at]);
            out.extend_from_slice(tag.as_bytes());
            out.push(b' ');
            out.extend_from_slice(&message[at..]);
            out
        }
        None => [header_line("Subject", &tag), message.to_vec()].concat(),
    }
}

/// `Return-Path` as added at final delivery (RFC 5321 §4.4).
pub fn return_path(from: &ReversePath) -> Vec<u8> {
    format!("Return-Path: {from}\r\n").into_bytes()
}

/// Facts for one `Received` field.
#[derive(Debug, Clone)]
pub struct ReceivedInfo<'a> {
    /// The HELO/EHLO name.
    pub helo: Option<&'a str>,
    /// The client's IP address.
    pub peer: IpAddr,
    /// This server's host name.
    pub hostname: &'a str,
    /// EHLO was used.
    pub esmtp: bool,
    /// TLS facts when TLS is active.
    pub tls: Option<&'a TlsInfo>,
    /// The authenticated submitter.
    pub auth: Option<&'a Address>,
    /// The transaction used SMTPUTF8.
    pub smtputf8: bool,
    /// The message id shown to the client.
    pub id: &'a str,
    /// The recipient, when there is exactly one (RFC 5321 §7.2).
    pub for_rcpt: Option<&'a Address>,
    /// RFC 5322 date-time.
    pub date: String,
}

/// The `with` protocol keyword: RFC 3848 (ESMTPA/ESMTPS/ESMTPSA) and
/// RFC 6531 §3.7.3 (UTF8SMTP variants).
pub fn with_protocol(esmtp: bool, smtputf8: bool, tls: bool, auth: bool) -> String {
    if !esmtp {
        return "SMTP".into();
    }
    let base = if smtputf8 { "UTF8SMTP" } else { "ESMTP" };
    format!(
        "{base}{}{}",
        if tls { "S" } else { "" },
        if auth { "A" } else { "" }
    )
}

fn sanitize_helo(helo: &str) -> String {
    let s: String = helo
        .chars()
        .filter(|c| c.is_alphanumeric() || ".-_:[]".contains(*c))
        .take(255)
        .collect();
    if s.is_empty() { "unknown".into() } else { s }
}

/// The `Received` field (RFC 5321 §4.4), folded, ending in CRLF:
///
/// ```text
/// Received: from client.example ([192.0.2.1])
///         by mx.example (umail) with ESMTPSA (TLSv1.3 TLS13_AES_256_GCM_SHA384)
///         (authenticated as alice@example.com)
///         id 00000000DEADBEEF
///         for <bob@example.com>; Tue, 1 Jul 2025 10:52:37 +0000
/// ```
pub fn received_header(info: &ReceivedInfo<'_>) -> Vec<u8> {
    // RFC 5321 §4.1.3: IPv6 address literals carry the "IPv6:" tag.
    let literal = match info.peer {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{v6}]"),
        },
    };
    let helo = sanitize_helo(info.helo.unwrap_or("unknown"));
    let with = with_protocol(
        info.esmtp,
        info.smtputf8,
        info.tls.is_some(),
        info.auth.is_some(),
    );
    let mut s = format!(
        "Received: from {helo} ({literal})\r\n\tby {} (umail) with {with}",
        sanitize_helo(info.hostname)
    );
    if let Some(tls) = info.tls {
        s.push_str(&format!(
            " ({} {})",
            sanitize_value(&tls.version).replace(['(', ')'], ""),
            sanitize_value(&tls.cipher).replace(['(', ')'], "")
        ));
    }
    if let Some(auth) = info.auth {
        s.push_str(&format!(
            "\r\n\t(authenticated as {})",
            auth.to_string().replace(['(', ')', '\\'], "")
        ));
    }
    s.push_str(&format!("\r\n\tid {}", info.id));
    if let Some(rcpt) = info.for_rcpt {
        s.push_str(&format!("\r\n\tfor <{rcpt}>"));
    }
    s.push_str(&format!("; {}\r\n", info.date));
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_from_headers_raises_only_when_trusted() {
        let p = |m: &str, trusted| priority_of(m.as_bytes(), trusted);
        assert_eq!(
            p("Subject: x\r\n\r\nX-Priority: 1\r\n", true),
            Priority::Normal
        );
        assert_eq!(p("X-Priority: 1 (Highest)\r\n\r\nb", true), Priority::High);
        assert_eq!(
            p("X-Priority: 1 (Highest)\r\n\r\nb", false),
            Priority::Normal
        );
        assert_eq!(p("importance:  HIGH\r\n\r\n", true), Priority::High);
        assert_eq!(p("Priority:\r\n urgent\r\n\r\n", true), Priority::High);
        assert_eq!(p("X-Priority: 5\r\n\r\n", false), Priority::Low);
        assert_eq!(p("Importance: low\r\n\r\n", false), Priority::Low);
        assert_eq!(p("Priority: non-urgent\r\n\r\n", false), Priority::Low);
        // Bulk wins over an urgent marker.
        assert_eq!(
            p("X-Priority: 1\r\nPrecedence: bulk\r\n\r\n", true),
            Priority::Low
        );
        assert_eq!(p("Precedence: first-class\r\n\r\n", true), Priority::Normal);
        assert_eq!(p("X-Priority-Note: 1\r\n\r\n", true), Priority::Normal);
    }

    #[test]
    fn counts_received_fields_in_header_only() {
        let m =
            b"Received: a\r\nreceived : b\r\n\tcontinued\r\nSubject: x\r\n\r\nReceived: body\r\n";
        assert_eq!(count_received(m), 2);
        assert_eq!(count_received(b"\r\nReceived: x\r\n"), 0);
    }

    #[test]
    fn tags_subject() {
        assert_eq!(
            tag_subject(
                b"From: a\r\nSubject:  hi\r\n\r\nSubject: body\r\n",
                "[SPAM]"
            ),
            b"From: a\r\nSubject:  [SPAM] hi\r\n\r\nSubject: body\r\n"
        );
        assert_eq!(
            tag_subject(b"From: a\r\n\r\nx", "[T]"),
            b"Subject: [T]\r\nFrom: a\r\n\r\nx"
        );
    }

    #[test]
    fn with_keywords() {
        assert_eq!(with_protocol(false, false, true, true), "SMTP");
        assert_eq!(with_protocol(true, false, false, false), "ESMTP");
        assert_eq!(with_protocol(true, false, true, true), "ESMTPSA");
        assert_eq!(with_protocol(true, true, true, false), "UTF8SMTPS");
    }

    #[test]
    fn received_has_trace_facts() {
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        };
        let auth: Address = "alice@example.com".parse().unwrap();
        let h = received_header(&ReceivedInfo {
            helo: Some("client (evil)\r\nX: y"),
            peer: "2001:db8::1".parse().unwrap(),
            hostname: "mx.example",
            esmtp: true,
            tls: Some(&tls),
            auth: Some(&auth),
            smtputf8: false,
            id: "0000000000000001",
            for_rcpt: None,
            date: "Tue, 1 Jul 2025 10:52:37 +0000".into(),
        });
        let h = String::from_utf8(h).unwrap();
        assert_eq!(
            h,
            "Received: from clientevilX:y ([IPv6:2001:db8::1])\r\n\tby mx.example (umail) with ESMTPSA (TLSv1.3 TLS13_AES_128_GCM_SHA256)\r\n\t(authenticated as alice@example.com)\r\n\tid 0000000000000001; Tue, 1 Jul 2025 10:52:37 +0000\r\n"
        );
    }
}
