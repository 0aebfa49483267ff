//! The SMTP codec: command lines → [`Command`], replies → bytes, and the
//! DATA/BDAT body receivers.
//!
//! Everything here is pure: no sockets, no time, no services. The command
//! parser is [`parse_command`]; [`fuzz_command`] is the entry point the
//! fuzz target and the corpus replay test use.

use nom::Parser;
use nom::bytes::complete::{tag_no_case, take_while1};
use nom::character::complete::{char, digit1, space1};
use nom::combinator::{all_consuming, opt, rest};
use nom::sequence::preceded;
use umail_core::address::AddressError;
use umail_core::{Address, BodyType, DsnReturn, Notify, Reply, ReversePath};

/// Parameters of `MAIL FROM` (RFC 5321 §4.1.1.2 and the extensions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870 §3).
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152 §2, RFC 3030 §3).
    pub body: Option<BodyType>,
    /// `SMTPUTF8` (RFC 6531 §3.4).
    pub smtputf8: bool,
    /// `RET=` (RFC 3461 §4.3).
    pub ret: Option<DsnReturn>,
    /// `ENVID=` as xtext, verbatim (RFC 3461 §4.4).
    pub envid: Option<String>,
    /// `AUTH=` as xtext, verbatim (RFC 4954 §5). Informational only: the
    /// server never trusts it.
    pub auth: Option<String>,
    /// `HOLDFOR=` seconds (FUTURERELEASE, RFC 4865 §3).
    pub hold_for: Option<u64>,
    /// `HOLDUNTIL=` as Unix time (RFC 4865 §3, an RFC 3339 date-time).
    pub hold_until: Option<i64>,
}

/// Parameters of `RCPT TO` (RFC 3461 §4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// `NOTIFY=` (RFC 3461 §4.1).
    pub notify: Notify,
    /// `ORCPT=` as `addr-type;xtext`, verbatim (RFC 3461 §4.2).
    pub orcpt: Option<String>,
}

/// The forward path of `RCPT TO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain (RFC 5321 §4.1.1.3, §4.5.1).
    Postmaster,
    /// A mailbox.
    Address(Address),
}

/// One parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain` (RFC 5321 §4.1.1.1).
    Ehlo(String),
    /// `HELO domain` (RFC 5321 §4.1.1.1).
    Helo(String),
    /// `MAIL FROM:<path> [params]` (RFC 5321 §4.1.1.2).
    Mail {
        /// The reverse path.
        from: ReversePath,
        /// ESMTP parameters.
        params: MailParams,
    },
    /// `RCPT TO:<path> [params]` (RFC 5321 §4.1.1.3).
    Rcpt {
        /// The forward path.
        to: ForwardPath,
        /// ESMTP parameters.
        params: RcptParams,
    },
    /// `DATA` (RFC 5321 §4.1.1.4).
    Data,
    /// `BDAT size [LAST]` (RFC 3030 §2).
    Bdat {
        /// Octets in the chunk that follows the command line.
        size: u64,
        /// This is the last chunk.
        last: bool,
    },
    /// `RSET` (RFC 5321 §4.1.1.5).
    Rset,
    /// `NOOP [string]` (RFC 5321 §4.1.1.9).
    Noop,
    /// `QUIT` (RFC 5321 §4.1.1.10).
    Quit,
    /// `VRFY string` (RFC 5321 §4.1.1.6).
    Vrfy(String),
    /// `EXPN string` (RFC 5321 §4.1.1.7).
    Expn(String),
    /// `HELP [string]` (RFC 5321 §4.1.1.8).
    Help(Option<String>),
    /// `STARTTLS` (RFC 3207 §4).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954 §4). The initial
    /// response is still base64 (`=` stands for an empty one).
    Auth {
        /// Mechanism name as sent (upper-cased).
        mechanism: String,
        /// Base64 initial response, if any.
        initial: Option<String>,
    },
}

/// Why a command line was refused. [`ParseError::reply`] gives the SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The verb is not one this server knows.
    #[error("command not recognized")]
    UnknownCommand,
    /// The arguments do not follow the command's syntax.
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// The MAIL FROM address is invalid.
    #[error("invalid sender address: {0}")]
    BadSender(AddressError),
    /// The RCPT TO address is invalid.
    #[error("invalid recipient address: {0}")]
    BadRecipient(AddressError),
    /// An ESMTP parameter this server does not implement.
    #[error("parameter not recognized: {0}")]
    UnknownParameter(String),
    /// The line is not UTF-8 or holds control characters.
    #[error("invalid characters in command")]
    Encoding,
    /// The line is longer than the configured limit.
    #[error("line too long")]
    TooLong,
}

