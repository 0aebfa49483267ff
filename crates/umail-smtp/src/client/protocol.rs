//! Sans-IO pieces of the client transaction: EHLO capabilities, command
//! encoding, DATA dot-stuffing and the pre-flight checks that decide, before
//! anything is sent, whether a message can go to this peer at all.

use umail_core::{BodyType, DsnReturn, Envelope, Recipient};

use super::reply::ServerReply;

/// What the peer announced in its EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// EHLO was accepted (false after a HELO fallback).
    pub esmtp: bool,
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870: `Some(0)` means no fixed limit.
    pub size: Option<u64>,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 3461.
    pub dsn: bool,
    /// RFC 3030 BDAT.
    pub chunking: bool,
    /// RFC 3030 BINARYMIME.
    pub binary_mime: bool,
    /// RFC 4954 mechanisms, upper case.
    pub auth: Vec<String>,
}

impl Capabilities {
    /// Parses an EHLO reply. The first line is the greeting name.
    pub fn from_ehlo(reply: &ServerReply) -> Capabilities {
        let mut caps = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "STARTTLS" => caps.starttls = true,
                "DSN" => caps.dsn = true,
                "CHUNKING" => caps.chunking = true,
                "BINARYMIME" => caps.binary_mime = true,
                "AUTH" => caps.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
                _ => {}
            }
        }
        caps
    }
}

/// Why a message cannot be offered to this peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Enhanced status (RFC 3463).
    pub status: &'static str,
    /// Permanent (5xx) or temporary.
    pub permanent: bool,
    /// Human-readable reason.
    pub text: String,
}

/// True when the message or envelope contains non-ASCII addresses or
/// header text that only SMTPUTF8 may carry.
pub fn needs_smtputf8(envelope: &Envelope, recipients: &[&Recipient]) -> bool {
    envelope.smtputf8
        || envelope
            .reverse_path
            .address()
            .is_some_and(|a| a.needs_smtputf8())
        || recipients.iter().any(|r| r.address.needs_smtputf8())
}

/// True when the message has bytes above 127.
pub fn has_eight_bit(message: &[u8]) -> bool {
    message.iter().any(|b| *b >= 0x80)
}

/// Checks, before MAIL FROM, that the peer can take the message.
pub fn preflight(
    caps: &Capabilities,
    envelope: &Envelope,
    recipients: &[&Recipient],
    size: u64,
) -> Result<(), Refusal> {
    // RFC 6531 §3.2: without SMTPUTF8 at the peer the message must not be
    // sent; the status is 5.6.7 (RFC 6533 §3).
    if needs_smtputf8(envelope, recipients) && !caps.smtputf8 {
        return Err(Refusal {
            status: "5.6.7",
            permanent: true,
            text: "the message needs SMTPUTF8 and the receiving server does not support it".into(),
        });
    }
    // RFC 1870 §6.2: do not send what the peer declares too large.
    if let Some(limit) = caps.size
        && limit > 0
        && size > limit
    {
        return Err(Refusal {
            status: "5.3.4",
            permanent: true,
            text: format!("message size {size} exceeds the receiving server's limit {limit}"),
        });
    }
    // RFC 3030 §3: BINARYMIME needs BDAT at the peer.
    if envelope.body == BodyType::BinaryMime && !(caps.chunking && caps.binary_mime) {
        return Err(Refusal {
            status: "5.6.3",
            permanent: true,
            text: "the message is binary and the receiving server does not accept BINARYMIME"
                .into(),
        });
    }
    Ok(())
}

fn xtext_ok(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'=')
}

