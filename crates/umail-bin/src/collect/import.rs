//! `umail import pop3`: the CLI of `umail_pop3::collect::Collector::import`,
//! which copies remote POP3 mailboxes into local accounts once (migration
//! from an old server) through the ingest pipeline. Running it again
//! copies only new messages; without `--leave-on-server` each message is
//! deleted from the old server once it is durably stored here, and a
//! message refused here stays there and is named in the summary.
//!
//! With the server running (its admin socket answers) each account is
//! imported by the server itself over the admin socket; otherwise the
//! database is opened directly and, when standard error is a terminal
//! (and not in `--json` mode), a progress line shows messages and bytes.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use umail_core::Address;
use umail_core::config::Config;
use umail_pop3::collect::{Collector, FetchProgress, ImportRequest, ProgressFn};
use umail_store::{RemotePassword, RemoteServer, TlsMode};

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

/// Imports one account with `collector`; `progress` is called after each
/// message.
pub async fn execute_import(
    collector: &Collector,
    spec: ImportSpec,
    progress: Option<&ProgressFn<'_>>,
) -> AdminReply {
    let to = Address::parse(&spec.to).map_err(|e| format!("`{}`: {e}", spec.to))?;
    let request = ImportRequest {
        server: spec.server.clone(),
        to,
        folder: spec.folder.clone(),
        leave_on_server: spec.leave_on_server,
        max_message_size: umail_store::MAX_MESSAGE_SIZE,
    };
    let report = collector
        .import(&request, progress)
        .await
        .map_err(|e| match e {
            umail_pop3::collect::CollectError::UnknownAccount(_) => e.to_string(),
            e => format!("import from {} failed: {e}", spec.server.display()),
        })?;
    let mut fields = vec![
        ("from".into(), spec.server.display()),
        ("to".into(), format!("{} {}", request.to, spec.folder)),
        ("on_server".into(), report.on_server.to_string()),
        ("imported".into(), report.fetched.to_string()),
        ("already_imported".into(), report.already_seen.to_string()),
        ("deleted_on_server".into(), report.deleted.to_string()),
        ("too_large".into(), report.skipped_too_large.to_string()),
        ("deferred".into(), report.deferred.to_string()),
        (
            "refused".into(),
            format!("{} (left on the old server)", report.refused.len()),
        ),
    ];
    fields.extend(
        report
            .refused
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("refused_{}", i + 1), r.describe())),
    );
    Ok(Output::Record { fields })
}

/// The progress line: messages and bytes done of the total.
fn progress_line(label: &str, p: &FetchProgress) -> String {
    format!(
        "{label}: {}/{} messages, {}/{} KiB",
        p.messages_done,
        p.messages_total,
        p.bytes_done / 1024,
        p.bytes_total / 1024
    )
}

/// Runs `umail import ...`.
pub async fn run(cmd: ImportCmd, config: &Config, json: bool) -> Result<()> {
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
    let collector = if live {
        None
    } else {
        if !crate::database_path(data_dir).exists() {
            bail!(
                "no database in {} (run `umail serve` once, or pass --data-dir)",
                data_dir.display()
            );
        }
        let store = crate::open_store(data_dir)?;
        Some(super::database_collector(&store, config))
    };
    let show_progress = !json && std::io::stderr().is_terminal();
    let total = specs.len();
    let mut failed = 0;
    for (i, spec) in specs.into_iter().enumerate() {
        let label = format!(
            "[{}/{total}] {} -> {}",
            i + 1,
            spec.server.display(),
            spec.to
        );
        let reply = match &collector {
            None => {
                eprintln!("{label}: importing through the running server ...");
                crate::admin_socket::send(
                    &socket,
                    &AdminRequest::Collect(super::CollectRequest::Import(spec)),
                )
                .await?
            }
            Some(collector) => {
                eprintln!("{label}: importing ...");
                let progress_label = label.clone();
                let progress = move |p: &FetchProgress| {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r\x1b[2K{}", progress_line(&progress_label, p));
                    let _ = err.flush();
                };
                let r = execute_import(
                    collector,
                    spec,
                    show_progress.then_some(&progress as &ProgressFn),
                )
                .await;
                if show_progress {
                    eprintln!();
                }
                r
            }
        };
        match reply {
            Ok(out) => {
                if let Output::Record { fields } = &out {
                    let field = |k: &str| {
                        fields
                            .iter()
                            .find(|(n, _)| n == k)
                            .map_or("0", |(_, v)| v.as_str())
                    };
                    let refused = field("refused").split(' ').next().unwrap_or("0");
                    eprintln!(
                        "{label}: {} messages imported, {refused} refused",
                        field("imported"),
                    );
                }
                out.print(json);
            }
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
