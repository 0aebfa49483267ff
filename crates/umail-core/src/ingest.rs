//! The ingest pipeline: the one path every message takes into the house.
//!
//! SMTP (MX and submission), remote POP collection and `import`, the queue
//! runner's local deliveries and system mail (DSNs, notices) all hand their
//! messages to [`Ingest::ingest`], so a policy written once as a
//! [`Filter`](crate::Filter) sees every message, whatever way it came in.
//! The pipeline runs over the traits in [`Services`] only, so it works on
//! an integrator's own directory, store and queue.
//!
//! # The order
//!
//! 1. **Loop detection**: more `Received` fields in the message as it
//!    arrived than `max_received_headers` refuses it (`554 5.4.6`,
//!    RFC 5321 §6.3). SMTP also counts while the data streams in, to
//!    refuse early; this check covers every source but queue retries
//!    (counted when they entered).
//! 2. **Recipient expansion** ([`Ingest::expand`]): aliases and lists
//!    (with their posting permissions) are followed to local accounts and
//!    remote addresses, bounded in depth ([`MAX_EXPANSION_DEPTH`]) and
//!    size ([`MAX_EXPANSION_TARGETS`]); unknown, unavailable and
//!    over-quota accounts are refused, and so is relaying for a source
//!    that may not relay. SMTP runs this step at `RCPT` so it can refuse
//!    each recipient in the session, and passes the result in
//!    ([`Recipients::Expanded`]); collection names its mailboxes directly
//!    ([`Recipients::Mailboxes`]).
//! 3. **The filter chain**, message stage
//!    ([`Filter::on_data`](crate::Filter::on_data)), for every source but
//!    [`Source::QueueRetry`] (a queued message met it when it entered).
//!    Reject and temp-fail refuse the whole message; discard accepts and
//!    drops it; quarantine and hold are applied below; actions (headers,
//!    subject tags, file-into, copies) are collected.
//! 4. **Per local recipient**: the delivery stage
//!    ([`Filter::on_delivery`](crate::Filter::on_delivery)), then the
//!    recipient's own actions.
//! 5. **Actions**: deliver to a mailbox (INBOX, a filed-into folder, or
//!    Junk when quarantined), copy to further addresses, hold everything
//!    for approval or for a scheduled release (every copy goes to the
//!    queue, held), or enqueue for remote delivery.
//! 6. **One durable commit** per distinct final message
//!    ([`MailStore::deliver`](crate::MailStore::deliver): one blob, one
//!    entry per mailbox), then one queue entry for the remote recipients
//!    and the local copies that must be retried.
//! 7. **One result per recipient** ([`IngestReport`]). Nothing may be
//!    acknowledged to a client or deleted from a source before this
//!    returns; [`IngestReport::accepted`] says whether it may.
//!
//! A local copy that fails on its own inside the commit (quota filled up
//! since expansion, account gone) or that the delivery stage temp-fails is
//! queued and retried, never lost; for [`Source::QueueRetry`] it is
//! reported as [`RecipientOutcome::Deferred`] instead, and the queue entry
//! that is being worked on keeps it.

use std::collections::{HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use bytes::Bytes;
use tracing::Instrument;

use crate::address::Address;
use crate::config::SmtpConfig;
use crate::directory::Resolution;
use crate::filter::{Action, Disposition, MessageData, Reply, Verdict};
use crate::message::{count_received, header_line, priority_of, return_path, tag_subject};
use crate::model::{Envelope, Principal, QueueId, Recipient, SessionInfo};
use crate::net::Services;
use crate::queue::{EnqueueOptions, Priority};
use crate::store::{DeliveryTarget, Flag, Flags, INBOX, StoreError};

/// Deepest alias/list nesting followed.
pub const MAX_EXPANSION_DEPTH: usize = 8;
/// Most addresses one recipient may expand to.
pub const MAX_EXPANSION_TARGETS: usize = 5000;
/// The mailbox quarantined local copies are filed into.
pub const QUARANTINE_MAILBOX: &str = "Junk";

/// The way a message entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// SMTP on an MX listener: mail from outside, local recipients only.
    Mx,
    /// SMTP submission (ports 587/465) by an authenticated user.
    Submission,
    /// Collected from a remote POP3 mailbox (MultiPOP, DomainPOP).
    Collection,
    /// Copied once from another server (`umail import pop3`).
    Import,
    /// Made by this server: delivery status notifications, notices.
    System,
    /// A queued local copy being delivered (or retried) by the queue runner.
    QueueRetry,
}

