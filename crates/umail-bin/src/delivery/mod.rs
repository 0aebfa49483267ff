//! Outbound delivery in the binary: `umail queue ...`, `umail domain dkim
//! ...` and `umail bench delivery`, and starting the library's queue runner
//! (`umail_smtp::delivery::QueueRunner`) over the store.

mod bench;

use std::sync::Arc;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use umail_core::config::Config;
use umail_core::{Priority, QueueEntry, QueueId, QueueState, RecipientStatus, Services, Shutdown};
use umail_smtp::delivery::QueueRunner;
use umail_smtp::dkim::{DkimError, DkimKey, DkimKeySource};
use umail_store::Store;
use umail_store::dkim::DkimKeyRecord;

use crate::admin::{AdminReply, Output};

pub use bench::bench;

/// `umail queue ...`
#[derive(Debug, Subcommand)]
pub enum QueueCmd {
    /// List queued messages.
    List {
        /// Only one queue: active, deferred, held or failed.
        #[arg(long)]
        queue: Option<String>,
    },
    /// Entries per destination domain and queue, busiest first, with the
    /// age of the oldest: where a backlog is, at a glance.
    Summary,
    /// Show one entry with its recipients and attempt log.
    Show {
        /// Queue id (16 hex digits).
        id: String,
    },
    /// Retry now: one entry, a domain's entries, or every deferred entry.
    Flush {
        /// Queue id.
        id: Option<String>,
        /// Only entries with recipients in this domain.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Hold an entry (not attempted until released).
    Hold {
        /// Queue id.
        id: String,
    },
    /// Release a held (or failed) entry for delivery now.
    Release {
        /// Queue id.
        id: String,
    },
    /// Delete an entry and its message.
    Delete {
        /// Queue id.
        id: String,
    },
    /// Change an entry's priority: high entries leave before normal ones,
    /// normal before low.
    Priority {
        /// Queue id.
        id: String,
        /// `high`, `normal` or `low`.
        priority: String,
    },
}

/// `umail domain dkim ...`
#[derive(Debug, Subcommand)]
pub enum DkimCmd {
    /// Create (or replace) a domain's signing key and print the TXT record.
    Generate {
        /// The domain.
        domain: String,
        /// DNS selector.
        #[arg(long, default_value = "umail")]
        selector: String,
    },
    /// Show a domain's DKIM DNS record.
    Show {
        /// The domain.
        domain: String,
    },
    /// Remove a domain's key (mail is no longer signed).
    Remove {
        /// The domain.
        domain: String,
    },
}

/// `umail bench delivery` options.
#[derive(Debug, Args)]
pub struct DeliveryBenchArgs {
    /// Concurrent connections.
    #[arg(long, default_value_t = 20)]
    pub connections: usize,
    /// Messages to deliver.
    #[arg(long, default_value_t = 2000)]
    pub messages: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
}

/// A delivery request carried by the admin socket and HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "delivery_op", rename_all = "snake_case")]
pub enum DeliveryRequest {
    /// List the queue.
    QueueList {
        /// Filter by state.
        state: Option<QueueState>,
    },
    /// Entries per destination and queue.
    QueueSummary,
    /// Show an entry.
    QueueShow {
        /// Id.
        id: String,
    },
    /// Flush.
    QueueFlush {
        /// One entry.
        id: Option<String>,
        /// Entries for a domain.
        domain: Option<String>,
    },
    /// Hold.
    QueueHold {
        /// Id.
        id: String,
    },
    /// Release.
    QueueRelease {
        /// Id.
        id: String,
    },
    /// Delete.
    QueueDelete {
        /// Id.
        id: String,
    },
    /// Set the priority.
    QueuePriority {
        /// Id.
        id: String,
        /// The new priority.
        priority: Priority,
    },
    /// Generate a DKIM key.
    DkimGenerate {
        /// The domain.
        domain: String,
        /// Selector.
        selector: String,
    },
    /// Show DKIM.
    DkimShow {
        /// The domain.
        domain: String,
    },
    /// Remove DKIM.
    DkimRemove {
        /// The domain.
        domain: String,
    },
}

fn parse_state(s: &str) -> Result<QueueState> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "active" => QueueState::Active,
        "deferred" => QueueState::Deferred,
        "held" | "hold" => QueueState::Held,
        "failed" => QueueState::Failed,
        other => anyhow::bail!("unknown queue {other:?}: use active, deferred, held or failed"),
    })
}