/// `MAIL FROM:<...> [SIZE=] [BODY=] [SMTPUTF8] [RET=] [ENVID=]`.
pub fn mail_from(caps: &Capabilities, envelope: &Envelope, size: u64, eight_bit: bool) -> Vec<u8> {
    let mut cmd = format!(
        "MAIL FROM:<{}>",
        envelope
            .reverse_path
            .address()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    if caps.size.is_some() {
        cmd.push_str(&format!(" SIZE={size}"));
    }
    // RFC 6152 §2: BODY=8BITMIME only to peers that announce it.
    match envelope.body {
        BodyType::BinaryMime if caps.binary_mime => cmd.push_str(" BODY=BINARYMIME"),
        BodyType::EightBitMime | BodyType::BinaryMime if caps.eight_bit_mime => {
            cmd.push_str(" BODY=8BITMIME")
        }
        BodyType::SevenBit if eight_bit && caps.eight_bit_mime => cmd.push_str(" BODY=8BITMIME"),
        _ => {}
    }
    if caps.smtputf8 && needs_smtputf8(envelope, &[]) {
        cmd.push_str(" SMTPUTF8");
    }
    // RFC 3461 §4.3, §4.4: passed through only to DSN-capable peers.
    if caps.dsn {
        match envelope.ret {
            Some(DsnReturn::Full) => cmd.push_str(" RET=FULL"),
            Some(DsnReturn::Headers) => cmd.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(id) = envelope.envid.as_deref().filter(|s| xtext_ok(s)) {
            cmd.push_str(&format!(" ENVID={id}"));
        }
    }
    cmd.push_str("\r\n");
    cmd.into_bytes()
}

/// `RCPT TO:<...> [NOTIFY=] [ORCPT=]`.
pub fn rcpt_to(caps: &Capabilities, rcpt: &Recipient) -> Vec<u8> {
    let mut cmd = format!("RCPT TO:<{}>", rcpt.address);
    // RFC 3461 §4.1, §4.2.
    if caps.dsn {
        let n = rcpt.notify;
        if n.never {
            cmd.push_str(" NOTIFY=NEVER");
        } else if !n.is_default() {
            let mut v = Vec::new();
            if n.success {
                v.push("SUCCESS");
            }
            if n.failure {
                v.push("FAILURE");
            }
            if n.delay {
                v.push("DELAY");
            }
            cmd.push_str(&format!(" NOTIFY={}", v.join(",")));
        }
        if let Some(o) = rcpt
            .orcpt
            .as_deref()
            .filter(|s| s.contains(';') && xtext_ok(s))
        {
            cmd.push_str(&format!(" ORCPT={o}"));
        }
    }
    cmd.push_str("\r\n");
    cmd.into_bytes()
}

/// Dot-stuffs a message for DATA and appends the terminating `.` line
/// (RFC 5321 §4.5.2); a missing final CRLF is added.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// `AUTH PLAIN` initial response (RFC 4616).
pub fn auth_plain(user: &str, password: &str) -> Vec<u8> {
    use base64::Engine;
    let mut raw = Vec::new();
    raw.push(0);
    raw.extend_from_slice(user.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.as_bytes());
    format!(
        "AUTH PLAIN {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
    .into_bytes()
}

/// One base64 line for AUTH LOGIN.
pub fn base64_line(s: &str) -> Vec<u8> {
    use base64::Engine;
    format!(
        "{}\r\n",
        base64::engine::general_purpose::STANDARD.encode(s)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use umail_core::{Address, Notify, ReversePath};

    fn env() -> Envelope {
        let mut e = Envelope::new(ReversePath::Address("a@example.com".parse().unwrap()));
        e.recipients
            .push(Recipient::new("b@example.net".parse().unwrap()));
        e
    }

    fn caps(text: &str) -> Capabilities {
        let lines = text.split('|').map(str::to_string).collect();
        Capabilities::from_ehlo(&ServerReply { code: 250, lines })
    }

    #[test]
    fn parses_ehlo() {
        let c = caps(
            "mx|PIPELINING|SIZE 1000|8BITMIME|smtputf8|STARTTLS|DSN|CHUNKING|AUTH PLAIN login",
        );
        assert!(
            c.pipelining && c.eight_bit_mime && c.smtputf8 && c.starttls && c.dsn && c.chunking
        );
        assert_eq!(c.size, Some(1000));
        assert_eq!(c.auth, vec!["PLAIN", "LOGIN"]);
        assert_eq!(caps("mx|SIZE").size, Some(0));
    }

    #[test]
    fn mail_and_rcpt_parameters() {
        let mut e = env();
        e.ret = Some(DsnReturn::Headers);
        e.envid = Some("QQ123".into());
        let c = caps("mx|SIZE 0|DSN|8BITMIME");
        assert_eq!(
            mail_from(&c, &e, 42, true),
            b"MAIL FROM:<a@example.com> SIZE=42 BODY=8BITMIME RET=HDRS ENVID=QQ123\r\n"
        );
        // Without DSN the parameters are dropped.
        assert_eq!(
            mail_from(&caps("mx"), &e, 42, false),
            b"MAIL FROM:<a@example.com>\r\n"
        );
        let mut r = Recipient::new("b@example.net".parse().unwrap());
        r.notify = Notify {
            success: true,
            failure: true,
            ..Notify::default()
        };
        r.orcpt = Some("rfc822;c@example.org".into());
        assert_eq!(
            rcpt_to(&c, &r),
            b"RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@example.org\r\n"
        );
        r.notify = Notify {
            never: true,
            ..Notify::default()
        };
        r.orcpt = None;
        assert_eq!(rcpt_to(&c, &r), b"RCPT TO:<b@example.net> NOTIFY=NEVER\r\n");
        let null = Envelope::new(ReversePath::Null);
        assert_eq!(mail_from(&caps("mx"), &null, 1, false), b"MAIL FROM:<>\r\n");
    }

    #[test]
    fn preflight_rules() {
        let mut e = env();
        let r = Recipient::new(Address::parse_with("用户@例子.中国", true).unwrap());
        let refusal = preflight(&caps("mx"), &e, &[&r], 10).unwrap_err();
        assert_eq!(refusal.status, "5.6.7");
        assert!(refusal.permanent);
        assert!(preflight(&caps("mx|SMTPUTF8"), &e, &[&r], 10).is_ok());
        let plain = e.recipients[0].clone();
        assert_eq!(
            preflight(&caps("mx|SIZE 5"), &e, &[&plain], 10)
                .unwrap_err()
                .status,
            "5.3.4"
        );
        assert!(preflight(&caps("mx|SIZE 0"), &e, &[&plain], 10).is_ok());
        e.body = BodyType::BinaryMime;
        assert_eq!(
            preflight(&caps("mx"), &e, &[&plain], 10)
                .unwrap_err()
                .status,
            "5.6.3"
        );
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(
            dot_stuff(b".a\r\nb\r\n..c\r\n"),
            b"..a\r\nb\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b"x"), b"x\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b"\r\n.\r\n");
    }

    #[test]
    fn auth_encodings() {
        assert_eq!(auth_plain("u", "p"), b"AUTH PLAIN AHUAcA==\r\n");
        assert_eq!(base64_line("u"), b"dQ==\r\n");
    }
}