impl Source {
    /// A short name for logs and for [`SessionInfo::listener`] of sources
    /// without a session.
    pub fn name(self) -> &'static str {
        match self {
            Source::Mx => "smtp",
            Source::Submission => "submission",
            Source::Collection => "collect",
            Source::Import => "import",
            Source::System => "system",
            Source::QueueRetry => "queue",
        }
    }

    /// True when mail from this source may go to remote addresses: an
    /// authenticated submitter, or the server itself. MX, collected and
    /// imported mail is for local users only (RFC 5321 §7.1: never relay).
    pub fn may_relay(self, authenticated: bool) -> bool {
        match self {
            Source::Mx => authenticated,
            Source::Submission => authenticated,
            Source::System | Source::QueueRetry => true,
            Source::Collection | Source::Import => false,
        }
    }

    /// True when this hop adds `Return-Path` at final delivery
    /// (RFC 5321 §4.4). Collected and imported messages keep the one the
    /// original final delivery added.
    pub fn adds_return_path(self) -> bool {
        matches!(
            self,
            Source::Mx | Source::Submission | Source::System | Source::QueueRetry
        )
    }

    /// True when the message stage of the filter chain runs. A queued
    /// copy met it when it entered.
    pub fn runs_message_filters(self) -> bool {
        self != Source::QueueRetry
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl SessionInfo {
    /// The session facts given to filters for mail that did not arrive
    /// over a client session (collection, import, system mail, queue
    /// retries): unspecified addresses, `listener` = the source's name.
    pub fn internal(source: Source) -> SessionInfo {
        let none = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        SessionInfo {
            session_id: 0,
            peer: none,
            local: none,
            helo: None,
            tls: None,
            authenticated: None,
            listener: source.name().to_string(),
        }
    }
}

/// Policy decisions collected along a transaction (from filters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyMarks {
    /// Accept but drop silently.
    pub discard: bool,
    /// Accept and quarantine, with the reason.
    pub quarantine: Option<String>,
    /// Accept and hold for approval, with the reason.
    pub hold: Option<String>,
    /// Actions to apply at delivery.
    pub actions: Vec<Action>,
}

impl PolicyMarks {
    /// Adds `other`'s decisions to these.
    pub fn merge(&mut self, other: &PolicyMarks) {
        self.discard |= other.discard;
        if self.quarantine.is_none() {
            self.quarantine.clone_from(&other.quarantine);
        }
        if self.hold.is_none() {
            self.hold.clone_from(&other.hold);
        }
        self.actions.extend(other.actions.iter().cloned());
    }

    /// A filter verdict as marks, or the reply refusing the stage. A
    /// filter cannot turn a refusal into success: a `Reject` carrying a
    /// non-5xx code becomes `550 5.7.1`, a `TempFail` carrying a non-4xx
    /// code becomes `451 4.7.1`.
    pub fn from_verdict(verdict: Verdict) -> Result<PolicyMarks, Reply> {
        let mut marks = PolicyMarks {
            actions: verdict.actions,
            ..PolicyMarks::default()
        };
        match verdict.disposition {
            Disposition::Continue | Disposition::Accept => {}
            Disposition::Reject(r) => {
                return Err(if r.is_permanent() {
                    r
                } else {
                    Reply::new(550, "5.7.1", r.text)
                });
            }
            Disposition::TempFail(r) => {
                return Err(if r.is_temporary() {
                    r
                } else {
                    Reply::new(451, "4.7.1", r.text)
                });
            }
            Disposition::Discard => marks.discard = true,
            Disposition::Quarantine(why) => marks.quarantine = Some(why),
            Disposition::Hold(why) => marks.hold = Some(why),
        }
        Ok(marks)
    }
}

/// One local mailbox owner a recipient expands to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTarget {
    /// Account identifier (lower-cased primary address).
    pub account: String,
    /// The account's primary address.
    pub address: Address,
    /// The mailbox to deliver into; `None` is INBOX (unless a filter files
    /// the message elsewhere).
    pub mailbox: Option<String>,
}

impl LocalTarget {
    /// The INBOX of `principal`.
    pub fn of(principal: &Principal) -> LocalTarget {
        LocalTarget {
            account: principal.account(),
            address: principal.address.clone(),
            mailbox: None,
        }
    }
}

/// What one recipient expands to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// Local accounts.
    pub local: Vec<LocalTarget>,
    /// Remote addresses (queued for outbound delivery).
    pub remote: Vec<Address>,
    /// Filter decisions for this recipient.
    pub marks: PolicyMarks,
    /// A smaller size limit that applies because of this recipient (its
    /// domain's `max_message_size`); 0 means only the server limit.
    pub max_message_size: u64,
}

/// An accepted recipient and its expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedRecipient {
    /// The envelope recipient as given.
    pub recipient: Recipient,
    /// Where it goes.
    pub expansion: Expansion,
}

