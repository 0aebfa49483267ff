//! The sans-IO POP3 codec: line framing, the command parser, response
//! encoding and the multi-line message encoder used by `RETR` and `TOP`.
//!
//! Nothing here touches a socket; the functions take and return bytes, so
//! they are unit-tested with byte strings and fuzzed directly
//! ([`parse_command`] is the fuzzing entry point).

use bytes::{Buf, Bytes, BytesMut};

/// Longest command line accepted, CRLF excluded. RFC 2449 §4 limits
/// commands to 255 octets; clients with long user names or SASL initial
/// responses exceed that, so the server is lenient up to this bound.
pub const MAX_LINE: usize = 1024;

/// A parsed client command (RFC 1939, RFC 2449, RFC 2595, RFC 5034, RFC 6856).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `USER name` (RFC 1939 §7).
    User(String),
    /// `PASS string` (RFC 1939 §7); the rest of the line, spaces included.
    Pass(String),
    /// `APOP name digest` (RFC 1939 §7).
    Apop {
        /// The mailbox name.
        name: String,
        /// The 32 lower-case hex digits of the MD5 digest.
        digest: String,
    },
    /// `AUTH [mechanism [initial-response]]` (RFC 5034 §4). Without a
    /// mechanism the server lists its mechanisms (RFC 1734 practice).
    Auth {
        /// The SASL mechanism name, as sent.
        mechanism: Option<String>,
        /// The base64 initial response (`=` for an empty one), as sent.
        initial_response: Option<String>,
    },
    /// `STAT` (RFC 1939 §5).
    Stat,
    /// `LIST [msg]` (RFC 1939 §5).
    List(Option<u32>),
    /// `RETR msg` (RFC 1939 §5).
    Retr(u32),
    /// `DELE msg` (RFC 1939 §5).
    Dele(u32),
    /// `NOOP` (RFC 1939 §5).
    Noop,
    /// `RSET` (RFC 1939 §5).
    Rset,
    /// `QUIT` (RFC 1939 §4, §6).
    Quit,
    /// `TOP msg n` (RFC 1939 §7).
    Top {
        /// The message number.
        msg: u32,
        /// How many body lines to send.
        lines: u64,
    },
    /// `UIDL [msg]` (RFC 1939 §7).
    Uidl(Option<u32>),
    /// `CAPA` (RFC 2449 §5).
    Capa,
    /// `STLS` (RFC 2595 §4).
    Stls,
    /// `UTF8` (RFC 6856 §2).
    Utf8,
}

impl Command {
    /// The command keyword, upper case (for logs and error replies).
    pub fn keyword(&self) -> &'static str {
        match self {
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Apop { .. } => "APOP",
            Command::Auth { .. } => "AUTH",
            Command::Stat => "STAT",
            Command::List(_) => "LIST",
            Command::Retr(_) => "RETR",
            Command::Dele(_) => "DELE",
            Command::Noop => "NOOP",
            Command::Rset => "RSET",
            Command::Quit => "QUIT",
            Command::Top { .. } => "TOP",
            Command::Uidl(_) => "UIDL",
            Command::Capa => "CAPA",
            Command::Stls => "STLS",
            Command::Utf8 => "UTF8",
        }
    }
}

