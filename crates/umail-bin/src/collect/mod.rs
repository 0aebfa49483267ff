//! Remote mail collection in the binary: the CLI and admin requests of
//! per-user MultiPOP and per-domain DomainPOP accounts, `umail import
//! pop3`, and `umail bench pop3`. The collection itself — fetching through
//! the ingest pipeline, the schedule, imports — is
//! `umail_pop3::collect::Collector`; this module composes it with the
//! store ([`accounts::StoreAccounts`]) and prints its reports.
//!
//! * `umail fetch ...` builds a [`CollectRequest`] that runs through the
//!   admin socket of a running server, or directly on the database when
//!   no server runs ([`execute`]). `fetch run` fetches immediately in
//!   whichever process executes it, with that process's collector.
//! * [`start`] runs the collector's scheduler in `umail serve`.
//! * `umail import pop3` copies remote mailboxes once; with the server
//!   running it is executed by the server over the admin socket.
//! * Settings, status (with the messages refused locally and left on the
//!   remote server) and seen UIDLs live in the store
//!   (`umail_store::collection`).
//!
//! ```text
//! umail fetch add ACCOUNT --host H [--port P] [--tls implicit|starttls|none]
//!       --user U --password P|- [--ca-file PEM] [--tls-verify BOOL] [--apop BOOL]
//!       [--folder F] [--leave-on-server BOOL] [--delete-after-days N]
//!       [--max-size 50M] [--interval SECS] [--enabled BOOL]
//! umail fetch list [ACCOUNT] | show ACCOUNT ID | set ACCOUNT ID [options] | remove ACCOUNT ID
//! umail fetch run [ACCOUNT [ID]] | run --domain DOMAIN
//! umail fetch domain set DOMAIN [options] [--header NAME]... [--fallback ADDR]
//!       [--no-dedupe] [--max-message-ids N]
//! umail fetch domain show|remove DOMAIN | domain list
//! umail fetch limits [--domain D] [--max-accounts N] [--max-messages N]
//! umail import pop3 --from HOST:PORT --user U --password P|- --to LOCAL
//!       [--tls implicit|starttls|none] [--leave-on-server] [--ca-file PEM]
//!       [--no-tls-verify] [--folder F]
//! umail import pop3 --batch FILE [same TLS/leave options]
//! umail bench pop3 [--target ADDR --user U --password P] [--clients N]
//!       [--messages M] [--size S]
//! ```

mod accounts;
mod bench;
mod import;

use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, bail};
use clap::{ArgAction, Args, Subcommand};
use serde::{Deserialize, Serialize};
use umail_core::config::Config;
use umail_core::ingest::{Ingest, IngestSettings};
use umail_core::{Address, Domain, Services, Shutdown};
use umail_pop3::collect::{Collector, FetchReport, Trigger};
use umail_store::{
    CollectLimits, DomainPopConfig, DomainPopInfo, FetchStatus, RemoteAccountConfig,
    RemoteAccountInfo, RemotePassword, RemoteServer, Store, TlsMode,
};

use crate::admin::{AdminReply, Output};

pub use bench::Pop3BenchArgs;
pub use import::{ImportCmd, ImportSpec};

/// `umail fetch ...`: remote POP3 accounts collected on a schedule.
#[derive(Debug, Subcommand)]
pub enum FetchCmd {
    /// Add a remote POP3 account (MultiPOP) to a local user.
    Add {
        /// The local user, e.g. alice@example.com.
        account: String,
        /// Connection and collection settings.
        #[command(flatten)]
        settings: RemoteArgs,
    },
    /// List remote accounts (of one user, or all). Passwords are never shown.
    List {
        /// Only this user's accounts.
        account: Option<String>,
    },
    /// Show one remote account and its last fetch.
    Show {
        /// The local user.
        account: String,
        /// The remote account's number (see `fetch list`).
        id: u64,
    },
    /// Change settings of a remote account.
    Set {
        /// The local user.
        account: String,
        /// The remote account's number.
        id: u64,
        /// Settings to change.
        #[command(flatten)]
        settings: RemoteArgs,
    },
    /// Remove a remote account (and forget which messages it collected).
    Remove {
        /// The local user.
        account: String,
        /// The remote account's number.
        id: u64,
    },
    /// Fetch now: every enabled account, one user's, or one account.
    Run {
        /// Only this user's accounts.
        account: Option<String>,
        /// Only this remote account.
        id: Option<u64>,
        /// Only this domain's DomainPOP account.
        #[arg(long, conflicts_with_all = ["account", "id"])]
        domain: Option<String>,
    },
    /// Domain-wide collection (DomainPOP).
    #[command(subcommand)]
    Domain(DomainPopCmd),
    /// Show or set the collection limits (system-wide or per domain).
    Limits {
        /// The domain (default: system-wide).
        #[arg(long)]
        domain: Option<String>,
        /// Most remote accounts per user (0 = unlimited).
        #[arg(long)]
        max_accounts: Option<u64>,
        /// Most messages per remote mailbox per fetch (0 = unlimited).
        #[arg(long)]
        max_messages: Option<u64>,
    },
}

