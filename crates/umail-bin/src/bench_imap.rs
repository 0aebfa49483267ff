//! `umail bench imap`: IMAP load and IDLE-connection benchmarks.
//!
//! Without `--target` it starts a `umail serve` child on a temporary data
//! directory (the real binary and durable store, with an `imap` listener
//! on loopback, `max_sessions`, `max_sessions_per_ip` and the per-account
//! IMAP session limit raised and the
//! child's open-file limit raised through `sh -c 'ulimit -n …'`), fills its
//! administrator's INBOX and then:
//!
//! * **load** (default): `--clients` connections run a mix of SELECT, FETCH
//!   (flags, header fields, whole bodies), STORE, SEARCH and APPEND for
//!   `--seconds`, one command at a time each; the report gives operations
//!   per second and latency percentiles per command kind and overall.
//! * **`--idle N`**: opens N authenticated connections that SELECT INBOX
//!   and enter IDLE, checks that a sample of them is told about a new
//!   message, and reports the server's RSS (VmRSS, and VmHWM) before and
//!   with the connections open, and the RSS per connection.
//!
//! Logins use AUTHENTICATE SCRAM-SHA-256 (the client derives the salted
//! password once, so ten thousand logins cost the server a hash lookup
//! each, not ten thousand Argon2 runs); `--auth login` uses LOGIN, for
//! servers such as Dovecot configured without SCRAM. This process raises
//! its own open-file limit by re-executing itself under `sh -c 'ulimit -n
//! …'` when `--idle` needs more descriptors than allowed (or run it after
//! `ulimit -n 65536`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, ValueEnum};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::bench::BenchServer;

/// How the benchmark logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchAuth {
    /// AUTHENTICATE SCRAM-SHA-256 with SASL-IR.
    Scram,
    /// LOGIN user password (the server must allow it without TLS).
    Login,
}

/// Options of `umail bench imap`.
#[derive(Debug, Args)]
pub struct ImapBenchArgs {
    /// Server to load (`host:port` of a plaintext IMAP listener). Default:
    /// start a `umail serve` child.
    #[arg(long)]
    pub target: Option<String>,
    /// Login name (required with `--target`).
    #[arg(long)]
    pub user: Option<String>,
    /// Password (required with `--target`).
    #[arg(long)]
    pub password: Option<String>,
    /// Pid of the target server, to report its memory (`--target` only).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Concurrent clients of the load mix.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds the load mix runs.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Messages put into INBOX before the run.
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// Size of each message in bytes.
    #[arg(long, default_value_t = 4096, value_parser = crate::cli::parse_size)]
    pub size: u64,
    /// Instead of the load mix: open this many IDLE connections and report
    /// server memory.
    #[arg(long)]
    pub idle: Option<usize>,
    /// Connection set-ups in flight at once in `--idle` mode.
    #[arg(long, default_value_t = 64)]
    pub ramp: usize,
    /// Login method.
    #[arg(long, value_enum, default_value_t = BenchAuth::Scram)]
    pub auth: BenchAuth,
}

/// The environment variable that marks the re-executed benchmark.
const REEXEC_ENV: &str = "UMAIL_BENCH_IMAP_REEXEC";

