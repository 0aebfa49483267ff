//! The command parser: one complete command (as assembled by
//! [`Framer`](super::Framer), literals inline) to a [`Command`].
//!
//! A hand-written recursive-descent parser over a byte cursor, following the
//! ABNF of RFC 9051 §9 and the extensions' grammars. It never panics on any
//! input and bounds nesting depth.

use base64::Engine;
use chrono::{NaiveDate, NaiveDateTime, NaiveTime};

use super::types::*;

/// Deepest nesting of search keys (parentheses, NOT, OR) accepted.
pub const MAX_SEARCH_DEPTH: usize = 32;

/// Why a command could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// The tag, when the command got that far (the reply is then tagged BAD).
    pub tag: Option<String>,
    /// Human-readable reason (sent after `BAD`).
    pub message: String,
}

type PResult<T> = Result<T, String>;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

// RFC 9051 §9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards /
// quoted-specials / resp-specials
fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

fn is_list_char(b: u8) -> bool {
    is_astring_char(b) || b == b'%' || b == b'*'
}

// RFC 9051 §9: tag = 1*<any ASTRING-CHAR except "+">
fn is_tag_char(b: u8) -> bool {
    is_astring_char(b) && b != b'+'
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8) -> PResult<()> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(format!("expected '{}'", b as char))
        }
    }

    fn sp(&mut self) -> PResult<()> {
        self.expect(b' ')
    }

    fn eat_ci(&mut self, word: &str) -> bool {
        let w = word.as_bytes();
        if self.buf.len() >= self.pos + w.len()
            && self.buf[self.pos..self.pos + w.len()].eq_ignore_ascii_case(w)
        {
            self.pos += w.len();
            true
        } else {
            false
        }
    }

    fn crlf(&mut self) -> PResult<()> {
        // Tolerate a bare LF (common client bug); the framer split on LF.
        self.eat(b'\r');
        if !self.eat(b'\n') {
            return Err("unexpected characters at end of command".into());
        }
        if self.pos != self.buf.len() {
            return Err("data after end of command".into());
        }
        Ok(())
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if !f(b) {
                break;
            }
            self.pos += 1;
        }
        &self.buf[start..self.pos]
    }

    fn atom(&mut self) -> PResult<String> {
        let a = self.take_while(is_atom_char);
        if a.is_empty() {
            return Err("expected atom".into());
        }
        Ok(String::from_utf8_lossy(a).into_owned())
    }

    /// A keyword made of letters, digits, '.', '-', '=' (command names,
    /// fetch items, options); upper-cased.
    fn keyword(&mut self) -> PResult<String> {
        let a = self
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'=' | b'_'));
        if a.is_empty() {
            return Err("expected keyword".into());
        }
        Ok(String::from_utf8_lossy(a).to_ascii_uppercase())
    }

    fn number(&mut self) -> PResult<u32> {
        let d = self.take_while(|b| b.is_ascii_digit());
        if d.is_empty() {
            return Err("expected number".into());
        }
        std::str::from_utf8(d)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| "number out of range".into())
    }

    fn number64(&mut self) -> PResult<u64> {
        let d = self.take_while(|b| b.is_ascii_digit());
        if d.is_empty() {
            return Err("expected number".into());
        }
        // RFC 7162 §7: mod-sequence-value is at most 2^63-1.
        std::str::from_utf8(d)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|v| *v <= i64::MAX as u64)
            .ok_or_else(|| "number out of range".into())
    }

    fn nz_number(&mut self) -> PResult<u32> {
        let n = self.number()?;
        if n == 0 {
            return Err("zero is not allowed here".into());
        }
        Ok(n)
    }

    /// `quoted` (RFC 9051 §9): escapes `\"` and `\\`; UTF-8 allowed.
    fn quoted(&mut self) -> PResult<Vec<u8>> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'\r') | Some(b'\n') | Some(0) => {
                    return Err("unterminated quoted string".into());
                }
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c);
                            self.pos += 1;
                        }
                        _ => return Err("bad escape in quoted string".into()),
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// `literal` / `literal8`: `{n}` `{n+}` `~{n}` then CRLF and n octets.
    fn literal(&mut self) -> PResult<Vec<u8>> {
        let binary = self.eat(b'~');
        self.expect(b'{')?;
        let n = self.number64()?;
        self.eat(b'+');
        self.expect(b'}')?;
        self.eat(b'\r');
        self.expect(b'\n')?;
        let n = usize::try_from(n).map_err(|_| "literal too large")?;
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or("literal is truncated")?;
        let data = self.buf[self.pos..end].to_vec();
        // RFC 9051 §4.3: a non-binary literal must not contain NUL.
        if !binary && data.contains(&0) {
            return Err("NUL in literal".into());
        }
        self.pos = end;
        Ok(data)
    }

    fn string(&mut self) -> PResult<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') | Some(b'~') => self.literal(),
            _ => Err("expected string".into()),
        }
    }

    fn astring(&mut self) -> PResult<Vec<u8>> {
        match self.peek() {
            Some(b'"') | Some(b'{') | Some(b'~') => self.string(),
            _ => {
                let a = self.take_while(is_astring_char);
                if a.is_empty() {
                    return Err("expected string".into());
                }
                Ok(a.to_vec())
            }
        }
    }

    fn nstring(&mut self) -> PResult<Option<Vec<u8>>> {
        if self.eat_ci("NIL") {
            return Ok(None);
        }
        self.string().map(Some)
    }

    fn list_mailbox(&mut self) -> PResult<Vec<u8>> {
        match self.peek() {
            Some(b'"') | Some(b'{') => self.string(),
            _ => {
                let a = self.take_while(is_list_char);
                if a.is_empty() {
                    return Err("expected mailbox pattern".into());
                }
                Ok(a.to_vec())
            }
        }
    }

    fn seq_number(&mut self) -> PResult<SeqNum> {
        if self.eat(b'*') {
            Ok(SeqNum::Star)
        } else {
            Ok(SeqNum::Value(self.nz_number()?))
        }
    }

    /// `sequence-set` / `$` (RFC 9051 §9, RFC 5182).
    fn sequence_set(&mut self) -> PResult<SequenceSet> {
        if self.eat(b'$') {
            return Ok(SequenceSet::Saved);
        }
        let mut ranges = Vec::new();
        loop {
            let start = self.seq_number()?;
            let end = if self.eat(b':') {
                self.seq_number()?
            } else {
                start
            };
            ranges.push(SeqRange { start, end });
            if ranges.len() > 100_000 {
                return Err("sequence set too long".into());
            }
            if !self.eat(b',') {
                break;
            }
        }
        Ok(SequenceSet::Ranges(ranges))
    }

    /// `flag` (RFC 9051 §9): `\`atom or a keyword atom.
    fn flag(&mut self) -> PResult<String> {
        if self.eat(b'\\') {
            let a = self.atom()?;
            return Ok(format!("\\{a}"));
        }
        self.atom()
    }

    fn flag_list(&mut self) -> PResult<Vec<String>> {
        self.expect(b'(')?;
        let mut flags = Vec::new();
        if self.eat(b')') {
            return Ok(flags);
        }
        loop {
            flags.push(self.flag()?);
            if self.eat(b')') {
                return Ok(flags);
            }
            self.sp()?;
        }
    }

    /// `date` = date-text / DQUOTE date-text DQUOTE; date-text = dd-Mon-yyyy.
    fn date(&mut self) -> PResult<NaiveDate> {
        let quoted = self.eat(b'"');
        let text = self.take_while(|b| b.is_ascii_alphanumeric() || b == b'-');
        if quoted {
            self.expect(b'"')?;
        }
        parse_date_text(text).ok_or_else(|| "bad date".into())
    }

    /// `date-time` = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE
    fn date_time(&mut self) -> PResult<i64> {
        let s = self.quoted()?;
        parse_date_time(&s).ok_or_else(|| "bad date-time".into())
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

fn parse_date_text(text: &[u8]) -> Option<NaiveDate> {
    let s = std::str::from_utf8(text).ok()?;
    let mut it = s.split('-');
    let day: u32 = it.next()?.trim().parse().ok()?;
    let mon = it.next()?.to_ascii_lowercase();
    let year: i32 = it.next()?.parse().ok()?;
    if it.next().is_some() || !(1..=9999).contains(&year) {
        return None;
    }
    let month = MONTHS.iter().position(|m| *m == mon)? as u32 + 1;
    NaiveDate::from_ymd_opt(year, month, day)
}

/// Parses an IMAP `date-time` body (`"17-Jul-1996 02:44:25 -0700"`, day may
/// be space-padded) to Unix seconds.
pub fn parse_date_time(s: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(s).ok()?;
    let s = s.strip_prefix(' ').unwrap_or(s);
    let (date, rest) = s.split_once(' ')?;
    let (time, zone) = rest.split_once(' ')?;
    let date = parse_date_text(date.as_bytes())?;
    let mut t = time.split(':');
    let h: u32 = t.next()?.parse().ok()?;
    let m: u32 = t.next()?.parse().ok()?;
    let sec: u32 = t.next()?.parse().ok()?;
    if t.next().is_some() || time.len() != 8 {
        return None;
    }
    let time = NaiveTime::from_hms_opt(h, m, sec)?;
    let zb = zone.as_bytes();
    if zb.len() != 5 || !matches!(zb[0], b'+' | b'-') || !zb[1..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let zh: i64 = zone[1..3].parse().ok()?;
    let zm: i64 = zone[3..5].parse().ok()?;
    let offset = (zh * 3600 + zm * 60) * if zb[0] == b'-' { -1 } else { 1 };
    Some(NaiveDateTime::new(date, time).and_utc().timestamp() - offset)
}

/// Parses one complete command: the bytes of its lines with every literal
/// inline, ending in CRLF.
pub fn parse_command(input: &[u8]) -> Result<Command, ParseError> {
    let mut c = Cursor { buf: input, pos: 0 };
    let tag = c.take_while(is_tag_char);
    if tag.is_empty() {
        return Err(ParseError {
            tag: None,
            message: "missing tag".into(),
        });
    }
    let tag = String::from_utf8_lossy(tag).into_owned();
    let body = (|| {
        c.sp()?;
        let body = command_body(&mut c)?;
        c.crlf()?;
        Ok(body)
    })();
    body.map(|body| Command {
        tag: tag.clone(),
        body,
    })
    .map_err(|message: String| ParseError {
        tag: Some(tag),
        message,
    })
}

fn command_body(c: &mut Cursor<'_>) -> PResult<CommandBody> {
    let name = c.keyword()?;
    Ok(match name.as_str() {
        "CAPABILITY" => CommandBody::Capability,
        "NOOP" => CommandBody::Noop,
        "LOGOUT" => CommandBody::Logout,
        "STARTTLS" => CommandBody::StartTls,
        "NAMESPACE" => CommandBody::Namespace,
        "IDLE" => CommandBody::Idle,
        "CHECK" => CommandBody::Check,
        "CLOSE" => CommandBody::Close,
        "UNSELECT" => CommandBody::Unselect,
        "EXPUNGE" => CommandBody::Expunge,
        "AUTHENTICATE" => {
            c.sp()?;
            let mechanism = c.atom()?.to_ascii_uppercase();
            // RFC 4959 §3: initial-response = base64 / "="
            let initial = if c.eat(b' ') {
                if c.eat(b'=') {
                    Some(Vec::new())
                } else {
                    let b = c.take_while(|b| {
                        b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='
                    });
                    Some(
                        base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .map_err(|_| "bad base64 in initial response")?,
                    )
                }
            } else {
                None
            };
            CommandBody::Authenticate { mechanism, initial }
        }
        "LOGIN" => {
            c.sp()?;
            let username = c.astring()?;
            c.sp()?;
            let password = c.astring()?;
            CommandBody::Login { username, password }
        }
        "ENABLE" => {
            let mut caps = Vec::new();
            while c.eat(b' ') {
                caps.push(c.atom()?.to_ascii_uppercase());
            }
            if caps.is_empty() {
                return Err("ENABLE needs a capability".into());
            }
            CommandBody::Enable(caps)
        }
        "ID" => {
            c.sp()?;
            // RFC 2971 §4
            if c.eat_ci("NIL") {
                CommandBody::Id(None)
            } else {
                c.expect(b'(')?;
                let mut fields = Vec::new();
                if !c.eat(b')') {
                    loop {
                        let k = c.string()?;
                        c.sp()?;
                        let v = c.nstring()?;
                        if fields.len() < 30 {
                            fields.push((
                                String::from_utf8_lossy(&k).into_owned(),
                                v.map(|v| String::from_utf8_lossy(&v).into_owned()),
                            ));
                        }
                        if c.eat(b')') {
                            break;
                        }
                        c.sp()?;
                    }
                }
                CommandBody::Id(Some(fields))
            }
        }
        "SELECT" | "EXAMINE" => {
            c.sp()?;
            let mailbox = c.astring()?;
            let mut params = SelectParams::default();
            if c.eat(b' ') {
                c.expect(b'(')?;
                loop {
                    let p = c.keyword()?;
                    match p.as_str() {
                        "CONDSTORE" => params.condstore = true,
                        "QRESYNC" => {
                            // RFC 7162 §3.2.5
                            c.sp()?;
                            c.expect(b'(')?;
                            let uid_validity = c.nz_number()?;
                            c.sp()?;
                            let modseq = c.number64()?;
                            let mut known_uids = None;
                            let mut seq_match = None;
                            if c.eat(b' ') {
                                if c.peek() != Some(b'(') {
                                    known_uids = Some(c.sequence_set()?);
                                    c.eat(b' ');
                                }
                                if c.eat(b'(') {
                                    // seq-match-data = known-sequence-set SP known-uid-set
                                    let seqs = c.sequence_set()?;
                                    c.sp()?;
                                    let uids = c.sequence_set()?;
                                    c.expect(b')')?;
                                    seq_match = Some((seqs, uids));
                                }
                            }
                            c.expect(b')')?;
                            params.qresync = Some(QresyncParams {
                                uid_validity,
                                modseq,
                                known_uids,
                                seq_match,
                            });
                        }
                        _ => return Err(format!("unknown select parameter {p}")),
                    }
                    if c.eat(b')') {
                        break;
                    }
                    c.sp()?;
                }
            }
            CommandBody::Select {
                mailbox,
                read_only: name == "EXAMINE",
                params,
            }
        }
        "CREATE" => {
            c.sp()?;
            let mb = c.astring()?;
            // RFC 6154 §5.3 CREATE-SPECIAL-USE params are not supported.
            CommandBody::Create(mb)
        }
        "DELETE" => {
            c.sp()?;
            CommandBody::Delete(c.astring()?)
        }
        "RENAME" => {
            c.sp()?;
            let from = c.astring()?;
            c.sp()?;
            CommandBody::Rename(from, c.astring()?)
        }
        "SUBSCRIBE" => {
            c.sp()?;
            CommandBody::Subscribe(c.astring()?)
        }
        "UNSUBSCRIBE" => {
            c.sp()?;
            CommandBody::Unsubscribe(c.astring()?)
        }
        "LIST" => list(c)?,
        "LSUB" => {
            c.sp()?;
            let reference = c.astring()?;
            c.sp()?;
            let pattern = c.list_mailbox()?;
            CommandBody::Lsub { reference, pattern }
        }
        "STATUS" => {
            c.sp()?;
            let mailbox = c.astring()?;
            c.sp()?;
            CommandBody::Status {
                mailbox,
                items: status_items(c)?,
            }
        }
        "APPEND" => append(c)?,
        "SEARCH" => search(c, false)?,
        "SORT" => sort(c, false)?,
        "THREAD" => thread(c, false)?,
        "FETCH" => fetch(c, false)?,
        "STORE" => store(c, false)?,
        "COPY" | "MOVE" => copy_move(c, false, name == "MOVE")?,
        "UID" => {
            c.sp()?;
            let sub = c.keyword()?;
            match sub.as_str() {
                "SEARCH" => search(c, true)?,
                "SORT" => sort(c, true)?,
                "THREAD" => thread(c, true)?,
                "FETCH" => fetch(c, true)?,
                "STORE" => store(c, true)?,
                "COPY" | "MOVE" => copy_move(c, true, sub == "MOVE")?,
                "EXPUNGE" => {
                    c.sp()?;
                    CommandBody::UidExpunge(c.sequence_set()?)
                }
                _ => return Err(format!("unknown UID command {sub}")),
            }
        }
        "GETQUOTA" => {
            c.sp()?;
            CommandBody::GetQuota(c.astring()?)
        }
        "GETQUOTAROOT" => {
            c.sp()?;
            CommandBody::GetQuotaRoot(c.astring()?)
        }
        "SETQUOTA" => {
            // Parsed loosely: the command is always refused.
            c.pos = c
                .buf
                .len()
                .saturating_sub(if c.buf.ends_with(b"\r\n") { 2 } else { 1 });
            CommandBody::SetQuota
        }
        _ => return Err(format!("unknown command {name}")),
    })
}

fn status_items(c: &mut Cursor<'_>) -> PResult<Vec<StatusItem>> {
    c.expect(b'(')?;
    let mut items = Vec::new();
    loop {
        let k = c.keyword()?;
        items.push(match k.as_str() {
            "MESSAGES" => StatusItem::Messages,
            "UIDNEXT" => StatusItem::UidNext,
            "UIDVALIDITY" => StatusItem::UidValidity,
            "UNSEEN" => StatusItem::Unseen,
            "DELETED" => StatusItem::Deleted,
            "SIZE" => StatusItem::Size,
            "RECENT" => StatusItem::Recent,
            "HIGHESTMODSEQ" => StatusItem::HighestModSeq,
            _ => return Err(format!("unknown status item {k}")),
        });
        if c.eat(b')') {
            return Ok(items);
        }
        c.sp()?;
    }
}

// RFC 5258 §6 (LIST-EXTENDED grammar)
fn list(c: &mut Cursor<'_>) -> PResult<CommandBody> {
    c.sp()?;
    let mut select = Vec::new();
    if c.eat(b'(') {
        if !c.eat(b')') {
            loop {
                let k = c.keyword()?;
                select.push(match k.as_str() {
                    "SUBSCRIBED" => ListSelect::Subscribed,
                    "REMOTE" => ListSelect::Remote,
                    "RECURSIVEMATCH" => ListSelect::RecursiveMatch,
                    "SPECIAL-USE" => ListSelect::SpecialUse,
                    _ => return Err(format!("unknown LIST selection option {k}")),
                });
                if c.eat(b')') {
                    break;
                }
                c.sp()?;
            }
        }
        c.sp()?;
    }
    // RFC 5258 §3.1: RECURSIVEMATCH needs another selection option.
    if select.contains(&ListSelect::RecursiveMatch)
        && !select
            .iter()
            .any(|s| matches!(s, ListSelect::Subscribed | ListSelect::SpecialUse))
    {
        return Err("RECURSIVEMATCH alone".into());
    }
    let reference = c.astring()?;
    c.sp()?;
    let mut patterns = Vec::new();
    if c.eat(b'(') {
        loop {
            patterns.push(c.list_mailbox()?);
            if patterns.len() > 100 {
                return Err("too many patterns".into());
            }
            if c.eat(b')') {
                break;
            }
            c.sp()?;
        }
    } else {
        patterns.push(c.list_mailbox()?);
    }
    let mut returns = Vec::new();
    if c.eat(b' ') {
        if !c.eat_ci("RETURN") {
            return Err("expected RETURN".into());
        }
        c.sp()?;
        c.expect(b'(')?;
        if !c.eat(b')') {
            loop {
                let k = c.keyword()?;
                returns.push(match k.as_str() {
                    "SUBSCRIBED" => ListReturn::Subscribed,
                    "CHILDREN" => ListReturn::Children,
                    "SPECIAL-USE" => ListReturn::SpecialUse,
                    "STATUS" => {
                        c.sp()?;
                        ListReturn::Status(status_items(c)?)
                    }
                    _ => return Err(format!("unknown LIST return option {k}")),
                });
                if c.eat(b')') {
                    break;
                }
                c.sp()?;
            }
        }
    }
    Ok(CommandBody::List {
        select,
        reference,
        patterns,
        returns,
    })
}

// RFC 9051 §6.3.12: append = "APPEND" SP mailbox [SP flag-list] [SP date-time] SP literal
fn append(c: &mut Cursor<'_>) -> PResult<CommandBody> {
    c.sp()?;
    let mailbox = c.astring()?;
    c.sp()?;
    let mut flags = Vec::new();
    let mut date = None;
    if c.peek() == Some(b'(') {
        flags = c.flag_list()?;
        c.sp()?;
    }
    if c.peek() == Some(b'"') {
        date = Some(c.date_time()?);
        c.sp()?;
    }
    let message = c.literal()?;
    Ok(CommandBody::Append {
        mailbox,
        flags,
        date,
        message,
    })
}

fn copy_move(c: &mut Cursor<'_>, uid: bool, is_move: bool) -> PResult<CommandBody> {
    c.sp()?;
    let set = c.sequence_set()?;
    c.sp()?;
    let mailbox = c.astring()?;
    Ok(if is_move {
        CommandBody::Move { uid, set, mailbox }
    } else {
        CommandBody::Copy { uid, set, mailbox }
    })
}

// RFC 9051 §6.4.6, RFC 7162 §3.1.3
fn store(c: &mut Cursor<'_>, uid: bool) -> PResult<CommandBody> {
    c.sp()?;
    let set = c.sequence_set()?;
    c.sp()?;
    let mut unchanged_since = None;
    if c.eat(b'(') {
        loop {
            let k = c.keyword()?;
            if k != "UNCHANGEDSINCE" {
                return Err(format!("unknown STORE modifier {k}"));
            }
            c.sp()?;
            unchanged_since = Some(c.number64()?);
            if c.eat(b')') {
                break;
            }
            c.sp()?;
        }
        c.sp()?;
    }
    let mode = if c.eat(b'+') {
        StoreMode::Add
    } else if c.eat(b'-') {
        StoreMode::Remove
    } else {
        StoreMode::Replace
    };
    let k = c.keyword()?;
    let silent = match k.as_str() {
        "FLAGS" => false,
        "FLAGS.SILENT" => true,
        _ => return Err("expected FLAGS".into()),
    };
    c.sp()?;
    let flags = if c.peek() == Some(b'(') {
        c.flag_list()?
    } else {
        let mut f = vec![c.flag()?];
        while c.eat(b' ') {
            f.push(c.flag()?);
        }
        f
    };
    Ok(CommandBody::Store {
        uid,
        set,
        unchanged_since,
        mode,
        silent,
        flags,
    })
}

fn fetch(c: &mut Cursor<'_>, uid: bool) -> PResult<CommandBody> {
    c.sp()?;
    let set = c.sequence_set()?;
    c.sp()?;
    let mut attrs = Vec::new();
    if c.eat(b'(') {
        loop {
            attrs.push(fetch_att(c)?);
            if attrs.len() > 100 {
                return Err("too many fetch items".into());
            }
            if c.eat(b')') {
                break;
            }
            c.sp()?;
        }
    } else {
        let save = c.pos;
        let k = c.keyword()?;
        // RFC 9051 §6.4.5 macros
        match k.as_str() {
            "ALL" => attrs.extend([
                FetchAttr::Flags,
                FetchAttr::InternalDate,
                FetchAttr::Rfc822Size,
                FetchAttr::Envelope,
            ]),
            "FAST" => attrs.extend([
                FetchAttr::Flags,
                FetchAttr::InternalDate,
                FetchAttr::Rfc822Size,
            ]),
            "FULL" => attrs.extend([
                FetchAttr::Flags,
                FetchAttr::InternalDate,
                FetchAttr::Rfc822Size,
                FetchAttr::Envelope,
                FetchAttr::Body,
            ]),
            _ => {
                c.pos = save;
                attrs.push(fetch_att(c)?);
            }
        }
    }
    let mut changed_since = None;
    let mut vanished = false;
    if c.eat(b' ') {
        c.expect(b'(')?;
        loop {
            let k = c.keyword()?;
            match k.as_str() {
                "CHANGEDSINCE" => {
                    c.sp()?;
                    changed_since = Some(c.number64()?);
                }
                "VANISHED" => vanished = true,
                _ => return Err(format!("unknown FETCH modifier {k}")),
            }
            if c.eat(b')') {
                break;
            }
            c.sp()?;
        }
    }
    Ok(CommandBody::Fetch {
        uid,
        set,
        attrs,
        changed_since,
        vanished,
    })
}

fn partial(c: &mut Cursor<'_>) -> PResult<Option<Partial>> {
    if !c.eat(b'<') {
        return Ok(None);
    }
    let origin = c.number()?;
    c.expect(b'.')?;
    let length = c.nz_number()?;
    c.expect(b'>')?;
    Ok(Some(Partial { origin, length }))
}

fn section_part(c: &mut Cursor<'_>) -> PResult<Vec<u32>> {
    let mut part = Vec::new();
    while matches!(c.peek(), Some(b'1'..=b'9')) {
        part.push(c.nz_number()?);
        if part.len() > 64 {
            return Err("section too deep".into());
        }
        if !c.eat(b'.') {
            break;
        }
    }
    Ok(part)
}

fn header_list(c: &mut Cursor<'_>) -> PResult<Vec<String>> {
    c.sp()?;
    c.expect(b'(')?;
    let mut names = Vec::new();
    loop {
        let n = c.astring()?;
        names.push(String::from_utf8_lossy(&n).into_owned());
        if names.len() > 1000 {
            return Err("too many header names".into());
        }
        if c.eat(b')') {
            return Ok(names);
        }
        c.sp()?;
    }
}

// RFC 9051 §9: section = "[" [section-spec] "]"
fn section(c: &mut Cursor<'_>) -> PResult<Section> {
    c.expect(b'[')?;
    let part = section_part(c)?;
    let mut text = None;
    if c.peek() != Some(b']') {
        let k = c.keyword()?;
        text = Some(match k.as_str() {
            "HEADER" => SectionText::Header,
            "TEXT" => SectionText::Text,
            "MIME" if !part.is_empty() => SectionText::Mime,
            "HEADER.FIELDS" => SectionText::HeaderFields(header_list(c)?),
            "HEADER.FIELDS.NOT" => SectionText::HeaderFieldsNot(header_list(c)?),
            _ => return Err(format!("bad section {k}")),
        });
    } else if c.buf.get(c.pos.wrapping_sub(1)) == Some(&b'.') {
        return Err("bad section".into());
    }
    c.expect(b']')?;
    Ok(Section { part, text })
}

fn binary_section(c: &mut Cursor<'_>) -> PResult<Vec<u32>> {
    c.expect(b'[')?;
    let part = section_part(c)?;
    c.expect(b']')?;
    Ok(part)
}

fn fetch_att(c: &mut Cursor<'_>) -> PResult<FetchAttr> {
    let k = c.keyword()?;
    Ok(match k.as_str() {
        "ENVELOPE" => FetchAttr::Envelope,
        "FLAGS" => FetchAttr::Flags,
        "INTERNALDATE" => FetchAttr::InternalDate,
        "RFC822" => FetchAttr::Rfc822,
        "RFC822.HEADER" => FetchAttr::Rfc822Header,
        "RFC822.SIZE" => FetchAttr::Rfc822Size,
        "RFC822.TEXT" => FetchAttr::Rfc822Text,
        "BODYSTRUCTURE" => FetchAttr::BodyStructure,
        "UID" => FetchAttr::Uid,
        "MODSEQ" => FetchAttr::ModSeq,
        "BODY" if c.peek() != Some(b'[') => FetchAttr::Body,
        "BODY" | "BODY.PEEK" => {
            let section = section(c)?;
            FetchAttr::BodySection {
                peek: k == "BODY.PEEK",
                section,
                partial: partial(c)?,
            }
        }
        "BINARY" | "BINARY.PEEK" => {
            let part = binary_section(c)?;
            FetchAttr::Binary {
                peek: k == "BINARY.PEEK",
                part,
                partial: partial(c)?,
            }
        }
        "BINARY.SIZE" => FetchAttr::BinarySize {
            part: binary_section(c)?,
        },
        _ => return Err(format!("unknown fetch item {k}")),
    })
}

// RFC 9051 §6.4.4, RFC 4731 / RFC 5182 return options
fn search(c: &mut Cursor<'_>, uid: bool) -> PResult<CommandBody> {
    c.sp()?;
    let returns = search_return_opts(c)?;
    let mut charset = None;
    let save = c.pos;
    if c.eat_ci("CHARSET ") {
        charset = Some(String::from_utf8_lossy(&c.astring()?).to_ascii_uppercase());
        c.sp()?;
    } else {
        c.pos = save;
    }
    let criteria = search_criteria(c)?;
    Ok(CommandBody::Search {
        uid,
        returns,
        charset,
        criteria,
    })
}

/// `[RETURN (opts) SP]`: the ESEARCH / ESORT return options (RFC 4731 §3.1,
/// RFC 5267 §3.2), shared by SEARCH and SORT. `None` when absent.
fn search_return_opts(c: &mut Cursor<'_>) -> PResult<Option<Vec<SearchReturn>>> {
    let save = c.pos;
    if !c.eat_ci("RETURN ") {
        c.pos = save;
        return Ok(None);
    }
    c.expect(b'(')?;
    let mut r = Vec::new();
    if !c.eat(b')') {
        loop {
            let k = c.keyword()?;
            r.push(match k.as_str() {
                "MIN" => SearchReturn::Min,
                "MAX" => SearchReturn::Max,
                "ALL" => SearchReturn::All,
                "COUNT" => SearchReturn::Count,
                "SAVE" => SearchReturn::Save,
                _ => return Err(format!("unknown search return option {k}")),
            });
            if r.len() > 16 {
                return Err("too many return options".into());
            }
            if c.eat(b')') {
                break;
            }
            c.sp()?;
        }
    }
    c.sp()?;
    Ok(Some(r))
}

/// `1*(search-key)` separated by SP: the implicit AND of the top level.
fn search_criteria(c: &mut Cursor<'_>) -> PResult<SearchKey> {
    let mut keys = vec![search_key(c, 0)?];
    while c.eat(b' ') {
        keys.push(search_key(c, 0)?);
        if keys.len() > 1000 {
            return Err("too many search keys".into());
        }
    }
    Ok(if keys.len() == 1 {
        keys.pop().unwrap_or(SearchKey::All)
    } else {
        SearchKey::And(keys)
    })
}

/// `search-charset` of SORT and THREAD: mandatory, an astring.
fn sort_charset(c: &mut Cursor<'_>) -> PResult<String> {
    Ok(String::from_utf8_lossy(&c.astring()?).to_ascii_uppercase())
}

// RFC 5256 §5: sort = ["UID" SP] "SORT" SP sort-criteria SP search-criteria;
// RFC 5267 §3.2 adds [search-return-opts] before the criteria.
fn sort(c: &mut Cursor<'_>, uid: bool) -> PResult<CommandBody> {
    c.sp()?;
    let returns = search_return_opts(c)?;
    c.expect(b'(')?;
    let mut sort = Vec::new();
    loop {
        let mut k = c.keyword()?;
        let reverse = k == "REVERSE";
        if reverse {
            c.sp()?;
            k = c.keyword()?;
        }
        let key = match k.as_str() {
            "ARRIVAL" => SortKey::Arrival,
            "CC" => SortKey::Cc,
            "DATE" => SortKey::Date,
            "FROM" => SortKey::From,
            "SIZE" => SortKey::Size,
            "SUBJECT" => SortKey::Subject,
            "TO" => SortKey::To,
            "DISPLAYFROM" => SortKey::DisplayFrom,
            "DISPLAYTO" => SortKey::DisplayTo,
            _ => return Err(format!("unknown sort key {k}")),
        };
        sort.push(SortCriterion { reverse, key });
        if sort.len() > 32 {
            return Err("too many sort keys".into());
        }
        if c.eat(b')') {
            break;
        }
        c.sp()?;
    }
    c.sp()?;
    let charset = sort_charset(c)?;
    c.sp()?;
    let criteria = search_criteria(c)?;
    Ok(CommandBody::Sort {
        uid,
        returns,
        sort,
        charset,
        criteria,
    })
}

// RFC 5256 §5: thread = ["UID" SP] "THREAD" SP thread-alg SP search-charset
// 1*(SP search-key)
fn thread(c: &mut Cursor<'_>, uid: bool) -> PResult<CommandBody> {
    c.sp()?;
    let alg = c.keyword()?;
    let algorithm = match alg.as_str() {
        "ORDEREDSUBJECT" => ThreadAlgorithm::OrderedSubject,
        "REFERENCES" => ThreadAlgorithm::References,
        _ => return Err(format!("unknown threading algorithm {alg}")),
    };
    c.sp()?;
    let charset = sort_charset(c)?;
    c.sp()?;
    let criteria = search_criteria(c)?;
    Ok(CommandBody::Thread {
        uid,
        algorithm,
        charset,
        criteria,
    })
}

fn search_key(c: &mut Cursor<'_>, depth: usize) -> PResult<SearchKey> {
    if depth > MAX_SEARCH_DEPTH {
        return Err("search nested too deeply".into());
    }
    match c.peek() {
        Some(b'(') => {
            c.pos += 1;
            let mut keys = vec![search_key(c, depth + 1)?];
            while c.eat(b' ') {
                keys.push(search_key(c, depth + 1)?);
                if keys.len() > 1000 {
                    return Err("too many search keys".into());
                }
            }
            c.expect(b')')?;
            return Ok(SearchKey::And(keys));
        }
        Some(b'0'..=b'9') | Some(b'*') | Some(b'$') => {
            return Ok(SearchKey::SequenceSet(c.sequence_set()?));
        }
        _ => {}
    }
    let k = c.keyword()?;
    let string = |c: &mut Cursor<'_>| -> PResult<Vec<u8>> {
        c.sp()?;
        c.astring()
    };
    let date = |c: &mut Cursor<'_>| -> PResult<NaiveDate> {
        c.sp()?;
        c.date()
    };
    Ok(match k.as_str() {
        "ALL" => SearchKey::All,
        "ANSWERED" => SearchKey::Answered,
        "BCC" => SearchKey::Bcc(string(c)?),
        "BEFORE" => SearchKey::Before(date(c)?),
        "BODY" => SearchKey::Body(string(c)?),
        "CC" => SearchKey::Cc(string(c)?),
        "DELETED" => SearchKey::Deleted,
        "DRAFT" => SearchKey::Draft,
        "FLAGGED" => SearchKey::Flagged,
        "FROM" => SearchKey::From(string(c)?),
        "HEADER" => {
            let name = string(c)?;
            let value = string(c)?;
            SearchKey::Header(String::from_utf8_lossy(&name).into_owned(), value)
        }
        "KEYWORD" => {
            c.sp()?;
            SearchKey::Keyword(c.flag()?)
        }
        "LARGER" => {
            c.sp()?;
            SearchKey::Larger(c.number64()?)
        }
        "NEW" => SearchKey::New,
        "NOT" => {
            c.sp()?;
            SearchKey::Not(Box::new(search_key(c, depth + 1)?))
        }
        "OLD" => SearchKey::Old,
        "ON" => SearchKey::On(date(c)?),
        "OR" => {
            c.sp()?;
            let a = search_key(c, depth + 1)?;
            c.sp()?;
            let b = search_key(c, depth + 1)?;
            SearchKey::Or(Box::new(a), Box::new(b))
        }
        "RECENT" => SearchKey::Recent,
        "SEEN" => SearchKey::Seen,
        "SENTBEFORE" => SearchKey::SentBefore(date(c)?),
        "SENTON" => SearchKey::SentOn(date(c)?),
        "SENTSINCE" => SearchKey::SentSince(date(c)?),
        "SINCE" => SearchKey::Since(date(c)?),
        "SMALLER" => {
            c.sp()?;
            SearchKey::Smaller(c.number64()?)
        }
        "SUBJECT" => SearchKey::Subject(string(c)?),
        "TEXT" => SearchKey::Text(string(c)?),
        "TO" => SearchKey::To(string(c)?),
        "UID" => {
            c.sp()?;
            SearchKey::Uid(c.sequence_set()?)
        }
        "UNANSWERED" => SearchKey::Unanswered,
        "UNDELETED" => SearchKey::Undeleted,
        "UNDRAFT" => SearchKey::Undraft,
        "UNFLAGGED" => SearchKey::Unflagged,
        "UNKEYWORD" => {
            c.sp()?;
            SearchKey::Unkeyword(c.flag()?)
        }
        "UNSEEN" => SearchKey::Unseen,
        "MODSEQ" => {
            // RFC 7162 §3.1.5: MODSEQ [entry-name entry-type-req] mod-sequence-valzer
            c.sp()?;
            if c.peek() == Some(b'"') {
                c.quoted()?;
                c.sp()?;
                let t = c.keyword()?;
                if !matches!(t.as_str(), "PRIV" | "SHARED" | "ALL") {
                    return Err("bad MODSEQ entry type".into());
                }
                c.sp()?;
            }
            SearchKey::ModSeq(c.number64()?)
        }
        _ => return Err(format!("unknown search key {k}")),
    })
}

