//! SORT and THREAD (RFC 5256), the ordering behind ESORT (RFC 5267) and
//! the DISPLAYFROM / DISPLAYTO keys (RFC 5957).
//!
//! The session selects messages with the SEARCH evaluator, builds one
//! [`SortMessage`] per hit from the header parsed by mail-parser (the same
//! parser and RFC 2047 / charset decoding SEARCH uses) and hands them here.
//! Nothing in this module recurses over message data: thread trees of any
//! depth are walked with explicit stacks, and the References handling is
//! bounded ([`MAX_REFERENCES`], [`MAX_THREAD_DEPTH`]) so that a hostile
//! header cannot make THREAD quadratic in its length.

use std::cmp::Ordering;
use std::collections::HashMap;

use mail_parser::{Address, HeaderValue, Message};
use umail_core::Uid;

use crate::codec::{SortCriterion, SortKey};

/// At most this many Message-IDs of one message's References header are
/// used (the last ones, nearest the message). RFC 5256 §4 step 1.B already
/// expects truncated References; the bound keeps a megabyte of IDs from
/// costing a megabyte of links.
pub const MAX_REFERENCES: usize = 64;

/// Parent/child links are refused when the would-be parent is more than
/// this many levels deep. The loop check of RFC 5256 §4 step 1.A walks up
/// from the parent; the bound caps that walk (no real discussion is a
/// thousand replies deep).
pub const MAX_THREAD_DEPTH: usize = 1000;

/// What SORT and THREAD need to know about one message.
#[derive(Debug, Clone, Default)]
pub struct SortMessage {
    /// Sequence number (the final tie-breaker, RFC 5256 §3).
    pub seq: u32,
    /// UID.
    pub uid: Uid,
    /// INTERNALDATE, Unix seconds.
    pub internal_date: i64,
    /// RFC822.SIZE.
    pub size: u64,
    /// Sent date (RFC 5256 §2.2), Unix seconds: the Date header, or the
    /// internal date when it is missing or cannot be parsed.
    pub sent_date: i64,
    /// The base subject (RFC 5256 §2.1), `i;ascii-casemap`ped.
    pub subject: Vec<u8>,
    /// True when base-subject extraction removed `Re:`, `Fwd:`, `(fwd)` or
    /// `[fwd: ...]` (used by REFERENCES step 5).
    pub is_reply: bool,
    /// addr-mailbox of the first From address, casemapped.
    pub from: Vec<u8>,
    /// addr-mailbox of the first To address, casemapped.
    pub to: Vec<u8>,
    /// addr-mailbox of the first Cc address, casemapped.
    pub cc: Vec<u8>,
    /// RFC 5957 display form of the first From address, casemapped.
    pub display_from: Vec<u8>,
    /// RFC 5957 display form of the first To address, casemapped.
    pub display_to: Vec<u8>,
    /// The Message-ID, without angle brackets.
    pub message_id: Option<String>,
    /// References (or, without any, the first In-Reply-To ID), oldest
    /// first, at most [`MAX_REFERENCES`].
    pub references: Vec<String>,
}

/// `i;ascii-casemap` (RFC 4790 §9.2): ASCII letters upper-cased, every
/// other octet (UTF-8 included) compared as is.
fn casemap(s: &str) -> Vec<u8> {
    s.as_bytes().to_ascii_uppercase()
}

/// addr-mailbox (the local part) of the first mailbox of an address list:
/// the part before the last `@` (a quoted local part may contain `@`).
fn addr_mailbox(a: Option<&Address<'_>>) -> Vec<u8> {
    let Some(addr) = a.and_then(|a| a.first()).and_then(|x| x.address.as_deref()) else {
        return Vec::new();
    };
    let local = addr.rsplit_once('@').map(|(l, _)| l).unwrap_or(addr);
    casemap(local)
}