/// Runs the IMAP benchmark and prints the report.
pub async fn run(args: ImapBenchArgs) -> Result<()> {
    if let Some(n) = args.idle
        && needs_more_files(n as u64 + 256)
        && std::env::var_os(REEXEC_ENV).is_none()
    {
        return reexec_with_more_files();
    }
    let (child, addr, creds) = match &args.target {
        Some(t) => (
            None,
            t.clone(),
            Credentials {
                user: args
                    .user
                    .clone()
                    .context("--user is required with --target")?,
                password: args
                    .password
                    .clone()
                    .context("--password is required with --target")?,
            },
        ),
        None => {
            let sessions = args.idle.unwrap_or(0) + args.clients + 100;
            let dir = tempfile::tempdir().context("temporary directory")?;
            let server = BenchServer::start(
                dir,
                &format!(
                    "max_sessions = {sessions}\nmax_sessions_per_ip = {sessions}\n\n[listeners]\nimap = [\"127.0.0.1:0\"]\n\n[imap]\nplaintext_auth_without_tls = true\nmax_sessions_per_user = 0\n\n[log]\nlevel = \"warn\""
                ),
            )?;
            let addr = server.listener("imap")?;
            let (user, password) = server.admin().context("no administrator to log in as")?;
            let creds = Credentials {
                user: user.to_string(),
                password: password.to_string(),
            };
            (Some(server), addr, creds)
        }
    };
    let pid = child.as_ref().map(BenchServer::pid).or(args.server_pid);
    let login = Arc::new(Login::new(creds, args.auth));
    let size = usize::try_from(args.size).context("size")?;
    // Fill INBOX.
    let start = Instant::now();
    let filled = fill(&addr, &login, args.messages, size).await?;
    println!(
        "bench imap: {addr}, INBOX filled with {filled} messages of {size} bytes in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    match args.idle {
        Some(n) => idle(&addr, &login, n, args.ramp.max(1), pid).await,
        None => load(&addr, &login, &args, size, pid).await,
    }
}

// ---------------------------------------------------------------------------
// Server child
// ---------------------------------------------------------------------------

/// Login name and password.
#[derive(Debug, Clone)]
struct Credentials {
    user: String,
    password: String,
}

/// `(VmRSS, VmHWM)` of a process in KiB.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// True when this process may open fewer than `want` files.
fn needs_more_files(want: u64) -> bool {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return false;
    };
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|soft| soft.parse::<u64>().ok())
        .is_some_and(|soft| soft < want)
}

/// Runs this same command again under `sh -c 'ulimit -n 65536; exec …'`.
fn reexec_with_more_files() -> Result<()> {
    let exe = std::env::current_exe().context("locating the umail binary")?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@""#)
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(REEXEC_ENV, "1")
        .status()
        .context("re-executing with a higher open-file limit")?;
    if !status.success() {
        bail!("benchmark failed ({status})");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// A minimal IMAP client
// ---------------------------------------------------------------------------

struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    tag: u64,
    line: Vec<u8>,
}

/// What a command returned: untagged data (with literals inline) and the
/// tagged status line.
struct Reply {
    data: Vec<u8>,
    status: String,
}

impl Conn {
    async fn connect(addr: &str) -> Result<Conn> {
        let s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        let mut c = Conn {
            r: BufReader::with_capacity(16 * 1024, r),
            w,
            tag: 0,
            line: Vec::new(),
        };
        c.read_line().await?;
        if !c.line.starts_with(b"* OK") {
            bail!("greeting: {}", String::from_utf8_lossy(&c.line).trim_end());
        }
        Ok(c)
    }

    async fn read_line(&mut self) -> Result<()> {
        self.line.clear();
        if self.r.read_until(b'\n', &mut self.line).await? == 0 {
            bail!("server closed the connection");
        }
        Ok(())
    }

    /// Reads up to the tagged response of `tag`, following literals.
    async fn response(&mut self, tag: &str) -> Result<Reply> {
        let mut data = Vec::new();
        loop {
            self.read_line().await?;
            if self.line.starts_with(tag.as_bytes()) && self.line.get(tag.len()) == Some(&b' ') {
                let status = String::from_utf8_lossy(&self.line[tag.len() + 1..])
                    .trim_end()
                    .to_string();
                return Ok(Reply { data, status });
            }
            data.extend_from_slice(&self.line);
            // A line ending in {n} announces n bytes of literal data.
            while let Some(n) = literal_len(&self.line) {
                let mut buf = vec![0u8; n];
                self.r.read_exact(&mut buf).await?;
                data.extend_from_slice(&buf);
                self.read_line().await?;
                data.extend_from_slice(&self.line);
            }
        }
    }

    fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("b{}", self.tag)
    }

    /// Sends a command and requires OK.
    async fn ok(&mut self, command: &str) -> Result<Reply> {
        let tag = self.next_tag();
        self.w
            .write_all(format!("{tag} {command}\r\n").as_bytes())
            .await?;
        let reply = self.response(&tag).await?;
        if !reply.status.starts_with("OK") {
            bail!("{command}: {}", reply.status);
        }
        Ok(reply)
    }

    /// APPEND with a non-synchronizing literal (LITERAL+).
    async fn append(&mut self, mailbox: &str, message: &[u8]) -> Result<()> {
        let tag = self.next_tag();
        let mut cmd = format!("{tag} APPEND {mailbox} {{{}+}}\r\n", message.len()).into_bytes();
        cmd.extend_from_slice(message);
        cmd.extend_from_slice(b"\r\n");
        self.w.write_all(&cmd).await?;
        let reply = self.response(&tag).await?;
        if !reply.status.starts_with("OK") {
            bail!("APPEND: {}", reply.status);
        }
        Ok(())
    }
}