/// Why a command line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line was empty.
    #[error("empty command")]
    Empty,
    /// The line is longer than [`MAX_LINE`].
    #[error("line too long")]
    TooLong,
    /// The keyword is not a POP3 command this server knows.
    #[error("unknown command")]
    Unknown,
    /// The command's arguments are missing, extra or malformed.
    #[error("{0}: bad arguments")]
    BadArguments(&'static str),
    /// An argument is not valid UTF-8.
    #[error("{0}: arguments must be UTF-8")]
    NotUtf8(&'static str),
}

/// Parses one command line (without its CRLF).
///
/// Keywords are case-insensitive (RFC 1939 §3); arguments are separated by
/// single spaces, but runs of spaces are tolerated. Message numbers are
/// plain decimal digits (no sign) that fit in 32 bits. This function is
/// the fuzzing entry point: no input may panic it.
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    if line.len() > MAX_LINE {
        return Err(ParseError::TooLong);
    }
    let line = trim_end(line);
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    let (keyword, rest) = match line.iter().position(|b| *b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    };
    // RFC 1939 §3: keywords are three or four characters.
    if keyword.len() > 4 || keyword.len() < 3 {
        return Err(ParseError::Unknown);
    }
    let mut kw = [0u8; 4];
    for (d, s) in kw.iter_mut().zip(keyword) {
        *d = s.to_ascii_uppercase();
    }
    let kw = &kw[..keyword.len()];
    let args = || split_args(rest);
    match kw {
        b"USER" => {
            let name = one_text_arg("USER", rest)?;
            Ok(Command::User(name))
        }
        b"PASS" => {
            // RFC 1939 §7: the server may treat spaces in the argument as
            // part of the password.
            if rest.is_empty() {
                return Err(ParseError::BadArguments("PASS"));
            }
            let pass = std::str::from_utf8(rest).map_err(|_| ParseError::NotUtf8("PASS"))?;
            Ok(Command::Pass(pass.to_string()))
        }
        b"APOP" => {
            let a = args();
            let [name, digest] = a.as_slice() else {
                return Err(ParseError::BadArguments("APOP"));
            };
            let name = std::str::from_utf8(name).map_err(|_| ParseError::NotUtf8("APOP"))?;
            if digest.len() != 32 || !digest.iter().all(u8::is_ascii_hexdigit) {
                return Err(ParseError::BadArguments("APOP"));
            }
            let digest = String::from_utf8_lossy(digest).to_ascii_lowercase();
            Ok(Command::Apop {
                name: name.to_string(),
                digest,
            })
        }
        b"AUTH" => {
            let a = args();
            let text = |b: &[u8]| {
                if b.iter().all(|c| c.is_ascii_graphic()) {
                    Ok(String::from_utf8_lossy(b).into_owned())
                } else {
                    Err(ParseError::BadArguments("AUTH"))
                }
            };
            match a.as_slice() {
                [] => Ok(Command::Auth {
                    mechanism: None,
                    initial_response: None,
                }),
                [m] => Ok(Command::Auth {
                    mechanism: Some(text(m)?),
                    initial_response: None,
                }),
                [m, ir] => Ok(Command::Auth {
                    mechanism: Some(text(m)?),
                    initial_response: Some(text(ir)?),
                }),
                _ => Err(ParseError::BadArguments("AUTH")),
            }
        }
        b"STAT" => no_args("STAT", rest, Command::Stat),
        b"NOOP" => no_args("NOOP", rest, Command::Noop),
        b"RSET" => no_args("RSET", rest, Command::Rset),
        b"QUIT" => no_args("QUIT", rest, Command::Quit),
        b"CAPA" => no_args("CAPA", rest, Command::Capa),
        b"STLS" => no_args("STLS", rest, Command::Stls),
        b"UTF8" => no_args("UTF8", rest, Command::Utf8),
        b"LIST" => Ok(Command::List(optional_number("LIST", rest)?)),
        b"UIDL" => Ok(Command::Uidl(optional_number("UIDL", rest)?)),
        b"RETR" => Ok(Command::Retr(required_number("RETR", rest)?)),
        b"DELE" => Ok(Command::Dele(required_number("DELE", rest)?)),
        b"TOP" => {
            let a = args();
            let [msg, lines] = a.as_slice() else {
                return Err(ParseError::BadArguments("TOP"));
            };
            let msg = number(msg).ok_or(ParseError::BadArguments("TOP"))?;
            let lines = number_u64(lines).ok_or(ParseError::BadArguments("TOP"))?;
            Ok(Command::Top { msg, lines })
        }
        _ => Err(ParseError::Unknown),
    }
}

fn trim_end(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\r' | b'\n') {
        end -= 1;
    }
    &line[..end]
}

