//! Delivery status notifications (RFC 3464, RFC 3461 §6): a
//! `multipart/report; report-type=delivery-status` message with a
//! human-readable part in English and Chinese, the `message/delivery-status`
//! part and the original headers or message per `RET`.

use umail_core::{Address, DsnReturn};

/// RFC 3464 §2.3.3 `Action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    /// Permanent failure.
    Failed,
    /// Still trying.
    Delayed,
    /// Delivered.
    Delivered,
    /// Relayed to a system that does not send DSNs.
    Relayed,
}

impl DsnAction {
    /// The field value.
    pub fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Delivered => "delivered",
            DsnAction::Relayed => "relayed",
        }
    }
}

/// One recipient's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    /// The recipient address (`Final-Recipient: rfc822;...`).
    pub address: Address,
    /// ORCPT as given (`addr-type;xtext`).
    pub orcpt: Option<String>,
    /// What happened.
    pub action: DsnAction,
    /// Enhanced status, e.g. `5.1.1`.
    pub status: String,
    /// The remote host, if one answered.
    pub remote_mta: Option<String>,
    /// The remote reply, `smtp;550 5.1.1 ...`.
    pub diagnostic: Option<String>,
    /// For `delayed`: Unix time after which the MTA gives up
    /// (`Will-Retry-Until`, RFC 3464 §2.3.8).
    pub will_retry_until: Option<i64>,
}

/// Everything a DSN needs.
#[derive(Debug, Clone)]
pub struct DsnInput<'a> {
    /// Our host name (`Reporting-MTA`).
    pub reporting_mta: &'a str,
    /// Where the DSN goes (the original reverse path).
    pub to: &'a Address,
    /// ENVID from the original transaction.
    pub envid: Option<&'a str>,
    /// Unix time the original arrived.
    pub arrival: i64,
    /// RET from the original transaction (default: headers).
    pub ret: Option<DsnReturn>,
    /// The original message.
    pub original: &'a [u8],
    /// Recipients reported.
    pub recipients: Vec<DsnRecipient>,
}

fn rfc2822(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap_or_default()
        .to_rfc2822()
}

fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// The header block of a message (up to and including the blank line).
pub fn header_block(message: &[u8]) -> &[u8] {
    if let Some(p) = message.windows(4).position(|w| w == b"\r\n\r\n") {
        &message[..p + 2]
    } else if let Some(p) = message.windows(2).position(|w| w == b"\n\n") {
        &message[..p + 1]
    } else {
        message
    }
}

