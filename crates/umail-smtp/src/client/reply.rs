//! Sans-IO reply parsing for the SMTP client (RFC 5321 §4.2).

use std::fmt;

/// Longest reply line accepted (RFC 5321 §4.5.3.1.5 says 512; peers exceed it).
pub const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one multiline reply.
pub const MAX_REPLY_LINES: usize = 256;

/// One complete server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    /// The three-digit code.
    pub code: u16,
    /// The text of every line, without code and separator.
    pub lines: Vec<String>,
}

impl ServerReply {
    /// A synthetic reply (used for local decisions such as size refusals).
    pub fn new(code: u16, text: impl Into<String>) -> ServerReply {
        ServerReply {
            code,
            lines: vec![text.into()],
        }
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The enhanced status code of the first line (RFC 3463), if present
    /// and consistent with the reply class.
    pub fn enhanced(&self) -> Option<String> {
        let first = self.lines.first()?;
        let word = first.split_whitespace().next()?;
        let mut parts = word.split('.');
        let class = parts.next()?;
        let subject = parts.next()?;
        let detail = parts.next()?;
        let ok = parts.next().is_none()
            && matches!(class, "2" | "4" | "5")
            && class.as_bytes()[0] == b'0' + (self.code / 100) as u8
            && !subject.is_empty()
            && subject.len() <= 3
            && subject.bytes().all(|b| b.is_ascii_digit())
            && !detail.is_empty()
            && detail.len() <= 3
            && detail.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| word.to_string())
    }

    /// The enhanced status, or one derived from the reply class.
    pub fn status(&self) -> String {
        self.enhanced().unwrap_or_else(|| match self.code / 100 {
            2 => "2.0.0".into(),
            4 => "4.0.0".into(),
            _ => "5.0.0".into(),
        })
    }

    /// The reply as one line, e.g. `550 5.1.1 no such user`.
    pub fn one_line(&self) -> String {
        let text = self.lines.join(" ");
        let mut s = format!("{} {}", self.code, text.trim());
        s.retain(|c| !c.is_control());
        s
    }
}

impl fmt::Display for ServerReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// A malformed reply: the connection cannot continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed SMTP reply: {0}")]
pub struct ReplyError(pub String);

/// Accumulates bytes from the server and yields complete replies.
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyParser {
    /// A fresh parser.
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// Adds bytes read from the connection.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// True when no partial input is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.lines.is_empty()
    }

    /// Discards buffered input (RFC 3207 §4.2: nothing read before the TLS
    /// handshake may be used after it).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.lines.clear();
        self.code = None;
    }

    /// The next complete reply, if the buffer holds one.
    pub fn next_reply(&mut self) -> Result<Option<ServerReply>, ReplyError> {
        loop {
            let Some(pos) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_REPLY_LINE {
                    return Err(ReplyError("line too long".into()));
                }
                return Ok(None);
            };
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > MAX_REPLY_LINE {
                return Err(ReplyError("line too long".into()));
            }
            // RFC 5321 §4.2: Reply-code SP/"-" text.
            if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
                return Err(ReplyError(format!(
                    "no reply code in {:?}",
                    String::from_utf8_lossy(&line)
                )));
            }
            let code = u16::from(line[0] - b'0') * 100
                + u16::from(line[1] - b'0') * 10
                + u16::from(line[2] - b'0');
            if !(200..600).contains(&code) {
                return Err(ReplyError(format!("reply code {code} out of range")));
            }
            if let Some(c) = self.code
                && c != code
            {
                return Err(ReplyError(
                    "reply code changed inside a multiline reply".into(),
                ));
            }
            let (more, text) = match line.get(3) {
                None => (false, &[][..]),
                Some(b' ') => (false, &line[4..]),
                Some(b'-') => (true, &line[4..]),
                Some(_) => return Err(ReplyError("bad separator after reply code".into())),
            };
            self.lines.push(String::from_utf8_lossy(text).into_owned());
            if self.lines.len() > MAX_REPLY_LINES {
                return Err(ReplyError("too many reply lines".into()));
            }
            if more {
                self.code = Some(code);
                continue;
            }
            self.code = None;
            return Ok(Some(ServerReply {
                code,
                lines: std::mem::take(&mut self.lines),
            }));
        }
    }
}

/// Fuzz entry: feeds `data` in two pieces and drains every reply; never
/// panics, and every reply has a code in 200..600 and bounded lines.
pub fn fuzz_reply(data: &[u8]) {
    let mut p = ReplyParser::new();
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    for piece in [&data[..split], &data[split..]] {
        p.feed(piece);
        loop {
            match p.next_reply() {
                Ok(Some(r)) => {
                    assert!((200..600).contains(&r.code));
                    assert!(r.lines.len() <= MAX_REPLY_LINES);
                    let _ = (r.status(), r.one_line(), r.enhanced());
                    let _ = super::protocol::Capabilities::from_ehlo(&r);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multiline() {
        let mut p = ReplyParser::new();
        p.feed(b"220 mx.example ESMTP\r\n250-mx.example\r\n250-SIZE 100\r\n250 ");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.code, 220);
        assert_eq!(r.lines, vec!["mx.example ESMTP"]);
        assert_eq!(p.next_reply().unwrap(), None);
        p.feed(b"8BITMIME\r\n");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.lines, vec!["mx.example", "SIZE 100", "8BITMIME"]);
        assert!(p.is_empty());
    }

    #[test]
    fn bare_code_and_lf_only() {
        let mut p = ReplyParser::new();
        p.feed(b"250\n");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.status(), "2.0.0");
    }

    #[test]
    fn malformed() {
        for bad in [
            &b"hello\r\n"[..],
            b"250-a\r\n251 b\r\n",
            b"25x ok\r\n",
            b"250_x\r\n",
            b"100 x\r\n",
        ] {
            let mut p = ReplyParser::new();
            p.feed(bad);
            assert!(p.next_reply().is_err(), "{bad:?}");
        }
        let mut p = ReplyParser::new();
        p.feed(&vec![b'2'; MAX_REPLY_LINE + 2]);
        assert!(p.next_reply().is_err());
    }

    #[test]
    fn enhanced_codes() {
        let r = ServerReply::new(550, "5.1.1 no such user");
        assert_eq!(r.enhanced().as_deref(), Some("5.1.1"));
        assert!(r.is_permanent());
        // Class must match the reply code.
        assert_eq!(ServerReply::new(450, "5.1.1 x").enhanced(), None);
        assert_eq!(ServerReply::new(450, "try later").status(), "4.0.0");
        assert_eq!(
            ServerReply::new(550, "5.1.1 a\r\nb").one_line(),
            "550 5.1.1 ab"
        );
    }
}