/// `umail fetch domain ...`
#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the `Set` variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum DomainPopCmd {
    /// Create or change the DomainPOP account of a domain.
    Set {
        /// The local domain.
        domain: String,
        /// Connection and collection settings.
        #[command(flatten)]
        settings: RemoteArgs,
        /// Header to read recipients from (repeat; default Delivered-To,
        /// X-Original-To, X-Envelope-To, To, Cc).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Recipient of messages no header routes (e.g. postmaster@...).
        #[arg(long)]
        fallback: Option<String>,
        /// Do not de-duplicate by Message-ID.
        #[arg(long)]
        no_dedupe: bool,
        /// Most Message-IDs remembered for de-duplication (default 10000).
        #[arg(long)]
        max_message_ids: Option<u64>,
        /// Ignore this many `Received` fields from the top (the provider's
        /// own hops) when reading `for <address>` clauses.
        #[arg(long)]
        skip_received: Option<u32>,
    },
    /// Show a domain's DomainPOP account.
    Show {
        /// The local domain.
        domain: String,
    },
    /// Remove a domain's DomainPOP account.
    Remove {
        /// The local domain.
        domain: String,
    },
    /// List every DomainPOP account.
    List,
}

/// Settings of a remote account, as typed.
#[derive(Debug, Args, Default)]
pub struct RemoteArgs {
    /// Remote server host name.
    #[arg(long)]
    pub host: Option<String>,
    /// Remote port (default 995 with implicit TLS, else 110).
    #[arg(long)]
    pub port: Option<u16>,
    /// TLS mode: implicit, starttls or none (default implicit).
    #[arg(long, value_parser = parse_tls)]
    pub tls: Option<TlsMode>,
    /// Remote login name.
    #[arg(long)]
    pub user: Option<String>,
    /// Remote password (`-` reads it from standard input).
    #[arg(long)]
    pub password: Option<String>,
    /// Log in with APOP.
    #[arg(long, action = ArgAction::Set)]
    pub apop: Option<bool>,
    /// Trust the certificates in this PEM file (e.g. a self-signed server).
    #[arg(long)]
    pub ca_file: Option<String>,
    /// Verify the server certificate (default true).
    #[arg(long, action = ArgAction::Set)]
    pub tls_verify: Option<bool>,
    /// Local folder for collected mail (default INBOX).
    #[arg(long)]
    pub folder: Option<String>,
    /// Keep collected mail on the server (default true).
    #[arg(long, action = ArgAction::Set)]
    pub leave_on_server: Option<bool>,
    /// Delete from the server this many days after collecting (0 = never).
    #[arg(long)]
    pub delete_after_days: Option<u32>,
    /// Skip larger messages, e.g. 20M (default 50M).
    #[arg(long, value_parser = crate::cli::parse_size)]
    pub max_size: Option<u64>,
    /// Seconds between scheduled fetches (default 300, at least 5).
    #[arg(long)]
    pub interval: Option<u64>,
    /// Collect on schedule (default true).
    #[arg(long, action = ArgAction::Set)]
    pub enabled: Option<bool>,
}

fn parse_tls(s: &str) -> Result<TlsMode, String> {
    TlsMode::parse(s).ok_or_else(|| format!("`{s}`: use implicit, starttls or none"))
}