/// Facts recipient expansion depends on.
#[derive(Debug, Clone, Copy)]
pub struct ExpandContext<'a> {
    /// The envelope sender (list posting permissions).
    pub sender: Option<&'a Address>,
    /// Remote addresses are allowed at the top level (see
    /// [`Source::may_relay`]).
    pub may_relay: bool,
    /// The message size, for the quota check (0 when not yet known).
    pub size: u64,
    /// Check local accounts' quota now. Off for queue retries, whose
    /// over-quota copies are deferred by the store instead of refused.
    pub check_quota: bool,
    /// The address is final: it must be a local account, and aliases and
    /// lists are not followed again (queued copies were expanded when they
    /// entered).
    pub final_address: bool,
}

/// Which recipients a message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipients {
    /// Expand `envelope.recipients` here.
    Envelope,
    /// Already expanded, with filter marks per recipient (SMTP expands at
    /// `RCPT` so it can refuse each recipient in the session).
    Expanded(Vec<AcceptedRecipient>),
    /// Straight into these local mailboxes (collection into a folder, or
    /// to the users a DomainPOP message's headers name). Quota is checked;
    /// aliases are not followed.
    Mailboxes(Vec<LocalTarget>),
}

/// A message handed to the pipeline.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// How it entered.
    pub source: Source,
    /// The client session, or [`SessionInfo::internal`].
    pub session: SessionInfo,
    /// Sender and recipients (with DSN parameters).
    pub envelope: Envelope,
    /// The trace field this hop adds on top (`Received`), or empty.
    pub trace: Vec<u8>,
    /// The message as it arrived.
    pub content: Vec<u8>,
    /// Who gets it.
    pub recipients: Recipients,
    /// Decisions made before the message stage (SMTP's connect, HELO and
    /// MAIL stages).
    pub marks: PolicyMarks,
    /// The queue priority; `None` reads it from the header
    /// ([`priority_of`]), raising allowed only for authenticated senders
    /// and system mail.
    pub priority: Option<Priority>,
    /// The id under which the message is logged and queued; `None` picks
    /// a fresh one. SMTP names it in its `Received` field first.
    pub id: Option<QueueId>,
}

impl Incoming {
    /// A message from `source` to the envelope's recipients, without a
    /// client session.
    pub fn new(source: Source, envelope: Envelope, content: Vec<u8>) -> Incoming {
        Incoming {
            source,
            session: SessionInfo::internal(source),
            envelope,
            trace: Vec::new(),
            content,
            recipients: Recipients::Envelope,
            marks: PolicyMarks::default(),
            priority: None,
            id: None,
        }
    }

    /// The same message, delivered straight into `targets`.
    pub fn into_mailboxes(mut self, targets: Vec<LocalTarget>) -> Incoming {
        self.recipients = Recipients::Mailboxes(targets);
        self
    }
}

/// What happened for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientOutcome {
    /// Durably stored in this local mailbox.
    Stored {
        /// The mailbox name.
        mailbox: String,
    },
    /// Durably queued: remote delivery, or a local copy to be retried.
    Queued,
    /// Durably queued and held (approval, quarantine, scheduled release).
    Held,
    /// Dropped on purpose by a filter.
    Discarded,
    /// Not delivered now, for a reason that may pass; only for
    /// [`Source::QueueRetry`], whose entry keeps the recipient.
    Deferred(Reply),
    /// Refused: nothing was stored for this recipient.
    Refused(Reply),
}

impl RecipientOutcome {
    /// True when the recipient's copy is durable here (stored, queued,
    /// held) or was dropped on purpose.
    pub fn is_taken(&self) -> bool {
        !matches!(
            self,
            RecipientOutcome::Deferred(_) | RecipientOutcome::Refused(_)
        )
    }
}

/// One recipient's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReport {
    /// The recipient: a final local account or remote address, or the
    /// address as given when it was refused before expansion.
    pub recipient: Address,
    /// What happened.
    pub outcome: RecipientOutcome,
}

/// The pipeline's answer for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestReport {
    /// The message's id in logs and in the queue.
    pub id: QueueId,
    /// The whole message was refused (loop, filter, store or queue
    /// failure): nothing of it is durable.
    pub refusal: Option<Reply>,
    /// A filter discarded the whole message.
    pub discarded: bool,
    /// One result per recipient (empty when refused as a whole).
    pub recipients: Vec<RecipientReport>,
}

impl IngestReport {
    fn refused(id: QueueId, reply: Reply) -> IngestReport {
        IngestReport {
            id,
            refusal: Some(reply),
            discarded: false,
            recipients: Vec::new(),
        }
    }

    /// True when the message may be acknowledged (SMTP `250`, deleted from
    /// a collection source): it was discarded on purpose, or at least one
    /// recipient's copy is durable and no recipient was deferred.
    pub fn accepted(&self) -> bool {
        self.refusal.is_none()
            && (self.discarded
                || (!self.recipients.is_empty()
                    && self.recipients.iter().any(|r| r.outcome.is_taken())))
    }