fn split_args(rest: &[u8]) -> Vec<&[u8]> {
    rest.split(|b| *b == b' ')
        .filter(|a| !a.is_empty())
        .take(8)
        .collect()
}

fn no_args(name: &'static str, rest: &[u8], cmd: Command) -> Result<Command, ParseError> {
    if rest.iter().all(|b| *b == b' ') {
        Ok(cmd)
    } else {
        Err(ParseError::BadArguments(name))
    }
}

fn one_text_arg(name: &'static str, rest: &[u8]) -> Result<String, ParseError> {
    let a = split_args(rest);
    let [arg] = a.as_slice() else {
        return Err(ParseError::BadArguments(name));
    };
    if arg.iter().any(|b| b.is_ascii_control()) {
        return Err(ParseError::BadArguments(name));
    }
    std::str::from_utf8(arg)
        .map(str::to_string)
        .map_err(|_| ParseError::NotUtf8(name))
}

fn optional_number(name: &'static str, rest: &[u8]) -> Result<Option<u32>, ParseError> {
    match split_args(rest).as_slice() {
        [] => Ok(None),
        [n] => number(n).map(Some).ok_or(ParseError::BadArguments(name)),
        _ => Err(ParseError::BadArguments(name)),
    }
}

fn required_number(name: &'static str, rest: &[u8]) -> Result<u32, ParseError> {
    optional_number(name, rest)?.ok_or(ParseError::BadArguments(name))
}

fn number_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn number(s: &[u8]) -> Option<u32> {
    number_u64(s).and_then(|n| u32::try_from(n).ok())
}

/// What [`LineReader::next_line`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line without its line terminator (CRLF or bare LF).
    Complete(Bytes),
    /// A line longer than the bound was received and discarded, up to and
    /// including its terminator.
    TooLong,
}

/// Splits a byte stream into lines with a length bound. The driver reads
/// from the socket into [`LineReader::buffer`]; a line longer than the
/// bound is discarded as it arrives, so memory stays bounded.
#[derive(Debug)]
pub struct LineReader {
    buf: BytesMut,
    max: usize,
    discarding: bool,
}

impl LineReader {
    /// A reader accepting lines of at most `max` bytes (terminator excluded).
    pub fn new(max: usize) -> LineReader {
        LineReader {
            buf: BytesMut::with_capacity(1024),
            max,
            discarding: false,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read into (for `AsyncReadExt::read_buf`).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Drops everything buffered: bytes a client pipelined after `STLS`
    /// must never be read as commands (RFC 2595 §4, command injection).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    /// True when no complete line is buffered and nothing is partially read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next complete line, if one is buffered.
    pub fn next_line(&mut self) -> Option<Line> {
        match self.buf.iter().position(|b| *b == b'\n') {
            Some(i) => {
                let mut line = self.buf.split_to(i + 1).freeze();
                if self.discarding {
                    self.discarding = false;
                    return Some(Line::TooLong);
                }
                line.truncate(i);
                if line.last() == Some(&b'\r') {
                    line.truncate(i - 1);
                }
                if line.len() > self.max {
                    return Some(Line::TooLong);
                }
                Some(Line::Complete(line))
            }
            None => {
                // Keep a possible trailing CR so a CRLF split across reads
                // still ends the line.
                if self.buf.len() > self.max + 1 {
                    self.discarding = true;
                    let keep = usize::from(self.buf.last() == Some(&b'\r'));
                    let drop = self.buf.len() - keep;
                    self.buf.advance(drop);
                }
                None
            }
        }
    }
}

/// A response status code inside brackets (RFC 2449 §8, RFC 3206).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespCode {
    /// `[IN-USE]`: the maildrop is in use (here: too many sessions).
    InUse,
    /// `[LOGIN-DELAY]`.
    LoginDelay,
    /// `[SYS/TEMP]`: a temporary system problem (RFC 3206 §4).
    SysTemp,
    /// `[SYS/PERM]`: a permanent system problem (RFC 3206 §4).
    SysPerm,
    /// `[AUTH]`: a problem with the credentials (RFC 3206 §5).
    Auth,
    /// `[UTF8]`: the operation needs UTF-8 mode (RFC 6856 §2).
    Utf8,
}

impl RespCode {
    /// The code as written on the wire, without brackets.
    pub fn as_str(self) -> &'static str {
        match self {
            RespCode::InUse => "IN-USE",
            RespCode::LoginDelay => "LOGIN-DELAY",
            RespCode::SysTemp => "SYS/TEMP",
            RespCode::SysPerm => "SYS/PERM",
            RespCode::Auth => "AUTH",
            RespCode::Utf8 => "UTF8",
        }
    }
}

