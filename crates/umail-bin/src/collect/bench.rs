//! `umail bench pop3`: N clients each read a whole mailbox over POP3
//! (`STAT`, `LIST`, `UIDL`, `RETR` of every message, `QUIT`, no deletion)
//! and the run reports messages/s and MB/s.
//!
//! Every retrieved message is verified, so a server that sends the wrong
//! bytes fast cannot post a figure (issue 20): each generated message
//! carries its body's length and SHA-256 in an `X-Bench-Body` field, and
//! the client checks the bytes it un-stuffed against that field, their
//! count against the size `LIST` gave, and the octets the `RETR` status
//! line announces (when it does) against `LIST` too. The throughput is
//! printed only when every message of every client matched; otherwise the
//! run fails and names the mismatches.
//!
//! Without `--target` it fills a mailbox of `--messages` messages of
//! `--size` bytes in a fresh database on a temporary directory, starts
//! `umail serve` on it as a child (the real binary and durable store), loads
//! it, and reports the server's peak memory. `--compare-dovecot` then loads
//! a throwaway Dovecot (Debian's `dovecot-pop3d`) holding the same
//! messages in a Maildir the same way and prints both figures side by side.
//! `--write-maildir DIR` only writes the messages into a Maildir, to fill
//! another server for `--target`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use umail_core::MailStore;

use crate::bench::{BenchServer, MemorySampler, TreeMemory};
use crate::bench_dovecot::{DovecotServer, maildir_name};

/// `umail bench pop3` options.
#[derive(Debug, Args)]
pub struct Pop3BenchArgs {
    /// POP3 listener to load (`host:port`, plaintext; the server must allow
    /// USER/PASS without TLS, and the mailbox must hold messages this
    /// benchmark generated, e.g. from --write-maildir). Default: start a
    /// server.
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
    /// Also load a throwaway Dovecot with the same messages and clients,
    /// and print both figures.
    #[arg(long, conflicts_with = "target")]
    pub compare_dovecot: bool,
    /// The Dovecot binary for --compare-dovecot.
    #[arg(long, default_value = "/usr/sbin/dovecot")]
    pub dovecot: PathBuf,
    /// Write the generated messages into this Maildir and exit.
    #[arg(long, conflicts_with_all = ["target", "compare_dovecot"])]
    pub write_maildir: Option<PathBuf>,
}

const BENCH_USER: &str = "bench@bench.localhost";
const BENCH_PASSWORD: &str = "bench-password-123";
/// The field that carries a message's body length and SHA-256.
const BODY_FIELD: &str = "X-Bench-Body";