    /// Why the message was not accepted: the refusal, else the first
    /// recipient's refusal or deferral.
    pub fn reason(&self) -> Option<&Reply> {
        self.refusal.as_ref().or_else(|| {
            self.recipients.iter().find_map(|r| match &r.outcome {
                RecipientOutcome::Refused(reply) | RecipientOutcome::Deferred(reply) => Some(reply),
                _ => None,
            })
        })
    }

    /// The final SMTP reply for the transaction.
    pub fn smtp_reply(&self) -> Reply {
        match &self.refusal {
            Some(r) => r.clone(),
            None => Reply::new(250, "2.0.0", format!("Ok queued as {}", self.id)),
        }
    }

    /// The recipients whose copy is stored in a local mailbox.
    pub fn stored(&self) -> impl Iterator<Item = &RecipientReport> {
        self.recipients
            .iter()
            .filter(|r| matches!(r.outcome, RecipientOutcome::Stored { .. }))
    }
}

/// Limits and choices of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestSettings {
    /// Loop detection: most `Received` fields a message may arrive with.
    pub max_received_headers: usize,
    /// Refuse a full mailbox with `452 4.2.2` instead of `552 5.2.2`.
    pub over_quota_temporary: bool,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings::from_smtp(&SmtpConfig::default())
    }
}

impl IngestSettings {
    /// The settings the `[smtp]` section implies.
    pub fn from_smtp(smtp: &SmtpConfig) -> IngestSettings {
        IngestSettings {
            max_received_headers: smtp.max_received_headers,
            over_quota_temporary: smtp.over_quota_temporary,
        }
    }
}

fn temp_directory() -> Reply {
    Reply::new(451, "4.3.0", "Temporary directory failure, try again later")
}

fn temp_store() -> Reply {
    Reply::new(451, "4.3.0", "Temporary storage failure, try again later")
}

/// The pipeline over a set of services. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ingest {
    services: Services,
    settings: IngestSettings,
}

/// A local copy on its way to the commit.
struct LocalCopy {
    target: LocalTarget,
    marks: PolicyMarks,
}

/// One distinct final message and the local targets that get it.
struct CopyGroup {
    bytes: Vec<u8>,
    targets: Vec<(DeliveryTarget, Address)>,
}

impl Ingest {
    /// A pipeline over `services`.
    pub fn new(services: Services, settings: IngestSettings) -> Ingest {
        Ingest { services, settings }
    }

    /// The services the pipeline runs on.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The settings in force.
    pub fn settings(&self) -> &IngestSettings {
        &self.settings
    }

    async fn over_quota(&self, target: &Principal, size: u64) -> Result<Option<Reply>, Reply> {
        if target.quota.bytes == 0 && target.quota.messages == 0 {
            return Ok(None);
        }
        let usage = self
            .services
            .store
            .quota_usage(&target.account())
            .await
            .map_err(|_| temp_store())?;
        if target.quota.would_exceed(&usage, size, 1) {
            // RFC 3463: X.2.2 mailbox full.
            return Ok(Some(if self.settings.over_quota_temporary {
                Reply::new(452, "4.2.2", "Mailbox full")
            } else {
                Reply::new(552, "5.2.2", "Mailbox full")
            }));
        }
        Ok(None)
    }

