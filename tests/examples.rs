//! Every program in `examples/` is run here against loopback clients and
//! servers the test starts, and its result is checked: an example that
//! stops working fails the suite.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::python;

/// The compiled example `name`, built first when `cargo test` was asked
/// for this test target alone (which does not build examples).
fn example_path(name: &str) -> PathBuf {
    let bin = PathBuf::from(common::umail_bin());
    let profile_dir = bin.parent().expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    if !path.exists() {
        let target_dir = profile_dir.parent().expect("target dir");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", "umail-bin", "--example", name])
            .env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().expect("cargo runs").success(),
            "building {name}"
        );
    }
    path
}

/// A running example; killed when dropped.
struct Example {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Example {
    fn start(name: &str, args: &[&str]) -> Example {
        let mut child = Command::new(example_path(name))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting example {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Example {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line starting with `prefix`; returns the rest.
    fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                Err(_) => panic!("no line starting with {prefix:?}; output: {:?}", self.seen),
            }
        }
    }

    /// Collects `listening NAME ADDR` lines until `ready`.
    fn listeners(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        loop {
            let line = self.wait_for("");
            if line == "ready" {
                return out;
            }
            if let Some(rest) = line.strip_prefix("listening ") {
                let (name, addr) = rest.split_once(' ').expect("listening NAME ADDR");
                out.push((name.to_string(), addr.to_string()));
            }
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port_of(listeners: &[(String, String)], name: &str) -> String {
    listeners
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, a)| a.rsplit(':').next().expect("port").to_string())
        .unwrap_or_else(|| panic!("no {name} listener in {listeners:?}"))
}

/// A configuration with every listener on a free loopback port.
fn config(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("umail.toml");
    std::fs::write(
        &path,
        format!(
            r#"[server]
hostname = "mail.test.example"
data_dir = "{}"
shutdown_grace_secs = 2

[listeners]
smtp = ["127.0.0.1:0"]
submission = ["127.0.0.1:0"]
imaps = ["127.0.0.1:0"]
pop3s = ["127.0.0.1:0"]
admin = ["127.0.0.1:0"]
"#,
            dir.join("data").display()
        ),
    )
    .expect("write config");
    path
}

#[test]
fn imap_memory_serves_its_welcome_message_to_imaplib() {
    let mut ex = Example::start("imap_memory", &["127.0.0.1:0"]);
    let rest = ex.wait_for("IMAP on ");
    let addr = rest.split(';').next().expect("address");
    let port = addr.rsplit(':').next().expect("port");
    let out = python(
        r#"
import imaplib, os
m = imaplib.IMAP4("127.0.0.1", int(os.environ["PORT"]))
m.login("demo@example.com", "demo-password")
typ, data = m.select("INBOX")
assert typ == "OK" and data == [b"1"], (typ, data)
typ, data = m.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
print(data[0][0].decode(), data[0][1].decode().strip())
m.logout()
"#,
        &[("PORT", port.to_string())],
    );
    assert!(out.contains("\\Flagged"), "{out}");
    assert!(out.contains("Subject: Welcome"), "{out}");
}

#[test]
fn custom_filter_refuses_executables_and_accepts_the_rest() {
    let mut ex = Example::start("custom_filter", &["127.0.0.1:0"]);
    let addr = ex.wait_for("SMTP (MX) on ");
    let port = addr.rsplit(':').next().expect("port").to_string();
    let out = python(
        r#"
import os, smtplib
from email.message import EmailMessage
port = int(os.environ["PORT"])
def message(attachment):
    m = EmailMessage()
    m["From"] = "partner@outside.example"
    m["To"] = "staff@corp.example"
    m["Subject"] = "offer"
    m.set_content("hello")
    if attachment:
        m.add_attachment(b"MZ...", maintype="application", subtype="octet-stream", filename=attachment)
    return m
s = smtplib.SMTP("127.0.0.1", port, timeout=30)
s.send_message(message(None))
print("plain accepted")
s.send_message(message("report.pdf"))
print("pdf accepted")
try:
    s.send_message(message("invoice.EXE"))
    print("exe accepted")
except smtplib.SMTPDataError as e:
    print("exe refused", e.smtp_code, e.smtp_error.decode())
try:
    s.sendmail("partner@outside.example", ["nobody@corp.example"], "Subject: x\r\n\r\ny\r\n")
except smtplib.SMTPRecipientsRefused as e:
    print("unknown refused", list(e.recipients.values())[0][0])
s.quit()
"#,
        &[("PORT", port)],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "plain accepted", "{out}");
    assert_eq!(lines[1], "pdf accepted", "{out}");
    assert!(
        lines[2].starts_with("exe refused 554") && lines[2].contains("invoice.exe"),
        "{out}"
    );
    assert_eq!(lines[3], "unknown refused 550", "{out}");
}

#[test]
fn embedded_server_delivers_through_the_app_directory_and_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let mut ex = Example::start("embedded_server", &[config.to_str().expect("utf-8")]);
    let listeners = ex.listeners();
    let out = python(
        r#"
import imaplib, os, smtplib, ssl
s = smtplib.SMTP("127.0.0.1", int(os.environ["SMTP"]), timeout=30)
s.sendmail("friend@remote.example", ["demo@example.com"],
           "From: friend@remote.example\r\nSubject: hi app\r\n\r\nbody\r\n")
try:
    s.sendmail("friend@remote.example", ["ghost@example.com"], "Subject: x\r\n\r\ny\r\n")
except smtplib.SMTPRecipientsRefused as e:
    print("ghost", list(e.recipients.values())[0][0])
s.quit()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
m = imaplib.IMAP4_SSL("127.0.0.1", int(os.environ["IMAPS"]), ssl_context=ctx)
m.login("demo@example.com", "demo-password")
typ, data = m.select("INBOX")
assert data == [b"1"], data
typ, data = m.fetch("1", "(BODY.PEEK[HEADER])")
header = data[0][1].decode()
print([l for l in header.splitlines() if l.startswith(("Subject", "X-Received-By-App"))])
m.logout()
"#,
        &[
            ("SMTP", port_of(&listeners, "smtp")),
            ("IMAPS", port_of(&listeners, "imaps")),
        ],
    );
    assert!(out.contains("ghost 550"), "{out}");
    assert!(
        out.contains("['X-Received-By-App: smtp', 'Subject: hi app']"),
        "{out}"
    );
}

/// A stand-in OA system: Python's http.server with the two endpoints the
/// example uses.
const OA_SYSTEM: &str = r#"
import http.server, json
USERS = [
    {"email": "li.lei@corp.example", "name": "Li Lei", "enabled": True},
    {"email": "han.meimei@corp.example", "name": "Han Meimei", "enabled": False},
]
PASSWORDS = {"li.lei@corp.example": "oa-secret"}
class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.reply(200, USERS) if self.path == "/mail/users" else self.reply(404, {})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ok = self.path == "/mail/verify" and PASSWORDS.get(body["email"]) == body["password"]
        self.reply(200 if ok else 403, {})
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

#[test]
fn oa_directory_takes_users_and_passwords_from_the_oa_system() {
    let mut oa = Command::new("python3")
        .arg("-c")
        .arg(OA_SYSTEM)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut port = String::new();
    BufReader::new(oa.stdout.take().expect("stdout"))
        .read_line(&mut port)
        .expect("OA port");
    let base = format!("http://127.0.0.1:{}", port.trim());

    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let mut ex = Example::start("oa_directory", &[&base, config.to_str().expect("utf-8")]);
    assert_eq!(ex.wait_for("2 users"), " from the OA system");
    let listeners = ex.listeners();
    let out = python(
        r#"
import imaplib, os, smtplib, ssl
s = smtplib.SMTP("127.0.0.1", int(os.environ["SMTP"]), timeout=30)
s.sendmail("boss@partner.example", ["li.lei@corp.example"],
           "From: boss@partner.example\r\nSubject: contract\r\n\r\nsigned\r\n")
for rcpt in ["han.meimei@corp.example", "nobody@corp.example"]:
    try:
        s.sendmail("boss@partner.example", [rcpt], "Subject: x\r\n\r\ny\r\n")
    except smtplib.SMTPRecipientsRefused as e:
        code, text = list(e.recipients.values())[0]
        print(rcpt, code, text.decode().split()[0])
s.quit()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
m = imaplib.IMAP4_SSL("127.0.0.1", int(os.environ["IMAPS"]), ssl_context=ctx)
try:
    m.login("li.lei@corp.example", "wrong")
    print("wrong password accepted")
except imaplib.IMAP4.error:
    print("wrong password refused")
m = imaplib.IMAP4_SSL("127.0.0.1", int(os.environ["IMAPS"]), ssl_context=ctx)
m.login("li.lei@corp.example", "oa-secret")
typ, data = m.select("INBOX")
typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
print(data[0][1].decode().strip())
m.logout()
"#,
        &[
            ("SMTP", port_of(&listeners, "smtp")),
            ("IMAPS", port_of(&listeners, "imaps")),
        ],
    );
    let _ = oa.kill();
    let _ = oa.wait();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "han.meimei@corp.example 550 5.2.1", "{out}");
    assert_eq!(lines[1], "nobody@corp.example 550 5.1.1", "{out}");
    assert_eq!(lines[2], "wrong password refused", "{out}");
    assert_eq!(lines[3], "Subject: contract", "{out}");
}
