//! `umail bench pop3`: N clients each read a whole mailbox over POP3
//! (`STAT`, `UIDL`, `RETR` of every message, `QUIT`, no deletion) and the
//! run reports messages/s and MB/s.
//!
//! Without `--target` it fills a mailbox of `--messages` messages of
//! `--size` bytes in a fresh database on a temporary directory, starts
//! `umail serve` on it as a child (the real binary and durable store), loads
//! it, and reports the server's peak RSS.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use umail_core::MailStore;

use crate::bench::BenchServer;

/// `umail bench pop3` options.
#[derive(Debug, Args)]
pub struct Pop3BenchArgs {
    /// POP3 listener to load (`host:port`, plaintext; the server must allow
    /// USER/PASS without TLS). Default: start a server.
    #[arg(long, requires_all = ["user", "password"])]
    pub target: Option<String>,
    /// Login name with --target.
    #[arg(long)]
    pub user: Option<String>,
    /// Password with --target.
    #[arg(long)]
    pub password: Option<String>,
    /// Concurrent clients (each reads the whole mailbox once).
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// Messages in the mailbox (when the benchmark fills it).
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// Message size in bytes (when the benchmark fills it).
    #[arg(long, default_value_t = 16384, value_parser = crate::cli::parse_size)]
    pub size: u64,
}

const BENCH_USER: &str = "bench@bench.localhost";
const BENCH_PASSWORD: &str = "bench-password-123";

fn message(i: usize, size: usize) -> Vec<u8> {
    let mut body = format!(
        "From: sender@bench.example\r\nTo: {BENCH_USER}\r\nSubject: bench {i}\r\nMessage-ID: <{i}.{}@bench.example>\r\n\r\n",
        rand::random::<u64>()
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghij\r\n";
    while body.len() + line.len() < size {
        body.extend_from_slice(line);
    }
    body
}

/// Creates the database with one user and its mailbox, then starts the
/// server on it.
async fn start_server(
    messages: usize,
    size: usize,
    clients: usize,
) -> Result<(BenchServer, String)> {
    let dir = tempfile::tempdir().context("temporary directory")?;
    let data = BenchServer::data_dir(&dir);
    {
        let store = crate::open_store(&data)?;
        let domain: umail_core::Domain = "bench.localhost".parse()?;
        store
            .add_domain(umail_store::NewDomain::new(domain))
            .await?;
        store
            .add_user(umail_store::NewUser::new(
                BENCH_USER.parse()?,
                BENCH_PASSWORD,
            ))
            .await?;
        // Concurrent appends share commits (group commit).
        let start = Instant::now();
        let mut done = 0;
        while done < messages {
            let chunk = (messages - done).min(256);
            let mut tasks = Vec::with_capacity(chunk);
            for i in done..done + chunk {
                let store = store.clone();
                let content = Bytes::from(message(i, size));
                tasks.push(tokio::spawn(async move {
                    store
                        .append(
                            BENCH_USER,
                            umail_core::store::INBOX,
                            content,
                            Default::default(),
                            umail_core::unix_now(),
                        )
                        .await
                }));
            }
            for t in tasks {
                t.await.context("append task")??;
            }
            done += chunk;
        }
        println!(
            "filled {messages} messages of {size} bytes in {:.2} s",
            start.elapsed().as_secs_f64()
        );
    }
    let server = BenchServer::start(
        dir,
        &format!(
            "max_sessions_per_ip = {}\n\n[listeners]\npop3 = [\"127.0.0.1:0\"]\n\n[pop3]\nplaintext_auth_without_tls = true\nmax_sessions_per_user = 0\n\n[log]\nlevel = \"warn\"",
            clients + 10
        ),
    )?;
    let addr = server.listener("pop3")?;
    Ok((server, addr))
}

struct Conn {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    line: Vec<u8>,
}

impl Conn {
    async fn status(&mut self) -> Result<String> {
        self.line.clear();
        if self.reader.read_until(b'\n', &mut self.line).await? == 0 {
            bail!("server closed the connection");
        }
        let text = String::from_utf8_lossy(&self.line).trim_end().to_string();
        if !text.starts_with("+OK") {
            bail!("unexpected reply: {text}");
        }
        Ok(text)
    }

    async fn command(&mut self, cmd: &str) -> Result<String> {
        self.writer.write_all(cmd.as_bytes()).await?;
        self.writer.write_all(b"\r\n").await?;
        self.status().await
    }

    /// Reads a multi-line body; returns its size in octets (as sent).
    async fn multiline(&mut self) -> Result<u64> {
        let mut total = 0u64;
        loop {
            self.line.clear();
            if self.reader.read_until(b'\n', &mut self.line).await? == 0 {
                bail!("server closed the connection");
            }
            if self.line == b".\r\n" {
                return Ok(total);
            }
            total += self.line.len() as u64;
        }
    }
}

/// One client: login, STAT, UIDL, RETR of every message, QUIT.
/// Returns (messages, bytes).
async fn client(addr: String, user: String, password: String) -> Result<(u64, u64)> {
    let stream = TcpStream::connect(&addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (read, writer) = stream.into_split();
    let mut c = Conn {
        reader: BufReader::with_capacity(64 * 1024, read),
        writer,
        line: Vec::new(),
    };
    c.status().await?;
    c.command(&format!("USER {user}")).await?;
    c.command(&format!("PASS {password}")).await?;
    let stat = c.command("STAT").await?;
    let count: u64 = stat
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .context("malformed STAT reply")?;
    c.command("UIDL").await?;
    c.multiline().await?;
    let mut bytes = 0;
    for n in 1..=count {
        c.command(&format!("RETR {n}")).await?;
        bytes += c.multiline().await?;
    }
    c.command("QUIT").await?;
    let mut rest = Vec::new();
    let _ = c.reader.read_to_end(&mut rest).await;
    Ok((count, bytes))
}

/// Runs the POP3 benchmark and prints the report.
pub async fn run(args: Pop3BenchArgs) -> Result<()> {
    if args.clients == 0 || args.messages == 0 {
        bail!("--clients and --messages must be at least 1");
    }
    let size = usize::try_from(args.size).context("size")?;
    let (child, addr, user, password) = match &args.target {
        Some(t) => (
            None,
            t.clone(),
            args.user
                .clone()
                .context("--user is required with --target")?,
            args.password
                .as_deref()
                .map(super::read_password)
                .transpose()?
                .context("--password is required with --target")?,
        ),
        None => {
            let (c, a) = start_server(args.messages, size, args.clients).await?;
            (
                Some(c),
                a,
                BENCH_USER.to_string(),
                BENCH_PASSWORD.to_string(),
            )
        }
    };
    println!(
        "bench pop3: {} clients reading the whole mailbox of {user} at {addr}",
        args.clients
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        tasks.push(tokio::spawn(client(
            addr.clone(),
            user.clone(),
            password.clone(),
        )));
    }
    let (mut messages, mut bytes) = (0u64, 0u64);
    for t in tasks {
        let (m, b) = t.await.context("bench task")??;
        messages += m;
        bytes += b;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "retrieved: {messages} messages, {:.1} MB in {secs:.2} s",
        bytes as f64 / 1e6
    );
    println!(
        "throughput: {:.0} messages/s, {:.1} MB/s",
        messages as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
    if let Some(c) = &child
        && let Some(kib) = c.peak_rss_kib()
    {
        println!("server peak RSS: {:.1} MiB", kib as f64 / 1024.0);
    }
    Ok(())
}