    /// Step 2 of the pipeline for one recipient: aliases and lists
    /// expanded (bounded depth and size, deduplicated), local accounts
    /// checked for availability and quota. The returned [`Expansion`] has
    /// no filter marks. A failure of the address itself is its reply; a
    /// failing alias or list member is skipped (logged) as long as some
    /// target remains. Directory and store errors are `451 4.3.0`, never
    /// "unknown user".
    pub async fn expand(
        &self,
        address: &Address,
        ctx: &ExpandContext<'_>,
    ) -> Result<Expansion, Reply> {
        let directory = &self.services.directory;
        let mut local: Vec<LocalTarget> = Vec::new();
        let mut remote = Vec::new();
        let mut seen = HashSet::new();
        let mut first_failure: Option<Reply> = None;
        let mut work = VecDeque::from([(address.clone(), 0usize)]);
        while let Some((addr, depth)) = work.pop_front() {
            let top = depth == 0;
            if !seen.insert(addr.lookup_key()) {
                continue;
            }
            if seen.len() > MAX_EXPANSION_TARGETS {
                return Err(Reply::new(550, "5.4.6", "Alias expansion too large"));
            }
            let resolution = match directory.resolve(&addr).await {
                Err(e) => {
                    tracing::warn!(target: "routing", error = %e, rcpt = %addr, "directory failure during expansion");
                    return Err(temp_directory());
                }
                Ok(r) => r,
            };
            let failure = match resolution {
                Resolution::Local(p) => {
                    let quota = if ctx.check_quota {
                        self.over_quota(&p, ctx.size).await?
                    } else {
                        None
                    };
                    match quota {
                        Some(reply) => Some(reply),
                        None => {
                            if !local.iter().any(|l| l.account == p.account()) {
                                local.push(LocalTarget::of(&p));
                            }
                            None
                        }
                    }
                }
                _ if ctx.final_address => Some(Reply::new(550, "5.1.1", "No such local user here")),
                Resolution::NotLocal => {
                    if top && !ctx.may_relay {
                        // RFC 5321 §3.6.2 / §7.1: never an open relay.
                        Some(Reply::new(550, "5.7.1", "Relaying denied"))
                    } else {
                        remote.push(addr.clone());
                        None
                    }
                }
                Resolution::Unknown => Some(Reply::new(550, "5.1.1", "User unknown")),
                Resolution::Unavailable(why) => Some(Reply::new(
                    550,
                    "5.2.1",
                    format!("Mailbox unavailable ({why:?})"),
                )),
                Resolution::Alias(targets) => {
                    if depth >= MAX_EXPANSION_DEPTH {
                        Some(Reply::new(550, "5.4.6", "Alias nesting too deep"))
                    } else {
                        work.extend(targets.into_iter().map(|t| (t, depth + 1)));
                        None
                    }
                }
                Resolution::List(list) => {
                    if !list.may_post(ctx.sender) {
                        Some(Reply::new(550, "5.7.1", "Not allowed to post to this list"))
                    } else if depth >= MAX_EXPANSION_DEPTH {
                        Some(Reply::new(550, "5.4.6", "List nesting too deep"))
                    } else {
                        work.extend(list.receivers().cloned().map(|t| (t, depth + 1)));
                        None
                    }
                }
            };
            if let Some(reply) = failure {
                if top {
                    return Err(reply);
                }
                tracing::info!(target: "routing", target_address = %addr, reply = %reply, "expansion target skipped");
                first_failure.get_or_insert(reply);
            }
        }
        if local.is_empty() && remote.is_empty() {
            return Err(first_failure
                .unwrap_or_else(|| Reply::new(550, "5.1.1", "No deliverable recipients")));
        }
        Ok(Expansion {
            local,
            remote,
            ..Expansion::default()
        })
    }

    /// Runs the whole pipeline (see the module docs) for one message and
    /// returns only once everything it reports is durable.
    pub async fn ingest(&self, incoming: Incoming) -> IngestReport {
        let id = incoming
            .id
            .unwrap_or_else(|| QueueId(rand::random::<u64>()));
        let source = incoming.source;
        let span = tracing::info_span!(target: "filter", "ingest", %source, id = %id);
        self.run(id, incoming).instrument(span).await
    }