/// `+OK text\r\n`
pub fn ok(text: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(text.len() + 6);
    v.extend_from_slice(b"+OK");
    if !text.is_empty() {
        v.push(b' ');
        v.extend_from_slice(sanitize(text).as_bytes());
    }
    v.extend_from_slice(b"\r\n");
    v
}

/// `-ERR [code] text\r\n`
pub fn err(code: Option<RespCode>, text: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(text.len() + 20);
    v.extend_from_slice(b"-ERR");
    if let Some(c) = code {
        v.extend_from_slice(b" [");
        v.extend_from_slice(c.as_str().as_bytes());
        v.push(b']');
    }
    if !text.is_empty() {
        v.push(b' ');
        v.extend_from_slice(sanitize(text).as_bytes());
    }
    v.extend_from_slice(b"\r\n");
    v
}

/// A multi-line response: `+OK text`, the lines (byte-stuffed), then `.`.
pub fn multiline<I, S>(text: &str, lines: I) -> Vec<u8>
where
    I: IntoIterator<Item = S>,
    S: AsRef<[u8]>,
{
    let mut v = ok(text);
    for line in lines {
        let line = line.as_ref();
        // RFC 1939 §3: byte-stuff lines that begin with the termination octet.
        if line.first() == Some(&b'.') {
            v.push(b'.');
        }
        v.extend_from_slice(line);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b".\r\n");
    v
}