/// Builds the DSN message (CRLF line endings).
pub fn build(input: &DsnInput<'_>) -> Vec<u8> {
    let boundary = format!("umail-dsn-{:016x}", rand::random::<u64>());
    let now = chrono::Utc::now();
    let worst = if input
        .recipients
        .iter()
        .any(|r| r.action == DsnAction::Failed)
    {
        DsnAction::Failed
    } else if input
        .recipients
        .iter()
        .any(|r| r.action == DsnAction::Delayed)
    {
        DsnAction::Delayed
    } else {
        DsnAction::Delivered
    };
    let (subject_en, subject_zh, intro_en, intro_zh) = match worst {
        DsnAction::Failed => (
            "Undelivered Mail Returned to Sender",
            "退信通知",
            "Your message could not be delivered to one or more recipients.",
            "您的邮件未能投递给以下一个或多个收件人。",
        ),
        DsnAction::Delayed => (
            "Delayed Mail (still being retried)",
            "延迟投递通知",
            "Your message has not been delivered yet; delivery will be retried.",
            "您的邮件尚未投递成功，系统将继续重试。",
        ),
        _ => (
            "Successful Mail Delivery Report",
            "投递成功通知",
            "Your message was delivered to the following recipients.",
            "您的邮件已成功投递给以下收件人。",
        ),
    };
    let mut out = String::new();
    out.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{}>\r\n",
        clean(input.reporting_mta)
    ));
    out.push_str(&format!("To: <{}>\r\n", input.to));
    out.push_str(&format!(
        "Subject: {subject_en} / =?UTF-8?B?{}?=\r\n",
        b64(subject_zh.as_bytes())
    ));
    out.push_str(&format!("Date: {}\r\n", now.to_rfc2822()));
    out.push_str(&format!(
        "Message-ID: <{}.dsn@{}>\r\n",
        boundary,
        clean(input.reporting_mta)
    ));
    out.push_str("Auto-Submitted: auto-replied\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    out.push_str("This is a MIME-encapsulated delivery status notification.\r\n\r\n");

    // Part 1: human readable, English and Chinese.
    let mut human = format!("{intro_en}\r\n{intro_zh}\r\n\r\n");
    for r in &input.recipients {
        human.push_str(&format!(
            "<{}>: {} ({})\r\n",
            r.address,
            r.action.as_str(),
            r.status
        ));
        if let Some(d) = &r.diagnostic {
            human.push_str(&format!("    {}\r\n", clean(d)));
        }
    }
    human.push_str("\r\nThis report was generated automatically; please do not reply.\r\n本通知由系统自动生成，请勿回复。\r\n");
    out.push_str(&format!("--{boundary}\r\n"));
    out.push_str("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\nContent-Description: Notification\r\n\r\n");
    out.push_str(&b64_lines(human.as_bytes()));
    out.push_str("\r\n");

    // Part 2: message/delivery-status (RFC 3464 §2.2, §2.3).
    out.push_str(&format!("--{boundary}\r\n"));
    out.push_str(
        "Content-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n\r\n",
    );
    out.push_str(&format!(
        "Reporting-MTA: dns; {}\r\n",
        clean(input.reporting_mta)
    ));
    if let Some(envid) = input.envid {
        out.push_str(&format!("Original-Envelope-Id: {}\r\n", clean(envid)));
    }
    out.push_str(&format!("Arrival-Date: {}\r\n", rfc2822(input.arrival)));
    for r in &input.recipients {
        out.push_str("\r\n");
        if let Some(o) = &r.orcpt {
            out.push_str(&format!("Original-Recipient: {}\r\n", clean(o)));
        }
        let kind = if r.address.needs_smtputf8() {
            "utf-8"
        } else {
            "rfc822"
        };
        out.push_str(&format!("Final-Recipient: {kind}; {}\r\n", r.address));
        out.push_str(&format!("Action: {}\r\n", r.action.as_str()));
        out.push_str(&format!("Status: {}\r\n", clean(&r.status)));
        if let Some(m) = &r.remote_mta {
            out.push_str(&format!("Remote-MTA: dns; {}\r\n", clean(m)));
        }
        if let Some(d) = &r.diagnostic {
            out.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", clean(d)));
        }
        out.push_str(&format!("Last-Attempt-Date: {}\r\n", now.to_rfc2822()));
        if let Some(until) = r.will_retry_until
            && r.action == DsnAction::Delayed
        {
            out.push_str(&format!("Will-Retry-Until: {}\r\n", rfc2822(until)));
        }
    }
    out.push_str("\r\n");

    // Part 3: the original (RFC 3461 §4.3: RET=FULL or headers only).
    let mut bytes = out.into_bytes();
    let full = input.ret == Some(DsnReturn::Full) && worst != DsnAction::Delivered;
    let original: &[u8] = if full {
        input.original
    } else {
        header_block(input.original)
    };
    bytes.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    let ctype = if full {
        "message/rfc822"
    } else {
        "text/rfc822-headers"
    };
    bytes.extend_from_slice(
        format!("Content-Type: {ctype}\r\nContent-Description: Undelivered message\r\n\r\n")
            .as_bytes(),
    );
    bytes.extend_from_slice(original);
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn b64_lines(b: &[u8]) -> String {
    let s = b64(b);
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(76) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders};

    #[test]
    fn dsn_parses_back() {
        let to: Address = "alice@example.com".parse().unwrap();
        let original = b"From: alice@example.com\r\nSubject: hi\r\n\r\nsecret body\r\n";
        let dsn = build(&DsnInput {
            reporting_mta: "mail.example.com",
            to: &to,
            envid: Some("ENV1"),
            arrival: 1_700_000_000,
            ret: None,
            original,
            recipients: vec![DsnRecipient {
                address: "bob@example.net".parse().unwrap(),
                orcpt: Some("rfc822;bob@example.net".into()),
                action: DsnAction::Failed,
                status: "5.1.1".into(),
                remote_mta: Some("mx.example.net".into()),
                diagnostic: Some("550 5.1.1 no such user".into()),
                will_retry_until: Some(1_700_400_000),
            }],
        });
        let msg = MessageParser::default().parse(&dsn[..]).unwrap();
        let ct = msg.content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        assert!(msg.subject().unwrap().contains("退信通知"));
        let text = String::from_utf8_lossy(&dsn);
        assert!(text.contains("Reporting-MTA: dns; mail.example.com"));
        assert!(text.contains("Final-Recipient: rfc822; bob@example.net"));
        assert!(text.contains("Original-Recipient: rfc822;bob@example.net"));
        assert!(text.contains("Original-Envelope-Id: ENV1"));
        assert!(text.contains("Status: 5.1.1"));
        assert!(
            !text.contains("Will-Retry-Until"),
            "only delayed reports say when retrying ends"
        );
        assert!(!text.contains("secret body"), "RET default is headers only");
        let body = msg.body_text(0).unwrap();
        assert!(body.contains("could not be delivered") && body.contains("未能投递"));
    }
}