    async fn run(&self, id: QueueId, incoming: Incoming) -> IngestReport {
        let Incoming {
            source,
            session,
            envelope,
            trace,
            content,
            recipients,
            marks: earlier_marks,
            priority,
            ..
        } = incoming;
        let s = &self.services;
        let id_text = id.to_string();

        // 1. Loop detection (RFC 5321 §6.3).
        // A queued copy was counted when it entered, and carries this hop's
        // own `Received` since: counting it again would bounce a message
        // accepted with exactly the maximum.
        let hops = count_received(&content);
        if source != Source::QueueRetry && hops > self.settings.max_received_headers {
            tracing::warn!(target: "filter", %source, id = %id_text, hops, "mail loop suspected; refused");
            return IngestReport::refused(
                id,
                Reply::new(554, "5.4.6", "Too many hops (mail loop?)"),
            );
        }
        let mut base = trace;
        base.extend_from_slice(&content);
        drop(content);
        let size = base.len() as u64;

        // 2. Recipient expansion.
        let authenticated = session.authenticated.is_some() || envelope.auth.is_some();
        let sender = envelope.reverse_path.address().cloned();
        let mut reports: Vec<RecipientReport> = Vec::new();
        let accepted: Vec<AcceptedRecipient> = match recipients {
            Recipients::Expanded(list) => list,
            Recipients::Envelope => {
                let ctx = ExpandContext {
                    sender: sender.as_ref(),
                    may_relay: source.may_relay(authenticated),
                    size,
                    check_quota: source != Source::QueueRetry,
                    final_address: source == Source::QueueRetry,
                };
                let mut list = Vec::new();
                for r in &envelope.recipients {
                    match self.expand(&r.address, &ctx).await {
                        Ok(expansion) => list.push(AcceptedRecipient {
                            recipient: r.clone(),
                            expansion,
                        }),
                        Err(reply) => {
                            // A directory outage defers a queue retry.
                            let outcome = if source == Source::QueueRetry && reply.is_temporary() {
                                RecipientOutcome::Deferred(reply)
                            } else {
                                RecipientOutcome::Refused(reply)
                            };
                            reports.push(RecipientReport {
                                recipient: r.address.clone(),
                                outcome,
                            });
                        }
                    }
                }
                list
            }
            Recipients::Mailboxes(targets) => {
                let mut local = Vec::new();
                for t in targets {
                    match self.mailbox_target_quota(&t, size).await {
                        Ok(None) => local.push(t),
                        Ok(Some(reply)) | Err(reply) => reports.push(RecipientReport {
                            recipient: t.address.clone(),
                            outcome: RecipientOutcome::Refused(reply),
                        }),
                    }
                }
                if local.is_empty() {
                    Vec::new()
                } else {
                    vec![AcceptedRecipient {
                        recipient: Recipient::new(local[0].address.clone()),
                        expansion: Expansion {
                            local,
                            ..Expansion::default()
                        },
                    }]
                }
            }
        };
        if accepted.is_empty() {
            tracing::info!(target: "filter", %source, id = %id_text, "no recipient accepted the message");
            return IngestReport {
                id,
                refusal: None,
                discarded: false,
                recipients: reports,
            };
        }

        // 3. The message stage of the filter chain.
        let parser = mail_parser::MessageParser::default();
        let mut marks = PolicyMarks::default();
        if source.runs_message_filters() {
            let parsed = parser.parse(&base[..]).unwrap_or_default();
            let verdict = s
                .filter
                .on_data(
                    &session,
                    &envelope,
                    MessageData {
                        raw: &base,
                        parsed: &parsed,
                        source,
                    },
                )
                .await;
            marks = match PolicyMarks::from_verdict(verdict) {
                Ok(m) => m,
                Err(reply) => {
                    tracing::info!(target: "filter", %source, id = %id_text, reply = %reply, "message refused by filter");
                    return IngestReport::refused(id, reply);
                }
            };
        }
        marks.merge(&earlier_marks);
        if marks.discard {
            tracing::info!(target: "filter", %source, id = %id_text, "message discarded by filter");
            return IngestReport {
                id,
                refusal: None,
                discarded: true,
                recipients: reports,
            };
        }

        // Message-level actions.
        let (message, filed_into, copies) = apply_actions(&base, &marks.actions);
        drop(base);
        let may_raise = authenticated || source == Source::System;
        let priority = priority.unwrap_or_else(|| priority_of(&message, may_raise));

        // Targets, deduplicated: local accounts and remote addresses.
        let mut locals: Vec<LocalCopy> = Vec::new();
        let mut remotes: Vec<Recipient> = Vec::new();
        let mut hold = marks.hold.clone();
        for accepted in &accepted {
            let exp = &accepted.expansion;
            if exp.marks.discard {
                for l in &exp.local {
                    reports.push(RecipientReport {
                        recipient: l.address.clone(),
                        outcome: RecipientOutcome::Discarded,
                    });
                }
                continue;
            }
            if hold.is_none() {
                hold.clone_from(&exp.marks.hold);
            }
            for l in &exp.local {
                if !locals.iter().any(|x| x.target.account == l.account) {
                    locals.push(LocalCopy {
                        target: l.clone(),
                        marks: exp.marks.clone(),
                    });
                }
            }
            for r in &exp.remote {
                push_remote(&mut remotes, r, Some(&accepted.recipient));
            }
        }
        for copy in copies {
            match s.directory.resolve(&copy).await {
                Ok(Resolution::Local(p)) => {
                    if !locals.iter().any(|x| x.target.account == p.account()) {
                        locals.push(LocalCopy {
                            target: LocalTarget::of(&p),
                            marks: PolicyMarks::default(),
                        });
                    }
                }
                Ok(Resolution::NotLocal) => push_remote(&mut remotes, &copy, None),
                Ok(other) => {
                    tracing::warn!(target: "filter", id = %id_text, copy = %copy, resolution = ?other, "CopyTo target not deliverable");
                }
                Err(_) => return IngestReport::refused(id, temp_directory()),
            }
        }

        // Hold (everything waits for an approver) and scheduled sending
        // (FUTURERELEASE, RFC 4865: everything waits for the release time):
        // every copy, local ones too, goes to the queue. A queued copy
        // being delivered is past both.
        let scheduled = envelope.release_at.filter(|at| *at > crate::unix_now());
        if source != Source::QueueRetry && (hold.is_some() || scheduled.is_some()) {
            let mut all: Vec<Recipient> = locals
                .iter()
                .map(|l| Recipient::new(l.target.address.clone()))
                .collect();
            all.extend(remotes);
            let mut options = EnqueueOptions::with_priority(priority);
            options.not_before = scheduled;
            if let Some(why) = hold {
                tracing::info!(target: "filter", id = %id_text, reason = %why, "message held for approval");
                options = options.held(why);
            } else if let Some(why) = &marks.quarantine {
                options = options.held(format!("quarantined: {why}"));
            }
            if let Some(at) = scheduled {
                tracing::info!(target: "queue", id = %id_text, release_at = at, "message scheduled for later delivery");
            }
            let held = options.hold.is_some();
            return match self
                .enqueue(id, &envelope, all.clone(), &message, &options)
                .await
            {
                Ok(_) => {
                    reports.extend(all.into_iter().map(|r| RecipientReport {
                        recipient: r.address,
                        outcome: if held {
                            RecipientOutcome::Held
                        } else {
                            RecipientOutcome::Queued
                        },
                    }));
                    IngestReport {
                        id,
                        refusal: None,
                        discarded: false,
                        recipients: reports,
                    }
                }
                Err(reply) => IngestReport::refused(id, reply),
            };
        }
        let quarantine_all = marks.quarantine.is_some();

        // 4. Per local recipient: the delivery stage and its actions.
        let mut groups: Vec<CopyGroup> = Vec::new();
        let mut retry: Vec<Recipient> = Vec::new();
        let mut deferred: Vec<(Address, Reply)> = Vec::new();
        let rp = if source.adds_return_path() {
            return_path(&envelope.reverse_path)
        } else {
            Vec::new()
        };
        for local in &locals {
            let target = &local.target;
            let parsed = parser.parse(&message[..]).unwrap_or_default();
            let verdict = s
                .filter
                .on_delivery(
                    &envelope,
                    &target.address,
                    MessageData {
                        raw: &message,
                        parsed: &parsed,
                        source,
                    },
                )
                .await;
            drop(parsed);
            let dmarks = match PolicyMarks::from_verdict(verdict) {
                Ok(m) => m,
                Err(r) if r.is_temporary() => {
                    deferred.push((target.address.clone(), r));
                    continue;
                }
                Err(r) => {
                    tracing::warn!(target: "filter", id = %id_text, rcpt = %target.address, reply = %r, "delivery refused by filter");
                    reports.push(RecipientReport {
                        recipient: target.address.clone(),
                        outcome: RecipientOutcome::Refused(r),
                    });
                    continue;
                }
            };
            if dmarks.discard {
                reports.push(RecipientReport {
                    recipient: target.address.clone(),
                    outcome: RecipientOutcome::Discarded,
                });
                continue;
            }
            let mut per = local.marks.actions.clone();
            per.extend(dmarks.actions.iter().cloned());
            let (body, per_mailbox, per_copies) = apply_actions(&message, &per);
            for c in per_copies {
                push_remote(&mut remotes, &c, None);
            }
            let quarantined =
                quarantine_all || local.marks.quarantine.is_some() || dmarks.quarantine.is_some();
            let mut flags = Flags::new();
            let mailbox = if quarantined {
                flags.insert(Flag::Keyword("$Junk".into()));
                QUARANTINE_MAILBOX.to_string()
            } else {
                per_mailbox
                    .or_else(|| filed_into.clone())
                    .or_else(|| target.mailbox.clone())
                    .unwrap_or_else(|| INBOX.to_string())
            };
            let mut bytes = rp.clone();
            bytes.extend_from_slice(&body);
            let dt = DeliveryTarget {
                account: target.account.clone(),
                mailbox,
                flags,
            };
            match groups.iter_mut().find(|g| g.bytes == bytes) {
                Some(g) => g.targets.push((dt, target.address.clone())),
                None => groups.push(CopyGroup {
                    bytes,
                    targets: vec![(dt, target.address.clone())],
                }),
            }
        }

        // 6. The durable commit: local copies first, one call per distinct
        // final message.
        let now = crate::unix_now();
        let mut committed_any = false;
        for group in groups {
            let dts: Vec<DeliveryTarget> = group.targets.iter().map(|(d, _)| d.clone()).collect();
            match s.store.deliver(Bytes::from(group.bytes), now, &dts).await {
                Ok(results) => {
                    committed_any = true;
                    for (result, (dt, addr)) in results.into_iter().zip(group.targets) {
                        match result {
                            Ok(_) => reports.push(RecipientReport {
                                recipient: addr,
                                outcome: RecipientOutcome::Stored {
                                    mailbox: dt.mailbox,
                                },
                            }),
                            Err(e) => {
                                tracing::warn!(target: "filter", id = %id_text, rcpt = %addr, error = %e, "local delivery failed");
                                deferred.push((addr, store_reply(&e)));
                            }
                        }
                    }
                }
                Err(e) if !committed_any => {
                    tracing::warn!(target: "filter", id = %id_text, error = %e, "store failure; message refused");
                    return IngestReport::refused(id, temp_store());
                }
                Err(e) => {
                    tracing::warn!(target: "filter", id = %id_text, error = %e, "store failure after partial delivery");
                    let reply = store_reply(&e);
                    deferred.extend(group.targets.into_iter().map(|(_, a)| (a, reply.clone())));
                }
            }
        }

        // Local copies that must be tried again: the queue entry being
        // worked on keeps them, or a new entry does.
        if source == Source::QueueRetry {
            reports.extend(deferred.into_iter().map(|(a, r)| RecipientReport {
                recipient: a,
                outcome: RecipientOutcome::Deferred(r),
            }));
        } else {
            retry.extend(deferred.into_iter().map(|(a, _)| Recipient::new(a)));
        }

        // Remote recipients and local retries: one queue entry.
        let queued: Vec<Address> = remotes
            .iter()
            .chain(retry.iter())
            .map(|r| r.address.clone())
            .collect();
        remotes.extend(retry);
        if !remotes.is_empty() {
            let mut options = EnqueueOptions::with_priority(priority);
            if let Some(why) = &marks.quarantine {
                options = options.held(format!("quarantined: {why}"));
            }
            let held = options.hold.is_some();
            if let Err(reply) = self
                .enqueue(id, &envelope, remotes, &message, &options)
                .await
            {
                return IngestReport::refused(id, reply);
            }
            reports.extend(queued.into_iter().map(|a| RecipientReport {
                recipient: a,
                outcome: if held {
                    RecipientOutcome::Held
                } else {
                    RecipientOutcome::Queued
                },
            }));
        }
        tracing::info!(target: "filter", %source, id = %id_text, from = %envelope.reverse_path, "message accepted");
        IngestReport {
            id,
            refusal: None,
            discarded: false,
            recipients: reports,
        }
    }

