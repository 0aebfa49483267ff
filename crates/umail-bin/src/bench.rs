//! `umail bench smtp`: a load generator for the SMTP receiver.
//!
//! Without `--target` it starts a `umail serve` child on a temporary data
//! directory (the real binary, the real durable store) and delivers to that
//! server's first administrator; it reports accepted messages per second,
//! latency percentiles of the final reply to DATA, and the server's peak RSS.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Options of `umail bench smtp`.
#[derive(Debug, Args)]
pub struct SmtpBenchArgs {
    /// Server to load (`host:port` of an MX listener). Default: start one.
    #[arg(long)]
    target: Option<String>,
    /// Recipient (must be local on the target). Default: the started server's admin.
    #[arg(long)]
    rcpt: Option<String>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 20)]
    connections: usize,
    /// Messages in total.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 4096, value_parser = crate::cli::parse_size)]
    size: u64,
}

/// A `umail serve` child on a temporary directory, killed on drop: the
/// real binary and the durable store, for every `umail bench` command.
pub struct BenchServer {
    process: std::process::Child,
    listeners: HashMap<String, String>,
    admin: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl BenchServer {
    /// The data directory a benchmark may fill before [`BenchServer::start`].
    pub fn data_dir(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("data")
    }

    /// Starts `umail serve` on `dir` with `[server] hostname` and `data_dir`
    /// set and `config` (more TOML, e.g. `[listeners]`) appended; waits
    /// until it is ready.
    pub fn start(dir: tempfile::TempDir, config: &str) -> Result<BenchServer> {
        use std::io::BufRead;
        let path = dir.path().join("umail.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nhostname = \"bench.localhost\"\ndata_dir = \"{}\"\n{config}\n",
                Self::data_dir(&dir).display()
            ),
        )?;
        let exe = std::env::current_exe().context("locating the umail binary")?;
        // Many-connection runs need more descriptors: raise the limit in a
        // shell that then becomes the server (exec keeps the pid).
        let mut process = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@""#)
            .arg(exe)
            .arg("--config")
            .arg(&path)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting umail serve")?;
        let stdout = process.stdout.take().context("child stdout")?;
        let mut listeners = HashMap::new();
        let mut admin = None;
        let mut ready = false;
        let mut lines = std::io::BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line?;
            if let Some((name, addr)) = line
                .strip_prefix("umail: listening ")
                .and_then(|rest| rest.split_once(' '))
            {
                listeners.insert(name.to_string(), addr.trim().to_string());
            }
            if let Some(rest) = line.strip_prefix("umail: system administrator ") {
                let mut words = rest.split_whitespace();
                if let (Some(user), Some("password"), Some(password)) =
                    (words.next(), words.next(), words.next())
                {
                    admin = Some((user.to_string(), password.to_string()));
                }
            }
            if line.starts_with("umail: ready") {
                ready = true;
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let server = BenchServer {
            process,
            listeners,
            admin,
            _dir: dir,
        };
        if !ready {
            bail!("the benchmark server did not start");
        }
        Ok(server)
    }

    /// The bound address of a listener.
    pub fn listener(&self, name: &str) -> Result<String> {
        self.listeners
            .get(name)
            .cloned()
            .with_context(|| format!("the benchmark server has no {name} listener"))
    }

    /// The first administrator created at start and its password, if this
    /// start created one.
    pub fn admin(&self) -> Option<(&str, &str)> {
        self.admin.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The server's peak resident set size so far, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.process.id(), "VmHWM:")
    }
}

/// Samples, every 100 ms while a benchmark runs, the memory of a server
/// and every process it started: the sum of their proportional set sizes
/// (PSS, so pages shared between Dovecot's processes count once). This
/// measures umail (one process) and multi-process servers alike.
pub struct MemorySampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<TreeMemory>,
}

/// The largest sample a [`MemorySampler`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeMemory {
    /// Sum of PSS over the process tree, KiB.
    pub pss_kib: u64,
    /// Processes in the tree at that sample.
    pub processes: usize,
}

impl MemorySampler {
    /// Starts sampling the tree rooted at `pid`.
    pub fn start(pid: u32) -> MemorySampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peak = TreeMemory::default();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let sample = tree_memory(pid);
                if sample.pss_kib > peak.pss_kib {
                    peak = sample;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        MemorySampler { stop, thread }
    }

