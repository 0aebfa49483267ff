//! Answers the session's [`Event`]s with the services: directory lookups,
//! quotas, filters, authentication and delivery.
//!
//! [`Policy`] holds no socket; with the in-memory services of
//! `umail_core::memory` a whole session can be run from byte transcripts.
//!
//! # Delivery and the per-recipient failure policy
//!
//! * Everything that can be refused is refused at `RCPT`: unknown users
//!   (550 5.1.1), unavailable mailboxes (550 5.2.1), over-quota accounts
//!   (552 5.2.2, or 452 4.2.2 with `over_quota_temporary`), private lists
//!   (550 5.7.1), relaying (550 5.7.1). A directory or store error is
//!   451 4.3.0, never "unknown user".
//! * At the end of DATA/BDAT, local copies are written first with one
//!   [`MailStore::deliver`](umail_core::MailStore::deliver) call (one blob,
//!   one entry per account, one durable commit). If that call fails as a
//!   whole, nothing was stored and the transaction gets 451 4.3.0.
//! * A local target that fails on its own inside the commit (quota filled
//!   up since RCPT, account gone) or that a delivery filter temp-fails is
//!   put into the outbound queue together with the remote recipients, so
//!   the queue retries it and eventually bounces it: an accepted message
//!   is never lost.
//! * Remote recipients (and those retries) go into one
//!   [`QueueStore::enqueue`](umail_core::QueueStore::enqueue). If that fails
//!   the client gets 451 4.3.0 even when local copies were already stored:
//!   a retry may then duplicate local copies, which RFC 5321 §6.1 prefers
//!   to losing mail.
//! * `250 2.0.0 Ok queued as <id>` is sent only after all of this is durable.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;
use umail_core::sasl::{AuthStep, Authenticator, SaslError};
use umail_core::store::INBOX;
use umail_core::{
    Action, Address, DeliveryTarget, Disposition, EnqueueOptions, Flag, Flags, MessageData,
    Protocol, QueueId, Recipient, Reply, Resolution, Services, Verdict,
};

use crate::message::{ReceivedInfo, header_line, received_header, return_path, tag_subject};
use crate::session::{
    AuthResult, Event, Expansion, LocalTarget, PolicyMarks, Session, SessionError, Transaction,
};

/// Deepest alias/list nesting followed.
pub const MAX_EXPANSION_DEPTH: usize = 8;
/// Most addresses one recipient may expand to.
pub const MAX_EXPANSION_TARGETS: usize = 5000;

/// The mailbox quarantined local copies are filed into.
pub const QUARANTINE_MAILBOX: &str = "Junk";

fn temp_directory() -> Reply {
    Reply::new(451, "4.3.0", "Temporary directory failure, try again later")
}

fn temp_store() -> Reply {
    Reply::new(451, "4.3.0", "Temporary storage failure, try again later")
}

