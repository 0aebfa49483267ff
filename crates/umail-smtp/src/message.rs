//! Header helpers used at delivery. The trace field `Received` is built
//! here; the helpers every ingest source shares (loop counting, priority,
//! filter actions, `Return-Path`) live in [`umail_core::message`] and are
//! re-exported.

use std::net::IpAddr;

pub use umail_core::message::{
    count_received, header_len, header_line, priority_of, return_path, sanitize_value, tag_subject,
};
use umail_core::{Address, TlsInfo};

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