/// Reads a password argument (`-` = one line of standard input).
pub fn read_password(arg: &str) -> Result<String> {
    if arg != "-" {
        return Ok(arg.to_string());
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    if p.is_empty() {
        bail!("empty password on standard input");
    }
    Ok(p)
}

/// Settings changes carried by a request (the password already read).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoteChanges {
    host: Option<String>,
    port: Option<u16>,
    tls: Option<TlsMode>,
    user: Option<String>,
    password: Option<RemotePassword>,
    apop: Option<bool>,
    ca_file: Option<String>,
    tls_verify: Option<bool>,
    folder: Option<String>,
    leave_on_server: Option<bool>,
    delete_after_days: Option<u32>,
    max_size: Option<u64>,
    interval: Option<u64>,
    enabled: Option<bool>,
}

impl RemoteArgs {
    fn into_changes(self) -> Result<RemoteChanges> {
        Ok(RemoteChanges {
            password: self
                .password
                .as_deref()
                .map(read_password)
                .transpose()?
                .map(RemotePassword::new),
            host: self.host,
            port: self.port,
            tls: self.tls,
            user: self.user,
            apop: self.apop,
            ca_file: self.ca_file,
            tls_verify: self.tls_verify,
            folder: self.folder,
            leave_on_server: self.leave_on_server,
            delete_after_days: self.delete_after_days,
            max_size: self.max_size,
            interval: self.interval,
            enabled: self.enabled,
        })
    }
}

impl RemoteChanges {
    /// A new server description; host, user and password are required.
    fn new_server(&self) -> Result<RemoteServer, String> {
        let tls = self.tls.unwrap_or_default();
        Ok(RemoteServer {
            host: self.host.clone().ok_or("--host is required")?,
            port: self.port.unwrap_or(default_port(tls)),
            tls,
            tls_verify: self.tls_verify.unwrap_or(true),
            ca_file: self.ca_file.clone(),
            username: self.user.clone().ok_or("--user is required")?,
            password: self.password.clone().ok_or("--password is required")?,
            apop: self.apop.unwrap_or(false),
        })
    }

    fn apply_server(&self, s: &mut RemoteServer) {
        if let Some(v) = &self.host {
            s.host = v.clone();
        }
        if let Some(v) = self.tls {
            s.tls = v;
            if self.port.is_none() {
                s.port = default_port(v);
            }
        }
        if let Some(v) = self.port {
            s.port = v;
        }
        if let Some(v) = &self.user {
            s.username = v.clone();
        }
        if let Some(v) = &self.password {
            s.password = v.clone();
        }
        if let Some(v) = self.apop {
            s.apop = v;
        }
        if let Some(v) = &self.ca_file {
            s.ca_file = (!v.is_empty()).then(|| v.clone());
        }
        if let Some(v) = self.tls_verify {
            s.tls_verify = v;
        }
    }

    fn apply_account(&self, c: &mut RemoteAccountConfig) {
        self.apply_server(&mut c.server);
        if let Some(v) = &self.folder {
            c.folder = v.clone();
        }
        if let Some(v) = self.leave_on_server {
            c.leave_on_server = v;
        }
        if let Some(v) = self.delete_after_days {
            c.delete_after_days = v;
        }
        if let Some(v) = self.max_size {
            c.max_message_size = v;
        }
        if let Some(v) = self.interval {
            c.interval_secs = v;
        }
        if let Some(v) = self.enabled {
            c.enabled = v;
        }
    }

    fn apply_domain(&self, c: &mut DomainPopConfig) {
        self.apply_server(&mut c.server);
        if let Some(v) = self.leave_on_server {
            c.leave_on_server = v;
        }
        if let Some(v) = self.delete_after_days {
            c.delete_after_days = v;
        }
        if let Some(v) = self.max_size {
            c.max_message_size = v;
        }
        if let Some(v) = self.interval {
            c.interval_secs = v;
        }
        if let Some(v) = self.enabled {
            c.enabled = v;
        }
    }
}

fn default_port(tls: TlsMode) -> u16 {
    match tls {
        TlsMode::Implicit => 995,
        _ => 110,
    }
}

