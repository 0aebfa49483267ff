//! SEARCH evaluation (RFC 9051 §6.4.4) on message metadata and, for text
//! keys, on MIME-decoded content via mail-parser (which decodes charsets
//! such as GB2312/GBK/GB18030/Big5 and RFC 2047 encoded words).

use chrono::{DateTime, NaiveDate};
use mail_parser::{Address, HeaderValue, Message, MessageParser};
use umail_core::{Flag, Flags, ModSeq, Uid};

use crate::codec::{SearchKey, SequenceSet};

/// What the evaluator knows about one message.
#[derive(Debug)]
pub struct Candidate<'a> {
    /// Sequence number.
    pub seq: u32,
    /// UID.
    pub uid: Uid,
    /// Flags.
    pub flags: &'a Flags,
    /// MODSEQ.
    pub modseq: ModSeq,
    /// Internal date (Unix seconds).
    pub internal_date: i64,
    /// Size in octets.
    pub size: u64,
}

/// Context shared by all candidates of one SEARCH.
#[derive(Debug)]
pub struct SearchContext<'a> {
    /// Number of messages (`*` for sequence numbers).
    pub exists: u32,
    /// Largest UID (`*` for UIDs).
    pub max_uid: Uid,
    /// The saved result (`$`), as UIDs.
    pub saved: &'a [Uid],
}

/// True when evaluating `key` needs the message content.
pub fn needs_content(key: &SearchKey) -> bool {
    match key {
        SearchKey::Bcc(_)
        | SearchKey::Body(_)
        | SearchKey::Cc(_)
        | SearchKey::From(_)
        | SearchKey::Header(..)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_)
        | SearchKey::Subject(_)
        | SearchKey::Text(_)
        | SearchKey::To(_) => true,
        SearchKey::Not(k) => needs_content(k),
        SearchKey::Or(a, b) => needs_content(a) || needs_content(b),
        SearchKey::And(keys) => keys.iter().any(needs_content),
        _ => false,
    }
}

/// True when evaluating `key` needs the message body, not only its header
/// (`BODY`, `TEXT`).
pub fn needs_body(key: &SearchKey) -> bool {
    match key {
        SearchKey::Body(_) | SearchKey::Text(_) => true,
        SearchKey::Not(k) => needs_body(k),
        SearchKey::Or(a, b) => needs_body(a) || needs_body(b),
        SearchKey::And(keys) => keys.iter().any(needs_body),
        _ => false,
    }
}

/// The header block of a message (up to and including the blank line),
/// or all of it when it has no body.
pub fn header_block(raw: &[u8]) -> &[u8] {
    let crlf = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = raw.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => &raw[..a.min(b)],
        (Some(a), None) | (None, Some(a)) => &raw[..a],
        (None, None) => raw,
    }
}

/// True when `key` uses MODSEQ (the SEARCH response then carries it).
pub fn uses_modseq(key: &SearchKey) -> bool {
    match key {
        SearchKey::ModSeq(_) => true,
        SearchKey::Not(k) => uses_modseq(k),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        SearchKey::And(keys) => keys.iter().any(uses_modseq),
        _ => false,
    }
}

/// Parsed content, lazily built.
pub struct Content<'a> {
    msg: Option<Message<'a>>,
}

impl<'a> Content<'a> {
    /// Parses `raw` (`None` when there is no content to search).
    pub fn new(raw: Option<&'a [u8]>) -> Content<'a> {
        Content {
            msg: raw.and_then(|r| MessageParser::default().parse(r)),
        }
    }

    /// The parsed message, when there was content and it parsed (SORT
    /// reuses the parse SEARCH already made).
    pub fn message(&self) -> Option<&Message<'a>> {
        self.msg.as_ref()
    }
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_lowercase()
}

fn contains(hay: &str, needle: &str) -> bool {
    // RFC 9051 §6.4.4: case-insensitive substring match.
    needle.is_empty() || hay.to_lowercase().contains(needle)
}

fn address_text(a: &Address<'_>) -> String {
    let mut out = String::new();
    let mut push = |name: Option<&str>, addr: Option<&str>| {
        if let Some(n) = name {
            out.push_str(n);
            out.push(' ');
        }
        if let Some(a) = addr {
            out.push('<');
            out.push_str(a);
            out.push_str("> ");
        }
    };
    match a {
        Address::List(list) => {
            for x in list {
                push(x.name.as_deref(), x.address.as_deref());
            }
        }
        Address::Group(groups) => {
            for g in groups {
                push(g.name.as_deref(), None);
                for x in &g.addresses {
                    push(x.name.as_deref(), x.address.as_deref());
                }
            }
        }
    }
    out
}

fn header_text(v: &HeaderValue<'_>) -> String {
    match v {
        HeaderValue::Text(t) => t.to_string(),
        HeaderValue::TextList(l) => l.join(" "),
        HeaderValue::Address(a) => address_text(a),
        HeaderValue::DateTime(d) => d.to_rfc822(),
        HeaderValue::ContentType(c) => {
            let mut s = c.c_type.to_string();
            if let Some(sub) = &c.c_subtype {
                s.push('/');
                s.push_str(sub);
            }
            s
        }
        _ => String::new(),
    }
}