// Response text must stay on one line whatever a caller passes in.
fn sanitize(text: &str) -> std::borrow::Cow<'_, str> {
    if text.bytes().any(|b| b == b'\r' || b == b'\n') {
        std::borrow::Cow::Owned(text.replace(['\r', '\n'], " "))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

const CRLF: &[u8] = b"\r\n";
const DOT: &[u8] = b".";
const TERMINATOR: &[u8] = b".\r\n";

/// Default size of the pieces [`MessageEncoder`] hands out.
pub const CHUNK: usize = 16 * 1024;

/// Encodes a stored message as the body of a multi-line `RETR` or `TOP`
/// response, in bounded pieces and without copying the message:
///
/// * lines starting with `.` are byte-stuffed (RFC 1939 §3);
/// * bare LF line ends become CRLF;
/// * the last line always ends with CRLF, then the `.` CRLF terminator;
/// * for `TOP msg n`, the header, the blank line and `n` body lines
///   (RFC 1939 §7).
///
/// Runs of lines that need no change are handed out as zero-copy slices of
/// the message [`Bytes`].
#[derive(Debug, Clone)]
pub struct MessageEncoder {
    content: Bytes,
    pos: usize,
    chunk: usize,
    at_line_start: bool,
    line_start: usize,
    pending_crlf: bool,
    in_headers: bool,
    body_lines_left: Option<u64>,
    done: bool,
}

impl MessageEncoder {
    /// An encoder for the whole message (`RETR`).
    pub fn retr(content: Bytes) -> MessageEncoder {
        MessageEncoder::new(content, None, CHUNK)
    }

    /// An encoder for the header and `lines` body lines (`TOP`).
    pub fn top(content: Bytes, lines: u64) -> MessageEncoder {
        MessageEncoder::new(content, Some(lines), CHUNK)
    }

    /// An encoder with an explicit piece size (at least 1), for tests.
    pub fn new(content: Bytes, top_lines: Option<u64>, chunk: usize) -> MessageEncoder {
        MessageEncoder {
            content,
            pos: 0,
            chunk: chunk.max(1),
            at_line_start: true,
            line_start: 0,
            pending_crlf: false,
            in_headers: true,
            body_lines_left: top_lines,
            done: false,
        }
    }

    /// Encodes everything into one buffer (tests and small messages).
    pub fn to_vec(mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.content.len() + 16);
        while let Some(piece) = self.next_chunk() {
            out.extend_from_slice(&piece);
        }
        out
    }

    fn limit_reached(&self) -> bool {
        !self.in_headers && self.body_lines_left == Some(0)
    }

    // Called when the line that started at `line_start` ends at `nl` (the LF).
    fn line_done(&mut self, nl: usize) {
        let line = &self.content[self.line_start..nl];
        let empty = line.is_empty() || line == b"\r";
        if self.in_headers {
            if empty {
                self.in_headers = false;
            }
        } else if let Some(n) = self.body_lines_left.as_mut() {
            *n = n.saturating_sub(1);
        }
        self.line_start = nl + 1;
        self.at_line_start = true;
    }

    /// The next piece to write, or `None` after the terminator.
    pub fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if self.pending_crlf {
            self.pending_crlf = false;
            return Some(Bytes::from_static(CRLF));
        }
        if self.pos >= self.content.len() || self.limit_reached() {
            if !self.at_line_start {
                // The message does not end with a line end: add one.
                self.at_line_start = true;
                return Some(Bytes::from_static(CRLF));
            }
            self.done = true;
            return Some(Bytes::from_static(TERMINATOR));
        }
        if self.at_line_start && self.content[self.pos] == b'.' {
            // RFC 1939 §3: byte-stuff the termination octet.
            self.at_line_start = false;
            return Some(Bytes::from_static(DOT));
        }
        let start = self.pos;
        let window_end = self.content.len().min(start.saturating_add(self.chunk));
        loop {
            let found = self.content[self.pos..window_end]
                .iter()
                .position(|b| *b == b'\n')
                .map(|i| self.pos + i);
            let Some(nl) = found else {
                // No line end within this piece: hand out what there is.
                self.pos = window_end;
                self.at_line_start = false;
                break;
            };
            if nl > 0 && self.content[nl - 1] == b'\r' {
                self.pos = nl + 1;
                self.line_done(nl);
                if self.pos >= window_end || self.limit_reached() || self.content[self.pos] == b'.'
                {
                    break;
                }
            } else {
                // A bare LF: hand out the line, then CRLF instead of LF.
                self.pos = nl + 1;
                self.line_done(nl);
                if nl == start {
                    return Some(Bytes::from_static(CRLF));
                }
                self.pending_crlf = true;
                return Some(self.content.slice(start..nl));
            }
        }
        Some(self.content.slice(start..self.pos))
    }
}