/// A collection request carried by the admin socket and HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "collect_op", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum CollectRequest {
    Add {
        account: String,
        changes: RemoteChanges,
    },
    List {
        account: Option<String>,
    },
    Show {
        account: String,
        id: u64,
    },
    Set {
        account: String,
        id: u64,
        changes: RemoteChanges,
    },
    Remove {
        account: String,
        id: u64,
    },
    Run {
        account: Option<String>,
        id: Option<u64>,
        domain: Option<String>,
    },
    DomainSet {
        domain: String,
        changes: RemoteChanges,
        headers: Vec<String>,
        fallback: Option<String>,
        no_dedupe: bool,
        max_message_ids: Option<u64>,
        skip_received: Option<u32>,
    },
    DomainShow {
        domain: String,
    },
    DomainRemove {
        domain: String,
    },
    DomainList,
    Limits {
        domain: Option<String>,
        max_accounts: Option<u64>,
        max_messages: Option<u64>,
    },
    /// `umail import pop3` executed by the running server.
    Import(ImportSpec),
}

/// Turns a `umail fetch` command into a request.
pub fn fetch_request(cmd: FetchCmd) -> Result<CollectRequest> {
    use CollectRequest as R;
    Ok(match cmd {
        FetchCmd::Add { account, settings } => R::Add {
            account,
            changes: settings.into_changes()?,
        },
        FetchCmd::List { account } => R::List { account },
        FetchCmd::Show { account, id } => R::Show { account, id },
        FetchCmd::Set {
            account,
            id,
            settings,
        } => R::Set {
            account,
            id,
            changes: settings.into_changes()?,
        },
        FetchCmd::Remove { account, id } => R::Remove { account, id },
        FetchCmd::Run {
            account,
            id,
            domain,
        } => R::Run {
            account,
            id,
            domain,
        },
        FetchCmd::Limits {
            domain,
            max_accounts,
            max_messages,
        } => R::Limits {
            domain,
            max_accounts,
            max_messages,
        },
        FetchCmd::Domain(d) => match d {
            DomainPopCmd::Set {
                domain,
                settings,
                headers,
                fallback,
                no_dedupe,
                max_message_ids,
                skip_received,
            } => R::DomainSet {
                domain,
                changes: settings.into_changes()?,
                headers,
                fallback,
                no_dedupe,
                max_message_ids,
                skip_received,
            },
            DomainPopCmd::Show { domain } => R::DomainShow { domain },
            DomainPopCmd::Remove { domain } => R::DomainRemove { domain },
            DomainPopCmd::List => R::DomainList,
        },
    })
}

fn address(s: &str) -> Result<Address, String> {
    Address::parse(s.trim()).map_err(|e| format!("`{s}` is not a valid address: {e}"))
}

fn domain(s: &str) -> Result<Domain, String> {
    Domain::parse(s.trim()).map_err(|e| format!("`{s}` is not a valid domain: {e}"))
}

fn done(message: impl Into<String>) -> AdminReply {
    Ok(Output::Done {
        message: message.into(),
    })
}

fn fmt_time(ts: Option<i64>) -> String {
    match ts
        .filter(|t| *t > 0)
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
    {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => "-".to_string(),
    }
}

fn status_text(s: &FetchStatus) -> String {
    match (s.last_attempt, s.failures) {
        (None, _) => "never fetched".to_string(),
        (Some(_), 0) => format!("ok: {}", s.last_result),
        (Some(_), n) => format!("failing ({n}x): {}", s.last_result),
    }
}

fn tls_text(s: &RemoteServer) -> String {
    let mut t = s.tls.name().to_string();
    if s.tls != TlsMode::None && !s.tls_verify {
        t.push_str(" (unverified)");
    }
    t
}

fn account_row(a: &RemoteAccountInfo) -> Vec<String> {
    let c = &a.config;
    vec![
        a.account.clone(),
        a.id.to_string(),
        c.server.display(),
        tls_text(&c.server),
        c.folder.clone(),
        if c.leave_on_server { "leave" } else { "delete" }.to_string(),
        if c.enabled { "yes" } else { "no" }.to_string(),
        status_text(&a.status),
    ]
}

/// Fields common to accounts and DomainPOP, without the password.
fn server_fields(s: &RemoteServer) -> Vec<(String, String)> {
    vec![
        ("host".into(), s.host.clone()),
        ("port".into(), s.port.to_string()),
        ("tls".into(), tls_text(s)),
        ("ca_file".into(), s.ca_file.clone().unwrap_or_default()),
        ("user".into(), s.username.clone()),
        ("password".into(), "(set)".into()),
        ("apop".into(), s.apop.to_string()),
    ]
}