fn header_matches(msg: &Message<'_>, name: &str, needle: &str) -> bool {
    let mut found = false;
    for h in msg.headers() {
        if h.name.as_str().eq_ignore_ascii_case(name) {
            // RFC 9051 §6.4.4: an empty string matches any message that has the field.
            if needle.is_empty() {
                return true;
            }
            found |= contains(&header_text(&h.value), needle);
            if !found {
                let raw = msg
                    .raw_message()
                    .get(h.offset_start as usize..h.offset_end as usize)
                    .unwrap_or_default();
                found |= contains(&String::from_utf8_lossy(raw), needle);
            }
            if found {
                return true;
            }
        }
    }
    false
}

fn body_matches(msg: &Message<'_>, needle: &str) -> bool {
    for i in 0..msg.text_body_count() {
        if msg.body_text(i).is_some_and(|t| contains(&t, needle)) {
            return true;
        }
    }
    for i in 0..msg.html_body_count() {
        if msg.body_html(i).is_some_and(|t| contains(&t, needle)) {
            return true;
        }
    }
    false
}

fn sent_date(msg: &Message<'_>) -> Option<NaiveDate> {
    let d = msg.date()?;
    NaiveDate::from_ymd_opt(d.year as i32, d.month as u32, d.day as u32)
}

fn internal_date(secs: i64) -> Option<NaiveDate> {
    DateTime::from_timestamp(secs, 0).map(|d| d.date_naive())
}

fn in_set(set: &SequenceSet, n: u32, largest: u32, saved: &[Uid], saved_as: Option<u32>) -> bool {
    match set {
        SequenceSet::Saved => saved_as.is_some_and(|u| saved.contains(&u)),
        _ => set.contains(n, largest),
    }
}