impl ParseError {
    /// The reply for this error.
    pub fn reply(&self) -> Reply {
        match self {
            // RFC 5321 §4.2.4: 500 for an unrecognized command.
            ParseError::UnknownCommand => Reply::new(500, "5.5.1", "Command not recognized"),
            // RFC 5321 §4.3.2: 501 syntax error in parameters or arguments.
            ParseError::Syntax(what) => Reply::new(501, "5.5.4", format!("Syntax error: {what}")),
            // RFC 3463 §3.2: X.1.7 bad sender's mailbox address syntax.
            ParseError::BadSender(e) => {
                Reply::new(501, "5.1.7", format!("Bad sender address: {e}"))
            }
            // RFC 3463 §3.2: X.1.3 bad destination mailbox address syntax.
            ParseError::BadRecipient(e) => {
                Reply::new(501, "5.1.3", format!("Bad recipient address: {e}"))
            }
            // RFC 5321 §4.1.1.11: 555 for unrecognized MAIL/RCPT parameters.
            ParseError::UnknownParameter(p) => {
                Reply::new(555, "5.5.4", format!("Parameter not recognized: {p}"))
            }
            ParseError::Encoding => Reply::new(500, "5.5.2", "Invalid characters in command"),
            // RFC 5321 §4.5.3.1.4: command lines are bounded.
            ParseError::TooLong => Reply::new(500, "5.5.2", "Line too long"),
        }
    }
}

type PResult<'a, T> = nom::IResult<&'a str, T>;

/// Parses one command line (with or without its trailing CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| ParseError::Encoding)?;
    // RFC 5321 §2.3.8 / §4.1.1: no control characters inside a command line.
    if line.chars().any(|c| c.is_control()) {
        return Err(ParseError::Encoding);
    }
    let (args, verb) = verb(line).map_err(|_| ParseError::UnknownCommand)?;
    let verb = verb.to_ascii_uppercase();
    match verb.as_str() {
        "EHLO" => domain_arg(args).map(Command::Ehlo),
        "HELO" => domain_arg(args).map(Command::Helo),
        "MAIL" => parse_mail(args),
        "RCPT" => parse_rcpt(args),
        "DATA" => no_args(args, Command::Data),
        "BDAT" => parse_bdat(args),
        "RSET" => no_args(args, Command::Rset),
        // RFC 5321 §4.1.1.9: NOOP may carry a string, which is ignored.
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(args, Command::Quit),
        "VRFY" => string_arg(args).map(Command::Vrfy),
        "EXPN" => string_arg(args).map(Command::Expn),
        "HELP" => {
            let a = args.trim();
            Ok(Command::Help((!a.is_empty()).then(|| a.to_string())))
        }
        // RFC 3207 §4: STARTTLS takes no parameters (501 otherwise).
        "STARTTLS" => no_args(args, Command::StartTls),
        "AUTH" => parse_auth(args),
        _ => Err(ParseError::UnknownCommand),
    }
}

fn verb(i: &str) -> PResult<'_, &str> {
    take_while1(|c: char| c.is_ascii_alphabetic()).parse(i)
}

fn no_args(args: &str, cmd: Command) -> Result<Command, ParseError> {
    if args.trim_end().is_empty() {
        Ok(cmd)
    } else {
        Err(ParseError::Syntax("this command takes no arguments"))
    }
}

fn string_arg(args: &str) -> Result<String, ParseError> {
    let r: PResult<'_, &str> = preceded(space1, rest).parse(args);
    match r {
        Ok((_, s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(ParseError::Syntax("argument required")),
    }
}

// RFC 5321 §4.1.1.1: "EHLO" SP ( Domain / address-literal ). Clients send
// all kinds of names; anything visible without spaces is accepted, the
// name is only informational.
fn domain_arg(args: &str) -> Result<String, ParseError> {
    let r: PResult<'_, &str> = all_consuming(preceded(
        space1,
        take_while1(|c: char| !c.is_whitespace() && !c.is_control()),
    ))
    .parse(args.trim_end());
    match r {
        Ok((_, name)) if name.len() <= 255 => Ok(name.to_string()),
        _ => Err(ParseError::Syntax("EHLO/HELO requires one domain name")),
    }
}

fn parse_bdat(args: &str) -> Result<Command, ParseError> {
    // RFC 3030 §2: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ] CR LF
    let r: PResult<'_, (&str, Option<&str>)> = all_consuming((
        preceded(space1, digit1),
        opt(preceded(space1, tag_no_case("LAST"))),
    ))
    .parse(args.trim_end());
    let (_, (size, last)) = r.map_err(|_| ParseError::Syntax("BDAT chunk-size [LAST]"))?;
    let size = size
        .parse::<u64>()
        .map_err(|_| ParseError::Syntax("chunk size out of range"))?;
    Ok(Command::Bdat {
        size,
        last: last.is_some(),
    })
}