    async fn mailbox_target_quota(
        &self,
        target: &LocalTarget,
        size: u64,
    ) -> Result<Option<Reply>, Reply> {
        match self.services.directory.resolve(&target.address).await {
            Ok(Resolution::Local(p)) => self.over_quota(&p, size).await,
            Ok(Resolution::Unavailable(why)) => Ok(Some(Reply::new(
                550,
                "5.2.1",
                format!("Mailbox unavailable ({why:?})"),
            ))),
            Ok(_) => Ok(Some(Reply::new(550, "5.1.1", "No such local user here"))),
            Err(_) => Err(temp_directory()),
        }
    }

    async fn enqueue(
        &self,
        id: QueueId,
        envelope: &Envelope,
        recipients: Vec<Recipient>,
        message: &[u8],
        options: &EnqueueOptions,
    ) -> Result<QueueId, Reply> {
        let mut env = envelope.clone();
        env.recipients = recipients;
        self.services
            .queue
            .enqueue_with(
                env,
                Bytes::copy_from_slice(message),
                crate::unix_now(),
                options,
            )
            .await
            .map_err(|e| {
                tracing::warn!(target: "queue", id = %id, error = %e, "queue failure");
                temp_store()
            })
    }
}

/// The reply a failed local copy gets: a full mailbox is `452 4.2.2`
/// (it may empty), anything else `451 4.3.0`.
fn store_reply(e: &StoreError) -> Reply {
    match e {
        StoreError::OverQuota => Reply::new(452, "4.2.2", "Mailbox full"),
        other => Reply::new(451, "4.3.0", format!("Local delivery failed: {other}")),
    }
}