/// True when the line (without CRLF) ends in a literal announcement;
/// returns `(size, synchronizing, binary)`.
pub(crate) fn trailing_literal(line: &[u8]) -> Option<(u64, bool, bool)> {
    let body = line.strip_suffix(b"}")?;
    let open = body.iter().rposition(|b| *b == b'{')?;
    let inner = &body[open + 1..];
    let (digits, sync) = match inner.strip_suffix(b"+") {
        Some(d) => (d, false),
        None => (inner, true),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let binary = open > 0 && body[open - 1] == b'~';
    Some((n, sync, binary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Command {
        parse_command(s.as_bytes()).unwrap_or_else(|e| panic!("{s:?}: {e:?}"))
    }

    fn bad(s: &str) -> ParseError {
        parse_command(s.as_bytes()).expect_err(s)
    }

    #[test]
    fn simple_commands() {
        assert_eq!(p("a1 NOOP\r\n").body, CommandBody::Noop);
        assert_eq!(p("a1 capability\r\n").body, CommandBody::Capability);
        assert_eq!(p("x LOGOUT\n").tag, "x");
        assert_eq!(bad("\r\n").tag, None);
        assert_eq!(bad("a1 FOO\r\n").tag.as_deref(), Some("a1"));
        bad("a1 NOOP extra\r\n");
        bad("a+ NOOP\r\n");
    }

    #[test]
    fn login_with_quoted_and_literal() {
        let c = p("a LOGIN \"al\\\"ice\" {5}\r\nse cr\r\n");
        assert_eq!(
            c.body,
            CommandBody::Login {
                username: b"al\"ice".to_vec(),
                password: b"se cr".to_vec()
            }
        );
        let c = p("a LOGIN alice {3+}\r\nabc\r\n");
        assert!(matches!(c.body, CommandBody::Login { .. }));
        bad("a LOGIN alice {10}\r\nabc\r\n");
        bad("a LOGIN alice \"a\\b\"\r\n");
    }

    #[test]
    fn sequence_sets() {
        let c = p("a FETCH 1:3,5,*:7 FLAGS\r\n");
        let CommandBody::Fetch { set, .. } = c.body else {
            panic!()
        };
        assert!(set.contains(2, 10));
        assert!(!set.contains(4, 10));
        assert!(set.contains(8, 10));
        assert!(set.contains(10, 10));
        let c = p("a UID FETCH $ (UID)\r\n");
        assert!(matches!(
            c.body,
            CommandBody::Fetch {
                set: SequenceSet::Saved,
                uid: true,
                ..
            }
        ));
        bad("a FETCH 0 FLAGS\r\n");
        bad("a FETCH 1: FLAGS\r\n");
        bad("a FETCH 99999999999 FLAGS\r\n");
    }

    #[test]
    fn fetch_items() {
        let c = p(
            "a FETCH 1 (FLAGS BODY.PEEK[1.2.HEADER.FIELDS (From To)]<0.100> BINARY[1] BINARY.SIZE[2] MODSEQ) (CHANGEDSINCE 5)\r\n",
        );
        let CommandBody::Fetch {
            attrs,
            changed_since,
            ..
        } = c.body
        else {
            panic!()
        };
        assert_eq!(changed_since, Some(5));
        assert_eq!(
            attrs[1],
            FetchAttr::BodySection {
                peek: true,
                section: Section {
                    part: vec![1, 2],
                    text: Some(SectionText::HeaderFields(vec!["From".into(), "To".into()]))
                },
                partial: Some(Partial {
                    origin: 0,
                    length: 100
                })
            }
        );
        assert_eq!(attrs.len(), 5);
        let c = p("a FETCH 1 FULL\r\n");
        let CommandBody::Fetch { attrs, .. } = c.body else {
            panic!()
        };
        assert_eq!(attrs.len(), 5);
        p("a FETCH 1 BODY[]\r\n");
        p("a FETCH 1 BODY[2.MIME]\r\n");
        bad("a FETCH 1 BODY[MIME]\r\n");
        bad("a FETCH 1 BODY[1.]\r\n");
        bad("a FETCH 1 (FLAGS\r\n");
        bad("a FETCH 1 BODY[]<0.0>\r\n");
    }

    #[test]
    fn search_nesting() {
        let c = p(
            "a UID SEARCH RETURN (MIN COUNT) CHARSET UTF-8 OR (FROM \"x\" SINCE 1-Feb-2024) NOT SEEN 1:* UNDELETED\r\n",
        );
        let CommandBody::Search {
            uid,
            returns,
            charset,
            criteria,
        } = c.body
        else {
            panic!()
        };
        assert!(uid);
        assert_eq!(returns, Some(vec![SearchReturn::Min, SearchReturn::Count]));
        assert_eq!(charset.as_deref(), Some("UTF-8"));
        let SearchKey::And(keys) = criteria else {
            panic!()
        };
        assert_eq!(keys.len(), 3);
        assert!(matches!(&keys[0], SearchKey::Or(_, b) if matches!(**b, SearchKey::Not(_))));
        let deep = format!("a SEARCH {}ALL{}\r\n", "(".repeat(40), ")".repeat(40));
        bad(&deep);
        bad("a SEARCH\r\n");
        bad("a SEARCH SINCE 31-Feb-2024\r\n");
        p("a SEARCH SUBJECT {6}\r\n中文\r\n");
        p("a SEARCH MODSEQ \"/flags/\\\\draft\" all 620162338\r\n");
    }

    #[test]
    fn sort_and_thread() {
        let c = p(
            "a UID SORT RETURN (MIN ALL) (REVERSE DATE subject DISPLAYFROM) utf-8 SINCE 1-Feb-2024 NOT SEEN\r\n",
        );
        let CommandBody::Sort {
            uid,
            returns,
            sort,
            charset,
            criteria,
        } = c.body
        else {
            panic!()
        };
        assert!(uid);
        assert_eq!(returns, Some(vec![SearchReturn::Min, SearchReturn::All]));
        assert_eq!(
            sort,
            vec![
                SortCriterion {
                    reverse: true,
                    key: SortKey::Date
                },
                SortCriterion {
                    reverse: false,
                    key: SortKey::Subject
                },
                SortCriterion {
                    reverse: false,
                    key: SortKey::DisplayFrom
                },
            ]
        );
        assert_eq!(charset, "UTF-8");
        assert!(matches!(criteria, SearchKey::And(k) if k.len() == 2));
        let c = p("a SORT (ARRIVAL) \"US-ASCII\" ALL\r\n");
        assert!(matches!(c.body, CommandBody::Sort { returns: None, .. }));
        let c = p("a THREAD REFERENCES UTF-8 SUBJECT {6}\r\n中文\r\n");
        assert!(matches!(
            c.body,
            CommandBody::Thread {
                uid: false,
                algorithm: ThreadAlgorithm::References,
                ..
            }
        ));
        let c = p("a UID THREAD orderedsubject UTF-8 ALL\r\n");
        assert!(matches!(
            c.body,
            CommandBody::Thread {
                uid: true,
                algorithm: ThreadAlgorithm::OrderedSubject,
                ..
            }
        ));
        bad("a SORT (DATE) ALL\r\n");
        bad("a SORT DATE UTF-8 ALL\r\n");
        bad("a SORT () UTF-8 ALL\r\n");
        bad("a SORT (REVERSE) UTF-8 ALL\r\n");
        bad("a SORT (DATE) UTF-8\r\n");
        bad("a THREAD X UTF-8 ALL\r\n");
        bad("a THREAD REFERENCES UTF-8 \r\n");
        let many = format!("a SORT ({}) UTF-8 ALL\r\n", vec!["DATE"; 40].join(" "));
        bad(&many);
        let deep = format!(
            "a SORT (DATE) UTF-8 {}ALL{}\r\n",
            "(".repeat(40),
            ")".repeat(40)
        );
        bad(&deep);
    }

    #[test]
    fn append_with_flags_date_and_literal() {
        let c =
            p("a APPEND Drafts (\\Seen $Work) \" 7-Feb-1994 21:52:25 -0800\" {5+}\r\nhello\r\n");
        let CommandBody::Append {
            mailbox,
            flags,
            date,
            message,
        } = c.body
        else {
            panic!()
        };
        assert_eq!(mailbox, b"Drafts");
        assert_eq!(flags, vec!["\\Seen".to_string(), "$Work".into()]);
        assert_eq!(date, Some(760686745));
        assert_eq!(message, b"hello");
        bad("a APPEND INBOX \"31-Foo-2000 00:00:00 +0000\" {1}\r\nx\r\n");
    }

    #[test]
    fn list_extended() {
        let c = p(
            "a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (INBOX \"Sent*\" %) RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n",
        );
        let CommandBody::List {
            select,
            patterns,
            returns,
            ..
        } = c.body
        else {
            panic!()
        };
        assert_eq!(select.len(), 2);
        assert_eq!(patterns.len(), 3);
        assert_eq!(returns.len(), 2);
        bad("a LIST (RECURSIVEMATCH) \"\" *\r\n");
        p("a LIST \"\" *\r\n");
    }

    #[test]
    fn store_forms() {
        let c = p("a UID STORE 1:* (UNCHANGEDSINCE 12) +FLAGS.SILENT (\\Deleted)\r\n");
        assert!(matches!(
            c.body,
            CommandBody::Store {
                uid: true,
                unchanged_since: Some(12),
                mode: StoreMode::Add,
                silent: true,
                ..
            }
        ));
        p("a STORE 1 FLAGS \\Seen \\Flagged\r\n");
        bad("a STORE 1 +FLAG (\\Seen)\r\n");
    }

    #[test]
    fn authenticate_and_select() {
        let c = p("a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n");
        assert_eq!(
            c.body,
            CommandBody::Authenticate {
                mechanism: "PLAIN".into(),
                initial: Some(b"\0alice\0secret".to_vec())
            }
        );
        let c = p("a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))\r\n");
        assert!(matches!(c.body, CommandBody::Select { .. }));
        // RFC 7162 §3.2.5.2 example with seq-match-data.
        let c = p(
            "B02 SELECT INBOX (QRESYNC (67890007 90060115194045000 1:29997 (5000,7500,9000,9990:9999 15000,22500,27000,29970,29973,29976,29979,29982,29985,29988,29991,29994,29997)))\r\n",
        );
        let CommandBody::Select { params, .. } = c.body else {
            panic!("not a SELECT");
        };
        let q = params.qresync.expect("QRESYNC parameter");
        assert_eq!(q.uid_validity, 67890007);
        assert_eq!(q.modseq, 90060115194045000);
        assert!(q.known_uids.is_some_and(|k| k.contains(29997, 0)));
        let (seqs, uids) = q.seq_match.expect("seq-match-data");
        assert!(seqs.contains(9995, 0) && uids.contains(29979, 0));
        assert!(parse_command(b"a SELECT INBOX (QRESYNC (1 2 1:5 (1)))\r\n").is_err());
    }

    #[test]
    fn trailing_literal_detection() {
        assert_eq!(trailing_literal(b"a LOGIN {5}"), Some((5, true, false)));
        assert_eq!(
            trailing_literal(b"a APPEND x ~{5+}"),
            Some((5, false, true))
        );
        assert_eq!(trailing_literal(b"a LOGIN {}"), None);
        assert_eq!(trailing_literal(b"a NOOP"), None);
    }
}