fn parse_auth(args: &str) -> Result<Command, ParseError> {
    // RFC 4954 §4: "AUTH" SP sasl-mech [SP initial-response]
    let mech = take_while1(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let initial = take_while1(|c: char| c.is_ascii_alphanumeric() || "+/=".contains(c));
    let r: PResult<'_, (&str, Option<&str>)> =
        all_consuming((preceded(space1, mech), opt(preceded(space1, initial))))
            .parse(args.trim_end());
    let (_, (mech, initial)) =
        r.map_err(|_| ParseError::Syntax("AUTH mechanism [initial-response]"))?;
    if mech.len() > 20 {
        // RFC 4422 §3.1: mechanism names are at most 20 characters.
        return Err(ParseError::Syntax("mechanism name too long"));
    }
    Ok(Command::Auth {
        mechanism: mech.to_ascii_uppercase(),
        initial: initial.map(str::to_string),
    })
}

/// Splits `<path>` off the start of `i`, honouring quoted local parts.
/// Returns the text between the brackets and the rest.
fn bracketed_path(i: &str) -> Result<(&str, &str), ParseError> {
    let Some(inner) = i.strip_prefix('<') else {
        return Err(ParseError::Syntax("path must be enclosed in <>"));
    };
    let mut quoted = false;
    let mut escaped = false;
    for (pos, c) in inner.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Ok((&inner[..pos], &inner[pos + 1..])),
            _ => {}
        }
    }
    Err(ParseError::Syntax("unterminated path"))
}

/// RFC 5321 §4.1.2: a path may carry an obsolete source route
/// (`@a,@b:user@c`), which must be accepted and ignored (§C).
fn strip_source_route(path: &str) -> &str {
    if path.starts_with('@')
        && let Some(colon) = path.find(':')
    {
        return &path[colon + 1..];
    }
    path
}

fn path_and_params<'a>(
    args: &'a str,
    prefix: &'static str,
) -> Result<(&'a str, &'a str), ParseError> {
    let r: PResult<'_, &str> =
        preceded((space1, tag_no_case(prefix), char(':'), opt(space1)), rest).parse(args);
    let (_, after) = r.map_err(|_| {
        ParseError::Syntax(if prefix == "FROM" {
            "MAIL FROM:<address> [parameters]"
        } else {
            "RCPT TO:<address> [parameters]"
        })
    })?;
    let (path, params) = bracketed_path(after)?;
    Ok((path, params))
}

/// `keyword[=value]` pairs separated by spaces (RFC 5321 §4.1.2
/// Mail-parameters / Rcpt-parameters).
fn esmtp_params(params: &str) -> Result<Vec<(String, Option<&str>)>, ParseError> {
    let trimmed = params.trim_end();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let r: PResult<'_, &str> = space1.parse(trimmed);
    let Ok((list, _)) = r else {
        return Err(ParseError::Syntax(
            "parameters must follow the path after a space",
        ));
    };
    let mut out: Vec<(String, Option<&str>)> = Vec::new();
    for p in list.split(' ').filter(|p| !p.is_empty()) {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        let kw: PResult<'_, &str> =
            all_consuming(take_while1(|c: char| c.is_ascii_alphanumeric() || c == '-')).parse(k);
        if kw.is_err() || k.starts_with('-') {
            return Err(ParseError::Syntax("invalid parameter keyword"));
        }
        // esmtp-value = 1*(%d33-60 / %d62-126) (RFC 6531 §3.3 adds UTF-8)
        if let Some(v) = v
            && (v.is_empty() || v.contains('='))
        {
            return Err(ParseError::Syntax("invalid parameter value"));
        }
        let key = k.to_ascii_uppercase();
        if out.iter().any(|(existing, _)| *existing == key) {
            return Err(ParseError::Syntax("duplicate parameter"));
        }
        out.push((key, v));
    }
    Ok(out)
}

/// RFC 3461 §4: xtext = *( xchar / hexchar ); hexchar = "+" 2HEXDIGIT
fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                if i + 2 >= b.len() {
                    return false;
                }
                let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                if !(hex(b[i + 1]) && hex(b[i + 2])) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            33..=126 => i += 1,
            _ => return false,
        }
    }
    true
}