impl Iterator for MessageEncoder {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        self.next_chunk()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        let cases: Vec<(&[u8], Command)> = vec![
            (
                b"USER alice@example.com",
                Command::User("alice@example.com".into()),
            ),
            (b"user bob", Command::User("bob".into())),
            (
                b"PASS secret with spaces",
                Command::Pass("secret with spaces".into()),
            ),
            (
                b"APOP mrose c4c9334bac560ecc979e58001b3e22fb",
                Command::Apop {
                    name: "mrose".into(),
                    digest: "c4c9334bac560ecc979e58001b3e22fb".into(),
                },
            ),
            (
                b"AUTH",
                Command::Auth {
                    mechanism: None,
                    initial_response: None,
                },
            ),
            (
                b"AUTH PLAIN AGFsaWNlAHB3",
                Command::Auth {
                    mechanism: Some("PLAIN".into()),
                    initial_response: Some("AGFsaWNlAHB3".into()),
                },
            ),
            (b"STAT", Command::Stat),
            (b"stat", Command::Stat),
            (b"LIST", Command::List(None)),
            (b"LIST 2", Command::List(Some(2))),
            (b"RETR 1", Command::Retr(1)),
            (b"DELE 10", Command::Dele(10)),
            (b"NOOP", Command::Noop),
            (b"RSET", Command::Rset),
            (b"QUIT", Command::Quit),
            (b"TOP 1 0", Command::Top { msg: 1, lines: 0 }),
            (b"UIDL", Command::Uidl(None)),
            (b"UIDL 3", Command::Uidl(Some(3))),
            (b"CAPA", Command::Capa),
            (b"STLS", Command::Stls),
            (b"UTF8", Command::Utf8),
            (b"QUIT\r\n", Command::Quit),
            (b"LIST  2 ", Command::List(Some(2))),
        ];
        for (line, cmd) in cases {
            assert_eq!(
                parse_command(line),
                Ok(cmd),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse_command(b""), Err(ParseError::Empty));
        assert_eq!(parse_command(b"   "), Err(ParseError::Unknown));
        assert_eq!(parse_command(b"HELO x"), Err(ParseError::Unknown));
        assert_eq!(parse_command(b"XTND"), Err(ParseError::Unknown));
        assert_eq!(parse_command(b"RETRIEVE 1"), Err(ParseError::Unknown));
        assert_eq!(
            parse_command(b"RETR"),
            Err(ParseError::BadArguments("RETR"))
        );
        assert_eq!(
            parse_command(b"RETR +1"),
            Err(ParseError::BadArguments("RETR"))
        );
        assert_eq!(
            parse_command(b"RETR -1"),
            Err(ParseError::BadArguments("RETR"))
        );
        assert_eq!(
            parse_command(b"RETR x"),
            Err(ParseError::BadArguments("RETR"))
        );
        assert_eq!(
            parse_command(b"RETR 99999999999"),
            Err(ParseError::BadArguments("RETR"))
        );
        assert_eq!(
            parse_command(b"RETR 1 2"),
            Err(ParseError::BadArguments("RETR"))
        );
        assert_eq!(
            parse_command(b"STAT 1"),
            Err(ParseError::BadArguments("STAT"))
        );
        assert_eq!(
            parse_command(b"TOP 1"),
            Err(ParseError::BadArguments("TOP"))
        );
        assert_eq!(
            parse_command(b"TOP 1 -1"),
            Err(ParseError::BadArguments("TOP"))
        );
        assert_eq!(
            parse_command(b"USER"),
            Err(ParseError::BadArguments("USER"))
        );
        assert_eq!(
            parse_command(b"USER a b"),
            Err(ParseError::BadArguments("USER"))
        );
        assert_eq!(
            parse_command(b"USER \xff"),
            Err(ParseError::NotUtf8("USER"))
        );
        assert_eq!(
            parse_command(b"PASS"),
            Err(ParseError::BadArguments("PASS"))
        );
        assert_eq!(
            parse_command(b"APOP a xyz"),
            Err(ParseError::BadArguments("APOP"))
        );
        assert_eq!(
            parse_command(b"AUTH PLAIN a b"),
            Err(ParseError::BadArguments("AUTH"))
        );
        let long = vec![b'A'; MAX_LINE + 1];
        assert_eq!(parse_command(&long), Err(ParseError::TooLong));
    }

    #[test]
    fn line_reader_frames_and_bounds() {
        let mut r = LineReader::new(10);
        r.push(b"CAPA\r\nST");
        assert_eq!(
            r.next_line(),
            Some(Line::Complete(Bytes::from_static(b"CAPA")))
        );
        assert_eq!(r.next_line(), None);
        r.push(b"AT\nNOOP\r");
        assert_eq!(
            r.next_line(),
            Some(Line::Complete(Bytes::from_static(b"STAT")))
        );
        assert_eq!(r.next_line(), None);
        r.push(b"\n");
        assert_eq!(
            r.next_line(),
            Some(Line::Complete(Bytes::from_static(b"NOOP")))
        );
        // An oversized line is discarded as it arrives.
        r.push(&[b'x'; 100]);
        assert_eq!(r.next_line(), None);
        assert!(r.buffer().len() <= 11);
        r.push(&[b'x'; 100]);
        assert_eq!(r.next_line(), None);
        r.push(b"xx\r\nQUIT\r\n");
        assert_eq!(r.next_line(), Some(Line::TooLong));
        assert_eq!(
            r.next_line(),
            Some(Line::Complete(Bytes::from_static(b"QUIT")))
        );
        // Too long but complete in one read.
        r.push(b"0123456789AB\r\n");
        assert_eq!(r.next_line(), Some(Line::TooLong));
        r.push(b"garbage\r\n");
        r.clear();
        assert_eq!(r.next_line(), None);
        assert!(r.is_empty());
    }

