//! Harness for end-to-end tests: starts the real `umail` binary on
//! ephemeral loopback ports and drives it with real clients.
#![allow(dead_code)]

pub mod dns;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Path of the binary under test.
pub fn umail_bin() -> &'static str {
    env!("CARGO_BIN_EXE_umail")
}

/// A running `umail serve` in its own temporary directory.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub listeners: HashMap<String, SocketAddr>,
    pub admin_password: Option<String>,
    pub admin_address: Option<String>,
    pub stdout_lines: Vec<String>,
    pub hostname: String,
}

impl TestServer {
    /// Config text with every listener on 127.0.0.1:0.
    pub fn config_text(data_dir: &Path, hostname: &str, extra: &str) -> String {
        format!(
            r#"[server]
hostname = "{hostname}"
data_dir = "{}"
shutdown_grace_secs = 10

[listeners]
smtp = ["127.0.0.1:0"]
submission = ["127.0.0.1:0"]
submissions = ["127.0.0.1:0"]
imap = ["127.0.0.1:0"]
imaps = ["127.0.0.1:0"]
pop3 = ["127.0.0.1:0"]
pop3s = ["127.0.0.1:0"]
admin = ["127.0.0.1:0"]

{extra}
"#,
            data_dir.display()
        )
    }

    /// Starts a server with the default test configuration.
    pub fn start() -> TestServer {
        Self::start_with("")
    }

    /// Starts a server with extra TOML appended to the test configuration.
    pub fn start_with(extra: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let hostname = "mail.test.example".to_string();
        let config = dir.path().join("umail.toml");
        std::fs::write(
            &config,
            Self::config_text(&dir.path().join("data"), &hostname, extra),
        )
        .expect("write config");
        let mut server = TestServer {
            dir,
            child: None,
            listeners: HashMap::new(),
            admin_password: None,
            admin_address: None,
            stdout_lines: Vec::new(),
            hostname,
        };
        server.spawn();
        server
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("umail.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// (Re)starts the process and waits until it reports ready.
    pub fn spawn(&mut self) {
        let mut child = Command::new(umail_bin())
            .arg("--config")
            .arg(self.config_path())
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn umail serve");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        // Keep stderr drained so logging never blocks the server.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("UMAIL_TEST_VERBOSE").is_some() {
                    eprintln!("[umail] {line}");
                }
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.listeners.clear();
        self.stdout_lines.clear();
        loop {
            let line = match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "umail serve did not become ready; output: {:?}",
                        self.stdout_lines
                    );
                }
            };
            self.stdout_lines.push(line.clone());
            if let Some(rest) = line.strip_prefix("umail: listening ") {
                let (name, addr) = rest.split_once(' ').expect("listening NAME ADDR");
                self.listeners
                    .insert(name.to_string(), addr.parse().expect("socket address"));
            }
            if let Some(rest) = line.strip_prefix("umail: system administrator ") {
                // "umail: system administrator ADDR password PASSWORD"
                let mut parts = rest.split_whitespace();
                self.admin_address = parts.next().map(str::to_string);
                self.admin_password = parts.nth(1).map(str::to_string);
            }
            if line.starts_with("umail: ready") {
                break;
            }
        }
        // Keep draining stdout in the background.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        self.child = Some(child);
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        *self
            .listeners
            .get(listener)
            .unwrap_or_else(|| panic!("no {listener} listener in {:?}", self.listeners))
    }

    pub fn port(&self, listener: &str) -> u16 {
        self.addr(listener).port()
    }

    /// Runs a management command against this server's data directory.
    pub fn umail(&self, args: &[&str]) -> Output {
        umail_cmd(&self.config_path(), args, None)
    }

    /// Runs a management command that must succeed; returns stdout.
    pub fn umail_ok(&self, args: &[&str]) -> String {
        let out = self.umail(args);
        assert!(
            out.status.success(),
            "umail {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        for _ in 0..300 {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        panic!("umail did not exit within 30 s of SIGTERM");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `umail --config CONFIG ARGS...`, feeding `stdin` if given.
pub fn umail_cmd(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(umail_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn umail");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    child.wait_with_output().expect("umail output")
}

/// Runs a Python 3 script; `env` is passed as environment variables.
/// Panics with the script's output when it fails.
pub fn python(script: &str, env: &[(&str, String)]) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .expect("python3 is required for end-to-end tests");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "python failed\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