fn parse_mail(args: &str) -> Result<Command, ParseError> {
    let (path, params) = path_and_params(args, "FROM")?;
    let path = strip_source_route(path);
    let from = if path.is_empty() {
        // RFC 5321 §4.5.5: the null reverse path.
        ReversePath::Null
    } else {
        ReversePath::Address(Address::parse(path).map_err(ParseError::BadSender)?)
    };
    let mut out = MailParams::default();
    for (key, value) in esmtp_params(params)? {
        match (key.as_str(), value) {
            // RFC 1870 §3: size-value = 1*20DIGIT
            ("SIZE", Some(v)) => {
                if v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ParseError::Syntax("SIZE=digits"));
                }
                out.size = Some(v.parse().unwrap_or(u64::MAX));
            }
            // RFC 6152 §2, RFC 3030 §3
            ("BODY", Some(v)) => {
                out.body = Some(match v.to_ascii_uppercase().as_str() {
                    "7BIT" => BodyType::SevenBit,
                    "8BITMIME" => BodyType::EightBitMime,
                    "BINARYMIME" => BodyType::BinaryMime,
                    _ => return Err(ParseError::Syntax("BODY=7BIT|8BITMIME|BINARYMIME")),
                })
            }
            // RFC 6531 §3.4: SMTPUTF8 has no value.
            ("SMTPUTF8", None) => out.smtputf8 = true,
            // RFC 3461 §4.3
            ("RET", Some(v)) => {
                out.ret = Some(match v.to_ascii_uppercase().as_str() {
                    "FULL" => DsnReturn::Full,
                    "HDRS" => DsnReturn::Headers,
                    _ => return Err(ParseError::Syntax("RET=FULL|HDRS")),
                })
            }
            // RFC 3461 §4.4: ENVID is xtext, at most 100 characters.
            ("ENVID", Some(v)) => {
                if v.len() > 100 || !is_xtext(v) {
                    return Err(ParseError::Syntax("ENVID must be xtext"));
                }
                out.envid = Some(v.to_string());
            }
            // RFC 4954 §5: AUTH=xtext or AUTH=<>
            ("AUTH", Some(v)) => {
                if v != "<>" && !is_xtext(v) {
                    return Err(ParseError::Syntax("AUTH= must be xtext or <>"));
                }
                out.auth = Some(v.to_string());
            }
            // RFC 4865 §3: holdfor-value = 1*9DIGIT (seconds).
            ("HOLDFOR", Some(v)) => {
                if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ParseError::Syntax("HOLDFOR=seconds"));
                }
                out.hold_for = Some(v.parse().unwrap_or(u64::MAX));
            }
            // RFC 4865 §3: holduntil-value = date-time (RFC 3339).
            ("HOLDUNTIL", Some(v)) => {
                let t = chrono::DateTime::parse_from_rfc3339(v)
                    .map_err(|_| ParseError::Syntax("HOLDUNTIL=RFC 3339 date-time"))?;
                out.hold_until = Some(t.timestamp());
            }
            ("SIZE" | "BODY" | "RET" | "ENVID" | "AUTH" | "HOLDFOR" | "HOLDUNTIL", None)
            | ("SMTPUTF8", Some(_)) => {
                return Err(ParseError::Syntax("parameter value missing or not allowed"));
            }
            (other, _) => return Err(ParseError::UnknownParameter(other.to_string())),
        }
    }
    if out.hold_for.is_some() && out.hold_until.is_some() {
        // RFC 4865 §3: at most one of HOLDFOR and HOLDUNTIL.
        return Err(ParseError::Syntax("HOLDFOR and HOLDUNTIL together"));
    }
    Ok(Command::Mail { from, params: out })
}

fn parse_rcpt(args: &str) -> Result<Command, ParseError> {
    let (path, params) = path_and_params(args, "TO")?;
    let to = if path.eq_ignore_ascii_case("postmaster") {
        // RFC 5321 §4.1.1.3: "<Postmaster>" without a domain must be accepted.
        ForwardPath::Postmaster
    } else if path.is_empty() {
        return Err(ParseError::BadRecipient(AddressError::Empty));
    } else {
        let path = strip_source_route(path);
        ForwardPath::Address(Address::parse(path).map_err(ParseError::BadRecipient)?)
    };
    let mut out = RcptParams::default();
    for (key, value) in esmtp_params(params)? {
        match (key.as_str(), value) {
            // RFC 3461 §4.1: "NEVER" / 1#( "SUCCESS" / "FAILURE" / "DELAY" )
            ("NOTIFY", Some(v)) => {
                let mut n = Notify::default();
                for item in v.split(',') {
                    match item.to_ascii_uppercase().as_str() {
                        "NEVER" => n.never = true,
                        "SUCCESS" => n.success = true,
                        "FAILURE" => n.failure = true,
                        "DELAY" => n.delay = true,
                        _ => return Err(ParseError::Syntax("NOTIFY=NEVER|SUCCESS,FAILURE,DELAY")),
                    }
                }
                if n.never && (n.success || n.failure || n.delay) {
                    return Err(ParseError::Syntax("NOTIFY=NEVER cannot be combined"));
                }
                out.notify = n;
            }
            // RFC 3461 §4.2: orcpt-parameter = "ORCPT=" addr-type ";" xtext
            ("ORCPT", Some(v)) => {
                let ok = v.len() <= 500
                    && v.split_once(';').is_some_and(|(t, x)| {
                        !t.is_empty()
                            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                            && is_xtext(x)
                    });
                if !ok {
                    return Err(ParseError::Syntax("ORCPT=addr-type;xtext"));
                }
                out.orcpt = Some(v.to_string());
            }
            ("NOTIFY" | "ORCPT", None) => {
                return Err(ParseError::Syntax("parameter value missing"));
            }
            (other, _) => return Err(ParseError::UnknownParameter(other.to_string())),
        }
    }
    Ok(Command::Rcpt { to, params: out })
}