/// Message `i` of the mix: exactly `size` bytes with CRLF line ends, a
/// header ending in `X-Bench-Body: <body length> <body SHA-256>`, and a
/// body of base64-like lines (as an attachment). In even messages runs of
/// 250 such lines (19.5 KB, longer than a server's output piece) are
/// separated by a line starting with `.` or a lone `.`, and the body ends
/// with a lone `.` line and a line starting with `.`, so the server's
/// byte-stuffing is exercised and checked; odd messages have no line the
/// server changes (its output pieces reach full size even at 16 KiB).
pub fn bench_message(i: usize, size: usize) -> Result<Vec<u8>> {
    let head = |body_len: usize, digest: &str| {
        format!(
            "From: sender@bench.example\r\nTo: {BENCH_USER}\r\nSubject: bench {i}\r\n\
             Message-ID: <{i}@bench.example>\r\n{BODY_FIELD}: {body_len} {digest}\r\n\r\n"
        )
    };
    let placeholder = "0".repeat(64);
    // The length's digits change the header's length: settle it.
    let mut body_len = size.saturating_sub(head(size, &placeholder).len());
    body_len = size.saturating_sub(head(body_len, &placeholder).len());
    if head(body_len, &placeholder).len() + body_len != size || body_len < 7 {
        bail!("--size must be at least 512 bytes");
    }
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut seed = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut chars = |n: usize, body: &mut Vec<u8>| {
        for _ in 0..n {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            body.push(B64[(seed >> 58) as usize]);
        }
    };
    let mut body = Vec::with_capacity(body_len);
    let dots = i.is_multiple_of(2);
    let mut n = 0usize;
    // Full lines while they leave room for the lone dot line and a last
    // line of a dot, at least one character and its CRLF.
    while body_len - body.len() > 78 + 3 + 4 {
        n += 1;
        match if dots { n % 500 } else { 1 } {
            0 => body.extend_from_slice(b".\r\n"),
            250 => {
                body.push(b'.');
                chars(75, &mut body);
                body.extend_from_slice(b"\r\n");
            }
            _ => {
                chars(76, &mut body);
                body.extend_from_slice(b"\r\n");
            }
        }
    }
    if dots {
        body.extend_from_slice(b".\r\n.");
    }
    let last = body_len - body.len() - 2;
    chars(last, &mut body);
    body.extend_from_slice(b"\r\n");
    let digest = hex(&Sha256::digest(&body));
    let mut message = head(body_len, &digest).into_bytes();
    message.extend_from_slice(&body);
    debug_assert_eq!(message.len(), size);
    Ok(message)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks one `RETR` response as it arrives, line by line (sans-IO): undoes
/// the RFC 1939 §3 byte-stuffing, counts the octets and hashes the body.
#[derive(Debug, Default)]
struct RetrCheck {
    octets: u64,
    in_body: bool,
    field: Option<(u64, String)>,
    body_octets: u64,
    body_hash: Sha256,
    problem: Option<String>,
}

impl RetrCheck {
    /// Feeds one line as received, CRLF included. True at the terminator.
    fn push_line(&mut self, line: &[u8]) -> bool {
        if line == b".\r\n" {
            return true;
        }
        let Some(content) = line.strip_suffix(b"\r\n") else {
            self.note("a line without CRLF");
            return false;
        };
        // RFC 1939 §3: a line starting with '.' arrives with one more.
        let line = match content.first() {
            Some(b'.') if content.get(1) == Some(&b'.') => &line[1..],
            Some(b'.') => {
                self.note("a line starting with '.' that was not stuffed");
                &line[1..]
            }
            _ => line,
        };
        self.octets += line.len() as u64;
        if self.in_body {
            self.body_octets += line.len() as u64;
            self.body_hash.update(line);
        } else if line == b"\r\n" {
            self.in_body = true;
        } else if let Some(value) = strip_field(line, BODY_FIELD) {
            let mut words = value.split_ascii_whitespace();
            if let (Some(len), Some(digest)) = (words.next(), words.next()) {
                self.field = len.parse().ok().map(|l| (l, digest.to_string()));
            }
        }
        false
    }

    fn note(&mut self, problem: &str) {
        self.problem.get_or_insert_with(|| problem.to_string());
    }

    /// The verdict once the terminator was read: `Err` describes the first
    /// mismatch.
    fn finish(self, listed: u64, announced: Option<u64>) -> Result<(), String> {
        if let Some(p) = self.problem {
            return Err(p);
        }
        if let Some(a) = announced
            && a != listed
        {
            return Err(format!("RETR announced {a} octets, LIST {listed}"));
        }
        if self.octets != listed {
            return Err(format!("{} octets retrieved, LIST {listed}", self.octets));
        }
        let Some((len, digest)) = self.field else {
            return Err(format!(
                "no {BODY_FIELD} field (not a message of this benchmark)"
            ));
        };
        let got = hex(&self.body_hash.finalize());
        if self.body_octets != len || got != digest {
            return Err(format!(
                "body {} octets SHA-256 {got}, {BODY_FIELD} says {len} octets SHA-256 {digest}",
                self.body_octets
            ));
        }
        Ok(())
    }
}

/// The value of header field `name` if `line` is that field.
fn strip_field<'a>(line: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(line).ok()?;
    let (field, value) = text.split_once(':')?;
    field
        .eq_ignore_ascii_case(name)
        .then(|| value.trim_matches([' ', '\t', '\r', '\n']))
}