fn status_fields(s: &FetchStatus, interval: u64) -> Vec<(String, String)> {
    let mut fields = vec![
        ("interval".into(), format!("{interval} s")),
        ("last_attempt".into(), fmt_time(s.last_attempt)),
        ("last_success".into(), fmt_time(s.last_success)),
        ("last_result".into(), status_text(s)),
        ("failures".into(), s.failures.to_string()),
        ("next_attempt".into(), fmt_time(Some(s.next_attempt))),
        ("fetched_total".into(), s.fetched_total.to_string()),
        (
            "refused".into(),
            format!("{} (left on the remote server)", s.refused.len()),
        ),
    ];
    fields.extend(s.refused.iter().enumerate().map(|(i, r)| {
        (
            format!("refused_{}", i + 1),
            format!(
                "{}; next scheduled try {}",
                r.describe(),
                fmt_time(Some(r.retry_after))
            ),
        )
    }));
    fields
}

fn account_record(a: &RemoteAccountInfo) -> Output {
    let c = &a.config;
    let mut fields = vec![
        ("account".to_string(), a.account.clone()),
        ("id".into(), a.id.to_string()),
    ];
    fields.extend(server_fields(&c.server));
    fields.extend([
        ("folder".into(), c.folder.clone()),
        ("leave_on_server".into(), c.leave_on_server.to_string()),
        ("delete_after_days".into(), c.delete_after_days.to_string()),
        ("max_size".into(), c.max_message_size.to_string()),
        ("enabled".into(), c.enabled.to_string()),
    ]);
    fields.extend(status_fields(&a.status, c.interval_secs));
    Output::Record { fields }
}

fn domain_record(d: &DomainPopInfo) -> Output {
    let c = &d.config;
    let mut fields = vec![("domain".to_string(), d.domain.clone())];
    fields.extend(server_fields(&c.server));
    fields.extend([
        ("leave_on_server".into(), c.leave_on_server.to_string()),
        ("delete_after_days".into(), c.delete_after_days.to_string()),
        ("max_size".into(), c.max_message_size.to_string()),
        ("enabled".into(), c.enabled.to_string()),
        (
            "headers".into(),
            if c.headers.is_empty() {
                "(default)".into()
            } else {
                c.headers.join(", ")
            },
        ),
        ("fallback".into(), c.fallback.clone().unwrap_or_default()),
        ("dedupe_message_id".into(), c.dedupe_message_id.to_string()),
        ("max_message_ids".into(), c.max_message_ids.to_string()),
        ("skip_received".into(), c.skip_received.to_string()),
    ]);
    fields.extend(status_fields(&d.status, c.interval_secs));
    Output::Record { fields }
}

const RUN_COLUMNS: [&str; 3] = ["source", "result", "details"];

