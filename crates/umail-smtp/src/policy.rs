//! Answers the session's [`Event`]s with the services: directory lookups,
//! quotas, filters, authentication and delivery.
//!
//! [`Policy`] holds no socket; with the in-memory services of
//! `umail_core::memory` a whole session can be run from byte transcripts.
//!
//! # Delivery
//!
//! Recipients are expanded at `RCPT` by the ingest pipeline's
//! [`Ingest::expand`] (unknown users 550 5.1.1, unavailable mailboxes
//! 550 5.2.1, over quota 552 5.2.2 or 452 4.2.2 with
//! `over_quota_temporary`, private lists and relaying 550 5.7.1, directory
//! or store errors 451 4.3.0), so each can be refused in the session. At
//! the end of DATA/BDAT the message, with this hop's `Received` field,
//! goes through [`Ingest::ingest`] like mail from every other source: the
//! per-recipient failure policy (local copies committed first, a failing
//! local copy queued and retried, remote recipients in one queue entry,
//! `451 4.3.0` when nothing could be made durable) is written down in
//! [`umail_core::ingest`]. `250 2.0.0 Ok queued as <id>` is sent only
//! after the pipeline reports everything durable.

use umail_core::config::SmtpConfig;
use umail_core::ingest::{ExpandContext, Incoming, Ingest, IngestSettings, Recipients, Source};
use umail_core::sasl::{AuthStep, Authenticator, SaslError};
use umail_core::{Address, Protocol, QueueId, Recipient, Reply, Resolution, Services, Verdict};

use crate::message::{ReceivedInfo, received_header};
use crate::session::{
    AuthResult, Event, Expansion, PolicyMarks, Session, SessionError, Transaction,
};

pub use umail_core::ingest::{MAX_EXPANSION_DEPTH, MAX_EXPANSION_TARGETS, QUARANTINE_MAILBOX};

fn temp_directory() -> Reply {
    Reply::new(451, "4.3.0", "Temporary directory failure, try again later")
}

/// A filter verdict as marks, or the reply refusing the stage
/// ([`PolicyMarks::from_verdict`]).
pub fn verdict_marks(verdict: Verdict) -> Result<PolicyMarks, Reply> {
    PolicyMarks::from_verdict(verdict)
}

/// Answers session events for one connection.
pub struct Policy {
    services: Services,
    ingest: Ingest,
    auth: Option<Authenticator>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").finish_non_exhaustive()
    }
}

impl Policy {
    /// A policy over `services`, delivering through a pipeline with the
    /// settings `smtp` implies ([`IngestSettings::from_smtp`]).
    pub fn new(services: Services, smtp: &SmtpConfig) -> Policy {
        Policy::with_ingest(Ingest::new(services, IngestSettings::from_smtp(smtp)))
    }

    /// A policy that delivers through `ingest` (and uses its services).
    pub fn with_ingest(ingest: Ingest) -> Policy {
        Policy {
            services: ingest.services().clone(),
            ingest,
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

    async fn rcpt(&self, session: &Session, rcpt: &Recipient) -> Result<Expansion, Reply> {
        let size = session
            .envelope()
            .and_then(|e| e.declared_size)
            .unwrap_or(0);
        let sender = session
            .envelope()
            .and_then(|e| e.reverse_path.address().cloned());
        let ctx = ExpandContext {
            sender: sender.as_ref(),
            may_relay: session.principal().is_some(),
            size,
            check_quota: true,
            final_address: false,
        };
        let expansion = self.ingest.expand(&rcpt.address, &ctx).await?;
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
            marks,
            max_message_size,
            ..expansion
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
        let id = QueueId(rand::random::<u64>());
        let id_text = id.to_string();
        let envelope = txn.envelope;
        let for_rcpt = match envelope.recipients.as_slice() {
            [one] => Some(&one.address),
            _ => None,
        };
        let received = received_header(&ReceivedInfo {
            helo: session.helo(),
            peer: session.connection().peer.ip(),
            hostname: &self.services.hostname,
            esmtp: session.is_esmtp(),
            tls: session.tls(),
            auth: envelope.auth.as_ref(),
            smtputf8: envelope.smtputf8,
            id: &id_text,
            for_rcpt,
            date: chrono::Utc::now().to_rfc2822(),
        });
        let source = if session.principal().is_some() {
            Source::Submission
        } else {
            Source::Mx
        };
        let report = self
            .ingest
            .ingest(Incoming {
                source,
                session: session.session_info(),
                envelope,
                trace: received,
                content: txn.message,
                recipients: Recipients::Expanded(txn.recipients),
                marks: txn.marks,
                priority: None,
                id: Some(id),
            })
            .await;
        report.smtp_reply()
    }
}