/// RFC 5957 §3: the display name (RFC 2047-decoded by mail-parser) of the
/// first mailbox when present and not empty, otherwise its addr-spec.
fn display_address(a: Option<&Address<'_>>) -> Vec<u8> {
    let Some(first) = a.and_then(|a| a.first()) else {
        return Vec::new();
    };
    match first.name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() => casemap(n),
        _ => first.address.as_deref().map(casemap).unwrap_or_default(),
    }
}

fn id_list(v: &HeaderValue<'_>) -> Vec<String> {
    v.as_text_list()
        .map(|l| {
            l.iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl SortMessage {
    /// Builds the sort data of one message from its parsed header (`None`
    /// when the content could not be read: every header key is then empty
    /// and the sent date is the internal date).
    pub fn new(
        seq: u32,
        uid: Uid,
        internal_date: i64,
        size: u64,
        msg: Option<&Message<'_>>,
    ) -> SortMessage {
        let mut m = SortMessage {
            seq,
            uid,
            internal_date,
            size,
            sent_date: internal_date,
            ..SortMessage::default()
        };
        let Some(msg) = msg else {
            return m;
        };
        if let Some(d) = msg.date().filter(|d| d.is_valid()) {
            // RFC 5256 §2.2: compared in UTC.
            m.sent_date = d.to_timestamp();
        }
        let (subject, is_reply) = base_subject(msg.subject().unwrap_or_default());
        m.subject = casemap(&subject);
        m.is_reply = is_reply;
        m.from = addr_mailbox(msg.from());
        m.to = addr_mailbox(msg.to());
        m.cc = addr_mailbox(msg.cc());
        m.display_from = display_address(msg.from());
        m.display_to = display_address(msg.to());
        m.message_id = msg
            .message_id()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let mut refs = id_list(msg.references());
        if refs.is_empty() {
            // RFC 5256 §4 step 1: In-Reply-To when References has no IDs.
            refs = id_list(msg.in_reply_to());
            refs.truncate(1);
        }
        if refs.len() > MAX_REFERENCES {
            refs.drain(..refs.len() - MAX_REFERENCES);
        }
        m.references = refs;
        m
    }

    fn date_key(&self) -> (i64, u32) {
        (self.sent_date, self.seq)
    }
}

// ----- base subject (RFC 5256 §2.1) -----

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn ends_with_ci(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// Length of a `subj-blob` (`"[" *BLOBCHAR "]" *WSP`) at the start of `s`.
fn blob_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if b.first() != Some(&b'[') {
        return None;
    }
    let close = b[1..].iter().position(|c| *c == b'[' || *c == b']')? + 1;
    if b[close] != b']' {
        return None;
    }
    let mut i = close + 1;
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    Some(i)
}

/// Length of a `subj-refwd` (`("re" / ("fw" ["d"])) *WSP [subj-blob] ":"`)
/// at the start of `s`.
fn refwd_len(s: &str) -> Option<usize> {
    let mut i = if starts_with_ci(s, "re") {
        2
    } else if starts_with_ci(s, "fwd") {
        3
    } else if starts_with_ci(s, "fw") {
        2
    } else {
        return None;
    };
    let b = s.as_bytes();
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    if let Some(n) = blob_len(&s[i..]) {
        i += n;
    }
    (b.get(i) == Some(&b':')).then_some(i + 1)
}

/// Length of a `subj-leader` at the start of `s`:
/// `(*subj-blob subj-refwd) / WSP`.
fn leader_len(s: &str) -> Option<usize> {
    if s.starts_with(' ') {
        return Some(1);
    }
    let mut i = 0;
    while let Some(n) = blob_len(&s[i..]) {
        i += n;
    }
    refwd_len(&s[i..]).map(|n| i + n)
}

/// Extracts the base subject (RFC 5256 §2.1) of an already RFC 2047-decoded
/// subject, and whether it was a reply or forward (something was removed
/// in steps 2, 3 or 6 other than whitespace and blobs).
pub fn base_subject(subject: &str) -> (String, bool) {
    // (1) Tabs and continuations become spaces, runs of spaces one space.
    let mut s = String::with_capacity(subject.len());
    for ch in subject.chars() {
        let ch = if matches!(ch, '\t' | '\r' | '\n') {
            ' '
        } else {
            ch
        };
        if ch == ' ' && s.ends_with(' ') {
            continue;
        }
        s.push(ch);
    }
    let mut is_reply = false;
    let mut s = s.as_str();
    loop {
        // (2) Trailing "(fwd)" and whitespace.
        loop {
            if let Some(t) = s.strip_suffix(' ') {
                s = t;
            } else if ends_with_ci(s, "(fwd)") {
                s = &s[..s.len() - 5];
                is_reply = true;
            } else {
                break;
            }
        }
        // (5) Repeat (3) and (4) until nothing more matches.
        loop {
            let mut changed = false;
            // (3) Leading subj-leader: whitespace, or blobs then Re/Fw/Fwd.
            while let Some(n) = leader_len(s) {
                if !s.starts_with(' ') {
                    is_reply = true;
                }
                s = &s[n..];
                changed = true;
            }
            // (4) A leading blob, unless nothing would be left of the
            // subject (`s` has no trailing space after step 2, so anything
            // left is non-empty). Step 3 cannot match again until every
            // leading blob is gone (a refwd never starts with "["), so all
            // are removed here at once: one at a time would rescan the
            // rest of the blobs each round, quadratic in a hostile
            // "[][][]..." subject.
            while let Some(n) = blob_len(s)
                && n < s.len()
            {
                s = &s[n..];
                changed = true;
            }
            if !changed {
                break;
            }
        }
        // (6) "[fwd: ... ]" wrapping: unwrap and start again at (2).
        if starts_with_ci(s, "[fwd:") && s.ends_with(']') {
            s = &s[5..s.len() - 1];
            is_reply = true;
            continue;
        }
        break;
    }
    (s.to_string(), is_reply)
}

// ----- SORT (RFC 5256 §3) -----

fn compare(a: &SortMessage, b: &SortMessage, key: SortKey) -> Ordering {
    match key {
        SortKey::Arrival => a.internal_date.cmp(&b.internal_date),
        SortKey::Cc => a.cc.cmp(&b.cc),
        SortKey::Date => a.sent_date.cmp(&b.sent_date),
        SortKey::From => a.from.cmp(&b.from),
        SortKey::Size => a.size.cmp(&b.size),
        SortKey::Subject => a.subject.cmp(&b.subject),
        SortKey::To => a.to.cmp(&b.to),
        SortKey::DisplayFrom => a.display_from.cmp(&b.display_from),
        SortKey::DisplayTo => a.display_to.cmp(&b.display_to),
    }
}

/// True when any criterion needs the message header (everything but
/// ARRIVAL and SIZE).
pub fn needs_header(criteria: &[SortCriterion]) -> bool {
    criteria
        .iter()
        .any(|c| !matches!(c.key, SortKey::Arrival | SortKey::Size))
}

/// Sorts `msgs` by `criteria`; messages equal under every criterion keep
/// mailbox (sequence) order, which REVERSE does not affect (RFC 5256 §3).
pub fn sort(msgs: &mut [SortMessage], criteria: &[SortCriterion]) {
    msgs.sort_by(|a, b| {
        for c in criteria {
            let o = compare(a, b, c.key);
            let o = if c.reverse { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        a.seq.cmp(&b.seq)
    });
}

// ----- THREAD (RFC 5256 §4) -----

/// A node of a thread tree: a message (index into the messages) or a dummy.
#[derive(Debug, Clone, Default)]
struct Node {
    msg: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

/// Thread trees over an arena of nodes.
#[derive(Debug, Default)]
pub struct Threads {
    nodes: Vec<Node>,
    roots: Vec<usize>,
}

impl Threads {
    fn add(&mut self, msg: Option<usize>) -> usize {
        self.nodes.push(Node {
            msg,
            parent: None,
            children: Vec::new(),
        });
        self.nodes.len() - 1
    }

    fn unlink(&mut self, child: usize) {
        if let Some(p) = self.nodes[child].parent.take() {
            self.nodes[p].children.retain(|c| *c != child);
        }
    }

    fn link(&mut self, parent: usize, child: usize) {
        self.unlink(child);
        self.nodes[child].parent = Some(parent);
        self.nodes[parent].children.push(child);
    }

    /// True when making `parent` the parent of `child` is allowed: no loop
    /// (`parent` is not `child` nor one of its descendants) and `parent`
    /// is not deeper than [`MAX_THREAD_DEPTH`]. Walks up, never recurses.
    fn may_link(&self, parent: usize, child: usize) -> bool {
        let mut at = Some(parent);
        let mut depth = 0;
        while let Some(n) = at {
            if n == child || depth > MAX_THREAD_DEPTH {
                return false;
            }
            depth += 1;
            at = self.nodes[n].parent;
        }
        true
    }

    /// Nodes of the forest in pre-order (parents before their children),
    /// with an explicit stack.
    fn preorder(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack: Vec<usize> = self.roots.iter().rev().copied().collect();
        while let Some(n) = stack.pop() {
            out.push(n);
            stack.extend(self.nodes[n].children.iter().rev().copied());
        }
        out
    }

    /// Sort key of a node: its message's sent date and sequence number, or
    /// for a dummy those of its first child (RFC 5256 §4 steps 4 and 6).
    fn date_key(&self, msgs: &[SortMessage], n: usize) -> (i64, u32) {
        let mut at = n;
        // A dummy's first child is a message (dummies only hold messages
        // after pruning), but follow the chain anyway, bounded by the arena.
        for _ in 0..self.nodes.len() {
            match self.nodes[at].msg {
                Some(m) => return msgs[m].date_key(),
                None => match self.nodes[at].children.first() {
                    Some(c) => at = *c,
                    None => break,
                },
            }
        }
        (i64::MAX, u32::MAX)
    }

    fn subject<'m>(&self, msgs: &'m [SortMessage], n: usize) -> &'m [u8] {
        let node = &self.nodes[n];
        let m = node
            .msg
            .or_else(|| node.children.first().and_then(|c| self.nodes[*c].msg));
        m.map(|m| msgs[m].subject.as_slice()).unwrap_or_default()
    }

    fn sort_children(&mut self, msgs: &[SortMessage], n: usize) {
        let mut children = std::mem::take(&mut self.nodes[n].children);
        children.sort_by_key(|c| self.date_key(msgs, *c));
        self.nodes[n].children = children;
    }

    fn sort_roots(&mut self, msgs: &[SortMessage]) {
        let mut roots = std::mem::take(&mut self.roots);
        roots.sort_by_key(|c| self.date_key(msgs, *c));
        self.roots = roots;
    }

    /// Writes the `thread-list`s (RFC 5256 §5) with `number` naming each
    /// message (its sequence number or UID). A chain of only children is
    /// `(1 2 3)`; several children are each parenthesised, `(1 (2)(3))`;
    /// a dummy contributes only its children, `((2)(3))`.
    pub fn write(&self, msgs: &[SortMessage], number: impl Fn(&SortMessage) -> u32) -> String {
        enum Step {
            Node(usize),
            Text(&'static str),
        }
        let mut out = String::new();
        let mut stack: Vec<Step> = Vec::new();
        for r in self.roots.iter().rev() {
            stack.push(Step::Text(")"));
            stack.push(Step::Node(*r));
            stack.push(Step::Text("("));
        }
        while let Some(step) = stack.pop() {
            let n = match step {
                Step::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Step::Node(n) => n,
            };
            let node = &self.nodes[n];
            if let Some(m) = node.msg {
                out.push_str(&number(&msgs[m]).to_string());
                if !node.children.is_empty() {
                    out.push(' ');
                }
            }
            match node.children.as_slice() {
                [] => {}
                [only] => stack.push(Step::Node(*only)),
                many => {
                    for c in many.iter().rev() {
                        stack.push(Step::Text(")"));
                        stack.push(Step::Node(*c));
                        stack.push(Step::Text("("));
                    }
                }
            }
        }
        out
    }
}

/// THREAD=ORDEREDSUBJECT (RFC 5256 §3): messages grouped by base subject;
/// in each group the oldest (by sent date) is the root and the others are
/// its children in date order; groups ordered by their root's date.
pub fn thread_ordered_subject(msgs: &[SortMessage]) -> Threads {
    let mut order: Vec<usize> = (0..msgs.len()).collect();
    order.sort_by(|a, b| {
        let (x, y) = (&msgs[*a], &msgs[*b]);
        x.subject
            .cmp(&y.subject)
            .then(x.date_key().cmp(&y.date_key()))
    });
    let mut t = Threads::default();
    let mut current: Option<(usize, &[u8])> = None;
    for i in order {
        let n = t.add(Some(i));
        match current {
            Some((root, subject)) if subject == msgs[i].subject.as_slice() => t.link(root, n),
            _ => {
                t.roots.push(n);
                current = Some((n, msgs[i].subject.as_slice()));
            }
        }
    }
    t.sort_roots(msgs);
    t
}

/// THREAD=REFERENCES (RFC 5256 §4). `msgs` must be in sequence order
/// (duplicate Message-IDs are resolved in favour of the lowest number).
pub fn thread_references(msgs: &[SortMessage]) -> Threads {
    let mut t = Threads::default();
    // (1) Link messages by Message-ID, References and In-Reply-To.
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (i, m) in msgs.iter().enumerate() {
        // A message without a Message-ID, or whose ID an earlier message
        // already has, gets a node of its own (a unique ID).
        let this = match m.message_id.as_deref() {
            Some(id) => match ids.get(id) {
                Some(&n) if t.nodes[n].msg.is_none() => {
                    // A dummy created by an earlier reference: now real.
                    t.nodes[n].msg = Some(i);
                    n
                }
                Some(_) => t.add(Some(i)),
                None => {
                    let n = t.add(Some(i));
                    ids.insert(id, n);
                    n
                }
            },
            None => t.add(Some(i)),
        };
        // (1.A) Link consecutive references parent -> child, keeping
        // existing parents and refusing loops.
        let mut prev: Option<usize> = None;
        for r in &m.references {
            let node = match ids.get(r.as_str()) {
                Some(&n) => n,
                None => {
                    let n = t.add(None);
                    ids.insert(r.as_str(), n);
                    n
                }
            };
            if let Some(p) = prev
                && p != node
                && t.nodes[node].parent.is_none()
                && t.may_link(p, node)
            {
                t.link(p, node);
            }
            prev = Some(node);
        }
        // (1.B) The last reference is this message's parent, replacing any
        // parent a truncated References elsewhere gave it.
        t.unlink(this);
        if let Some(p) = prev
            && p != this
            && t.may_link(p, this)
        {
            t.link(p, this);
        }
    }
    // (2) Parentless nodes are the roots.
    t.roots = (0..t.nodes.len())
        .filter(|n| t.nodes[*n].parent.is_none())
        .collect();
    // (3) Prune dummies, children first (reverse pre-order), so every
    // spliced-in list is already free of dummies.
    let order = t.preorder();
    for &n in order.iter().rev() {
        let children = std::mem::take(&mut t.nodes[n].children);
        t.nodes[n].children = prune(&mut t, n, children, false);
    }
    let roots = std::mem::take(&mut t.roots);
    t.roots = prune(&mut t, usize::MAX, roots, true);
    // (4) Sort the roots by date; a dummy by its children's first.
    for r in t.roots.clone() {
        if t.nodes[r].msg.is_none() {
            t.sort_children(msgs, r);
        }
    }
    t.sort_roots(msgs);
    // (5) Gather roots with the same base subject.
    merge_subjects(&mut t, msgs);
    // (6) Sort every sibling set by date, children before their parents so
    // a dummy's first child is final when the dummy is compared.
    let order = t.preorder();
    for &n in order.iter().rev() {
        if t.nodes[n].children.len() > 1 {
            t.sort_children(msgs, n);
        }
    }
    t.sort_roots(msgs);
    t
}

/// RFC 5256 §4 step 3 for one sibling list (of `parent`, or the root list
/// when `at_root`): childless dummies go, dummies with children are
/// replaced by them, except at the root where only a single child is
/// promoted.
fn prune(t: &mut Threads, parent: usize, children: Vec<usize>, at_root: bool) -> Vec<usize> {
    let mut out = Vec::with_capacity(children.len());
    for c in children {
        if t.nodes[c].msg.is_some() {
            out.push(c);
            continue;
        }
        let grandchildren = &t.nodes[c].children;
        if grandchildren.is_empty() {
            t.nodes[c].parent = None;
            continue;
        }
        if at_root && grandchildren.len() > 1 {
            out.push(c);
            continue;
        }
        let promoted = std::mem::take(&mut t.nodes[c].children);
        t.nodes[c].parent = None;
        for g in &promoted {
            t.nodes[*g].parent = (!at_root).then_some(parent);
        }
        out.extend(promoted);
    }
    out
}

/// RFC 5256 §4 step 5: the subject table, then merging.
fn merge_subjects(t: &mut Threads, msgs: &[SortMessage]) {
    let is_dummy = |t: &Threads, n: usize| t.nodes[n].msg.is_none();
    let is_reply = |t: &Threads, n: usize| t.nodes[n].msg.is_some_and(|m| msgs[m].is_reply);
    // (5.B) One root per subject: prefer a dummy, then a non-reply.
    let mut table: HashMap<&[u8], usize> = HashMap::new();
    for &r in &t.roots {
        let subject = t.subject(msgs, r);
        if subject.is_empty() {
            continue;
        }
        match table.get(subject) {
            None => {
                table.insert(subject, r);
            }
            Some(&old) => {
                if !is_dummy(t, old) && (is_dummy(t, r) || (is_reply(t, old) && !is_reply(t, r))) {
                    table.insert(subject, r);
                }
            }
        }
    }
    // (5.C) Merge every other root into the table's.
    let roots = t.roots.clone();
    let mut root_slot: HashMap<usize, usize> =
        roots.iter().enumerate().map(|(i, r)| (*r, i)).collect();
    let mut slots: Vec<Option<usize>> = roots.iter().map(|r| Some(*r)).collect();
    for &r in &roots {
        let subject = t.subject(msgs, r);
        if subject.is_empty() {
            continue;
        }
        let Some(&target) = table.get(subject) else {
            continue;
        };
        if target == r {
            continue;
        }
        let remove_r = |slots: &mut Vec<Option<usize>>, root_slot: &mut HashMap<usize, usize>| {
            if let Some(i) = root_slot.remove(&r) {
                slots[i] = None;
            }
        };
        if is_dummy(t, target) && is_dummy(t, r) {
            let moved = std::mem::take(&mut t.nodes[r].children);
            for c in moved {
                t.nodes[c].parent = Some(target);
                t.nodes[target].children.push(c);
            }
            remove_r(&mut slots, &mut root_slot);
        } else if is_dummy(t, target) || (is_reply(t, r) && !is_reply(t, target)) {
            t.link(target, r);
            remove_r(&mut slots, &mut root_slot);
        } else {
            let dummy = t.add(None);
            t.link(dummy, target);
            t.link(dummy, r);
            remove_r(&mut slots, &mut root_slot);
            if let Some(i) = root_slot.remove(&target) {
                slots[i] = Some(dummy);
                root_slot.insert(dummy, i);
            }
            table.insert(subject, dummy);
        }
    }
    t.roots = slots.into_iter().flatten().collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u32, date: i64, subject: &str, id: &str, refs: &[&str]) -> SortMessage {
        let (s, is_reply) = base_subject(subject);
        SortMessage {
            seq,
            uid: seq + 100,
            sent_date: date,
            internal_date: date,
            subject: casemap(&s),
            is_reply,
            message_id: (!id.is_empty()).then(|| id.to_string()),
            references: refs.iter().map(|s| s.to_string()).collect(),
            ..SortMessage::default()
        }
    }

    fn seq(m: &SortMessage) -> u32 {
        m.seq
    }

    #[test]
    fn base_subjects() {
        let b = |s: &str| base_subject(s);
        assert_eq!(b("Re: hello"), ("hello".into(), true));
        assert_eq!(b("RE: re: Fwd:  hello  "), ("hello".into(), true));
        assert_eq!(b("[list] Re: hello (fwd)"), ("hello".into(), true));
        assert_eq!(b("Re [list]: hello"), ("hello".into(), true));
        assert_eq!(b("[fwd: Re: hello]"), ("hello".into(), true));
        assert_eq!(b("[list] hello"), ("hello".into(), false));
        // A blob that is the whole subject stays.
        assert_eq!(b("[list]"), ("[list]".into(), false));
        assert_eq!(b("hello\t \r\n  world"), ("hello world".into(), false));
        assert_eq!(b("Fw: a (FWD) (fwd)"), ("a".into(), true));
        assert_eq!(b("Reply: x"), ("Reply: x".into(), false));
        assert_eq!(b("回复: 中文"), ("回复: 中文".into(), false));
        assert_eq!(b("Re: 中文"), ("中文".into(), true));
        assert_eq!(b(""), (String::new(), false));
        assert_eq!(b("re:"), (String::new(), true));
        // Unbalanced brackets are not blobs.
        assert_eq!(b("[a [b] x"), ("[a [b] x".into(), false));
        assert_eq!(b("[a] [b] [c]"), ("[c]".into(), false));
        assert_eq!(b("[a] [b] Re: [c] x"), ("x".into(), true));
        // Hostile: a megabyte of blobs, prefixes and nesting stays linear.
        let started = std::time::Instant::now();
        let blobs = "[]".repeat(500_000);
        assert_eq!(b(&format!("{blobs}x")), ("x".into(), false));
        let refs = "Re: [x] ".repeat(100_000);
        assert_eq!(b(&format!("{refs}y")), ("y".into(), true));
        let nested = format!("{}z{}", "[fwd: ".repeat(50_000), "]".repeat(50_000));
        assert_eq!(b(&nested), ("z".into(), true));
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn sort_keys_reverse_and_ties() {
        let mut msgs = vec![
            msg(1, 30, "b", "", &[]),
            msg(2, 10, "a", "", &[]),
            msg(3, 20, "B", "", &[]),
        ];
        sort(
            &mut msgs,
            &[SortCriterion {
                reverse: false,
                key: SortKey::Subject,
            }],
        );
        assert_eq!(msgs.iter().map(seq).collect::<Vec<_>>(), [2, 1, 3]);
        sort(
            &mut msgs,
            &[SortCriterion {
                reverse: true,
                key: SortKey::Subject,
            }],
        );
        // Ties stay in sequence order under REVERSE.
        assert_eq!(msgs.iter().map(seq).collect::<Vec<_>>(), [1, 3, 2]);
    }

    #[test]
    fn ordered_subject() {
        let msgs = vec![
            msg(1, 50, "x", "", &[]),
            msg(2, 10, "Re: y", "", &[]),
            msg(3, 40, "y", "", &[]),
            msg(4, 60, "re: X", "", &[]),
            msg(5, 20, "z", "", &[]),
            msg(6, 45, "x", "", &[]),
        ];
        let t = thread_ordered_subject(&msgs);
        assert_eq!(t.write(&msgs, seq), "(2 3)(5)(6 (1)(4))");
    }

    #[test]
    fn references_rfc_shape_and_dummies() {
        // 3 <- 6 <- {4 <- 23, 44 <- 7 <- 96}, numbered by seq.
        let msgs = vec![
            msg(3, 1, "s", "a", &[]),
            msg(4, 3, "Re: s", "c", &["a", "b"]),
            msg(6, 2, "Re: s", "b", &["a"]),
            msg(7, 6, "Re: s", "e", &["a", "b", "d"]),
            msg(23, 4, "Re: s", "f", &["a", "b", "c"]),
            msg(44, 5, "Re: s", "d", &["a", "b"]),
            msg(96, 7, "Re: s", "g", &["a", "b", "d", "e"]),
        ];
        let t = thread_references(&msgs);
        assert_eq!(t.write(&msgs, seq), "(3 6 (4 23)(44 7 96))");
        // Two replies to a missing parent: a dummy root.
        let msgs = vec![
            msg(1, 1, "Re: t", "x", &["gone"]),
            msg(2, 2, "Re: t", "y", &["gone"]),
            msg(3, 3, "other", "z", &["gone2"]),
        ];
        let t = thread_references(&msgs);
        assert_eq!(t.write(&msgs, seq), "((1)(2))(3)");
    }

    #[test]
    fn references_subject_merging() {
        // Same base subject, unrelated by references: a non-reply root
        // adopts the replies; two originals get a dummy parent.
        let msgs = vec![
            msg(1, 1, "Hello", "a", &[]),
            msg(2, 2, "Re: hello", "b", &[]),
            msg(3, 3, "other", "c", &[]),
            msg(4, 4, "other", "d", &[]),
            msg(5, 5, "", "e", &[]),
            msg(6, 6, "", "f", &[]),
        ];
        let t = thread_references(&msgs);
        assert_eq!(t.write(&msgs, seq), "(1 2)((3)(4))(5)(6)");
    }

    #[test]
    fn hostile_references() {
        // A cycle: A refs B and B refs A.
        let msgs = vec![msg(1, 1, "a", "A", &["B"]), msg(2, 2, "b", "B", &["A"])];
        let t = thread_references(&msgs);
        let out = t.write(&msgs, seq);
        assert!(out == "(1 2)" || out == "(2 1)", "{out}");
        // A message referencing itself, and duplicate Message-IDs.
        let msgs = vec![
            msg(1, 1, "a", "A", &["A"]),
            msg(2, 2, "b", "A", &["A"]),
            msg(3, 3, "c", "A", &[]),
        ];
        let t = thread_references(&msgs);
        assert_eq!(t.write(&msgs, seq), "(1 2)(3)");
        // A very long chain: no recursion anywhere.
        let n = 20_000u32;
        let ids: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let msgs: Vec<SortMessage> = (0..n)
            .map(|i| {
                let from = (i as usize).saturating_sub(MAX_REFERENCES);
                let refs: Vec<&str> = ids[from..i as usize].iter().map(|s| s.as_str()).collect();
                msg(i + 1, i as i64, "x", &ids[i as usize], &refs)
            })
            .collect();
        let t = thread_references(&msgs);
        let out = t.write(&msgs, seq);
        assert!(out.starts_with("((1 2 3 "), "{}", &out[..20]);
        // Depth is capped: the chain is cut into several threads, which
        // share a subject and so end up under one dummy.
        assert!(out.matches('(').count() > 2);
        // A spine with a leaf at every level nests parentheses 900 deep;
        // printing is iterative.
        let mut msgs = Vec::new();
        for k in 0..900u32 {
            let parent = k.checked_sub(1).map(|p| format!("s{p}"));
            let refs: Vec<&str> = parent.iter().map(|s| s.as_str()).collect();
            msgs.push(msg(2 * k + 1, 2 * k as i64, "y", &format!("s{k}"), &refs));
            let own = format!("s{k}");
            msgs.push(msg(
                2 * k + 2,
                2 * k as i64 + 5,
                "y",
                &format!("l{k}"),
                &[own.as_str()],
            ));
        }
        let out = thread_references(&msgs).write(&msgs, seq);
        assert!(out.starts_with("(1 (3 (5 (7 "), "{}", &out[..30]);
        assert_eq!(out.matches('(').count(), out.matches(')').count());
    }
}