fn literal_len(line: &[u8]) -> Option<usize> {
    let body = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let open = body.iter().rposition(|b| *b == b'{')?;
    std::str::from_utf8(&body[open + 1..]).ok()?.parse().ok()
}

/// A SCRAM salt, iteration count and the salted password derived from them.
type SaltedPassword = (Vec<u8>, u32, [u8; 32]);

/// Logs connections in; SCRAM's salted password is derived once.
struct Login {
    creds: Credentials,
    auth: BenchAuth,
    salted: std::sync::Mutex<Option<SaltedPassword>>,
}

impl Login {
    fn new(creds: Credentials, auth: BenchAuth) -> Login {
        Login {
            creds,
            auth,
            salted: std::sync::Mutex::new(None),
        }
    }

    async fn login(&self, c: &mut Conn) -> Result<()> {
        match self.auth {
            BenchAuth::Login => {
                c.ok(&format!(
                    "LOGIN {} {}",
                    quote(&self.creds.user),
                    quote(&self.creds.password)
                ))
                .await?;
                Ok(())
            }
            BenchAuth::Scram => self.scram(c).await,
        }
    }

    /// RFC 5802 / RFC 7677 over IMAP AUTHENTICATE with SASL-IR.
    async fn scram(&self, c: &mut Conn) -> Result<()> {
        let nonce = B64.encode(rand::random::<[u8; 18]>());
        let first_bare = format!("n={},r={nonce}", self.creds.user);
        let tag = c.next_tag();
        c.w.write_all(
            format!(
                "{tag} AUTHENTICATE SCRAM-SHA-256 {}\r\n",
                B64.encode(format!("n,,{first_bare}"))
            )
            .as_bytes(),
        )
        .await?;
        c.read_line().await?;
        let server_first = challenge(&c.line)?;
        let mut salt = None;
        let mut iterations = None;
        let mut full_nonce = None;
        for attr in server_first.split(',') {
            match attr.split_at_checked(2) {
                Some(("r=", v)) => full_nonce = Some(v.to_string()),
                Some(("s=", v)) => salt = Some(B64.decode(v)?),
                Some(("i=", v)) => iterations = Some(v.parse::<u32>()?),
                _ => {}
            }
        }
        let (Some(salt), Some(iterations), Some(full_nonce)) = (salt, iterations, full_nonce)
        else {
            bail!("bad SCRAM server-first message {server_first}");
        };
        let salted = {
            let mut cache = self
                .salted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match &*cache {
                Some((s, i, k)) if *s == salt && *i == iterations => *k,
                _ => {
                    let k = sha256::pbkdf2(self.creds.password.as_bytes(), &salt, iterations);
                    *cache = Some((salt.clone(), iterations, k));
                    k
                }
            }
        };
        let without_proof = format!("c=biws,r={full_nonce}");
        let auth_message = format!("{first_bare},{server_first},{without_proof}");
        let client_key = sha256::hmac(&salted, b"Client Key");
        let stored_key = sha256::digest(&client_key);
        let signature = sha256::hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        let final_msg = format!("{without_proof},p={}", B64.encode(proof));
        c.w.write_all(format!("{}\r\n", B64.encode(final_msg)).as_bytes())
            .await?;
        // The server's verifier comes as a last continuation (or in OK).
        loop {
            c.read_line().await?;
            if c.line.starts_with(b"+") {
                c.w.write_all(b"\r\n").await?;
                continue;
            }
            if c.line.starts_with(tag.as_bytes()) {
                let status = String::from_utf8_lossy(&c.line[tag.len()..]).to_string();
                if status.trim_start().starts_with("OK") {
                    return Ok(());
                }
                bail!("SCRAM login failed: {}", status.trim());
            }
        }
    }
}