fn push_remote(remotes: &mut Vec<Recipient>, addr: &Address, original: Option<&Recipient>) {
    if remotes
        .iter()
        .any(|r| r.address.lookup_key() == addr.lookup_key())
    {
        return;
    }
    let mut r = Recipient::new(addr.clone());
    if let Some(o) = original {
        r.notify = o.notify;
        // RFC 3461 §4.2: keep the original recipient through forwarding.
        r.orcpt = o.orcpt.clone().or_else(|| {
            (o.address.lookup_key() != addr.lookup_key()).then(|| format!("rfc822;{}", o.address))
        });
    }
    remotes.push(r);
}

/// Applies header actions; returns the new message, a FileInto mailbox
/// and CopyTo addresses.
fn apply_actions(message: &[u8], actions: &[Action]) -> (Vec<u8>, Option<String>, Vec<Address>) {
    let mut out = message.to_vec();
    let mut mailbox = None;
    let mut copies = Vec::new();
    let mut added = Vec::new();
    for a in actions {
        match a {
            Action::AddHeader { name, value } => added.extend(header_line(name, value)),
            Action::TagSubject(tag) => out = tag_subject(&out, tag),
            Action::FileInto(mb) => mailbox = Some(mb.clone()),
            Action::CopyTo(addr) => copies.push(addr.clone()),
        }
    }
    if !added.is_empty() {
        added.extend_from_slice(&out);
        out = added;
    }
    (out, mailbox, copies)
}