/// A filter verdict as marks, or the reply refusing the stage.
pub fn verdict_marks(verdict: Verdict) -> Result<PolicyMarks, Reply> {
    let mut marks = PolicyMarks {
        actions: verdict.actions,
        ..PolicyMarks::default()
    };
    match verdict.disposition {
        Disposition::Continue | Disposition::Accept => {}
        Disposition::Reject(r) => {
            // A filter cannot turn a refusal into success: force a 5xx.
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

/// Answers session events for one connection.
pub struct Policy {
    services: Services,
    auth: Option<Authenticator>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").finish_non_exhaustive()
    }
}

impl Policy {
    /// A policy over `services`.
    pub fn new(services: Services) -> Policy {
        Policy {
            services,
            auth: None,
        }
    }

    /// Answers `event` on `session`. [`Event::StartTls`] needs the socket
    /// and is returned unhandled; every other event is answered.
    pub async fn handle(
        &mut self,
        session: &mut Session,
        event: Event,
    ) -> Result<Option<Event>, SessionError> {
        let s = &self.services;
        match event {
            Event::Connect => {
                let v = s.filter.on_connect(&session.session_info()).await;
                session.handle_connect_result(verdict_marks(v))?;
            }
            Event::Helo { name, .. } => {
                let v = s.filter.on_helo(&session.session_info(), &name).await;
                session.handle_helo_result(verdict_marks(v))?;
            }
            Event::Mail { from, .. } => {
                let r = self.mail(session, &from).await;
                session.handle_mail_result(r)?;
            }
            Event::Rcpt(rcpt) => {
                let r = self.rcpt(session, &rcpt).await;
                session.handle_rcpt_result(r)?;
            }
            Event::Vrfy(arg) => {
                let r = self.vrfy(&arg, false).await;
                session.handle_lookup_result(r)?;
            }
            Event::Expn(arg) => {
                let r = self.vrfy(&arg, true).await;
                session.handle_lookup_result(r)?;
            }
            Event::Auth { mechanism, initial } => {
                let ip = session.connection().peer.ip();
                if s.lockout.is_locked(ip) {
                    session.handle_auth_result(AuthResult::Failure(Reply::new(
                        454,
                        "4.7.0",
                        "Too many failed authentications, try again later",
                    )))?;
                    return Ok(None);
                }
                self.auth = Some(Authenticator::new(mechanism, &s.hostname));
                let r = self.auth_step(session, initial.as_deref()).await;
                session.handle_auth_result(r)?;
            }
            Event::AuthResponse(data) => {
                let r = self.auth_step(session, Some(&data)).await;
                session.handle_auth_result(r)?;
            }
            Event::StartTls => return Ok(Some(Event::StartTls)),
            Event::Message(txn) => {
                let r = self.deliver(session, *txn).await;
                session.handle_message_result(r)?;
            }
        }
        Ok(None)
    }

    async fn mail(
        &self,
        session: &Session,
        from: &umail_core::ReversePath,
    ) -> Result<PolicyMarks, Reply> {
        let s = &self.services;
        if let (Some(principal), Some(addr)) = (session.principal(), from.address())
            && session.config().smtp.sender_must_match_auth
        {
            match s.directory.may_send_as(principal, addr).await {
                Ok(true) => {}
                // RFC 4954 §5 practice: the sender must belong to the user.
                Ok(false) => {
                    return Err(Reply::new(
                        553,
                        "5.7.1",
                        format!("Sender address <{addr}> not owned by authenticated user"),
                    ));
                }
                Err(_) => return Err(temp_directory()),
            }
        }
        verdict_marks(s.filter.on_mail(&session.session_info(), from).await)
    }

    async fn over_quota(
        &self,
        target: &umail_core::Principal,
        size: u64,
    ) -> Result<Option<Reply>, Reply> {
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
            return Ok(Some(Reply::new(552, "5.2.2", "Mailbox full")));
        }
        Ok(None)
    }

    /// Resolves one recipient: aliases and lists expanded (bounded depth,
    /// deduplicated), local targets checked for quota.
    async fn expand(
        &self,
        session: &Session,
        address: &Address,
        size: u64,
    ) -> Result<(Vec<LocalTarget>, Vec<Address>), Reply> {
        let s = &self.services;
        let sender = session
            .envelope()
            .and_then(|e| e.reverse_path.address().cloned());
        let authenticated = session.principal().is_some();
        let over_quota_temporary = session.config().smtp.over_quota_temporary;
        let mut local = Vec::new();
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
            let failure = match s.directory.resolve(&addr).await {
                Err(e) => {
                    tracing::warn!(target: "smtp.in", error = %e, "directory failure at RCPT");
                    return Err(temp_directory());
                }
                Ok(Resolution::NotLocal) => {
                    if top && !authenticated {
                        // RFC 5321 §3.6.2 / §7.1: never an open relay.
                        return Err(Reply::new(550, "5.7.1", "Relaying denied"));
                    }
                    remote.push(addr.clone());
                    None
                }
                Ok(Resolution::Unknown) => Some(Reply::new(550, "5.1.1", "User unknown")),
                Ok(Resolution::Unavailable(why)) => Some(Reply::new(
                    550,
                    "5.2.1",
                    format!("Mailbox unavailable ({why:?})"),
                )),
                Ok(Resolution::Local(p)) => match self.over_quota(&p, size).await? {
                    Some(_) if over_quota_temporary => {
                        // RFC 3463: X.2.2 mailbox full.
                        Some(Reply::new(452, "4.2.2", "Mailbox full"))
                    }
                    Some(r) => Some(r),
                    None => {
                        if !local.iter().any(|l: &LocalTarget| l.account == p.account()) {
                            local.push(LocalTarget {
                                account: p.account(),
                                address: p.address.clone(),
                            });
                        }
                        None
                    }
                },
                Ok(Resolution::Alias(targets)) => {
                    if depth >= MAX_EXPANSION_DEPTH {
                        Some(Reply::new(550, "5.4.6", "Alias nesting too deep"))
                    } else {
                        work.extend(targets.into_iter().map(|t| (t, depth + 1)));
                        None
                    }
                }
                Ok(Resolution::List(list)) => {
                    if !list.may_post(sender.as_ref()) {
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
                tracing::info!(target: "smtp.in", target_address = %addr, reply = %reply, "expansion target skipped");
                first_failure.get_or_insert(reply);
            }
        }
        if local.is_empty() && remote.is_empty() {
            return Err(first_failure
                .unwrap_or_else(|| Reply::new(550, "5.1.1", "No deliverable recipients")));
        }
        Ok((local, remote))
    }

    async fn rcpt(&self, session: &Session, rcpt: &Recipient) -> Result<Expansion, Reply> {
        let size = session
            .envelope()
            .and_then(|e| e.declared_size)
            .unwrap_or(0);
        let (local, remote) = self.expand(session, &rcpt.address, size).await?;
        let Some(envelope) = session.envelope() else {
            return Err(Reply::new(503, "5.5.1", "Need MAIL command before RCPT"));
        };
        let v = self
            .services
            .filter
            .on_rcpt(&session.session_info(), envelope, &rcpt.address)
            .await;
        let marks = verdict_marks(v)?;
        // Per-domain size limit (DomainSettings::max_message_size), checked
        // against SIZE= here and enforced while streaming by the session.
        let max_message_size = match self
            .services
            .directory
            .domain_settings(rcpt.address.domain())
            .await
        {
            Ok(Some(ds)) => ds.max_message_size,
            Ok(None) => 0,
            Err(_) => return Err(temp_directory()),
        };
        if max_message_size != 0 && size > max_message_size {
            // RFC 1870 §6.2 / RFC 3463: 552 5.3.4.
            return Err(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds the limit of the recipient's domain",
            ));
        }
        Ok(Expansion {
            local,
            remote,
            marks,
            max_message_size,
        })
    }

    async fn vrfy(&self, arg: &str, expn: bool) -> Reply {
        let text = arg.trim().trim_start_matches('<').trim_end_matches('>');
        let Ok(address) = Address::parse(text) else {
            // RFC 5321 §3.5.3: 252 when the argument cannot be verified.
            return Reply::new(
                252,
                "2.1.5",
                "Cannot VRFY user, but will accept message and attempt delivery",
            );
        };
        match self.services.directory.resolve(&address).await {
            Err(_) => temp_directory(),
            Ok(Resolution::Local(p)) => {
                Reply::new(250, "2.1.5", format!("{} <{}>", p.display_name, p.address))
            }
            Ok(Resolution::List(list)) if expn => {
                let lines: Vec<String> = list.receivers().map(|a| format!("<{a}>")).collect();
                if lines.is_empty() {
                    Reply::new(550, "5.1.1", "List has no members")
                } else {
                    Reply::new(250, "2.1.5", lines.join("\n"))
                }
            }
            Ok(Resolution::Alias(targets)) if expn => {
                let lines: Vec<String> = targets.iter().map(|a| format!("<{a}>")).collect();
                Reply::new(250, "2.1.5", lines.join("\n"))
            }
            Ok(Resolution::List(_) | Resolution::Alias(_)) => {
                Reply::new(250, "2.1.5", format!("<{address}>"))
            }
            Ok(Resolution::Unavailable(_)) => Reply::new(550, "5.2.1", "Mailbox unavailable"),
            Ok(Resolution::Unknown | Resolution::NotLocal) => {
                Reply::new(550, "5.1.1", "User unknown")
            }
        }
    }

    async fn auth_step(&mut self, session: &Session, input: Option<&[u8]>) -> AuthResult {
        let s = &self.services;
        let ip = session.connection().peer.ip();
        let Some(auth) = self.auth.as_mut() else {
            return AuthResult::Failure(Reply::new(503, "5.5.1", "No authentication in progress"));
        };
        let result = match auth.step(input, s.directory.as_ref()).await {
            Ok(AuthStep::Challenge(c)) => return AuthResult::Challenge(c),
            Ok(AuthStep::Success {
                principal,
                additional,
            }) => {
                if principal.may_use(Protocol::Smtp) {
                    s.lockout.record_success(ip);
                    tracing::info!(target: "smtp.in", user = %principal.address, "authenticated");
                    AuthResult::Success {
                        principal,
                        additional,
                    }
                } else {
                    s.lockout.record_failure(ip);
                    AuthResult::Failure(Reply::new(
                        535,
                        "5.7.8",
                        "Authentication credentials invalid",
                    ))
                }
            }
            // RFC 4954 §4: "*" cancels with 501.
            Ok(AuthStep::Failure(SaslError::Cancelled)) => {
                AuthResult::Failure(Reply::new(501, "5.0.0", "Authentication cancelled"))
            }
            Ok(AuthStep::Failure(SaslError::Malformed(what))) => AuthResult::Failure(Reply::new(
                501,
                "5.5.2",
                format!("Malformed authentication data: {what}"),
            )),
            Ok(AuthStep::Failure(e)) => {
                tracing::info!(target: "smtp.in", %ip, error = %e, "authentication failed");
                s.lockout.record_failure(ip);
                // RFC 4954 §6: 535 5.7.8 authentication credentials invalid.
                AuthResult::Failure(Reply::new(
                    535,
                    "5.7.8",
                    "Authentication credentials invalid",
                ))
            }
            // RFC 4954 §6: 454 4.7.0 temporary authentication failure.
            Err(_) => {
                AuthResult::Failure(Reply::new(454, "4.7.0", "Temporary authentication failure"))
            }
        };
        self.auth = None;
        result
    }

    async fn deliver(&self, session: &Session, txn: Transaction) -> Reply {
        let s = &self.services;
        let info = session.session_info();
        let id = QueueId(rand::random::<u64>());
        let id_text = id.to_string();
        let envelope = &txn.envelope;
        let for_rcpt = match envelope.recipients.as_slice() {
            [one] => Some(&one.address),
            _ => None,
        };
        let received = received_header(&ReceivedInfo {
            helo: session.helo(),
            peer: session.connection().peer.ip(),
            hostname: &s.hostname,
            esmtp: session.is_esmtp(),
            tls: session.tls(),
            auth: envelope.auth.as_ref(),
            smtputf8: envelope.smtputf8,
            id: &id_text,
            for_rcpt,
            date: chrono::Utc::now().to_rfc2822(),
        });
        let mut base = received;
        base.extend_from_slice(&txn.message);
        drop(txn.message);

        let parser = mail_parser::MessageParser::default();
        let parsed = parser.parse(&base[..]).unwrap_or_default();
        let v = s
            .filter
            .on_data(
                &info,
                envelope,
                MessageData {
                    raw: &base,
                    parsed: &parsed,
                },
            )
            .await;
        let mut marks = match verdict_marks(v) {
            Ok(m) => m,
            Err(reply) => return reply,
        };
        marks.merge(&txn.marks);
        let ok = Reply::new(250, "2.0.0", format!("Ok queued as {id_text}"));
        if marks.discard {
            tracing::info!(target: "smtp.in", id = %id_text, "message discarded by filter");
            return ok;
        }

        // Message-level actions.
        let (mut message, mailbox, copies) = apply_actions(&base, &marks.actions);
        let priority = crate::message::priority_of(&message, session.principal().is_some());
        drop(parsed);

        // Targets, deduplicated: local accounts and remote addresses.
        let mut locals: Vec<(LocalTarget, PolicyMarks)> = Vec::new();
        let mut remotes: Vec<Recipient> = Vec::new();
        let mut hold = marks.hold.clone();
        for accepted in &txn.recipients {
            let exp = &accepted.expansion;
            if exp.marks.discard {
                continue;
            }
            if hold.is_none() {
                hold.clone_from(&exp.marks.hold);
            }
            for l in &exp.local {
                if !locals.iter().any(|(x, _)| x.account == l.account) {
                    locals.push((l.clone(), exp.marks.clone()));
                }
            }
            for r in &exp.remote {
                push_remote(&mut remotes, r, Some(&accepted.recipient));
            }
        }
        for copy in copies {
            match s.directory.resolve(&copy).await {
                Ok(Resolution::Local(p)) => {
                    if !locals.iter().any(|(x, _)| x.account == p.account()) {
                        locals.push((
                            LocalTarget {
                                account: p.account(),
                                address: p.address.clone(),
                            },
                            PolicyMarks::default(),
                        ));
                    }
                }
                Ok(Resolution::NotLocal) => push_remote(&mut remotes, &copy, None),
                Ok(other) => {
                    tracing::warn!(target: "smtp.in", copy = %copy, resolution = ?other, "CopyTo target not deliverable");
                }
                Err(_) => return temp_directory(),
            }
        }

        // Hold (everything waits for an approver) and scheduled sending
        // (FUTURERELEASE, RFC 4865: everything waits for the release time):
        // every copy, local ones too, goes to the queue.
        let scheduled = envelope
            .release_at
            .filter(|at| *at > umail_core::unix_now());
        if hold.is_some() || scheduled.is_some() {
            let mut all: Vec<Recipient> = locals
                .iter()
                .map(|(l, _)| Recipient::new(l.address.clone()))
                .collect();
            all.extend(remotes);
            let mut options = EnqueueOptions::with_priority(priority);
            options.not_before = scheduled;
            if let Some(why) = hold {
                tracing::info!(target: "smtp.in", id = %id_text, reason = %why, "message held for approval");
                options = options.held(why);
            } else if let Some(why) = &marks.quarantine {
                options = options.held(format!("quarantined: {why}"));
            }
            if let Some(at) = scheduled {
                tracing::info!(target: "smtp.in", id = %id_text, release_at = at, "message scheduled for later delivery");
            }
            return match self.enqueue(envelope, all, &message, &options).await {
                Ok(_) => ok,
                Err(r) => r,
            };
        }
        let quarantine_all = marks.quarantine.is_some();

        // Local delivery: per-target final bytes, grouped so identical copies share one commit.
        let mut groups: Vec<CopyGroup> = Vec::new();
        let mut retry: Vec<Recipient> = Vec::new();
        let rp = return_path(&envelope.reverse_path);
        for (target, rmarks) in &locals {
            let parsed = parser.parse(&message[..]).unwrap_or_default();
            let v = s
                .filter
                .on_delivery(
                    envelope,
                    &target.address,
                    MessageData {
                        raw: &message,
                        parsed: &parsed,
                    },
                )
                .await;
            drop(parsed);
            let dmarks = match verdict_marks(v) {
                Ok(m) => m,
                Err(r) if r.is_temporary() => {
                    retry.push(Recipient::new(target.address.clone()));
                    continue;
                }
                Err(r) => {
                    tracing::warn!(target: "smtp.in", id = %id_text, rcpt = %target.address, reply = %r, "delivery refused by filter after acceptance");
                    continue;
                }
            };
            if dmarks.discard {
                continue;
            }
            let mut per = rmarks.actions.clone();
            per.extend(dmarks.actions.iter().cloned());
            let (body, per_mailbox, per_copies) = apply_actions(&message, &per);
            for c in per_copies {
                push_remote(&mut remotes, &c, None);
            }
            let quarantined =
                quarantine_all || rmarks.quarantine.is_some() || dmarks.quarantine.is_some();
            let mut flags = Flags::new();
            let mailbox = if quarantined {
                flags.insert(Flag::Keyword("$Junk".into()));
                QUARANTINE_MAILBOX.to_string()
            } else {
                per_mailbox
                    .or_else(|| mailbox.clone())
                    .unwrap_or_else(|| INBOX.to_string())
            };
            let mut bytes = rp.clone();
            bytes.extend_from_slice(&body);
            let dt = DeliveryTarget {
                account: target.account.clone(),
                mailbox,
                flags,
            };
            match groups.iter_mut().find(|(b, _)| *b == bytes) {
                Some((_, ts)) => ts.push((dt, target.address.clone())),
                None => groups.push((bytes, vec![(dt, target.address.clone())])),
            }
        }
        let now = umail_core::unix_now();
        let mut committed_any = false;
        for (bytes, targets) in groups {
            let dts: Vec<DeliveryTarget> = targets.iter().map(|(d, _)| d.clone()).collect();
            match s.store.deliver(Bytes::from(bytes), now, &dts).await {
                Ok(results) => {
                    committed_any = true;
                    for (result, (_, addr)) in results.into_iter().zip(targets) {
                        if let Err(e) = result {
                            tracing::warn!(target: "smtp.in", id = %id_text, rcpt = %addr, error = %e, "local delivery failed; queued for retry");
                            retry.push(Recipient::new(addr));
                        }
                    }
                }
                Err(e) if !committed_any => {
                    tracing::warn!(target: "smtp.in", id = %id_text, error = %e, "store failure; transaction refused");
                    return temp_store();
                }
                Err(e) => {
                    tracing::warn!(target: "smtp.in", id = %id_text, error = %e, "store failure after partial delivery; queued for retry");
                    retry.extend(targets.into_iter().map(|(_, a)| Recipient::new(a)));
                }
            }
        }

        // Remote recipients and local retries: one queue entry.
        remotes.extend(retry);
        if !remotes.is_empty() {
            let mut options = EnqueueOptions::with_priority(priority);
            if let Some(why) = &marks.quarantine {
                options = options.held(format!("quarantined: {why}"));
            }
            if let Err(r) = self.enqueue(envelope, remotes, &message, &options).await {
                return r;
            }
        }
        message.clear();
        tracing::info!(target: "smtp.in", id = %id_text, from = %envelope.reverse_path, "message accepted");
        ok
    }

    async fn enqueue(
        &self,
        envelope: &umail_core::Envelope,
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
                umail_core::unix_now(),
                options,
            )
            .await
            .map_err(|e| {
                tracing::warn!(target: "smtp.in", error = %e, "queue failure");
                temp_store()
            })
    }
}

/// One distinct final message and the local targets that get it.
type CopyGroup = (Vec<u8>, Vec<(DeliveryTarget, Address)>);

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

/// Applies header actions; returns the new message, a FileInto mailbox and CopyTo addresses.
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