fn challenge(line: &[u8]) -> Result<String> {
    let Some(rest) = line.strip_prefix(b"+ ") else {
        bail!(
            "expected a continuation, got {}",
            String::from_utf8_lossy(line).trim_end()
        );
    };
    let decoded = B64.decode(rest.trim_ascii_end())?;
    Ok(String::from_utf8(decoded)?)
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn message(size: usize, n: usize) -> Vec<u8> {
    let mut body = format!(
        "From: Bench Sender <sender{}@bench.example>\r\nTo: admin@bench.localhost\r\nSubject: bench message {n}{}\r\nDate: Mon, 5 Feb 2024 10:00:00 +0800\r\nMessage-ID: <{n}.{}@bench.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        n % 50,
        if n.is_multiple_of(10) { " needle" } else { "" },
        rand::random::<u64>()
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghij\r\n";
    while body.len() + line.len() < size {
        body.extend_from_slice(line);
    }
    body
}

/// Appends `count` messages to INBOX over a few connections.
async fn fill(addr: &str, login: &Arc<Login>, count: usize, size: usize) -> Result<usize> {
    // One login first, so that the SCRAM key is derived once.
    let mut first = Conn::connect(addr).await?;
    login.login(&mut first).await?;
    let workers = 4.min(count.max(1));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (addr, login) = (addr.to_string(), Arc::clone(login));
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(&addr).await?;
            login.login(&mut c).await?;
            let mut n = 0;
            for i in (w..count).step_by(workers) {
                c.append("INBOX", &message(size, i)).await?;
                n += 1;
            }
            c.ok("LOGOUT").await?;
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.context("fill task")??;
    }
    first.ok("LOGOUT").await?;
    Ok(total)
}

// ---------------------------------------------------------------------------
// Load mix
// ---------------------------------------------------------------------------

/// The command kinds of the mix, with their weights in percent.
const MIX: [(&str, u32); 8] = [
    ("SELECT", 8),
    ("FETCH flags", 22),
    ("FETCH headers", 18),
    ("FETCH body", 14),
    ("STORE", 15),
    ("SEARCH", 10),
    ("APPEND", 5),
    ("NOOP", 8),
];

async fn mix_client(
    addr: String,
    login: Arc<Login>,
    stop: Arc<AtomicBool>,
    size: usize,
    seed: u64,
) -> Result<BTreeMap<&'static str, Vec<Duration>>> {
    let mut c = Conn::connect(&addr).await?;
    login.login(&mut c).await?;
    let reply = c.ok("SELECT INBOX").await?;
    let mut max_uid = uid_next(&reply.data).unwrap_or(2).saturating_sub(1).max(1);
    let mut out: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    let mut rng = seed;
    let total: u32 = MIX.iter().map(|(_, w)| w).sum();
    while !stop.load(Ordering::Relaxed) {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut pick = ((rng >> 33) % u64::from(total)) as u32;
        let kind = MIX
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|(k, _)| *k)
            .unwrap_or("NOOP");
        let uid = 1 + ((rng >> 13) % u64::from(max_uid)) as u32;
        let started = Instant::now();
        match kind {
            "SELECT" => {
                let r = c.ok("SELECT INBOX").await?;
                if let Some(n) = uid_next(&r.data) {
                    max_uid = n.saturating_sub(1).max(1);
                }
            }
            "FETCH flags" => {
                c.ok(&format!("UID FETCH {uid}:{} (UID FLAGS)", uid + 49))
                    .await?;
            }
            "FETCH headers" => {
                c.ok(&format!(
                    "UID FETCH {uid}:{} (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE MESSAGE-ID)])",
                    uid + 9
                ))
                .await?;
            }
            "FETCH body" => {
                c.ok(&format!("UID FETCH {uid} (BODY.PEEK[] BODYSTRUCTURE)"))
                    .await?;
            }
            "STORE" => {
                let sign = if rng & 1 == 0 { '+' } else { '-' };
                c.ok(&format!("UID STORE {uid} {sign}FLAGS.SILENT (\\Flagged)"))
                    .await?;
            }
            "SEARCH" => {
                let q = if rng & 2 == 0 {
                    "UID SEARCH FLAGGED".to_string()
                } else {
                    format!("UID SEARCH UID {uid}:* SUBJECT needle")
                };
                c.ok(&q).await?;
            }
            "APPEND" => {
                c.append("INBOX", &message(size, (rng >> 20) as usize))
                    .await?;
            }
            _ => {
                c.ok("NOOP").await?;
            }
        }
        out.entry(kind).or_default().push(started.elapsed());
    }
    c.ok("LOGOUT").await?;
    Ok(out)
}