/// Handles a collection request against the store.
pub async fn execute(store: &Store, request: CollectRequest) -> AdminReply {
    use CollectRequest as R;
    let e = |e: umail_store::AdminError| e.to_string();
    match request {
        R::Add { account, changes } => {
            let owner = address(&account)?;
            let mut config = RemoteAccountConfig::new(changes.new_server()?);
            changes.apply_account(&mut config);
            let info = store.add_remote_account(&owner, config).await.map_err(e)?;
            done(format!(
                "remote account {} added to {} as number {}",
                info.config.server.display(),
                info.account,
                info.id
            ))
        }
        R::List { account } => {
            let owner = account.as_deref().map(address).transpose()?;
            let rows = store
                .list_remote_accounts(owner.as_ref())
                .map_err(e)?
                .iter()
                .map(account_row)
                .collect();
            Ok(Output::Table {
                columns: [
                    "account",
                    "id",
                    "remote",
                    "tls",
                    "folder",
                    "on_server",
                    "enabled",
                    "status",
                ]
                .iter()
                .map(|c| c.to_string())
                .collect(),
                rows,
            })
        }
        R::Show { account, id } => {
            let owner = address(&account)?;
            match store.remote_account(&owner, id).map_err(e)? {
                Some(a) => Ok(account_record(&a)),
                None => Err(format!("not found: remote account {id} of {account}")),
            }
        }
        R::Set {
            account,
            id,
            changes,
        } => {
            let owner = address(&account)?;
            let Some(mut info) = store.remote_account(&owner, id).map_err(e)? else {
                return Err(format!("not found: remote account {id} of {account}"));
            };
            changes.apply_account(&mut info.config);
            store
                .update_remote_account(&owner, id, info.config)
                .await
                .map_err(e)?;
            done(format!("remote account {id} of {} updated", info.account))
        }
        R::Remove { account, id } => {
            let owner = address(&account)?;
            store.remove_remote_account(&owner, id).await.map_err(e)?;
            done(format!("remote account {id} of {account} removed"))
        }
        R::Run {
            account,
            id,
            domain: only_domain,
        } => run_now(store, account, id, only_domain).await,
        R::DomainSet {
            domain: d,
            changes,
            headers,
            fallback,
            no_dedupe,
            max_message_ids,
            skip_received,
        } => {
            let d = domain(&d)?;
            let mut config = match store.domain_pop(&d).map_err(e)? {
                Some(old) => old.config,
                None => DomainPopConfig::new(changes.new_server()?),
            };
            changes.apply_domain(&mut config);
            if !headers.is_empty() {
                config.headers = headers;
            }
            if let Some(f) = fallback {
                config.fallback = (!f.is_empty()).then_some(f);
            }
            if no_dedupe {
                config.dedupe_message_id = false;
            }
            if let Some(n) = skip_received {
                config.skip_received = n;
            }
            if let Some(n) = max_message_ids {
                config.max_message_ids = n;
            }
            let info = store.set_domain_pop(&d, config).await.map_err(e)?;
            done(format!(
                "DomainPOP of {} set to {}",
                info.domain,
                info.config.server.display()
            ))
        }
        R::DomainShow { domain: d } => match store.domain_pop(&domain(&d)?).map_err(e)? {
            Some(info) => Ok(domain_record(&info)),
            None => Err(format!("not found: DomainPOP of {d}")),
        },
        R::DomainRemove { domain: d } => {
            store.remove_domain_pop(&domain(&d)?).await.map_err(e)?;
            done(format!("DomainPOP of {d} removed"))
        }
        R::DomainList => Ok(Output::Table {
            columns: ["domain", "remote", "tls", "on_server", "enabled", "status"]
                .iter()
                .map(|c| c.to_string())
                .collect(),
            rows: store
                .list_domain_pops()
                .map_err(e)?
                .iter()
                .map(|d| {
                    let c = &d.config;
                    vec![
                        d.domain.clone(),
                        c.server.display(),
                        tls_text(&c.server),
                        if c.leave_on_server { "leave" } else { "delete" }.to_string(),
                        if c.enabled { "yes" } else { "no" }.to_string(),
                        status_text(&d.status),
                    ]
                })
                .collect(),
        }),
        R::Limits {
            domain: d,
            max_accounts,
            max_messages,
        } => {
            let d = d.as_deref().map(domain).transpose()?;
            let mut limits: CollectLimits = store.collect_limits(d.as_ref()).map_err(e)?;
            if max_accounts.is_some() || max_messages.is_some() {
                if let Some(n) = max_accounts {
                    limits.max_accounts_per_user = n;
                }
                if let Some(n) = max_messages {
                    limits.max_messages_per_fetch = n;
                }
                store
                    .set_collect_limits(d.as_ref(), limits)
                    .await
                    .map_err(e)?;
            }
            Ok(Output::Record {
                fields: vec![
                    (
                        "scope".into(),
                        d.map_or("system".to_string(), |d| d.to_string()),
                    ),
                    (
                        "max_accounts_per_user".into(),
                        limits.max_accounts_per_user.to_string(),
                    ),
                    (
                        "max_messages_per_fetch".into(),
                        limits.max_messages_per_fetch.to_string(),
                    ),
                ],
            })
        }
        R::Import(spec) => import::execute_import(&process_collector()?, spec, None).await,
    }
}

