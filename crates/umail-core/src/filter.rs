//! The `Filter` trait: policy hooks at every stage of a message's life.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::address::{Address, ReversePath};
use crate::ingest::Source;
use crate::model::{Envelope, SessionInfo};

/// An SMTP-style reply: code, enhanced status code (RFC 3463) and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Three-digit reply code.
    pub code: u16,
    /// Enhanced status code such as `5.7.1`, without the leading space.
    pub enhanced: Option<String>,
    /// Human-readable text (may contain several lines separated by `\n`).
    pub text: String,
}

impl Reply {
    /// Builds a reply.
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: if enhanced.is_empty() {
                None
            } else {
                Some(enhanced.to_string())
            },
            text: text.into(),
        }
    }

    /// True for 4xx codes.
    pub fn is_temporary(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// True for 5xx codes.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

/// What happens to the message or command after a filter ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Disposition {
    /// Go on with the next filter.
    Continue,
    /// Accept now; later filters of this stage are skipped.
    Accept,
    /// Refuse with a permanent error.
    Reject(Reply),
    /// Refuse with a temporary error.
    TempFail(Reply),
    /// Accept but silently drop.
    Discard,
    /// Accept and put aside for an administrator.
    Quarantine(String),
    /// Accept and hold until an approver releases it (outbound approval).
    Hold(String),
}

/// A change a filter asks for while letting the message through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Add a header field at the top of the message.
    AddHeader {
        /// Field name.
        name: String,
        /// Field value.
        value: String,
    },
    /// Prefix the Subject with a tag such as `[SPAM]`.
    TagSubject(String),
    /// File the local copy into this mailbox instead of INBOX.
    FileInto(String),
    /// Send a copy to another address (monitoring, archiving).
    CopyTo(Address),
}

/// A filter's answer: a disposition plus any actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// What happens next.
    pub disposition: Disposition,
    /// Changes to apply if the message goes on.
    pub actions: Vec<Action>,
}

impl Verdict {
    /// Continue with no changes.
    pub fn pass() -> Verdict {
        Verdict {
            disposition: Disposition::Continue,
            actions: Vec::new(),
        }
    }

    /// Continue, applying `actions`.
    pub fn with_actions(actions: Vec<Action>) -> Verdict {
        Verdict {
            disposition: Disposition::Continue,
            actions,
        }
    }

    /// Permanent rejection.
    pub fn reject(code: u16, enhanced: &str, text: impl Into<String>) -> Verdict {
        Verdict {
            disposition: Disposition::Reject(Reply::new(code, enhanced, text)),
            actions: Vec::new(),
        }
    }

    /// Temporary failure.
    pub fn tempfail(code: u16, enhanced: &str, text: impl Into<String>) -> Verdict {
        Verdict {
            disposition: Disposition::TempFail(Reply::new(code, enhanced, text)),
            actions: Vec::new(),
        }
    }

    /// A verdict with the given disposition and no actions.
    pub fn of(disposition: Disposition) -> Verdict {
        Verdict {
            disposition,
            actions: Vec::new(),
        }
    }

    /// True when the message or command is refused (permanently or not).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self.disposition,
            Disposition::Reject(_) | Disposition::TempFail(_)
        )
    }
}

/// The message as the DATA stage sees it.
#[derive(Debug, Clone, Copy)]
pub struct MessageData<'a> {
    /// The raw message as received, with this hop's trace field on top
    /// (SMTP: CRLF line endings, dot-unstuffed; collected mail as fetched).
    pub raw: &'a [u8],
    /// The parsed message (mail-parser), parsed once for all filters.
    pub parsed: &'a mail_parser::Message<'a>,
    /// How the message entered (SMTP, collection, system mail...): a
    /// filter may treat sources differently, e.g. not score system mail.
    pub source: Source,
}

/// A policy hook. Every method has a default that passes, so a filter
/// implements only the stages it cares about.
///
/// # Contract for implementors
///
/// * Filters run in the order of the [`FilterChain`]; a verdict other than
///   `Continue` ends the stage.
/// * A filter must not block: long work (DNS, a virus scanner) is awaited,
///   and its own timeouts apply; on timeout or error a filter should answer
///   `TempFail`, never silently `Continue` when policy requires a result.
/// * Hooks may be called concurrently for different sessions.
#[async_trait]
pub trait Filter: Send + Sync {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// A client connected.
    async fn on_connect(&self, session: &SessionInfo) -> Verdict {
        let _ = session;
        Verdict::pass()
    }

    /// The client sent HELO/EHLO.
    async fn on_helo(&self, session: &SessionInfo, name: &str) -> Verdict {
        let _ = (session, name);
        Verdict::pass()
    }

    /// The client sent MAIL FROM.
    async fn on_mail(&self, session: &SessionInfo, from: &ReversePath) -> Verdict {
        let _ = (session, from);
        Verdict::pass()
    }