fn uid_next(data: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(data);
    let at = text.find("[UIDNEXT ")? + "[UIDNEXT ".len();
    text[at..].split(']').next()?.trim().parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn load(
    addr: &str,
    login: &Arc<Login>,
    args: &ImapBenchArgs,
    size: usize,
    pid: Option<u32>,
) -> Result<()> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    println!(
        "load mix: {} clients for {} s ({})",
        args.clients,
        args.seconds,
        MIX.iter()
            .map(|(k, w)| format!("{k} {w}%"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        tasks.push(tokio::spawn(mix_client(
            addr.to_string(),
            Arc::clone(login),
            Arc::clone(&stop),
            size,
            0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1),
        )));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.context("load task")?? {
            all.entry(k).or_default().extend(v);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut overall: Vec<Duration> = Vec::new();
    println!(
        "{:<14} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "command", "ops", "ops/s", "p50 ms", "p99 ms", "max ms"
    );
    for (k, v) in &mut all {
        v.sort_unstable();
        println!(
            "{:<14} {:>8} {:>9.0} {:>9.2} {:>9.2} {:>9.2}",
            k,
            v.len(),
            v.len() as f64 / elapsed,
            ms(percentile(v, 0.50)),
            ms(percentile(v, 0.99)),
            ms(v.last().copied().unwrap_or_default())
        );
        overall.extend(v.iter().copied());
    }
    overall.sort_unstable();
    println!(
        "{:<14} {:>8} {:>9.0} {:>9.2} {:>9.2} {:>9.2}",
        "all",
        overall.len(),
        overall.len() as f64 / elapsed,
        ms(percentile(&overall, 0.50)),
        ms(percentile(&overall, 0.99)),
        ms(overall.last().copied().unwrap_or_default())
    );
    // The mix APPENDs, so the mailbox (and the store's page cache, part
    // of the RSS) grows with throughput: say how large it got.
    let mut c = Conn::connect(addr).await?;
    login.login(&mut c).await?;
    let status = c.ok("STATUS INBOX (MESSAGES)").await?;
    if let Some(n) = status_messages(&status.data) {
        println!("INBOX after the run: {n} messages");
    }
    c.ok("LOGOUT").await?;
    if let Some((rss, hwm)) = pid.and_then(memory_kib) {
        println!("server RSS {:.1} MiB (peak {:.1} MiB)", mib(rss), mib(hwm));
    }
    Ok(())
}

fn status_messages(data: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(data);
    let at = text.find("MESSAGES ")? + "MESSAGES ".len();
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// IDLE connections
// ---------------------------------------------------------------------------

/// One connection in IDLE: the socket stays open until dropped.
async fn idle_conn(addr: String, login: Arc<Login>) -> Result<Conn> {
    let mut c = Conn::connect(&addr).await?;
    login.login(&mut c).await?;
    c.ok("SELECT INBOX").await?;
    let tag = c.next_tag();
    c.w.write_all(format!("{tag} IDLE\r\n").as_bytes()).await?;
    c.read_line().await?;
    if !c.line.starts_with(b"+") {
        bail!("IDLE: {}", String::from_utf8_lossy(&c.line).trim_end());
    }
    Ok(c)
}

async fn idle(
    addr: &str,
    login: &Arc<Login>,
    n: usize,
    ramp: usize,
    pid: Option<u32>,
) -> Result<()> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = pid.and_then(memory_kib);
    if let Some((rss, hwm)) = before {
        println!(
            "server before: RSS {:.1} MiB (peak {:.1} MiB)",
            mib(rss),
            mib(hwm)
        );
    }
    println!("opening {n} IDLE connections ({ramp} set-ups in flight)");
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(ramp));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (addr, login, sem) = (addr.to_string(), Arc::clone(login), Arc::clone(&sem));
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            idle_conn(addr, login).await
        }));
    }
    let mut conns = Vec::with_capacity(n);
    let mut failures = 0usize;
    let mut first_error = None;
    for t in tasks {
        match t.await.context("idle task")? {
            Ok(c) => conns.push(c),
            Err(e) => {
                failures += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    println!(
        "{} connections in IDLE after {:.1} s, {failures} failed{}",
        conns.len(),
        start.elapsed().as_secs_f64(),
        first_error
            .map(|e| format!(" (first: {e:#})"))
            .unwrap_or_default()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let (Some((rss0, _)), Some((rss, hwm))) = (before, pid.and_then(memory_kib)) {
        let per = (rss.saturating_sub(rss0)) as f64 / conns.len().max(1) as f64;
        println!(
            "server with {} IDLE connections: RSS {:.1} MiB (peak {:.1} MiB), {:.1} KiB per connection above the {:.1} MiB before",
            conns.len(),
            mib(rss),
            mib(hwm),
            per,
            mib(rss0)
        );
        println!(
            "RSS / connections: {:.1} KiB",
            rss as f64 / conns.len().max(1) as f64
        );
    }
    // The connections are alive: a new message reaches a sample of them.
    let mut poster = Conn::connect(addr).await?;
    login.login(&mut poster).await?;
    let sent = Instant::now();
    poster.append("INBOX", &message(512, 0)).await?;
    let sample = conns.len().min(200);
    let mut told = 0usize;
    for c in conns.iter_mut().rev().take(sample) {
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                c.read_line().await?;
                if c.line.ends_with(b" EXISTS\r\n") {
                    return anyhow::Ok(());
                }
            }
        })
        .await;
        if matches!(got, Ok(Ok(()))) {
            told += 1;
        }
    }
    println!(
        "{told} of {sample} sampled IDLE connections saw the new message (within {:.2} s)",
        sent.elapsed().as_secs_f64()
    );
    if let Some((rss, hwm)) = pid.and_then(memory_kib) {
        println!(
            "server after the broadcast: RSS {:.1} MiB (peak {:.1} MiB)",
            mib(rss),
            mib(hwm)
        );
    }
    drop(conns);
    Ok(())
}

// ---------------------------------------------------------------------------
// SHA-256, HMAC and PBKDF2 for the SCRAM client (RFC 5802 §3), from the
// same crates umail-core's SASL server uses.
// ---------------------------------------------------------------------------

mod sha256 {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    /// SHA-256.
    pub(super) fn digest(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    /// HMAC-SHA-256.
    pub(super) fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// PBKDF2-HMAC-SHA-256 with a 32-byte output (SCRAM's `Hi`).
    pub(super) fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
        out
    }

    #[cfg(test)]
    mod tests {
        fn hex(b: &[u8]) -> String {
            b.iter().map(|x| format!("{x:02x}")).collect()
        }

        #[test]
        fn known_answers() {
            assert_eq!(
                hex(&super::digest(b"abc")),
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            );
            // RFC 4231 test case 2.
            assert_eq!(
                hex(&super::hmac(b"Jefe", b"what do ya want for nothing?")),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
            );
            // RFC 7914 §11 PBKDF2-HMAC-SHA256 ("passwd", "salt", 1), first 32 bytes.
            assert_eq!(
                hex(&super::pbkdf2(b"passwd", b"salt", 1)),
                "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
            );
        }
    }
}
