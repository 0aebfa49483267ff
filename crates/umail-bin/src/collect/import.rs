//! `umail import pop3`: copies remote POP3 mailboxes into local accounts
//! once (migration from an old server).
//!
//! The UIDLs already imported are kept in the store (seen sets under
//! `import/<account>/`), so running the import again copies only new
//! messages. Without `--leave-on-server` each message is deleted from the
//! old server after it is durably stored here.
//!
//! With the server running (its admin socket answers) each account is
//! imported by the server itself over the admin socket, and progress is
//! shown per account; otherwise the database is opened directly and
//! progress is shown per message.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use umail_core::Address;
use umail_core::config::Config;
use umail_pop3::collect::fetch_multipop;
use umail_store::collection::import_seen_prefix;
use umail_store::{RemotePassword, RemoteServer, Store, TlsMode};

use super::remote::{self, FetchGuard, StoreState};
use crate::admin::{AdminReply, AdminRequest, Output};

/// `umail import ...`
#[derive(Debug, Subcommand)]
pub enum ImportCmd {
    /// Copy every message of remote POP3 mailboxes into local accounts.
    Pop3(ImportPop3Args),
}

/// `umail import pop3` options.
#[derive(Debug, Args)]
pub struct ImportPop3Args {
    /// The old server, `host:port` (port default: 995 with implicit TLS, else 110).
    #[arg(long, required_unless_present = "batch")]
    pub from: Option<String>,
    /// Remote login name.
    #[arg(long, required_unless_present = "batch")]
    pub user: Option<String>,
    /// Remote password (`-` reads it from standard input).
    #[arg(long, required_unless_present = "batch")]
    pub password: Option<String>,
    /// The local account, e.g. alice@example.com.
    #[arg(long, required_unless_present = "batch")]
    pub to: Option<String>,
    /// A file with one account per line: `host:port user password
    /// local@address` (separated by tabs, commas, or spaces; `#` comments).
    #[arg(long, conflicts_with_all = ["from", "user", "password", "to"])]
    pub batch: Option<PathBuf>,
    /// TLS mode: implicit, starttls or none.
    #[arg(long, default_value = "implicit", value_parser = super::parse_tls)]
    pub tls: TlsMode,
    /// Keep the messages on the old server (default: delete each one once
    /// it is stored here).
    #[arg(long)]
    pub leave_on_server: bool,
    /// Trust the certificates in this PEM file (the old server's own).
    #[arg(long)]
    pub ca_file: Option<String>,
    /// Do not verify the old server's certificate.
    #[arg(long)]
    pub no_tls_verify: bool,
    /// Local folder (default INBOX).
    #[arg(long, default_value = "INBOX")]
    pub folder: String,
}

/// One account to import, as carried to the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportSpec {
    /// The old server and login.
    pub server: RemoteServer,
    /// The local account.
    pub to: String,
    /// Local folder.
    pub folder: String,
    /// Keep the messages on the old server.
    pub leave_on_server: bool,
}

/// Splits `host:port`, `[v6]:port` or `host`.
fn host_port(s: &str, tls: TlsMode) -> Result<(String, u16)> {
    let default = super::default_port(tls);
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .with_context(|| format!("`{s}`: missing `]`"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().with_context(|| format!("`{s}`: bad port"))?,
            None => default,
        };
        return Ok((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((
            h.to_string(),
            p.parse().with_context(|| format!("`{s}`: bad port"))?,
        )),
        _ => Ok((s.to_string(), default)),
    }
}

fn spec(
    args: &ImportPop3Args,
    from: &str,
    user: &str,
    password: String,
    to: &str,
) -> Result<ImportSpec> {
    let (host, port) = host_port(from, args.tls)?;
    if host.is_empty() {
        bail!("`{from}`: no host");
    }
    Address::parse(to).with_context(|| format!("`{to}` is not a valid address"))?;
    Ok(ImportSpec {
        server: RemoteServer {
            host,
            port,
            tls: args.tls,
            tls_verify: !args.no_tls_verify,
            ca_file: args.ca_file.clone(),
            username: user.to_string(),
            password: RemotePassword::new(password),
            apop: false,
        },
        to: to.to_string(),
        folder: args.folder.clone(),
        leave_on_server: args.leave_on_server,
    })
}

/// Parses the batch file: `host:port user password local@address` per line.
fn parse_batch(args: &ImportPop3Args, text: &str) -> Result<Vec<ImportSpec>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = if line.contains('\t') {
            line.split('\t').map(str::trim).collect()
        } else if line.contains(',') {
            line.split(',').map(str::trim).collect()
        } else {
            line.split_whitespace().collect()
        };
        let [from, user, password, to] = fields[..] else {
            bail!(
                "line {}: expected `host:port user password local@address`",
                n + 1
            );
        };
        out.push(
            spec(args, from, user, password.to_string(), to)
                .with_context(|| format!("line {}", n + 1))?,
        );
    }
    if out.is_empty() {
        bail!("the batch file names no account");
    }
    Ok(out)
}