/// The octet count in a `RETR` status line (`+OK 1234 octets`), if any.
fn announced_octets(status: &str) -> Option<u64> {
    let mut words = status.split_ascii_whitespace().skip(1);
    let n = words.next()?.parse().ok()?;
    words
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("octets"))
        .then_some(n)
}

/// Creates the database with one user and its mailbox, then starts the
/// server on it.
async fn start_umail(
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
                let content = Bytes::from(bench_message(i, size)?);
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
            "umail: filled {messages} messages of {size} bytes in {:.2} s",
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

/// Writes the mix into a Maildir's `cur` directory as Dovecot stores
/// delivered mail: LF line ends, sizes in the file name.
fn write_maildir(cur: &Path, messages: usize, size: usize) -> Result<()> {
    std::fs::create_dir_all(cur)?;
    for i in 0..messages {
        let crlf = bench_message(i, size)?;
        let mut lf = Vec::with_capacity(crlf.len());
        for (k, b) in crlf.iter().enumerate() {
            if !(*b == b'\r' && crlf.get(k + 1) == Some(&b'\n')) {
                lf.push(*b);
            }
        }
        std::fs::write(cur.join(maildir_name(i, lf.len(), crlf.len())), &lf)?;
    }
    Ok(())
}

struct Conn {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    line: Vec<u8>,
}

impl Conn {
    async fn read_line(&mut self) -> Result<()> {
        self.line.clear();
        if self.reader.read_until(b'\n', &mut self.line).await? == 0 {
            bail!("server closed the connection");
        }
        Ok(())
    }

    async fn status(&mut self) -> Result<String> {
        self.read_line().await?;
        let text = String::from_utf8_lossy(&self.line).trim_end().to_string();
        if !text.starts_with("+OK") {
            let shown: String = text.chars().take(80).collect();
            bail!("expected a +OK status line, got {shown:?}");
        }
        Ok(text)
    }

    async fn command(&mut self, cmd: &str) -> Result<String> {
        self.writer.write_all(cmd.as_bytes()).await?;
        self.writer.write_all(b"\r\n").await?;
        self.status()
            .await
            .with_context(|| cmd.split(' ').next().unwrap_or(cmd).to_string())
    }

    /// Reads a multi-line response; returns its lines without CRLF.
    async fn lines(&mut self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        loop {
            self.read_line().await?;
            if self.line == b".\r\n" {
                return Ok(out);
            }
            out.push(String::from_utf8_lossy(&self.line).trim_end().to_string());
        }
    }
}

/// What one client saw.
#[derive(Debug, Default)]
struct ClientReport {
    messages: u64,
    octets: u64,
    mismatches: Vec<String>,
}

/// One client: login, STAT, LIST, UIDL, RETR of every message (each
/// verified), QUIT. A status line that is not `+OK` (the response stream
/// is out of step) ends the client with an error.
async fn client(addr: String, user: String, password: String) -> Result<ClientReport> {
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
    c.status().await.context("greeting")?;
    c.command(&format!("USER {user}")).await?;
    c.command(&format!("PASS {password}")).await?;
    let stat = c.command("STAT").await?;
    let count: u32 = stat
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .context("malformed STAT reply")?;
    c.command("LIST").await?;
    let mut sizes = HashMap::new();
    for l in c.lines().await? {
        let mut w = l.split_ascii_whitespace();
        let (Some(n), Some(size)) = (w.next(), w.next()) else {
            bail!("malformed LIST line {l:?}");
        };
        sizes.insert(n.parse::<u32>()?, size.parse::<u64>()?);
    }
    if sizes.len() != count as usize {
        bail!("STAT says {count} messages, LIST lists {}", sizes.len());
    }
    c.command("UIDL").await?;
    c.lines().await?;
    let mut report = ClientReport::default();
    for n in 1..=count {
        let status = c
            .command(&format!("RETR {n}"))
            .await
            .with_context(|| format!("message {n}"))?;
        let mut check = RetrCheck::default();
        loop {
            c.read_line().await?;
            if check.push_line(&c.line) {
                break;
            }
        }
        let listed = sizes[&n];
        if let Err(e) = check.finish(listed, announced_octets(&status)) {
            report.mismatches.push(format!("message {n}: {e}"));
        }
        report.messages += 1;
        report.octets += listed;
    }
    c.command("QUIT").await?;
    let mut rest = Vec::new();
    let _ = c.reader.read_to_end(&mut rest).await;
    Ok(report)
}

/// One server's run.
struct Outcome {
    name: &'static str,
    messages: u64,
    octets: u64,
    secs: f64,
    /// One line per mismatched message or failed client.
    failures: Vec<String>,
    /// Messages that did not match (a failed client counts all it missed).
    mismatched: u64,
    memory: TreeMemory,
    peak_rss_kib: Option<u64>,
}

impl Outcome {
    fn verified(&self) -> bool {
        self.failures.is_empty()
    }

    fn print(&self, expected: Option<u64>) {
        let name = self.name;
        if !self.verified() {
            println!(
                "{name}: {} of {} messages did not match; no figure",
                self.mismatched,
                expected.unwrap_or(self.messages)
            );
            for f in self.failures.iter().take(10) {
                println!("  {f}");
            }
            if self.failures.len() > 10 {
                println!("  ... and {} more", self.failures.len() - 10);
            }
            return;
        }
        println!(
            "{name}: retrieved {} messages, {:.1} MB in {:.2} s, every message verified (size, SHA-256)",
            self.messages,
            self.octets as f64 / 1e6,
            self.secs
        );
        println!(
            "{name}: throughput {:.0} messages/s, {:.1} MB/s",
            self.messages as f64 / self.secs,
            self.octets as f64 / 1e6 / self.secs
        );
        let mut memory = format!(
            "{name}: peak memory {:.1} MiB PSS over {} process(es)",
            self.memory.pss_kib as f64 / 1024.0,
            self.memory.processes
        );
        if let Some(kib) = self.peak_rss_kib {
            memory.push_str(&format!(", server peak RSS {:.1} MiB", kib as f64 / 1024.0));
        }
        println!("{memory}");
    }
}

/// Loads `addr` with `clients` clients, sampling the memory of `pid`'s
/// process tree while they run.
async fn load(
    name: &'static str,
    addr: &str,
    user: &str,
    password: &str,
    clients: usize,
    expected: Option<u64>,
    pid: Option<u32>,
) -> Result<Outcome> {
    println!("{name}: {clients} clients reading the whole mailbox of {user} at {addr}");
    let sampler = pid.map(MemorySampler::start);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(client(
            addr.to_string(),
            user.to_string(),
            password.to_string(),
        )));
    }
    let mut outcome = Outcome {
        name,
        messages: 0,
        octets: 0,
        secs: 0.0,
        failures: Vec::new(),
        mismatched: 0,
        memory: TreeMemory::default(),
        peak_rss_kib: None,
    };
    for (k, t) in tasks.into_iter().enumerate() {
        match t.await.context("bench task")? {
            Ok(r) => {
                outcome.messages += r.messages;
                outcome.octets += r.octets;
                outcome.mismatched += r.mismatches.len() as u64;
                if let Some(want) = expected
                    && r.messages != want
                {
                    outcome.mismatched += want.abs_diff(r.messages);
                    outcome
                        .failures
                        .push(format!("client {k}: {} messages, want {want}", r.messages));
                }
                outcome
                    .failures
                    .extend(r.mismatches.into_iter().map(|m| format!("client {k}, {m}")));
            }
            Err(e) => {
                outcome.mismatched += expected.unwrap_or(1);
                outcome.failures.push(format!("client {k}: {e:#}"));
            }
        }
    }
    outcome.secs = start.elapsed().as_secs_f64();
    if let Some(s) = sampler {
        outcome.memory = s.finish();
    }
    Ok(outcome)
}

