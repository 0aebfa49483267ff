//! SEARCH evaluation (RFC 9051 §6.4.4) on message metadata and, for text
//! keys, on MIME-decoded content via mail-parser (which decodes charsets
//! such as GB2312/GBK/GB18030/Big5 and RFC 2047 encoded words).

use std::borrow::Cow;
use std::sync::Arc;

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
/// or all of it when it has no body: the same block `BODY[HEADER]` and the
/// stores' header-only reads use ([`umail_core::store::header_len`]).
pub fn header_block(raw: &[u8]) -> &[u8] {
    &raw[..umail_core::store::header_len(raw)]
}

/// The header fields a [`HeaderSummary`] keeps: those of the SEARCH keys
/// mail clients send all the time (SUBJECT, FROM, TO, CC, BCC, and HEADER
/// on these names). Other fields (`Received`, ...) can be long and are
/// rarely searched, so HEADER on them parses the header block instead.
const SUMMARY_FIELDS: [&str; 5] = ["subject", "from", "to", "cc", "bcc"];

fn summary_field(name: &str) -> bool {
    SUMMARY_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(name))
}

/// True when a [`HeaderSummary`] answers `key` exactly as a parse of the
/// header block would: every content key is SUBJECT, FROM, TO, CC, BCC,
/// SENTBEFORE/ON/SINCE or HEADER on one of [`SUMMARY_FIELDS`].
pub fn summary_answers(key: &SearchKey) -> bool {
    match key {
        SearchKey::Body(_) | SearchKey::Text(_) => false,
        SearchKey::Header(name, _) => summary_field(name),
        SearchKey::Not(k) => summary_answers(k),
        SearchKey::Or(a, b) => summary_answers(a) && summary_answers(b),
        SearchKey::And(keys) => keys.iter().all(summary_answers),
        _ => true,
    }
}

/// One kept header field: its name as parsed, and the lower-cased texts a
/// header key compares against (decoded value and raw value).
#[derive(Debug)]
struct SummaryField {
    name: Box<str>,
    /// Lower-cased decoded text; empty when `raw` contains it (then a
    /// match in it is a match in `raw`, and keeping it would only cost
    /// memory).
    decoded: Box<str>,
    /// Lower-cased raw value as in the message.
    raw: Box<str>,
}

/// What the header-only SEARCH keys ([`summary_answers`]) need of one
/// message, computed once from the parse of its header block, with every
/// text already lower-cased: matching is then substring search only.
/// Messages never change once stored, so a summary can be kept for as long
/// as its message's identity stays the same ([`crate::cache`]).
#[derive(Debug)]
pub struct HeaderSummary {
    /// The header block parsed (otherwise no text key matches, as with
    /// unparsable content).
    parsed: bool,
    fields: Vec<SummaryField>,
    /// mail-parser's decoded Subject, lower-cased, when no kept Subject
    /// field already contains it.
    subject: Option<Box<str>>,
    /// The Date header's calendar date.
    sent: Option<NaiveDate>,
}

impl HeaderSummary {
    /// Parses a header block (or a whole message: only its header is
    /// used) into its summary.
    pub fn parse(header: &[u8]) -> HeaderSummary {
        match MessageParser::default().parse(header) {
            Some(msg) => HeaderSummary::of(&msg),
            None => HeaderSummary {
                parsed: false,
                fields: Vec::new(),
                subject: None,
                sent: None,
            },
        }
    }

    /// The summary of a parsed message.
    pub fn of(msg: &Message<'_>) -> HeaderSummary {
        let mut fields = Vec::new();
        for h in msg.headers() {
            let name = h.name.as_str();
            if !summary_field(name) {
                continue;
            }
            let decoded = header_text(&h.value).to_lowercase();
            let raw = msg
                .raw_message()
                .get(h.offset_start as usize..h.offset_end as usize)
                .unwrap_or_default();
            let raw = String::from_utf8_lossy(raw).to_lowercase();
            let decoded = if raw.contains(&decoded) {
                String::new()
            } else {
                decoded
            };
            fields.push(SummaryField {
                name: name.into(),
                decoded: decoded.into(),
                raw: raw.into(),
            });
        }
        let subject = msg.subject().map(str::to_lowercase).filter(|s| {
            !fields.iter().any(|f| {
                f.name.eq_ignore_ascii_case("subject")
                    && (f.raw.contains(s.as_str()) || f.decoded.contains(s.as_str()))
            })
        });
        HeaderSummary {
            parsed: true,
            fields,
            subject: subject.map(String::into_boxed_str),
            sent: sent_date(msg),
        }
    }