/// Imports one account into `store`; `progress` is called after each
/// message with the number stored so far.
pub async fn execute_import(
    store: &Store,
    spec: ImportSpec,
    progress: Option<Box<dyn Fn(u64) + Send + Sync>>,
) -> AdminReply {
    let to = Address::parse(&spec.to).map_err(|e| format!("`{}`: {e}", spec.to))?;
    if store.get_user(&to).map_err(|e| e.to_string())?.is_none() {
        return Err(format!("not found: user {to}"));
    }
    let account = to.lookup_key();
    let remote = remote::remote_account(
        &spec.server,
        spec.leave_on_server,
        0,
        umail_store::MAX_MESSAGE_SIZE,
        0,
    )?;
    let prefix = import_seen_prefix(&account);
    let key = format!("{prefix}{}", remote.source_key());
    let Some(_guard) = FetchGuard::claim(&key) else {
        return Err("an import of this mailbox is already running".into());
    };
    let mut state = StoreState::new(store.clone(), prefix, 0);
    if let Some(p) = progress {
        let count = Arc::new(AtomicU64::new(0));
        state.on_mark = Some(Box::new(move |_| {
            p(count.fetch_add(1, Ordering::Relaxed) + 1);
        }));
    }
    tracing::info!(target: "pop3", to = %account, remote = %spec.server.display(), "import started");
    let report = fetch_multipop(&remote, store, &account, &spec.folder, &state)
        .await
        .map_err(|e| {
            let text = remote::error_text(&e);
            tracing::warn!(target: "pop3", to = %account, remote = %spec.server.display(), error = %text, "import failed");
            format!("import from {} failed: {text}", spec.server.display())
        })?;
    tracing::info!(target: "pop3", to = %account, remote = %spec.server.display(), result = %remote::summary(&report), "import done");
    Ok(Output::Record {
        fields: vec![
            ("from".into(), spec.server.display()),
            ("to".into(), format!("{account} {}", spec.folder)),
            ("on_server".into(), report.on_server.to_string()),
            ("imported".into(), report.fetched.to_string()),
            ("already_imported".into(), report.already_seen.to_string()),
            ("deleted_on_server".into(), report.deleted.to_string()),
            ("too_large".into(), report.skipped_too_large.to_string()),
            ("over_quota".into(), report.over_quota.to_string()),
        ],
    })
}

/// Runs `umail import ...`.
pub async fn run(cmd: ImportCmd, config: &Config) -> Result<()> {
    let ImportCmd::Pop3(args) = cmd;
    let specs = match &args.batch {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            parse_batch(&args, &text)?
        }
        None => {
            let (Some(from), Some(user), Some(password), Some(to)) =
                (&args.from, &args.user, &args.password, &args.to)
            else {
                bail!("--from, --user, --password and --to are required without --batch");
            };
            vec![spec(
                &args,
                from,
                user,
                super::read_password(password)?,
                to,
            )?]
        }
    };
    let data_dir = &config.server.data_dir;
    let socket = data_dir.join(crate::admin_socket::SOCKET_NAME);
    let live = crate::serve::socket_is_live(&socket);
    let store = if live {
        None
    } else {
        if !crate::database_path(data_dir).exists() {
            bail!(
                "no database in {} (run `umail serve` once, or pass --data-dir)",
                data_dir.display()
            );
        }
        Some(crate::open_store(data_dir)?)
    };
    let total = specs.len();
    let mut failed = 0;
    for (i, spec) in specs.into_iter().enumerate() {
        let label = format!(
            "[{}/{total}] {} -> {}",
            i + 1,
            spec.server.display(),
            spec.to
        );
        let reply = match &store {
            None => {
                eprintln!("{label}: importing through the running server ...");
                crate::admin_socket::send(
                    &socket,
                    &AdminRequest::Collect(super::CollectRequest::Import(spec)),
                )
                .await?
            }
            Some(store) => {
                eprintln!("{label}: importing ...");
                let progress_label = label.clone();
                let progress: Box<dyn Fn(u64) + Send + Sync> = Box::new(move |n| {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r{progress_label}: {n} messages");
                    let _ = err.flush();
                });
                let r = execute_import(store, spec, Some(progress)).await;
                eprintln!();
                r
            }
        };
        match reply {
            Ok(out) => print!("{}", out.to_text()),
            Err(message) => {
                failed += 1;
                eprintln!("{label}: {message}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {total} imports failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: ImportCmd,
    }

    fn args(extra: &[&str]) -> ImportPop3Args {
        let mut v = vec!["t", "pop3"];
        v.extend_from_slice(extra);
        let T {
            cmd: ImportCmd::Pop3(a),
        } = T::try_parse_from(v).unwrap();
        a
    }

    #[test]
    fn host_ports() {
        assert_eq!(
            host_port("pop.example:110", TlsMode::Implicit).unwrap(),
            ("pop.example".into(), 110)
        );
        assert_eq!(
            host_port("pop.example", TlsMode::Implicit).unwrap(),
            ("pop.example".into(), 995)
        );
        assert_eq!(
            host_port("[::1]:2110", TlsMode::None).unwrap(),
            ("::1".into(), 2110)
        );
        assert!(host_port("h:x", TlsMode::None).is_err());
    }

    #[test]
    fn batch_lines() {
        let a = args(&["--batch", "f", "--tls", "starttls", "--leave-on-server"]);
        let text = "# old server\n\
                    old.example:110 alice p1 alice@example.com\n\
                    \n\
                    old.example,bob,p w,bob@example.com\n";
        let specs = parse_batch(&a, text).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].server.port, 110);
        assert_eq!(specs[1].server.port, 110);
        assert_eq!(specs[1].server.password.expose(), "p w");
        assert!(specs[1].leave_on_server);
        assert_eq!(specs[1].server.tls, TlsMode::Starttls);
        let e = parse_batch(&a, "a b c\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        assert!(parse_batch(&a, "h u p not-an-address\n").is_err());
        // Missing fields without --batch are refused by clap.
        let mut v = vec!["t", "pop3", "--from", "h"];
        v.push("--user");
        v.push("u");
        assert!(T::try_parse_from(v).is_err());
    }
}