/// Evaluates `key` for one message.
pub fn matches(
    key: &SearchKey,
    m: &Candidate<'_>,
    ctx: &SearchContext<'_>,
    content: &mut Content<'_>,
) -> bool {
    let has = |f: Flag| m.flags.contains(&f);
    let keyword = |k: &str| {
        m.flags
            .iter()
            .any(|f| matches!(f, Flag::Keyword(x) if x.eq_ignore_ascii_case(k)))
            || Flag::parse(k).is_some_and(|f| m.flags.contains(&f))
    };
    let text_key = |content: &mut Content<'_>, f: &dyn Fn(&Message<'_>) -> bool| {
        content.msg.as_ref().is_some_and(f)
    };
    match key {
        SearchKey::All => true,
        SearchKey::Answered => has(Flag::Answered),
        SearchKey::Deleted => has(Flag::Deleted),
        SearchKey::Draft => has(Flag::Draft),
        SearchKey::Flagged => has(Flag::Flagged),
        SearchKey::Seen => has(Flag::Seen),
        SearchKey::Unanswered => !has(Flag::Answered),
        SearchKey::Undeleted => !has(Flag::Deleted),
        SearchKey::Undraft => !has(Flag::Draft),
        SearchKey::Unflagged => !has(Flag::Flagged),
        SearchKey::Unseen => !has(Flag::Seen),
        // \Recent is never set (removed in IMAP4rev2): NEW and RECENT match nothing.
        SearchKey::New | SearchKey::Recent => false,
        SearchKey::Old => true,
        SearchKey::Keyword(k) => keyword(k),
        SearchKey::Unkeyword(k) => !keyword(k),
        SearchKey::Larger(n) => m.size > *n,
        SearchKey::Smaller(n) => m.size < *n,
        SearchKey::Before(d) => internal_date(m.internal_date).is_some_and(|x| x < *d),
        SearchKey::On(d) => internal_date(m.internal_date).is_some_and(|x| x == *d),
        SearchKey::Since(d) => internal_date(m.internal_date).is_some_and(|x| x >= *d),
        SearchKey::SentBefore(d) => {
            text_key(content, &|msg| sent_date(msg).is_some_and(|x| x < *d))
        }
        SearchKey::SentOn(d) => text_key(content, &|msg| sent_date(msg).is_some_and(|x| x == *d)),
        SearchKey::SentSince(d) => {
            text_key(content, &|msg| sent_date(msg).is_some_and(|x| x >= *d))
        }
        SearchKey::ModSeq(n) => m.modseq >= *n,
        SearchKey::Uid(set) => in_set(set, m.uid, ctx.max_uid, ctx.saved, Some(m.uid)),
        SearchKey::SequenceSet(set) => in_set(set, m.seq, ctx.exists, ctx.saved, Some(m.uid)),
        SearchKey::Not(k) => !matches(k, m, ctx, content),
        SearchKey::Or(a, b) => matches(a, m, ctx, content) || matches(b, m, ctx, content),
        SearchKey::And(keys) => keys.iter().all(|k| matches(k, m, ctx, content)),
        SearchKey::Subject(s) => {
            let n = lower(s);
            text_key(content, &|msg| {
                msg.subject().is_some_and(|x| contains(x, &n)) || header_matches(msg, "Subject", &n)
            })
        }
        SearchKey::From(s) => {
            let n = lower(s);
            text_key(content, &|msg| header_matches(msg, "From", &n))
        }
        SearchKey::To(s) => {
            let n = lower(s);
            text_key(content, &|msg| header_matches(msg, "To", &n))
        }
        SearchKey::Cc(s) => {
            let n = lower(s);
            text_key(content, &|msg| header_matches(msg, "Cc", &n))
        }
        SearchKey::Bcc(s) => {
            let n = lower(s);
            text_key(content, &|msg| header_matches(msg, "Bcc", &n))
        }
        SearchKey::Header(name, s) => {
            let n = lower(s);
            text_key(content, &|msg| header_matches(msg, name, &n))
        }
        SearchKey::Body(s) => {
            let n = lower(s);
            text_key(content, &|msg| body_matches(msg, &n))
        }
        SearchKey::Text(s) => {
            let n = lower(s);
            text_key(content, &|msg| {
                body_matches(msg, &n)
                    || msg
                        .headers()
                        .iter()
                        .any(|h| contains(&header_text(&h.value), &n))
                    || contains(
                        &String::from_utf8_lossy(
                            msg.raw_message()
                                .get(..msg.root_part().offset_body as usize)
                                .unwrap_or_default(),
                        ),
                        &n,
                    )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(flags: &Flags) -> Candidate<'_> {
        Candidate {
            seq: 1,
            uid: 10,
            flags,
            modseq: 5,
            internal_date: 1_700_000_000,
            size: 100,
        }
    }

    #[test]
    fn gbk_subject_and_body_are_decoded() {
        // "中文" in GBK is D6 D0 CE C4.
        let mut raw = b"Subject: =?GB2312?B?1tDOxA==?=\r\nFrom: =?GBK?B?1cXI/Q==?= <zs@example.cn>\r\nContent-Type: text/plain; charset=gbk\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".to_vec();
        raw.extend_from_slice(b"\xd5\xe2\xca\xc7\xd6\xd0\xce\xc4\r\n");
        let flags = Flags::new();
        let ctx = SearchContext {
            exists: 1,
            max_uid: 10,
            saved: &[],
        };
        let mut content = Content::new(Some(&raw));
        let c = cand(&flags);
        assert!(matches(
            &SearchKey::Subject("中文".as_bytes().to_vec()),
            &c,
            &ctx,
            &mut content
        ));
        assert!(matches(
            &SearchKey::Body("是中文".as_bytes().to_vec()),
            &c,
            &ctx,
            &mut content
        ));
        assert!(matches(
            &SearchKey::From("张三".as_bytes().to_vec()),
            &c,
            &ctx,
            &mut content
        ));
        assert!(matches(
            &SearchKey::From(b"ZS@EXAMPLE".to_vec()),
            &c,
            &ctx,
            &mut content
        ));
        assert!(!matches(
            &SearchKey::Body("英文".as_bytes().to_vec()),
            &c,
            &ctx,
            &mut content
        ));
        assert!(matches(
            &SearchKey::Header("content-type".into(), vec![]),
            &c,
            &ctx,
            &mut content
        ));
    }

    #[test]
    fn header_block_stops_at_the_blank_line() {
        assert_eq!(
            header_block(b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\n"),
            b"A: 1\r\nB: 2\r\n\r\n"
        );
        assert_eq!(header_block(b"A: 1\n\nbody"), b"A: 1\n\n");
        assert_eq!(header_block(b"A: 1\r\n"), b"A: 1\r\n");
        let k = SearchKey::And(vec![SearchKey::Subject(b"x".to_vec()), SearchKey::Seen]);
        assert!(!needs_body(&k));
        assert!(needs_body(&SearchKey::Not(Box::new(SearchKey::Text(
            b"x".to_vec()
        )))));
    }

    #[test]
    fn flags_sizes_and_sets() {
        let mut flags = Flags::new();
        flags.insert(Flag::Seen);
        flags.insert(Flag::Keyword("$Work".into()));
        let c = cand(&flags);
        let ctx = SearchContext {
            exists: 3,
            max_uid: 12,
            saved: &[10],
        };
        let mut content = Content::new(None);
        let key = SearchKey::And(vec![
            SearchKey::Seen,
            SearchKey::Keyword("$work".into()),
            SearchKey::Or(
                Box::new(SearchKey::Larger(500)),
                Box::new(SearchKey::Smaller(101)),
            ),
            SearchKey::Not(Box::new(SearchKey::Deleted)),
            SearchKey::Uid(SequenceSet::Saved),
            SearchKey::ModSeq(5),
        ]);
        assert!(matches(&key, &c, &ctx, &mut content));
        assert!(!matches(&SearchKey::Unseen, &c, &ctx, &mut content));
        assert!(!matches(
            &SearchKey::Subject(b"x".to_vec()),
            &c,
            &ctx,
            &mut content
        ));
        assert!(needs_content(&SearchKey::Not(Box::new(SearchKey::Body(
            vec![]
        )))));
    }
}