/// `fetch run`: fetches the selected accounts now, one after another, in
/// this process (the server's when it runs), and reports each.
async fn run_now(
    store: &Store,
    account: Option<String>,
    id: Option<u64>,
    only_domain: Option<String>,
) -> AdminReply {
    let e = |e: umail_store::AdminError| e.to_string();
    let collector = process_collector()?;
    let mut rows = Vec::new();
    if only_domain.is_none() {
        let owner = account.as_deref().map(address).transpose()?;
        let accounts = store.list_remote_accounts(owner.as_ref()).map_err(e)?;
        for a in accounts
            .iter()
            .filter(|a| id.is_none_or(|i| i == a.id))
            .filter(|a| a.config.enabled || id.is_some())
        {
            let r = collector.collect_account(a, Trigger::Operator).await;
            rows.push(run_row(
                format!("{} #{} {}", a.account, a.id, a.config.server.display()),
                r,
            ));
        }
        if id.is_some() && rows.is_empty() {
            return Err(format!(
                "not found: remote account {} of {}",
                id.unwrap_or_default(),
                account.unwrap_or_default()
            ));
        }
    }
    if account.is_none() {
        let only = only_domain.as_deref().map(domain).transpose()?;
        let pops = store.list_domain_pops().map_err(e)?;
        let mut matched = false;
        for d in pops
            .iter()
            .filter(|d| only.as_ref().is_none_or(|o| o.as_str() == d.domain))
            .filter(|d| d.config.enabled || only.is_some())
        {
            matched = true;
            let r = collector.collect_domain(d, Trigger::Operator).await;
            rows.push(run_row(
                format!("domain {} {}", d.domain, d.config.server.display()),
                r,
            ));
        }
        if let Some(o) = only
            && !matched
        {
            return Err(format!("not found: DomainPOP of {o}"));
        }
    }
    Ok(Output::Table {
        columns: RUN_COLUMNS.iter().map(|c| c.to_string()).collect(),
        rows,
    })
}

/// A row of `fetch run`: the source, ok or failed, and the summary (with
/// each refused message) or the error.
fn run_row(
    source: String,
    result: Result<FetchReport, umail_pop3::collect::CollectError>,
) -> Vec<String> {
    let details = match &result {
        Ok(report) => {
            let mut text = report.summary();
            for r in &report.refused {
                text.push_str("; refused ");
                text.push_str(&r.describe());
            }
            text
        }
        Err(e) => e.to_string(),
    };
    vec![
        source,
        if result.is_ok() { "ok" } else { "failed" }.to_string(),
        details,
    ]
}

/// Runs `umail import ...`.
pub async fn run_import(cmd: ImportCmd, config: &Config, json: bool) -> Result<()> {
    import::run(cmd, config, json).await
}

/// Runs `umail bench pop3`.
pub async fn bench_pop3(args: Pop3BenchArgs) -> Result<()> {
    bench::run(args).await
}

/// The collector of this process: the server's (installed by [`start`]),
/// or, in a CLI process that opened the database itself, one over that
/// database ([`use_database`]). Admin requests reach collection through
/// it, so a `fetch run` and the scheduler never fetch one mailbox at once.
static COLLECTOR: OnceLock<Collector> = OnceLock::new();

/// A collector over `store` whose messages go through `ingest`.
fn collector(store: &Store, ingest: Ingest) -> Collector {
    Collector::new(Arc::new(accounts::StoreAccounts(store.clone())), ingest)
}

/// A collector for a process without a server: the pipeline over the
/// store's own services and the configured `[smtp]` limits.
fn database_collector(store: &Store, config: &Config) -> Collector {
    let services = store.services(crate::serve::effective_hostname(config), &config.security);
    collector(
        store,
        Ingest::new(services, IngestSettings::from_smtp(&config.smtp)),
    )
}

/// Starts the collector of `umail serve`: its scheduler runs until
/// `shutdown`, and admin requests use it.
pub fn start(config: &Config, store: &Store, services: &Services, shutdown: &Shutdown) {
    let ingest = Ingest::new(services.clone(), IngestSettings::from_smtp(&config.smtp));
    let collector = COLLECTOR.get_or_init(|| collector(store, ingest));
    collector.spawn(shutdown.clone());
}

/// Makes collection requests of this CLI process work on `store`, the
/// database it opened because no server runs.
pub fn use_database(store: &Store, config: &Config) {
    COLLECTOR.get_or_init(|| database_collector(store, config));
}

fn process_collector() -> Result<Collector, String> {
    COLLECTOR
        .get()
        .cloned()
        .ok_or_else(|| "remote collection is not started yet; try again".to_string())
}