/// One untimed session that reads every message, so both servers are
/// measured warm: Dovecot builds its Maildir index at the first login,
/// and both then have the messages in the page cache.
async fn warm_up(name: &str, addr: &str) -> Result<()> {
    let report = client(addr.to_string(), BENCH_USER.into(), BENCH_PASSWORD.into())
        .await
        .with_context(|| format!("the warm-up session on {name} failed"))?;
    if let Some(first) = report.mismatches.first() {
        bail!(
            "{} of {} messages did not match in the warm-up session on {name} (first: {first}); \
             no throughput figure reported",
            report.mismatches.len(),
            report.messages
        );
    }
    Ok(())
}

/// Runs the POP3 benchmark and prints the report.
pub async fn run(args: Pop3BenchArgs) -> Result<()> {
    if args.clients == 0 || args.messages == 0 {
        bail!("--clients and --messages must be at least 1");
    }
    let size = usize::try_from(args.size).context("size")?;
    if let Some(dir) = &args.write_maildir {
        write_maildir(&dir.join("cur"), args.messages, size)?;
        for sub in ["new", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        println!(
            "wrote {} messages of {size} bytes into {}",
            args.messages,
            dir.display()
        );
        return Ok(());
    }
    let mut outcomes = Vec::new();
    if let Some(target) = &args.target {
        let user = args
            .user
            .clone()
            .context("--user is required with --target")?;
        let password = args
            .password
            .as_deref()
            .map(super::read_password)
            .transpose()?
            .context("--password is required with --target")?;
        outcomes.push(load("target", target, &user, &password, args.clients, None, None).await?);
    } else {
        let expected = Some(args.messages as u64);
        let (server, addr) = start_umail(args.messages, size, args.clients).await?;
        warm_up("umail", &addr).await?;
        let mut outcome = load(
            "umail",
            &addr,
            BENCH_USER,
            BENCH_PASSWORD,
            args.clients,
            expected,
            Some(server.pid()),
        )
        .await?;
        outcome.peak_rss_kib = server.peak_rss_kib();
        // Stopped before Dovecot starts: each server has the machine alone.
        drop(server);
        outcomes.push(outcome);
        if args.compare_dovecot {
            let start = Instant::now();
            let dovecot = DovecotServer::start_pop3(
                &args.dovecot,
                BENCH_USER,
                BENCH_PASSWORD,
                args.clients,
                |cur| write_maildir(cur, args.messages, size),
            )?;
            println!(
                "dovecot: filled {} messages of {size} bytes and started in {:.2} s",
                args.messages,
                start.elapsed().as_secs_f64()
            );
            warm_up("dovecot", dovecot.addr())
                .await
                .with_context(|| dovecot.log_tail())?;
            let outcome = load(
                "dovecot",
                dovecot.addr(),
                BENCH_USER,
                BENCH_PASSWORD,
                args.clients,
                expected,
                dovecot.pid(),
            )
            .await?;
            outcomes.push(outcome);
        }
    }
    println!();
    for o in &outcomes {
        o.print(
            args.target
                .is_none()
                .then_some(args.messages as u64 * args.clients as u64),
        );
    }
    if outcomes.len() > 1 && outcomes.iter().all(Outcome::verified) {
        println!();
        println!(
            "{:<8} {:>12} {:>8} {:>14}",
            "server", "messages/s", "MB/s", "peak PSS MiB"
        );
        for o in &outcomes {
            println!(
                "{:<8} {:>12.0} {:>8.1} {:>14.1}",
                o.name,
                o.messages as f64 / o.secs,
                o.octets as f64 / 1e6 / o.secs,
                o.memory.pss_kib as f64 / 1024.0
            );
        }
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.verified())
        .map(|o| o.name)
        .collect();
    if !failed.is_empty() {
        bail!(
            "retrieved messages did not match what was stored on {}; no throughput figure reported",
            failed.join(" and ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's stuffed form of `message` (RFC 1939 §3), terminator
    /// included, as lines with their CRLF.
    fn stuffed_lines(message: &[u8]) -> Vec<Vec<u8>> {
        let mut lines: Vec<Vec<u8>> = message
            .split_inclusive(|b| *b == b'\n')
            .map(|l| {
                let mut v = Vec::new();
                if l.starts_with(b".") {
                    v.push(b'.');
                }
                v.extend_from_slice(l);
                v
            })
            .collect();
        lines.push(b".\r\n".to_vec());
        lines
    }

    fn check(lines: &[Vec<u8>], listed: u64, announced: Option<u64>) -> Result<(), String> {
        let mut c = RetrCheck::default();
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(c.push_line(l), i == lines.len() - 1);
        }
        c.finish(listed, announced)
    }

    #[test]
    fn generated_messages_have_exact_size_and_checksum() {
        for size in [
            512,
            600,
            16 * 1024 - 1,
            16 * 1024,
            16 * 1024 + 1,
            256 * 1024,
        ] {
            for i in [0, 1, 2, 999] {
                let m = bench_message(i, size).unwrap();
                assert_eq!(m.len(), size);
                assert!(m.ends_with(b"\r\n"));
                assert!(!m.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
                let lines = stuffed_lines(&m);
                check(&lines, size as u64, Some(size as u64)).unwrap();
                assert!(m.ends_with(b"\r\n"), "complete last line");
                let body = m.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
                let first_dot = m[body..].windows(2).position(|w| w == b"\n.");
                if i % 2 == 0 {
                    assert!(m[body..].windows(5).any(|w| w == b"\r\n.\r\n"), "lone dot");
                    assert!(first_dot.unwrap() >= (size - body - 100).min(16 * 1024));
                } else {
                    assert_eq!(first_dot, None, "size {size}: nothing to stuff");
                }
            }
        }
        assert_ne!(
            bench_message(1, 4096).unwrap(),
            bench_message(2, 4096).unwrap()
        );
        assert!(bench_message(0, 100).is_err());
    }

    #[test]
    fn every_kind_of_corruption_is_a_mismatch() {
        let m = bench_message(8, 20_000).unwrap();
        let size = m.len() as u64;
        let lines = stuffed_lines(&m);
        assert!(check(&lines, size, None).is_ok());
        // Announced and listed sizes disagree, or the bytes do.
        assert!(check(&lines, size, Some(size + 1)).is_err());
        assert!(check(&lines, size + 1, None).is_err());
        // One byte of the body changed.
        let mut changed = lines.clone();
        let body_line = changed
            .iter()
            .rposition(|l| l[0].is_ascii_alphanumeric() && l.len() > 10)
            .unwrap();
        changed[body_line][0] ^= 1;
        let e = check(&changed, size, None).unwrap_err();
        assert!(e.contains("SHA-256"), "{e}");
        // A dot line not stuffed.
        let mut unstuffed = lines.clone();
        let dot = unstuffed.iter().position(|l| l.starts_with(b"..")).unwrap();
        unstuffed[dot].remove(0);
        assert!(check(&unstuffed, size - 1, None).is_err());
        // A bare LF line end.
        let mut bare = lines.clone();
        let l = &mut bare[body_line];
        l.remove(l.len() - 2);
        assert!(check(&bare, size - 1, None).is_err());
        // Not a message of this benchmark.
        let other = stuffed_lines(b"Subject: x\r\n\r\nbody\r\n");
        let e = check(&other, 20, None).unwrap_err();
        assert!(e.contains(BODY_FIELD), "{e}");
    }

    #[test]
    fn retr_status_octets() {
        assert_eq!(announced_octets("+OK 17251 octets"), Some(17251));
        assert_eq!(announced_octets("+OK 38 OCTETS"), Some(38));
        assert_eq!(announced_octets("+OK message follows"), None);
        assert_eq!(announced_octets("+OK"), None);
    }
}