    /// Approximate heap and inline size, for the cache's memory bound.
    pub fn cost(&self) -> usize {
        std::mem::size_of::<HeaderSummary>()
            + self.subject.as_ref().map_or(0, |s| s.len())
            + self
                .fields
                .iter()
                .map(|f| {
                    std::mem::size_of::<SummaryField>()
                        + f.name.len()
                        + f.decoded.len()
                        + f.raw.len()
                })
                .sum::<usize>()
    }

    /// [`header_matches`] on the kept fields; `needle` is lower-cased.
    fn header_matches(&self, name: &str, needle: &str) -> bool {
        self.fields.iter().any(|f| {
            f.name.eq_ignore_ascii_case(name)
                && (needle.is_empty() || f.raw.contains(needle) || f.decoded.contains(needle))
        })
    }

    fn subject_matches(&self, needle: &str) -> bool {
        self.subject
            .as_deref()
            .is_some_and(|s| needle.is_empty() || s.contains(needle))
            || self.header_matches("Subject", needle)
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

/// What the text keys of one message are evaluated on: a parse of its
/// content (or header block), or its [`HeaderSummary`].
pub struct Content<'a> {
    msg: Option<Message<'a>>,
    summary: Option<Arc<HeaderSummary>>,
}

impl<'a> Content<'a> {
    /// Parses `raw` (`None` when there is no content to search).
    pub fn new(raw: Option<&'a [u8]>) -> Content<'a> {
        Content {
            msg: raw.and_then(|r| MessageParser::default().parse(r)),
            summary: None,
        }
    }

    /// Evaluates through a header summary (`None` when the message has no
    /// content any more). Only for criteria [`summary_answers`] accepts.
    pub fn summary(summary: Option<Arc<HeaderSummary>>) -> Content<'static> {
        Content { msg: None, summary }
    }

    /// A text key: `parsed` on the parse, `summarized` on the summary;
    /// false without content.
    fn check(
        &self,
        parsed: &dyn Fn(&Message<'_>) -> bool,
        summarized: &dyn Fn(&HeaderSummary) -> bool,
    ) -> bool {
        match (&self.msg, &self.summary) {
            (Some(m), _) => parsed(m),
            (None, Some(s)) => s.parsed && summarized(s),
            (None, None) => false,
        }
    }

    /// The parsed message, when there was content and it parsed (SORT
    /// reuses the parse SEARCH already made).
    pub fn message(&self) -> Option<&Message<'a>> {
        self.msg.as_ref()
    }
}

/// True when `s` is its own lower-case form (then lower-casing it again
/// is skipped: this runs once per message and key).
fn is_lowercase(s: &str) -> bool {
    s.chars().all(|c| {
        let mut l = c.to_lowercase();
        l.next() == Some(c) && l.next().is_none()
    })
}

/// The needle of a text key: the key's string, lower-cased (no copy when
/// it already is: see [`prepare`]).
fn lower(b: &[u8]) -> Cow<'_, str> {
    // The common case (an ASCII needle, already lower-cased by `prepare`)
    // without a per-character Unicode look-up.
    if b.is_ascii()
        && !b.iter().any(u8::is_ascii_uppercase)
        && let Ok(s) = std::str::from_utf8(b)
    {
        return Cow::Borrowed(s);
    }
    match String::from_utf8_lossy(b) {
        Cow::Borrowed(s) if is_lowercase(s) => Cow::Borrowed(s),
        s => Cow::Owned(s.to_lowercase()),
    }
}