    fn encode(msg: &[u8], top: Option<u64>, chunk: usize) -> Vec<u8> {
        MessageEncoder::new(Bytes::copy_from_slice(msg), top, chunk).to_vec()
    }

    #[test]
    fn encoder_stuffs_normalises_and_terminates() {
        let msg = b"Subject: x\r\n\r\n.hidden\r\nbare\nlf\n..two\r\nno end";
        let want = b"Subject: x\r\n\r\n..hidden\r\nbare\r\nlf\r\n...two\r\nno end\r\n.\r\n";
        for chunk in [1, 2, 3, 5, 7, 16, 1024] {
            assert_eq!(encode(msg, None, chunk), want.to_vec(), "chunk {chunk}");
        }
        assert_eq!(encode(b"", None, 16), b".\r\n".to_vec());
        assert_eq!(encode(b".", None, 16), b"..\r\n.\r\n".to_vec());
        assert_eq!(encode(b"\n\n", None, 16), b"\r\n\r\n.\r\n".to_vec());
        assert_eq!(encode(b"a\r\n", None, 16), b"a\r\n.\r\n".to_vec());
        // A bare CR is not a line end and passes through.
        assert_eq!(encode(b"a\rb\r\n", None, 2), b"a\rb\r\n.\r\n".to_vec());
    }

    #[test]
    fn encoder_top() {
        let msg = b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\nl3\r\n";
        for chunk in [1, 3, 64] {
            assert_eq!(
                encode(msg, Some(0), chunk),
                b"A: 1\r\nB: 2\r\n\r\n.\r\n".to_vec()
            );
            assert_eq!(
                encode(msg, Some(2), chunk),
                b"A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n.\r\n".to_vec()
            );
            assert_eq!(
                encode(msg, Some(99), chunk),
                b"A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\nl3\r\n.\r\n".to_vec()
            );
        }
        // No body at all: the whole header is sent.
        assert_eq!(encode(b"A: 1\n", Some(0), 8), b"A: 1\r\n.\r\n".to_vec());
        // Bare-LF blank line ends the header too.
        assert_eq!(
            encode(b"A: 1\n\nbody\n", Some(0), 8),
            b"A: 1\r\n\r\n.\r\n".to_vec()
        );
    }

    #[test]
    fn encoder_slices_without_copying_clean_runs() {
        let msg = Bytes::from(b"line one\r\nline two\r\n".to_vec());
        let mut e = MessageEncoder::retr(msg.clone());
        let first = e.next_chunk().unwrap();
        assert_eq!(first, msg);
        assert_eq!(first.as_ptr(), msg.as_ptr());
        assert_eq!(e.next_chunk().unwrap(), Bytes::from_static(b".\r\n"));
        assert_eq!(e.next_chunk(), None);
    }

    #[test]
    fn responses() {
        assert_eq!(ok("hi"), b"+OK hi\r\n");
        assert_eq!(ok(""), b"+OK\r\n");
        assert_eq!(
            err(Some(RespCode::InUse), "busy"),
            b"-ERR [IN-USE] busy\r\n"
        );
        assert_eq!(err(None, "a\r\nb"), b"-ERR a  b\r\n");
        assert_eq!(
            multiline("2 messages", ["1 10", ".x"]),
            b"+OK 2 messages\r\n1 10\r\n..x\r\n.\r\n"
        );
    }
}
