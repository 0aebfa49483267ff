//! End-to-end POP3 tests through the real `umail` binary: Python's poplib
//! (STLS, implicit TLS, SASL PLAIN, TOP, UIDL stability across sessions and
//! a restart, DELE/RSET semantics, concurrent sessions) and fetchmail
//! pulling a few hundred messages into an mbox.

mod common;

use common::{TestServer, python};

const PASSWORD: &str = "correct-horse-battery";

/// Python helpers shared by the scripts: SMTP delivery to the MX listener
/// and POP3 connections that accept the self-signed certificate.
const PY_PRELUDE: &str = r#"
import base64, json, os, poplib, smtplib, ssl, sys, threading
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
HOST = "127.0.0.1"
POP3 = int(os.environ.get("POP3", "0"))
POP3S = int(os.environ.get("POP3S", "0"))
SMTP = int(os.environ.get("SMTP", "0"))
USER = os.environ.get("USER_ADDR", "")
PASSWORD = os.environ.get("PASSWORD", "")

def deliver(rcpt, subjects):
    s = smtplib.SMTP(HOST, SMTP, timeout=60)
    for subj in subjects:
        msg = ("From: sender@remote.example\r\nTo: %s\r\nSubject: %s\r\n"
               "Message-ID: <%s@remote.example>\r\n\r\nbody of %s\r\n.leading dot\r\n" % (rcpt, subj, subj, subj))
        s.sendmail("sender@remote.example", [rcpt], msg)
    s.quit()

def stls_login():
    p = poplib.POP3(HOST, POP3, timeout=60)
    p.stls(ctx)
    p.user(USER)
    p.pass_(PASSWORD)
    return p

def ssl_login():
    p = poplib.POP3_SSL(HOST, POP3S, context=ctx, timeout=60)
    p.user(USER)
    p.pass_(PASSWORD)
    return p

def uidls(p):
    return [l.decode().split()[1] for l in p.uidl()[1]]

def subject(lines):
    for l in lines:
        if l.lower().startswith(b"subject:"):
            return l.split(b":", 1)[1].strip().decode()
    return None
"#;

fn env(server: &TestServer) -> Vec<(&'static str, String)> {
    vec![
        ("POP3", server.port("pop3").to_string()),
        ("POP3S", server.port("pop3s").to_string()),
        ("SMTP", server.port("smtp").to_string()),
        ("USER_ADDR", "alice@example.com".to_string()),
        ("PASSWORD", PASSWORD.to_string()),
    ]
}

fn setup() -> TestServer {
    let server = TestServer::start();
    server.umail_ok(&["domain", "add", "example.com"]);
    server.umail_ok(&["user", "add", "alice@example.com", "--password", PASSWORD]);
    server
}

fn script(body: &str) -> String {
    format!("{PY_PRELUDE}\n{body}")
}