    /// Stops sampling; the peak seen.
    pub fn finish(self) -> TreeMemory {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

fn tree_memory(root: u32) -> TreeMemory {
    // Parent of every process, from /proc/PID/stat ("pid (comm) state ppid").
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut total = TreeMemory::default();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            total.processes += 1;
            total.pss_kib += rollup
                .lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        todo.extend(children.remove(&pid).unwrap_or_default());
    }
    total
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

async fn expect_reply(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    line: &mut String,
    want: u8,
) -> Result<()> {
    loop {
        line.clear();
        if reader.read_line(line).await? == 0 {
            bail!("server closed the connection");
        }
        if line.len() >= 4 && line.as_bytes()[3] == b'-' {
            continue;
        }
        if line.as_bytes().first() != Some(&want) {
            bail!("unexpected reply: {}", line.trim_end());
        }
        return Ok(());
    }
}

fn message_body(size: usize, rcpt: &str) -> Vec<u8> {
    let mut body = format!(
        "From: bench@bench.example\r\nTo: {rcpt}\r\nSubject: umail bench\r\nMessage-ID: <{}@bench.example>\r\n\r\n",
        rand::random::<u64>()
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghij\r\n";
    while body.len() + line.len() < size {
        body.extend_from_slice(line);
    }
    while body.len() + 2 < size {
        body.push(b'x');
    }
    body.extend_from_slice(b"\r\n.\r\n");
    body
}

async fn connection(
    addr: String,
    rcpt: String,
    count: usize,
    size: usize,
) -> Result<Vec<Duration>> {
    let stream = TcpStream::connect(&addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    expect_reply(&mut reader, &mut line, b'2').await?;
    write.write_all(b"EHLO bench.example\r\n").await?;
    expect_reply(&mut reader, &mut line, b'2').await?;
    let body = message_body(size, &rcpt);
    let envelope = format!("MAIL FROM:<bench@bench.example>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        // RFC 2920: MAIL, RCPT and DATA pipelined in one write.
        write.write_all(envelope.as_bytes()).await?;
        expect_reply(&mut reader, &mut line, b'2').await?;
        expect_reply(&mut reader, &mut line, b'2').await?;
        expect_reply(&mut reader, &mut line, b'3').await?;
        write.write_all(&body).await?;
        let sent = Instant::now();
        expect_reply(&mut reader, &mut line, b'2').await?;
        latencies.push(sent.elapsed());
    }
    write.write_all(b"QUIT\r\n").await?;
    Ok(latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the SMTP benchmark and prints the report.
pub async fn smtp(args: SmtpBenchArgs) -> Result<()> {
    if args.connections == 0 || args.messages == 0 {
        bail!("--connections and --messages must be at least 1");
    }
    let (child, addr, rcpt) = match &args.target {
        Some(t) => (
            None,
            t.clone(),
            args.rcpt
                .clone()
                .context("--rcpt is required with --target")?,
        ),
        None => {
            let dir = tempfile::tempdir().context("temporary directory")?;
            let server = BenchServer::start(
                dir,
                &format!(
                    "max_sessions_per_ip = {}\n\n[listeners]\nsmtp = [\"127.0.0.1:0\"]\n\n[log]\nlevel = \"warn\"",
                    args.connections + 10
                ),
            )?;
            let addr = server.listener("smtp")?;
            let rcpt = match &args.rcpt {
                Some(r) => r.clone(),
                None => server
                    .admin()
                    .context("no administrator to deliver to")?
                    .0
                    .to_string(),
            };
            (Some(server), addr, rcpt)
        }
    };
    println!(
        "bench smtp: {} messages of {} bytes over {} connections to {addr} (rcpt {rcpt})",
        args.messages, args.size, args.connections
    );
    let size = usize::try_from(args.size).context("size")?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    let per = args.messages / args.connections;
    let extra = args.messages % args.connections;
    let addr = Arc::new(addr);
    for i in 0..args.connections {
        let count = per + usize::from(i < extra);
        let (a, r) = (addr.to_string(), rcpt.clone());
        tasks.push(tokio::spawn(connection(a, r, count, size)));
    }
    let mut latencies = Vec::with_capacity(args.messages);
    for t in tasks {
        latencies.extend(t.await.context("bench task")??);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let rate = latencies.len() as f64 / elapsed.as_secs_f64();
    println!(
        "accepted: {} messages in {:.2} s",
        latencies.len(),
        elapsed.as_secs_f64()
    );
    println!("throughput: {rate:.0} messages/s");
    println!(
        "final-reply latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
    );
    if let Some(kib) = child.as_ref().and_then(BenchServer::peak_rss_kib) {
        println!("server peak RSS: {:.1} MiB", kib as f64 / 1024.0);
    }
    Ok(())
}