/// Turns `umail queue ...` into a request.
pub fn queue_request(cmd: QueueCmd) -> Result<DeliveryRequest> {
    Ok(match cmd {
        QueueCmd::List { queue } => DeliveryRequest::QueueList {
            state: queue.as_deref().map(parse_state).transpose()?,
        },
        QueueCmd::Summary => DeliveryRequest::QueueSummary,
        QueueCmd::Show { id } => DeliveryRequest::QueueShow { id },
        QueueCmd::Flush { id, domain } => DeliveryRequest::QueueFlush { id, domain },
        QueueCmd::Hold { id } => DeliveryRequest::QueueHold { id },
        QueueCmd::Release { id } => DeliveryRequest::QueueRelease { id },
        QueueCmd::Delete { id } => DeliveryRequest::QueueDelete { id },
        QueueCmd::Priority { id, priority } => DeliveryRequest::QueuePriority {
            id,
            priority: Priority::parse(&priority).ok_or_else(|| {
                anyhow::anyhow!("unknown priority {priority:?}: use high, normal or low")
            })?,
        },
    })
}

/// Turns `umail domain dkim ...` into a request.
pub fn dkim_request(cmd: DkimCmd) -> Result<DeliveryRequest> {
    Ok(match cmd {
        DkimCmd::Generate { domain, selector } => {
            DeliveryRequest::DkimGenerate { domain, selector }
        }
        DkimCmd::Show { domain } => DeliveryRequest::DkimShow { domain },
        DkimCmd::Remove { domain } => DeliveryRequest::DkimRemove { domain },
    })
}

fn state_name(s: QueueState) -> &'static str {
    match s {
        QueueState::Active => "active",
        QueueState::Deferred => "deferred",
        QueueState::Held => "held",
        QueueState::Failed => "failed",
    }
}

fn time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

fn status_text(s: &RecipientStatus) -> String {
    match s {
        RecipientStatus::Pending => "pending".into(),
        RecipientStatus::Delivered { reply } => format!("delivered: {reply}"),
        RecipientStatus::Deferred { reply } => format!("deferred: {reply}"),
        RecipientStatus::Failed { reply } => format!("failed: {reply}"),
    }
}

async fn entry(store: &Store, id: &str) -> Result<QueueEntry, String> {
    use umail_core::QueueStore;
    let qid = QueueId::parse(id).ok_or_else(|| format!("bad queue id {id:?}"))?;
    store
        .get(qid)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no queue entry {id}"))
}