    /// The client sent RCPT TO; `envelope` holds the recipients accepted so far.
    async fn on_rcpt(&self, session: &SessionInfo, envelope: &Envelope, rcpt: &Address) -> Verdict {
        let _ = (session, envelope, rcpt);
        Verdict::pass()
    }

    /// The message data arrived, before the final reply.
    async fn on_data(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        message: MessageData<'_>,
    ) -> Verdict {
        let _ = (session, envelope, message);
        Verdict::pass()
    }

    /// After acceptance, before the message is stored for one local recipient.
    async fn on_delivery(
        &self,
        envelope: &Envelope,
        recipient: &Address,
        message: MessageData<'_>,
    ) -> Verdict {
        let _ = (envelope, recipient, message);
        Verdict::pass()
    }
}

/// Several filters run in order. Actions of filters that `Continue` are
/// accumulated; the first other disposition ends the stage and is returned
/// with the actions collected so far.
#[derive(Clone, Default)]
pub struct FilterChain {
    filters: Vec<Arc<dyn Filter>>,
}

impl fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.filters.iter().map(|x| x.name()))
            .finish()
    }
}

macro_rules! run_stage {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {{
        let mut actions = Vec::new();
        for filter in &$self.filters {
            let verdict = filter.$method($($arg),*).await;
            actions.extend(verdict.actions);
            if verdict.disposition != Disposition::Continue {
                tracing::debug!(target: "filter", filter = filter.name(), stage = stringify!($method), disposition = ?verdict.disposition, "filter verdict");
                return Verdict { disposition: verdict.disposition, actions };
            }
        }
        Verdict { disposition: Disposition::Continue, actions }
    }};
}

impl FilterChain {
    /// An empty chain: accepts everything.
    pub fn new() -> FilterChain {
        FilterChain::default()
    }

    /// Appends a filter.
    pub fn push(&mut self, filter: Arc<dyn Filter>) -> &mut Self {
        self.filters.push(filter);
        self
    }

    /// Number of filters.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// True when there are no filters.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}

#[async_trait]
impl Filter for FilterChain {
    fn name(&self) -> &str {
        "chain"
    }

    async fn on_connect(&self, session: &SessionInfo) -> Verdict {
        run_stage!(self, on_connect(session))
    }

    async fn on_helo(&self, session: &SessionInfo, name: &str) -> Verdict {
        run_stage!(self, on_helo(session, name))
    }

    async fn on_mail(&self, session: &SessionInfo, from: &ReversePath) -> Verdict {
        run_stage!(self, on_mail(session, from))
    }

    async fn on_rcpt(&self, session: &SessionInfo, envelope: &Envelope, rcpt: &Address) -> Verdict {
        run_stage!(self, on_rcpt(session, envelope, rcpt))
    }

    async fn on_data(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        message: MessageData<'_>,
    ) -> Verdict {
        run_stage!(self, on_data(session, envelope, message))
    }

    async fn on_delivery(
        &self,
        envelope: &Envelope,
        recipient: &Address,
        message: MessageData<'_>,
    ) -> Verdict {
        run_stage!(self, on_delivery(envelope, recipient, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tagger;
    #[async_trait]
    impl Filter for Tagger {
        fn name(&self) -> &str {
            "tagger"
        }
        async fn on_helo(&self, _: &SessionInfo, _: &str) -> Verdict {
            Verdict::with_actions(vec![Action::TagSubject("[x]".into())])
        }
    }

    struct Refuser;
    #[async_trait]
    impl Filter for Refuser {
        fn name(&self) -> &str {
            "refuser"
        }
        async fn on_helo(&self, _: &SessionInfo, name: &str) -> Verdict {
            if name == "bad" {
                Verdict::reject(550, "5.7.1", "go away")
            } else {
                Verdict::pass()
            }
        }
    }

    struct Panicker;
    #[async_trait]
    impl Filter for Panicker {
        fn name(&self) -> &str {
            "never-reached"
        }
        async fn on_helo(&self, _: &SessionInfo, _: &str) -> Verdict {
            panic!("a filter after a refusal must not run")
        }
    }

    fn session() -> SessionInfo {
        SessionInfo {
            session_id: 1,
            peer: "127.0.0.1:1000".parse().unwrap(),
            local: "127.0.0.1:25".parse().unwrap(),
            helo: None,
            tls: None,
            authenticated: None,
            listener: "smtp".into(),
        }
    }

    #[tokio::test]
    async fn chain_accumulates_actions_and_stops_at_refusal() {
        let mut chain = FilterChain::new();
        chain
            .push(Arc::new(Tagger))
            .push(Arc::new(Refuser))
            .push(Arc::new(Panicker));
        let v = chain.on_helo(&session(), "bad").await;
        assert_eq!(
            v.disposition,
            Disposition::Reject(Reply::new(550, "5.7.1", "go away"))
        );
        assert_eq!(v.actions, vec![Action::TagSubject("[x]".into())]);
    }

    #[tokio::test]
    async fn empty_chain_passes() {
        let chain = FilterChain::new();
        assert_eq!(chain.on_helo(&session(), "x").await, Verdict::pass());
    }
}