/// `key` with the strings of its text keys lower-cased once, so that
/// [`matches`] does not lower-case (and allocate) them again for every
/// message. A string is replaced only when its lower-case form is stable
/// (lower-casing it again changes nothing), so that matching gives exactly
/// what it gives on `key`.
pub fn prepare(key: &SearchKey) -> SearchKey {
    let low = |s: &[u8]| -> Vec<u8> {
        let l = lower(s).into_owned();
        if is_lowercase(&l) {
            l.into_bytes()
        } else {
            s.to_vec()
        }
    };
    match key {
        SearchKey::Bcc(s) => SearchKey::Bcc(low(s)),
        SearchKey::Body(s) => SearchKey::Body(low(s)),
        SearchKey::Cc(s) => SearchKey::Cc(low(s)),
        SearchKey::From(s) => SearchKey::From(low(s)),
        SearchKey::Header(name, s) => SearchKey::Header(name.clone(), low(s)),
        SearchKey::Subject(s) => SearchKey::Subject(low(s)),
        SearchKey::Text(s) => SearchKey::Text(low(s)),
        SearchKey::To(s) => SearchKey::To(low(s)),
        SearchKey::Not(k) => SearchKey::Not(Box::new(prepare(k))),
        SearchKey::Or(a, b) => SearchKey::Or(Box::new(prepare(a)), Box::new(prepare(b))),
        SearchKey::And(keys) => SearchKey::And(keys.iter().map(prepare).collect()),
        other => other.clone(),
    }
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
        SearchKey::SentBefore(d) => content
            .check(&|msg| sent_date(msg).is_some_and(|x| x < *d), &|s| {
                s.sent.is_some_and(|x| x < *d)
            }),
        SearchKey::SentOn(d) => content
            .check(&|msg| sent_date(msg).is_some_and(|x| x == *d), &|s| {
                s.sent.is_some_and(|x| x == *d)
            }),
        SearchKey::SentSince(d) => content
            .check(&|msg| sent_date(msg).is_some_and(|x| x >= *d), &|s| {
                s.sent.is_some_and(|x| x >= *d)
            }),
        SearchKey::ModSeq(n) => m.modseq >= *n,
        SearchKey::Uid(set) => in_set(set, m.uid, ctx.max_uid, ctx.saved, Some(m.uid)),
        SearchKey::SequenceSet(set) => in_set(set, m.seq, ctx.exists, ctx.saved, Some(m.uid)),
        SearchKey::Not(k) => !matches(k, m, ctx, content),
        SearchKey::Or(a, b) => matches(a, m, ctx, content) || matches(b, m, ctx, content),
        SearchKey::And(keys) => keys.iter().all(|k| matches(k, m, ctx, content)),
        SearchKey::Subject(s) => {
            let n = lower(s);
            content.check(
                &|msg| {
                    msg.subject().is_some_and(|x| contains(x, &n))
                        || header_matches(msg, "Subject", &n)
                },
                &|sum| sum.subject_matches(&n),
            )
        }
        SearchKey::From(s) => header_key(content, "From", s),
        SearchKey::To(s) => header_key(content, "To", s),
        SearchKey::Cc(s) => header_key(content, "Cc", s),
        SearchKey::Bcc(s) => header_key(content, "Bcc", s),
        SearchKey::Header(name, s) => header_key(content, name, s),
        // A summary has no body: these keys never go through one
        // (`summary_answers`).
        SearchKey::Body(s) => {
            let n = lower(s);
            content.check(&|msg| body_matches(msg, &n), &|_| false)
        }
        SearchKey::Text(s) => {
            let n = lower(s);
            content.check(
                &|msg| {
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
                },
                &|_| false,
            )
        }
    }
}

/// FROM, TO, CC, BCC and HEADER: a substring of a field's decoded or raw
/// value; an empty string matches any message that has the field.
fn header_key(content: &Content<'_>, name: &str, s: &[u8]) -> bool {
    let n = lower(s);
    content.check(&|msg| header_matches(msg, name, &n), &|sum| {
        sum.header_matches(name, &n)
    })
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
    fn prepared_keys_match_as_the_originals() {
        let key = SearchKey::Or(
            Box::new(SearchKey::Subject("Big NeeDLE".as_bytes().to_vec())),
            Box::new(SearchKey::Not(Box::new(SearchKey::Header(
                "X-Tag".into(),
                b"ABC".to_vec(),
            )))),
        );
        let prepared = prepare(&key);
        assert_eq!(
            prepared,
            SearchKey::Or(
                Box::new(SearchKey::Subject("big needle".as_bytes().to_vec())),
                Box::new(SearchKey::Not(Box::new(SearchKey::Header(
                    "X-Tag".into(),
                    b"abc".to_vec()
                )))),
            )
        );
        assert!(matches!(lower(b"needle"), Cow::Borrowed("needle")));
        assert_eq!(lower(b"N\xc3\x89E"), "n\u{e9}e");
        let raw = b"Subject: Big NEEDLE\r\nX-Tag: abc\r\n\r\n";
        let flags = Flags::new();
        let ctx = SearchContext {
            exists: 1,
            max_uid: 10,
            saved: &[],
        };
        for k in [&key, &prepared] {
            assert!(matches(
                k,
                &cand(&flags),
                &ctx,
                &mut Content::new(Some(raw))
            ));
            let summary = Some(Arc::new(HeaderSummary::parse(raw)));
            // HEADER X-Tag is not in a summary: only the SUBJECT side.
            let subject = match k {
                SearchKey::Or(a, _) => a,
                _ => unreachable!(),
            };
            assert!(matches(
                subject,
                &cand(&flags),
                &ctx,
                &mut Content::summary(summary)
            ));
        }
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