/// Appends `reply` to `out` in wire form: one line per text line, `-`
/// after the code on every line but the last (RFC 5321 §4.2.1), the
/// enhanced status code (RFC 2034 §3) on every line.
pub fn encode_reply(reply: &Reply, out: &mut Vec<u8>) {
    let code = if (200..=599).contains(&reply.code) {
        reply.code
    } else {
        451
    };
    let text: String = reply
        .text
        .chars()
        .filter(|c| *c == '\n' || !c.is_control())
        .collect();
    let lines: Vec<&str> = text.split('\n').collect();
    let last = lines.len() - 1;
    for (n, line) in lines.iter().enumerate() {
        out.extend_from_slice(code.to_string().as_bytes());
        out.push(if n == last { b' ' } else { b'-' });
        if let Some(e) = &reply.enhanced {
            out.extend_from_slice(e.as_bytes());
            if !line.is_empty() {
                out.push(b' ');
            }
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Why a message body was refused while it was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// A CR or LF not part of a CRLF pair (RFC 5321 §2.3.8; SMTP smuggling).
    #[error("bare CR or LF in message data")]
    BareLineEnding,
    /// A line is longer than the configured limit (RFC 5321 §4.5.3.1.6).
    #[error("line too long in message data")]
    LineTooLong,
    /// The message exceeds the size limit (RFC 1870 §6).
    #[error("message too large")]
    TooLarge,
}

impl DataError {
    /// The reply for this error.
    pub fn reply(&self, max_line: usize) -> Reply {
        match self {
            // RFC 5321 §2.3.8: lines end with CRLF only.
            DataError::BareLineEnding => Reply::new(
                554,
                "5.6.0",
                "Message contains a bare CR or LF; lines must end with CRLF",
            ),
            DataError::LineTooLong => Reply::new(
                554,
                "5.6.0",
                format!("Message contains a line longer than {max_line} bytes"),
            ),
            // RFC 1870 §6.1 / RFC 3463: 552 5.3.4 message too big for system.
            DataError::TooLarge => Reply::new(552, "5.3.4", "Message size exceeds fixed limit"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DotState {
    /// At the start of a line (after CRLF, or at the start of the data).
    LineStart,
    /// Inside a line.
    Mid,
    /// After a CR inside a line.
    Cr,
    /// After a '.' at the start of a line.
    Dot,
    /// After ".\r" at the start of a line.
    DotCr,
}

/// Receives the body of a `DATA` command (RFC 5321 §4.1.1.4).
///
/// * Only `CRLF . CRLF` ends the data; `LF . LF`, `CR . CR`, `LF . CRLF` and
///   any other mix never do (SMTP smuggling, CVE-2023-51764 class).
/// * A bare CR or LF anywhere marks the message as refused, but the data is
///   still consumed up to the real end so the session stays in sync.
/// * Dot-unstuffing per RFC 5321 §4.5.2.
/// * The size bound is enforced while streaming: once exceeded, nothing
///   more is buffered.
#[derive(Debug)]
pub struct DataReceiver {
    state: DotState,
    line_len: usize,
    max_line: usize,
    max_size: u64,
    body: Vec<u8>,
    size: u64,
    error: Option<DataError>,
    done: bool,
}

impl DataReceiver {
    /// A receiver; `max_size` 0 means unlimited, `max_line` 0 means unlimited.
    pub fn new(max_size: u64, max_line: usize) -> DataReceiver {
        DataReceiver {
            state: DotState::LineStart,
            line_len: 0,
            max_line,
            max_size,
            body: Vec::new(),
            size: 0,
            error: None,
            done: false,
        }
    }

    /// True once the terminating `CRLF.CRLF` was seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Bytes of message received so far (after unstuffing).
    pub fn size(&self) -> u64 {
        self.size
    }

    fn fail(&mut self, e: DataError) {
        if self.error.is_none() {
            self.error = Some(e);
            self.body = Vec::new();
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.max_size != 0 && self.size > self.max_size {
            self.fail(DataError::TooLarge);
        }
        if self.error.is_none() {
            self.body.extend_from_slice(bytes);
        }
    }

    /// Feeds received bytes; returns how many were consumed. Consumption
    /// stops right after the terminator, so the caller keeps the rest
    /// (pipelined commands).
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let mut i = 0;
        while i < input.len() && !self.done {
            let b = input[i];
            // Fast path: a run of ordinary bytes inside a line.
            if self.state == DotState::Mid && b != b'\r' && b != b'\n' {
                let run = input[i..]
                    .iter()
                    .position(|&c| c == b'\r' || c == b'\n')
                    .unwrap_or(input.len() - i);
                self.line_len += run;
                self.check_line();
                let chunk = &input[i..i + run];
                self.emit(chunk);
                i += run;
                continue;
            }
            i += 1;
            self.line_len += 1;
            self.check_line();
            self.step(b);
        }
        i
    }

    fn check_line(&mut self) {
        // RFC 5321 §4.5.3.1.6: text lines are bounded.
        if self.max_line != 0 && self.line_len > self.max_line {
            self.fail(DataError::LineTooLong);
        }
    }

    fn step(&mut self, b: u8) {
        match (self.state, b) {
            (DotState::LineStart, b'.') => self.state = DotState::Dot,
            (DotState::LineStart | DotState::Mid | DotState::Dot, b'\r') => {
                self.state = if self.state == DotState::Dot {
                    DotState::DotCr
                } else {
                    DotState::Cr
                };
            }
            (DotState::LineStart | DotState::Mid | DotState::Dot, b'\n') => {
                // RFC 5321 §2.3.8: a bare LF is not a line ending, so it
                // never starts a line and never ends the data.
                self.fail(DataError::BareLineEnding);
                self.emit(b"\n");
                self.state = DotState::Mid;
            }
            (DotState::LineStart | DotState::Mid | DotState::Dot, other) => {
                // RFC 5321 §4.5.2: a leading dot followed by more text is removed.
                self.emit(&[other]);
                self.state = DotState::Mid;
            }
            (DotState::Cr, b'\n') => {
                self.emit(b"\r\n");
                self.line_len = 0;
                self.state = DotState::LineStart;
            }
            (DotState::DotCr, b'\n') => {
                // RFC 5321 §4.1.1.4: CRLF "." CRLF ends the mail data.
                self.done = true;
            }
            (DotState::Cr | DotState::DotCr, b'\r') => {
                // The previous CR was bare.
                self.fail(DataError::BareLineEnding);
                self.emit(b"\r");
                self.state = DotState::Cr;
            }
            (DotState::Cr | DotState::DotCr, other) => {
                self.fail(DataError::BareLineEnding);
                self.emit(b"\r");
                self.emit(&[other]);
                self.state = DotState::Mid;
            }
        }
    }

    /// The message (CRLF line endings, unstuffed), or why it is refused.
    /// Call after [`DataReceiver::is_done`].
    pub fn finish(self) -> Result<Vec<u8>, DataError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.body),
        }
    }
}

/// Checks `BDAT` chunks of a non-binary body for bare CR/LF and long lines
/// across chunk boundaries (RFC 3030 §3: without BODY=BINARYMIME the body
/// must still be a valid RFC 5322 message).
#[derive(Debug, Default)]
pub struct LineChecker {
    prev_cr: bool,
    line_len: usize,
}

impl LineChecker {
    /// Checks the next bytes of the body.
    pub fn check(&mut self, bytes: &[u8], max_line: usize) -> Result<(), DataError> {
        for &b in bytes {
            match (self.prev_cr, b) {
                (true, b'\n') => {
                    self.prev_cr = false;
                    self.line_len = 0;
                    continue;
                }
                (true, _) => return Err(DataError::BareLineEnding),
                (false, b'\n') => return Err(DataError::BareLineEnding),
                (false, b'\r') => self.prev_cr = true,
                _ => {}
            }
            self.line_len += 1;
            if max_line != 0 && self.line_len + 1 > max_line {
                return Err(DataError::LineTooLong);
            }
        }
        Ok(())
    }

    /// Checks the end of the body: a trailing lone CR is bare.
    pub fn finish(&self) -> Result<(), DataError> {
        if self.prev_cr {
            Err(DataError::BareLineEnding)
        } else {
            Ok(())
        }
    }
}

/// Fuzzing entry point: parses `data` as a command line and runs it
/// through the DATA receiver, checking invariants. Must never panic.
pub fn fuzz_command(data: &[u8]) {
    if let Ok(cmd) = parse_command(data) {
        // Every successfully parsed command has a stable debug form.
        let _ = format!("{cmd:?}");
    }
    if let Err(e) = parse_command(data) {
        let mut out = Vec::new();
        encode_reply(&e.reply(), &mut out);
        assert!(out.ends_with(b"\r\n"));
    }
    let mut rx = DataReceiver::new(1 << 20, 1000);
    let used = rx.feed(data);
    assert!(used <= data.len());
    if rx.is_done() {
        // The terminator is always a real CRLF.CRLF (or ".\r\n" at the start).
        let consumed = &data[..used];
        assert!(consumed.ends_with(b"\r\n.\r\n") || consumed == b".\r\n");
        let _ = rx.finish();
    }
    let mut checker = LineChecker::default();
    let _ = checker.check(data, 1000);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn parses_basic_commands() {
        assert_eq!(
            parse_command(b"EHLO client.example\r\n"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(
            parse_command(b"helo [192.0.2.1]"),
            Ok(Command::Helo("[192.0.2.1]".into()))
        );
        assert_eq!(parse_command(b"DATA\r\n"), Ok(Command::Data));
        assert_eq!(parse_command(b"rset"), Ok(Command::Rset));
        assert_eq!(parse_command(b"NOOP hello"), Ok(Command::Noop));
        assert_eq!(parse_command(b"QUIT"), Ok(Command::Quit));
        assert_eq!(parse_command(b"STARTTLS"), Ok(Command::StartTls));
        assert_eq!(parse_command(b"HELP"), Ok(Command::Help(None)));
        assert_eq!(
            parse_command(b"HELP mail"),
            Ok(Command::Help(Some("mail".into())))
        );
        assert_eq!(parse_command(b"VRFY bob"), Ok(Command::Vrfy("bob".into())));
        assert_eq!(
            parse_command(b"EXPN list@x.example"),
            Ok(Command::Expn("list@x.example".into()))
        );
        assert_eq!(
            parse_command(b"BDAT 100 LAST"),
            Ok(Command::Bdat {
                size: 100,
                last: true
            })
        );
        assert_eq!(
            parse_command(b"BDAT 0"),
            Ok(Command::Bdat {
                size: 0,
                last: false
            })
        );
        assert_eq!(
            parse_command(b"AUTH plain AGFsaWNlAHB3"),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGFsaWNlAHB3".into())
            })
        );
        assert_eq!(
            parse_command(b"AUTH SCRAM-SHA-256"),
            Ok(Command::Auth {
                mechanism: "SCRAM-SHA-256".into(),
                initial: None
            })
        );
    }

    #[test]
    fn refuses_bad_commands() {
        assert_eq!(parse_command(b"FOO"), Err(ParseError::UnknownCommand));
        assert_eq!(parse_command(b""), Err(ParseError::UnknownCommand));
        assert!(matches!(
            parse_command(b"DATA x"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"STARTTLS now"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(parse_command(b"EHLO"), Err(ParseError::Syntax(_))));
        assert!(matches!(
            parse_command(b"BDAT x"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"BDAT 99999999999999999999999"),
            Err(ParseError::Syntax(_))
        ));
        assert_eq!(parse_command(b"NOOP \x00"), Err(ParseError::Encoding));
        assert_eq!(parse_command(b"NOOP \xff"), Err(ParseError::Encoding));
        assert!(matches!(parse_command(b"AUTH"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn parses_future_release_parameters() {
        let hold = |line: &[u8]| match parse_command(line) {
            Ok(Command::Mail { params, .. }) => Ok((params.hold_for, params.hold_until)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(
            hold(b"MAIL FROM:<a@b.example> HOLDFOR=3600"),
            Ok((Some(3600), None))
        );
        assert_eq!(
            hold(b"MAIL FROM:<a@b.example> HOLDUNTIL=2026-11-24T12:00:00Z"),
            Ok((None, Some(1_795_521_600)))
        );
        assert_eq!(
            hold(b"MAIL FROM:<a@b.example> holduntil=2026-11-24T20:00:00+08:00"),
            Ok((None, Some(1_795_521_600)))
        );
        for bad in [
            &b"MAIL FROM:<a@b.example> HOLDFOR=1234567890"[..],
            b"MAIL FROM:<a@b.example> HOLDFOR=-1",
            b"MAIL FROM:<a@b.example> HOLDFOR=",
            b"MAIL FROM:<a@b.example> HOLDFOR",
            b"MAIL FROM:<a@b.example> HOLDUNTIL=tomorrow",
            b"MAIL FROM:<a@b.example> HOLDFOR=60 HOLDUNTIL=2026-11-24T12:00:00Z",
        ] {
            assert!(
                matches!(hold(bad), Err(ParseError::Syntax(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn parses_mail_from_with_parameters() {
        let c = parse_command(
            b"MAIL FROM:<alice@example.com> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abc+2B1 AUTH=<>",
        )
        .unwrap();
        assert_eq!(
            c,
            Command::Mail {
                from: ReversePath::Address(addr("alice@example.com")),
                params: MailParams {
                    size: Some(1000),
                    body: Some(BodyType::EightBitMime),
                    smtputf8: true,
                    ret: Some(DsnReturn::Headers),
                    envid: Some("abc+2B1".into()),
                    auth: Some("<>".into()),
                    ..MailParams::default()
                }
            }
        );
        assert_eq!(
            parse_command(b"mail from: <>").unwrap(),
            Command::Mail {
                from: ReversePath::Null,
                params: MailParams::default()
            }
        );
        // RFC 5321 §C: source routes are accepted and ignored.
        assert_eq!(
            parse_command(b"MAIL FROM:<@relay.example,@b.example:bob@example.org>").unwrap(),
            Command::Mail {
                from: ReversePath::Address(addr("bob@example.org")),
                params: MailParams::default()
            }
        );
        // Quoted local part containing '>' and a space.
        let c = parse_command(b"MAIL FROM:<\"a> b\"@example.com>").unwrap();
        assert!(
            matches!(c, Command::Mail { from: ReversePath::Address(a), .. } if a.local_part() == "a> b")
        );
        // UTF-8 mailbox (RFC 6531).
        assert!(parse_command("MAIL FROM:<张三@例子.中国> SMTPUTF8".as_bytes()).is_ok());
    }

    #[test]
    fn refuses_bad_mail_from() {
        assert!(matches!(
            parse_command(b"MAIL FROM:alice@example.com"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"MAIL TO:<a@b.example>"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"MAIL FROM:<alice>"),
            Err(ParseError::BadSender(_))
        ));
        assert!(matches!(
            parse_command(b"MAIL FROM:<a@b.example"),
            Err(ParseError::Syntax(_))
        ));
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b.example> FOO=1"),
            Err(ParseError::UnknownParameter("FOO".into()))
        );
        assert!(matches!(
            parse_command(b"MAIL FROM:<a@b.example> SIZE=abc"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"MAIL FROM:<a@b.example> SIZE=1 SIZE=2"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"MAIL FROM:<a@b.example> BODY=9BIT"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"MAIL FROM:<a@b.example> SMTPUTF8=yes"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"MAIL FROM:<a@b.example> ENVID=a=b"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"MAIL FROM:<a@b.example> ENVID=a+zz"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"MAIL FROM:<a@b.example>SIZE=1"),
            Err(ParseError::Syntax(_))
        ));
    }

    #[test]
    fn parses_rcpt_to() {
        assert_eq!(
            parse_command(
                b"RCPT TO:<bob@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob@example.com"
            )
            .unwrap(),
            Command::Rcpt {
                to: ForwardPath::Address(addr("bob@example.com")),
                params: RcptParams {
                    notify: Notify {
                        never: false,
                        success: true,
                        failure: false,
                        delay: true
                    },
                    orcpt: Some("rfc822;bob@example.com".into()),
                }
            }
        );
        assert_eq!(
            parse_command(b"RCPT TO:<postmaster>").unwrap(),
            Command::Rcpt {
                to: ForwardPath::Postmaster,
                params: RcptParams::default()
            }
        );
        assert!(matches!(
            parse_command(b"RCPT TO:<>"),
            Err(ParseError::BadRecipient(_))
        ));
        assert!(matches!(
            parse_command(b"RCPT TO:<a@b.example> NOTIFY=NEVER,SUCCESS"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"RCPT TO:<a@b.example> ORCPT=bad"),
            Err(ParseError::Syntax(_))
        ));
        assert_eq!(
            parse_command(b"RCPT TO:<a@b.example> SIZE=1"),
            Err(ParseError::UnknownParameter("SIZE".into()))
        );
    }

    #[test]
    fn encodes_multiline_replies() {
        let mut out = Vec::new();
        encode_reply(&Reply::new(250, "2.0.0", "one\ntwo"), &mut out);
        assert_eq!(out, b"250-2.0.0 one\r\n250 2.0.0 two\r\n");
        out.clear();
        encode_reply(&Reply::new(220, "", "host ESMTP\r"), &mut out);
        assert_eq!(out, b"220 host ESMTP\r\n");
    }

    fn receive(input: &[u8]) -> (usize, bool, Result<Vec<u8>, DataError>) {
        let mut rx = DataReceiver::new(1000, 100);
        let used = rx.feed(input);
        let done = rx.is_done();
        (used, done, rx.finish())
    }

    #[test]
    fn data_unstuffs_and_stops_at_terminator() {
        let (used, done, body) = receive(b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n");
        assert!(done);
        assert_eq!(used, b"Subject: x\r\n\r\n..dot\r\n.\r\n".len());
        assert_eq!(body.unwrap(), b"Subject: x\r\n\r\n.dot\r\n");
        let (_, done, body) = receive(b".\r\n");
        assert!(done);
        assert_eq!(body.unwrap(), b"");
    }

    #[test]
    fn data_byte_by_byte_equals_whole() {
        let input = b"a\r\n..b\r\n.c\r\n\r\n.\r\n";
        let mut rx = DataReceiver::new(0, 0);
        for b in input.iter() {
            assert_eq!(rx.feed(std::slice::from_ref(b)), 1);
        }
        assert!(rx.is_done());
        assert_eq!(rx.finish().unwrap(), b"a\r\n.b\r\nc\r\n\r\n");
    }

    #[test]
    fn smuggling_patterns_never_terminate() {
        for pattern in [
            &b"a\n.\nMAIL FROM:<x@y.example>\r\n"[..],
            b"a\r\n.\nMAIL FROM:<x@y.example>\r\n",
            b"a\n.\r\nMAIL FROM:<x@y.example>\r\n",
            b"a\r.\r\nMAIL FROM:<x@y.example>\r\n",
            b"a\r\n.\rMAIL FROM:<x@y.example>\r\n",
            b"a\r.\rMAIL FROM:<x@y.example>\r\n",
        ] {
            let mut rx = DataReceiver::new(0, 0);
            assert_eq!(rx.feed(pattern), pattern.len(), "{pattern:?}");
            assert!(!rx.is_done(), "{pattern:?} must not end the data");
            assert_eq!(rx.feed(b"\r\n.\r\n"), 5);
            assert!(rx.is_done());
            assert_eq!(rx.finish(), Err(DataError::BareLineEnding), "{pattern:?}");
        }
    }

    #[test]
    fn data_limits() {
        let (_, done, r) = receive(&[&[b'x'; 1200][..], b"\r\n.\r\n"].concat());
        assert!(done);
        assert_eq!(r, Err(DataError::LineTooLong));
        let mut rx = DataReceiver::new(10, 0);
        rx.feed(b"0123456789\r\n");
        rx.feed(b"more\r\n.\r\n");
        assert!(rx.is_done());
        assert_eq!(rx.finish(), Err(DataError::TooLarge));
    }

    #[test]
    fn line_checker_finds_bare_endings_across_chunks() {
        let mut c = LineChecker::default();
        assert!(c.check(b"abc\r", 100).is_ok());
        assert!(c.check(b"\nxyz\r\n", 100).is_ok());
        assert!(c.finish().is_ok());
        let mut c = LineChecker::default();
        assert_eq!(c.check(b"abc\r", 100), Ok(()));
        assert_eq!(c.check(b"x", 100), Err(DataError::BareLineEnding));
        let mut c = LineChecker::default();
        assert_eq!(c.check(b"abc\n", 100), Err(DataError::BareLineEnding));
        let mut c = LineChecker::default();
        assert_eq!(c.check(&[b'a'; 200], 100), Err(DataError::LineTooLong));
    }
}