/// Handles a delivery request against the store.
pub async fn execute(store: &Store, request: DeliveryRequest) -> AdminReply {
    use umail_core::QueueStore;
    let now = umail_core::unix_now();
    match request {
        DeliveryRequest::QueueList { state } => {
            let mut entries = store.list(state).await.map_err(|e| e.to_string())?;
            // The order in which they will leave.
            entries.sort_by_key(QueueEntry::departure_order);
            let rows = entries
                .iter()
                .map(|e| {
                    vec![
                        e.id.to_string(),
                        state_name(e.state).into(),
                        e.priority.to_string(),
                        e.envelope.reverse_path.to_string(),
                        e.envelope
                            .recipients
                            .iter()
                            .map(|r| r.address.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                        e.size.to_string(),
                        e.attempts.to_string(),
                        time(e.created),
                        time(e.next_attempt),
                    ]
                })
                .collect();
            Ok(Output::Table {
                columns: [
                    "id",
                    "queue",
                    "priority",
                    "from",
                    "to",
                    "size",
                    "attempts",
                    "queued",
                    "next_attempt",
                ]
                .map(String::from)
                .to_vec(),
                rows,
            })
        }
        DeliveryRequest::QueueSummary => {
            let entries = store.list(None).await.map_err(|e| e.to_string())?;
            Ok(summary(&entries, now))
        }
        DeliveryRequest::QueueShow { id } => {
            let e = entry(store, &id).await?;
            let mut fields = vec![
                ("id".to_string(), e.id.to_string()),
                ("queue".into(), state_name(e.state).into()),
                ("priority".into(), e.priority.to_string()),
                ("from".into(), e.envelope.reverse_path.to_string()),
                ("size".into(), e.size.to_string()),
                ("queued".into(), time(e.created)),
                ("next_attempt".into(), time(e.next_attempt)),
                ("attempts".into(), e.attempts.to_string()),
            ];
            for (r, s) in e.envelope.recipients.iter().zip(&e.status) {
                fields.push((format!("rcpt {}", r.address), status_text(s)));
            }
            for l in &e.log {
                fields.push((
                    format!("log {}", time(l.at)),
                    format!("{} {}", l.host.clone().unwrap_or_default(), l.result),
                ));
            }
            Ok(Output::Record { fields })
        }
        DeliveryRequest::QueueFlush { id, domain } => {
            let mut targets = match id {
                Some(id) => vec![entry(store, &id).await?],
                None => store.list(None).await.map_err(|e| e.to_string())?,
            };
            // The runner starts on the first entry made due while the rest
            // are still being rescheduled: make the most urgent due first.
            targets.sort_by_key(QueueEntry::departure_order);
            let mut n = 0;
            for mut e in targets {
                if !matches!(e.state, QueueState::Active | QueueState::Deferred) {
                    continue;
                }
                if let Some(d) = &domain
                    && !e
                        .envelope
                        .recipients
                        .iter()
                        .any(|r| r.address.domain().as_str().eq_ignore_ascii_case(d))
                {
                    continue;
                }
                e.next_attempt = now;
                e.state = QueueState::Active;
                store.update(&e).await.map_err(|e| e.to_string())?;
                n += 1;
            }
            Ok(Output::Done {
                message: format!("{n} queue entries scheduled for immediate delivery"),
            })
        }
        DeliveryRequest::QueueHold { id } => {
            let mut e = entry(store, &id).await?;
            e.state = QueueState::Held;
            store.update(&e).await.map_err(|e| e.to_string())?;
            Ok(Output::Done {
                message: format!("{id} held"),
            })
        }
        DeliveryRequest::QueueRelease { id } => {
            let mut e = entry(store, &id).await?;
            if e.state == QueueState::Failed {
                // Released from the failed queue: failed recipients are tried again.
                for s in e.status.iter_mut() {
                    if matches!(s, RecipientStatus::Failed { .. }) {
                        *s = RecipientStatus::Pending;
                    }
                }
            }
            e.state = QueueState::Active;
            e.next_attempt = now;
            store.update(&e).await.map_err(|e| e.to_string())?;
            Ok(Output::Done {
                message: format!("{id} released"),
            })
        }
        DeliveryRequest::QueueDelete { id } => {
            let e = entry(store, &id).await?;
            store.remove(e.id).await.map_err(|e| e.to_string())?;
            Ok(Output::Done {
                message: format!("{id} deleted"),
            })
        }
        DeliveryRequest::QueuePriority { id, priority } => {
            let mut e = entry(store, &id).await?;
            e.priority = priority;
            store.update(&e).await.map_err(|e| e.to_string())?;
            Ok(Output::Done {
                message: format!("{id} priority {priority}"),
            })
        }
        DeliveryRequest::DkimGenerate { domain, selector } => {
            let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
            umail_core::Domain::parse(&domain).map_err(|e| format!("bad domain: {e}"))?;
            let (private_key, txt) = umail_smtp::dkim::generate().map_err(|e| e.to_string())?;
            store
                .put_dkim_key(DkimKeyRecord {
                    domain: domain.clone(),
                    selector: selector.clone(),
                    algorithm: "rsa".into(),
                    private_key,
                    created: now,
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(dkim_output(&domain, &selector, &txt))
        }
        DeliveryRequest::DkimShow { domain } => {
            let k = store
                .dkim_key(&domain)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no DKIM key for {domain}"))?;
            let txt = umail_smtp::dkim::txt_record(&k.private_key).map_err(|e| e.to_string())?;
            Ok(dkim_output(&k.domain, &k.selector, &txt))
        }
        DeliveryRequest::DkimRemove { domain } => {
            if store
                .remove_dkim_key(&domain)
                .await
                .map_err(|e| e.to_string())?
            {
                Ok(Output::Done {
                    message: format!("DKIM key of {domain} removed"),
                })
            } else {
                Err(format!("no DKIM key for {domain}"))
            }
        }
    }
}

/// Counts per destination domain (of the recipients still to deliver; a
/// failed entry counts under its failed recipients' domains): active,
/// deferred, held, failed, and the age of the oldest entry. The first row
/// totals every entry once.
fn summary(entries: &[QueueEntry], now: i64) -> Output {
    #[derive(Default)]
    struct Row {
        by_state: [usize; 4],
        oldest: Option<i64>,
    }
    let slot = |s: QueueState| match s {
        QueueState::Active => 0,
        QueueState::Deferred => 1,
        QueueState::Held => 2,
        QueueState::Failed => 3,
    };
    let mut total = Row::default();
    let mut rows: std::collections::BTreeMap<String, Row> = Default::default();
    for e in entries {
        let mut domains: Vec<String> = e
            .envelope
            .recipients
            .iter()
            .zip(&e.status)
            .filter(|(_, st)| !matches!(st, RecipientStatus::Delivered { .. }))
            .map(|(r, _)| r.address.domain().as_str().to_ascii_lowercase())
            .collect();
        domains.sort();
        domains.dedup();
        let count = |row: &mut Row| {
            row.by_state[slot(e.state)] += 1;
            row.oldest = Some(row.oldest.map_or(e.created, |o| o.min(e.created)));
        };
        for d in domains {
            count(rows.entry(d).or_default());
        }
        count(&mut total);
    }
    let age = |oldest: Option<i64>| match oldest {
        None => "-".to_string(),
        Some(t) => {
            let secs = (now - t).max(0);
            if secs >= 86_400 {
                format!("{}d{}h", secs / 86_400, secs % 86_400 / 3600)
            } else if secs >= 3600 {
                format!("{}h{}m", secs / 3600, secs % 3600 / 60)
            } else {
                format!("{}m{}s", secs / 60, secs % 60)
            }
        }
    };
    let render = |name: String, r: &Row| {
        let mut v = vec![name];
        v.extend(r.by_state.iter().map(|n| n.to_string()));
        v.push(age(r.oldest));
        v
    };
    let mut sorted: Vec<(String, Row)> = rows.into_iter().collect();
    sorted.sort_by(|a, b| {
        let n = |r: &Row| r.by_state.iter().sum::<usize>();
        n(&b.1).cmp(&n(&a.1)).then_with(|| a.0.cmp(&b.0))
    });
    let mut out = vec![render("(all)".into(), &total)];
    out.extend(sorted.iter().map(|(d, r)| render(d.clone(), r)));
    Output::Table {
        columns: [
            "destination",
            "active",
            "deferred",
            "held",
            "failed",
            "oldest",
        ]
        .map(String::from)
        .to_vec(),
        rows: out,
    }
}

fn dkim_output(domain: &str, selector: &str, txt: &str) -> Output {
    Output::Record {
        fields: vec![
            ("domain".into(), domain.into()),
            ("selector".into(), selector.into()),
            (
                "record".into(),
                // RFC 1035 §3.3.14: one TXT string holds at most 255 bytes.
                format!(
                    "{selector}._domainkey.{domain}. IN TXT ( {} )",
                    txt.as_bytes()
                        .chunks(255)
                        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            ),
            ("txt".into(), txt.into()),
        ],
    }
}

/// The store's DKIM keys (`umail domain dkim generate`) for the runner.
struct StoreDkimKeys(Store);

#[async_trait::async_trait]
impl DkimKeySource for StoreDkimKeys {
    async fn signing_keys(&self) -> Result<Vec<DkimKey>, DkimError> {
        let records = self
            .0
            .dkim_keys()
            .await
            .map_err(|e| DkimError::new(e.to_string()))?;
        Ok(records
            .into_iter()
            .map(|k| DkimKey {
                domain: k.domain,
                selector: k.selector,
                private_key: k.private_key,
            })
            .collect())
    }
}

/// The queue runner of `umail serve` and `umail bench delivery`: routing
/// and pipeline settings from `config`, DKIM keys from the store.
pub fn runner(config: &Config, store: Store, services: Services) -> Result<QueueRunner> {
    Ok(QueueRunner::from_config(services, config)?.with_dkim_keys(Arc::new(StoreDkimKeys(store))))
}

/// Starts the queue runner of `umail serve`.
pub fn spawn_runner(config: &Config, store: Store, services: Services, shutdown: Shutdown) {
    match runner(config, store, services) {
        Ok(runner) => {
            runner.spawn(shutdown);
        }
        Err(e) => tracing::error!(target: "queue", error = %e, "outbound delivery disabled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use umail_core::{EnqueueOptions, Envelope, Recipient, ReversePath};

    fn entry(id: u64, rcpts: &[&str], state: QueueState, created: i64) -> QueueEntry {
        let mut env = Envelope::new(ReversePath::Null);
        for r in rcpts {
            env.recipients.push(Recipient::new(r.parse().unwrap()));
        }
        let mut e = QueueEntry::new(QueueId(id), env, 1, created, &EnqueueOptions::default());
        e.state = state;
        e
    }

    #[test]
    fn summary_counts_each_entry_once_per_destination_and_in_total() {
        let mut partly = entry(3, &["a@one.test", "b@two.test"], QueueState::Deferred, 100);
        partly.status[1] = RecipientStatus::Delivered {
            reply: "250 ok".into(),
        };
        let entries = vec![
            entry(1, &["a@one.test", "b@ONE.test"], QueueState::Active, 3000),
            entry(2, &["a@two.test"], QueueState::Held, 200),
            partly,
            entry(4, &["x@one.test"], QueueState::Failed, 50),
        ];
        let Output::Table { rows, .. } = summary(&entries, 3600) else {
            panic!("a table");
        };
        let rows: Vec<Vec<&str>> = rows
            .iter()
            .map(|r| r.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            rows,
            vec![
                vec!["(all)", "1", "1", "1", "1", "59m10s"],
                vec!["one.test", "1", "1", "0", "1", "59m10s"],
                vec!["two.test", "0", "0", "1", "0", "56m40s"],
            ]
        );
    }
}
