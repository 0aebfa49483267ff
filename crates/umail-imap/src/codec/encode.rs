//! The response encoder: status responses, strings (quoted or literal),
//! mailbox names in modified UTF-7 or UTF-8.

use super::utf7;

/// The status of a tagged or untagged condition response (RFC 9051 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `OK`
    Ok,
    /// `NO`
    No,
    /// `BAD`
    Bad,
    /// `BYE` (untagged only)
    Bye,
    /// `PREAUTH` (greeting only)
    PreAuth,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::No => "NO",
            Status::Bad => "BAD",
            Status::Bye => "BYE",
            Status::PreAuth => "PREAUTH",
        }
    }
}

/// Longest string sent quoted; longer ones go as literals.
const MAX_QUOTED: usize = 1024;

/// A buffer of response bytes with the session's string rules.
#[derive(Debug, Default)]
pub struct ResponseBuf {
    buf: Vec<u8>,
    /// UTF-8 is allowed in quoted strings and mailbox names
    /// (IMAP4rev2 or UTF8=ACCEPT enabled, RFC 9051 §6.3.1 / RFC 6855 §3).
    pub utf8: bool,
}

impl ResponseBuf {
    /// An empty buffer.
    pub fn new() -> ResponseBuf {
        ResponseBuf::default()
    }

    /// Takes the bytes written so far.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes pending.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Appends raw bytes.
    pub fn raw(&mut self, b: impl AsRef<[u8]>) -> &mut Self {
        self.buf.extend_from_slice(b.as_ref());
        self
    }

    /// Ends a response line.
    pub fn crlf(&mut self) -> &mut Self {
        self.raw(b"\r\n")
    }

    /// A tagged status response: `tag OK [code] text`.
    pub fn tagged(&mut self, tag: &str, status: Status, code: Option<&str>, text: &str) {
        self.raw(tag.as_bytes()).raw(b" ");
        self.condition(status, code, text);
    }

    /// An untagged status response: `* NO [code] text`.
    pub fn untagged_status(&mut self, status: Status, code: Option<&str>, text: &str) {
        self.raw(b"* ");
        self.condition(status, code, text);
    }

    fn condition(&mut self, status: Status, code: Option<&str>, text: &str) {
        self.raw(status.as_str()).raw(b" ");
        if let Some(code) = code {
            self.raw(b"[").raw(code).raw(b"] ");
        }
        // resp-text: text must not contain CR or LF.
        let text: String = text.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        self.raw(if text.is_empty() { "done" } else { &text });
        self.crlf();
    }

    /// An untagged data line: `* <line>\r\n`.
    pub fn untagged(&mut self, line: &str) {
        self.raw(b"* ").raw(line).crlf();
    }

    /// A continuation request: `+ text`.
    pub fn continuation(&mut self, text: &str) {
        self.raw(b"+ ").raw(text).crlf();
    }

    /// Writes a `string`: quoted when possible, otherwise a literal
    /// (RFC 9051 §4.3). 8-bit data is quoted only in UTF-8 mode and only
    /// when it is valid UTF-8.
    pub fn string(&mut self, s: &[u8]) -> &mut Self {
        let quotable = s.len() <= MAX_QUOTED
            && !s.iter().any(|b| matches!(b, 0 | b'\r' | b'\n'))
            && (s.is_ascii() || (self.utf8 && std::str::from_utf8(s).is_ok()));
        if quotable {
            self.buf.push(b'"');
            for &b in s {
                if b == b'"' || b == b'\\' {
                    self.buf.push(b'\\');
                }
                self.buf.push(b);
            }
            self.buf.push(b'"');
            self
        } else {
            self.literal(s)
        }
    }

    /// Writes `NIL` or a string.
    pub fn nstring(&mut self, s: Option<&[u8]>) -> &mut Self {
        match s {
            Some(s) => self.string(s),
            None => self.raw(b"NIL"),
        }
    }

    /// Writes a literal `{n}\r\n<data>`, or `~{n}` when the data holds NUL
    /// (literal8, RFC 3516 §4.2).
    pub fn literal(&mut self, data: &[u8]) -> &mut Self {
        if data.contains(&0) {
            self.raw(b"~");
        }
        self.raw(format!("{{{}}}\r\n", data.len()));
        self.raw(data)
    }

    /// Writes a mailbox name (store form, `/` separator): UTF-8 when
    /// enabled, modified UTF-7 otherwise (RFC 9051 §5.1, RFC 3501 §5.1.3).
    pub fn mailbox(&mut self, name: &str) -> &mut Self {
        if self.utf8 {
            self.string(name.as_bytes())
        } else {
            let enc = utf7::encode(name);
            self.string(enc.as_bytes())
        }
    }
}

/// Formats flags as an IMAP flag list `(\Seen $Work)`.
pub fn flag_list<'a>(flags: impl IntoIterator<Item = &'a umail_core::Flag>) -> String {
    let items: Vec<String> = flags.into_iter().map(|f| f.to_string()).collect();
    format!("({})", items.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_quote_or_literal() {
        let mut r = ResponseBuf::new();
        r.string(b"a \"b\" \\c");
        assert_eq!(r.take(), b"\"a \\\"b\\\" \\\\c\"");
        r.string(b"x\r\ny");
        assert_eq!(r.take(), b"{4}\r\nx\r\ny");
        r.string("中文".as_bytes());
        assert_eq!(r.take(), "{6}\r\n中文".as_bytes());
        r.utf8 = true;
        r.string("中文".as_bytes());
        assert_eq!(r.take(), "\"中文\"".as_bytes());
        r.literal(b"a\0b");
        assert_eq!(r.take(), b"~{3}\r\na\0b");
    }

    #[test]
    fn mailbox_names() {
        let mut r = ResponseBuf::new();
        r.mailbox("客户/2026年");
        assert_eq!(r.take(), b"\"&W6JiNw-/2026&XnQ-\"");
        r.utf8 = true;
        r.mailbox("客户/2026年");
        assert_eq!(r.take(), "\"客户/2026年\"".as_bytes());
    }

    #[test]
    fn status_lines() {
        let mut r = ResponseBuf::new();
        r.tagged("a1", Status::No, Some("TRYCREATE"), "no such\r\nmailbox");
        assert_eq!(r.take(), b"a1 NO [TRYCREATE] no suchmailbox\r\n");
    }
}
