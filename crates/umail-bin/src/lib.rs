//! # umail-bin
//!
//! The reference mail server as a library, and the `umail` command built on
//! it.
//!
//! * [`ServerBuilder`] composes a whole server from a [`Config`]: every
//!   listener (SMTP MX and submission, IMAP, POP3, each with TLS), the
//!   outbound queue runner, remote POP collection, the admin socket and
//!   HTTP API. By default everything runs on the embedded store in
//!   `data_dir`; an integrator can supply their own
//!   [`Directory`](umail_core::Directory),
//!   [`MailStore`](umail_core::MailStore),
//!   [`QueueStore`](umail_core::QueueStore) and [`Filter`](umail_core::Filter)s.
//! * [`Cli`] and [`run`] are the `umail` command: `umail serve` starts the
//!   builder's server; the management subcommands talk to a running server
//!   through its admin socket, or open the database directly when no server
//!   runs (the same handlers either way).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = umail_core::config::Config::default();
//! let server = umail_bin::ServerBuilder::new(config).start().await?;
//! println!("SMTP on {:?}", server.listener("smtp"));
//! server.run_until_signal().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod admin_http;
mod admin_socket;
mod backup;
mod bench;
mod bench_dovecot;
mod bench_imap;
mod bootstrap;
mod cli;
mod collect;
mod delivery;
mod handlers;
mod serve;
mod tls;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use umail_core::config::{Config, LogFormat};

use crate::cli::Command;

pub use crate::cli::Cli;
pub use crate::serve::{RunningServer, ServerBuilder};

/// Runs the `umail` command line: loads the configuration, sets up
/// logging, and executes the command. Returns the process exit code
/// (2 for an unreadable configuration).
pub fn run(cli: Cli) -> ExitCode {
    let config = match load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("umail: {e:#}");
            return ExitCode::from(2);
        }
    };
    let config = cli.apply_overrides(config);
    init_logging(&config, cli.log_json, matches!(cli.command, Command::Serve));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("umail: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => serve::run(config).await,
            Command::Bench(cli::BenchCmd::Smtp(args)) => bench::smtp(args).await,
            Command::Bench(cli::BenchCmd::Pop3(args)) => collect::bench_pop3(args).await,
            Command::Bench(cli::BenchCmd::Imap(args)) => bench_imap::run(args).await,
            Command::Bench(cli::BenchCmd::Delivery(args)) => delivery::bench(args).await,
            Command::Import(cmd) => collect::run_import(cmd, &config, cli.json).await,
            Command::Backup { dir } => backup::backup(&config, &dir)
                .await
                .map(|out| out.print(cli.json)),
            Command::Restore { dir, force } => backup::restore(&config, &dir, force)
                .await
                .map(|out| out.print(cli.json)),
            other => cli::run(other, &config, cli.json).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("umail: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the TOML file, or the defaults when none is given. An unknown
/// key is an error that names it and its line.
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str::<Config>(&text).map_err(|e| {
        // toml's message names the key and shows the line.
        anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end())
    })
}

fn init_logging(config: &Config, json_flag: bool, serving: bool) {
    use tracing_subscriber::EnvFilter;
    // Management commands log only warnings unless asked, so their output stays clean.
    let default_level = if serving {
        config.log.level.as_str()
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_env("UMAIL_LOG")
        .or_else(|_| EnvFilter::try_new(default_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json_flag || config.log.format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Creates `dir` (and missing parents) readable by the owner only: the
/// data directory and backups hold password hashes, DKIM and TLS private
/// keys and all mail.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    Ok(umail_store::backup::create_private_dir(dir)?)
}

/// Warns when `dir` can be read by other local users.
pub fn warn_if_shared(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(dir)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the data directory is accessible to other users; `chmod 700` it"
        );
    }
}

/// The database file inside the data directory.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join(umail_store::backup::DATABASE)
}

/// Opens the store in `data_dir`, explaining the "already open" case.
pub fn open_store(data_dir: &Path) -> Result<umail_store::Store> {
    open_store_with(data_dir, &umail_store::StoreOptions::default())
}

/// [`open_store`] with explicit options (`umail serve` sizes the cache).
pub fn open_store_with(
    data_dir: &Path,
    options: &umail_store::StoreOptions,
) -> Result<umail_store::Store> {
    let path = database_path(data_dir);
    umail_store::Store::open_with(&path, options).map_err(|e| match e {
        umail_store::OpenError::Locked => anyhow::anyhow!(
            "{} is in use by another umail process (is `umail serve` running with this data_dir?)",
            path.display()
        ),
        other => anyhow::anyhow!("opening {}: {other}", path.display()),
    })
}