#[test]
fn poplib_logins_top_dele_rset_concurrency_and_uidl_stability() {
    let mut server = setup();
    let out = python(
        &script(
            r#"
deliver(USER, ["m1", "m2", "m3", "m4"])

# USER/PASS after STLS.
p = stls_login()
count, size = p.stat()
assert count == 4, count
assert size > 0
listing = p.list()[1]
assert len(listing) == 4, listing
first = uidls(p)
assert len(set(first)) == 4, first
# TOP: headers plus the first line of the body; retr un-stuffs the dot.
top = p.top(1, 1)[1]
assert subject(top) == "m1", top
assert top[-1] == b"body of m1", top
body = p.retr(2)[1]
assert subject(body) == "m2"
assert b".leading dot" in body, body
p.quit()

# Plaintext login without TLS is refused.
p = poplib.POP3(HOST, POP3, timeout=60)
try:
    p.user(USER)
    p.pass_(PASSWORD)
    raise SystemExit("plaintext login accepted without TLS")
except poplib.error_proto as e:
    assert b"AUTH" in e.args[0] or b"TLS" in e.args[0], e
p.quit()

# Implicit TLS; the UIDLs are the same in a new session.
p = ssl_login()
assert uidls(p) == first
p.quit()

# SASL PLAIN (RFC 5034) with an initial response.
p = poplib.POP3_SSL(HOST, POP3S, context=ctx, timeout=60)
ir = base64.b64encode(("\0%s\0%s" % (USER, PASSWORD)).encode()).decode()
resp = p._shortcmd("AUTH PLAIN " + ir)
assert resp.startswith(b"+OK"), resp
assert p.stat()[0] == 4
p.quit()
# Wrong SASL password is refused.
p = poplib.POP3_SSL(HOST, POP3S, context=ctx, timeout=60)
bad = base64.b64encode(("\0%s\0wrong" % USER).encode()).decode()
try:
    p._shortcmd("AUTH PLAIN " + bad)
    raise SystemExit("bad SASL password accepted")
except poplib.error_proto:
    pass
p.close()

# RSET undoes DELE.
p = ssl_login()
p.dele(1)
p.rset()
p.quit()
p = ssl_login()
assert p.stat()[0] == 4
p.quit()

# Two concurrent sessions see the same maildrop.
a = ssl_login()
b = stls_login()
assert a.stat()[0] == 4 and b.stat()[0] == 4
assert uidls(a) == uidls(b) == first
# A deletion in one session takes effect at its QUIT; the other keeps its snapshot.
a.dele(1)
a.quit()
assert b.stat()[0] == 4
b.quit()

p = ssl_login()
now = uidls(p)
assert now == first[1:], (now, first)
p.quit()
print(json.dumps(now))
"#,
        ),
        &env(&server),
    );
    let before: Vec<String> = serde_json::from_str(out.trim()).expect("uidl json");
    assert_eq!(before.len(), 3);

    // UIDLs survive a restart.
    assert!(server.terminate().success());
    server.spawn();
    let out = python(
        &script(
            r#"
p = ssl_login()
print(json.dumps(uidls(p)))
p.quit()
"#,
        ),
        &env(&server),
    );
    let after: Vec<String> = serde_json::from_str(out.trim()).expect("uidl json");
    assert_eq!(before, after);
}

#[test]
fn fetchmail_pulls_three_hundred_messages_into_an_mbox() {
    if std::process::Command::new("fetchmail")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("fetchmail is required (apt-get install -y fetchmail)");
    }
    let server = setup();
    const N: usize = 300;
    python(
        &script(&format!(
            r#"deliver(USER, ["fm%03d" % i for i in range({N})])"#
        )),
        &env(&server),
    );
    let dir = server.dir.path();
    let mbox = dir.join("alice.mbox");
    let rc = dir.join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set no syslog\n\
             poll 127.0.0.1 with protocol POP3 port {port}\n\
             \tuser \"alice@example.com\" there with password \"{PASSWORD}\" is \"alice\" here\n\
             \tssl no sslcertck\n\
             \tmda \"(echo 'From fetchmail@localhost Thu Jan  1 00:00:00 2024'; cat; echo) >> {mbox}\"\n",
            port = server.port("pop3s"),
            mbox = mbox.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = std::process::Command::new("fetchmail")
        .arg("-f")
        .arg(&rc)
        .arg("--idfile")
        .arg(dir.join("fetchids"))
        .arg("--pidfile")
        .arg(dir.join("fetchmail.pid"))
        .env("HOME", dir)
        .arg("--nosslcertck")
        .output()
        .expect("run fetchmail");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit 0: mail retrieved.
    assert!(
        out.status.success(),
        "fetchmail failed ({:?})\n{stdout}\n{stderr}",
        out.status
    );
    let check = python(
        &script(&format!(
            r#"
import mailbox
box = mailbox.mbox({mbox:?})
subjects = sorted(m["Subject"] for m in box)
assert subjects == ["fm%03d" % i for i in range({N})], subjects[:5]
for m in box:
    assert ".leading dot" in m.get_payload(), m.get_payload()
# fetchmail deleted what it fetched.
p = ssl_login()
assert p.stat()[0] == 0, p.stat()
p.quit()
print(len(subjects))
"#,
            mbox = mbox.display().to_string()
        )),
        &env(&server),
    );
    assert_eq!(check.trim(), N.to_string());
}
