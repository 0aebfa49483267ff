//! Header helpers shared by every way mail enters (the ingest pipeline,
//! SMTP, the queue runner): loop counting, queue priority from the header,
//! the changes filters ask for, and `Return-Path`.
//!
//! They read only the header section ([`header_len`], which accepts CRLF
//! and bare-LF line ends alike, since collected mail may carry either).

use crate::address::ReversePath;
use crate::queue::Priority;
pub use crate::store::header_len;

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

/// The unfolded value of the first `name` field, trimmed and lower-cased.
pub fn header_value(message: &[u8], name: &str) -> Option<String> {
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
}
