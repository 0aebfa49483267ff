//! End-to-end SMTP tests through the real `umail` binary: Python's smtplib
//! and lettre as clients, messages read back from the store byte for byte,
//! smuggling and relay attempts, and a SIGKILL right after `250`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{TestServer, python};
use umail_core::MailStore;

const PASSWORD: &str = "correct-horse-battery";

fn setup(server: &TestServer) {
    server.umail_ok(&["domain", "add", "example.com"]);
    server.umail_ok(&["user", "add", "alice@example.com", "--password", PASSWORD]);
    server.umail_ok(&["user", "add", "bob@example.com", "--password", PASSWORD]);
}

/// Stops the server and returns the INBOX contents of `account`, oldest first.
fn inbox(server: &mut TestServer, account: &str) -> Vec<Vec<u8>> {
    if server.child.is_some() {
        assert!(server.terminate().success());
    }
    let store = umail_store::Store::open(server.data_dir().join("umail.redb")).expect("open store");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mailbox = store
            .mailbox(account, "INBOX")
            .await
            .unwrap()
            .expect("INBOX exists");
        let mut out = Vec::new();
        for meta in store.messages(account, mailbox.id).await.unwrap() {
            let content = store
                .message_content(account, mailbox.id, meta.uid)
                .await
                .unwrap()
                .expect("content");
            out.push(content.to_vec());
        }
        out
    })
}

/// Splits off the headers umail adds at delivery (Return-Path, Received).
fn strip_trace_headers(message: &[u8]) -> (Vec<String>, Vec<u8>) {
    let mut added = Vec::new();
    let mut rest = message;
    loop {
        let is_trace = rest.starts_with(b"Return-Path:") || rest.starts_with(b"Received:");
        if !is_trace {
            break;
        }
        // A header field ends at a CRLF not followed by folding whitespace.
        let mut end = 0;
        loop {
            let Some(i) = rest[end..].windows(2).position(|w| w == b"\r\n") else {
                panic!("unterminated trace header");
            };
            end += i + 2;
            if !matches!(rest.get(end), Some(b' ') | Some(b'\t')) {
                break;
            }
        }
        added.push(String::from_utf8_lossy(&rest[..end]).to_string());
        rest = &rest[end..];
    }
    (added, rest.to_vec())
}

const PY_PRELUDE: &str = r#"
import os, smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
HOST = "127.0.0.1"
def port(name): return int(os.environ["PORT_" + name.upper()])
MSG = (b"From: Alice <alice@example.com>\r\nTo: bob@example.com\r\n"
       b"Subject: =?UTF-8?B?5rWL6K+V?=\r\nMessage-ID: <e2e-%s@example.com>\r\n"
       b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
       b"Content-Transfer-Encoding: 8bit\r\n\r\n"
       b"Hello Bob,\r\n.leading dot line\r\n\xe4\xbd\xa0\xe5\xa5\xbd\r\n")
"#;

fn py_env(server: &TestServer) -> Vec<(&'static str, String)> {
    vec![
        ("PORT_SMTP", server.port("smtp").to_string()),
        ("PORT_SUBMISSION", server.port("submission").to_string()),
        ("PORT_SUBMISSIONS", server.port("submissions").to_string()),
        ("PASSWORD", PASSWORD.to_string()),
    ]
}

#[test]
fn smtplib_submission_submissions_and_mx_deliver_byte_for_byte() {
    let mut server = TestServer::start();
    setup(&server);
    let script = format!(
        "{PY_PRELUDE}{}",
        r#"
pw = os.environ["PASSWORD"]
# Submission on 587-style port: STARTTLS then AUTH PLAIN.
s = smtplib.SMTP(HOST, port("submission"), timeout=30)
s.ehlo("client.example")
assert s.has_extn("starttls"), s.esmtp_features
assert not s.has_extn("auth"), "AUTH must not be offered before TLS on submission"
code, _ = s.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHB3")
assert code == 530, code
s.starttls(context=ctx)
s.ehlo("client.example")
assert "PLAIN" in s.esmtp_features["auth"].upper(), s.esmtp_features
try:
    s.login("alice@example.com", "wrong-password")
    raise SystemExit("wrong password accepted")
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
s.login("alice@example.com", pw)   # smtplib picks PLAIN or LOGIN
s.sendmail("alice@example.com", ["bob@example.com"], MSG.replace(b"%s", b"plain"))
s.quit()
# AUTH LOGIN explicitly.
s = smtplib.SMTP(HOST, port("submission"), timeout=30)
s.starttls(context=ctx)
s.ehlo("client.example")
s.user, s.password = "alice@example.com", pw
code, resp = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
assert code == 235, (code, resp)
s.sendmail("alice@example.com", ["bob@example.com"], MSG.replace(b"%s", b"login"))
s.quit()
# Implicit TLS.
s = smtplib.SMTP_SSL(HOST, port("submissions"), context=ctx, timeout=30)
s.login("alice@example.com", pw)
s.sendmail("alice@example.com", ["bob@example.com"], MSG.replace(b"%s", b"implicit"))
s.quit()
# MX: no AUTH, local recipient.
s = smtplib.SMTP(HOST, port("smtp"), timeout=30)
s.ehlo("mx.sender.example")
s.sendmail("someone@sender.example", ["bob@example.com"], MSG.replace(b"%s", b"mx"))
s.quit()
print("ok")
"#
    );
    assert!(python(&script, &py_env(&server)).contains("ok"));

    let messages = inbox(&mut server, "bob@example.com");
    assert_eq!(messages.len(), 4, "four messages delivered");
    let original = |tag: &str| {
        let mut m = b"From: Alice <alice@example.com>\r\nTo: bob@example.com\r\nSubject: =?UTF-8?B?5rWL6K+V?=\r\nMessage-ID: <e2e-".to_vec();
        m.extend_from_slice(tag.as_bytes());
        m.extend_from_slice(b"@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nHello Bob,\r\n.leading dot line\r\n\xe4\xbd\xa0\xe5\xa5\xbd\r\n");
        m
    };
    for (message, tag) in messages.iter().zip(["plain", "login", "implicit", "mx"]) {
        let (added, body) = strip_trace_headers(message);
        assert_eq!(
            body,
            original(tag),
            "message {tag} must be stored byte for byte"
        );
        assert!(added[0].starts_with("Return-Path: <"), "{added:?}");
        let received = added
            .iter()
            .find(|h| h.starts_with("Received:"))
            .expect("Received header");
        match tag {
            "mx" => assert!(
                received.contains("with ESMTP") || received.contains("with SMTP"),
                "{received}"
            ),
            "implicit" | "plain" | "login" => {
                assert!(received.contains("ESMTPSA"), "{received}");
                assert!(received.contains("TLS"), "{received}");
                assert!(received.contains("alice@example.com"), "{received}");
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn lettre_submits_over_starttls_and_implicit_tls() {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let mut server = TestServer::start();
    setup(&server);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (sub_port, subs_port) = (server.port("submission"), server.port("submissions"));
    rt.block_on(async move {
        let tls = TlsParameters::builder("localhost".to_string())
            .dangerous_accept_invalid_certs(true)
            .build_rustls()
            .unwrap();
        let creds = Credentials::new("alice@example.com".into(), PASSWORD.into());
        for (port, mode) in [
            (sub_port, Tls::Required(tls.clone())),
            (subs_port, Tls::Wrapper(tls.clone())),
        ] {
            let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
                .port(port)
                .tls(mode)
                .credentials(creds.clone())
                .timeout(Some(Duration::from_secs(30)))
                .build();
            let email = Message::builder()
                .from("Alice <alice@example.com>".parse().unwrap())
                .to("Bob <bob@example.com>".parse().unwrap())
                .subject(format!("lettre via {port}"))
                .header(ContentType::TEXT_PLAIN)
                .body(String::from("Sent with lettre.\n"))
                .unwrap();
            transport.send(email).await.expect("lettre send");
        }
    });
    let messages = inbox(&mut server, "bob@example.com");
    assert_eq!(messages.len(), 2);
    for m in &messages {
        let text = String::from_utf8_lossy(m);
        assert!(text.contains("Sent with lettre."), "{text}");
        assert!(text.contains("ESMTPSA"), "{text}");
    }
}

/// A raw SMTP conversation on the MX port.
struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    fn connect(addr: std::net::SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut raw = Raw {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        };
        assert!(raw.reply().starts_with("220"));
        raw
    }

    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            assert!(!line.is_empty(), "connection closed; so far: {all}");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\r\n").unwrap();
        self.reply()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }
}

#[test]
fn smuggling_vectors_never_yield_a_second_message() {
    let mut server = TestServer::start();
    setup(&server);
    let vectors: [&[u8]; 7] = [
        b"\n.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r\n.\r",
        b"\nbare LF line\n",
        b"\rbare CR\r",
    ];
    for v in vectors {
        let mut raw = Raw::connect(server.addr("smtp"));
        assert!(raw.cmd("EHLO attacker.example").starts_with("250"));
        assert!(raw.cmd("MAIL FROM:<a@attacker.example>").starts_with("250"));
        assert!(raw.cmd("RCPT TO:<bob@example.com>").starts_with("250"));
        assert!(raw.cmd("DATA").starts_with("354"));
        let mut data = b"Subject: first\r\n\r\nbody".to_vec();
        data.extend_from_slice(v);
        data.extend_from_slice(
            b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n",
        );
        raw.send(&data);
        let reply = raw.reply();
        assert!(reply.starts_with('5'), "vector {v:?}: {reply}");
        // The session is still usable and no extra reply is pending.
        assert!(raw.cmd("NOOP").starts_with("250"), "vector {v:?}");
        raw.cmd("QUIT");
    }
    let messages = inbox(&mut server, "bob@example.com");
    for m in &messages {
        assert!(!String::from_utf8_lossy(m).contains("smuggled"));
    }
    assert!(messages.is_empty(), "every vector was refused as a whole");
}

#[test]
fn starttls_injection_relay_and_limits() {
    let server = TestServer::start();
    setup(&server);
    // Open relay attempts on the MX port.
    let mut raw = Raw::connect(server.addr("smtp"));
    raw.cmd("EHLO relay.example");
    assert!(raw.cmd("MAIL FROM:<x@foreign.example>").starts_with("250"));
    let r = raw.cmd("RCPT TO:<victim@elsewhere.example>");
    assert!(r.starts_with("55") && r.contains("5.7.1"), "{r}");
    raw.cmd("RSET");
    assert!(raw.cmd("MAIL FROM:<alice@example.com>").starts_with("250"));
    let r = raw.cmd("RCPT TO:<victim@elsewhere.example>");
    assert!(
        r.starts_with("55") && r.contains("5.7.1"),
        "local sender must not relay either: {r}"
    );
    let r = raw.cmd("RCPT TO:<nobody@example.com>");
    assert!(r.starts_with("550") && r.contains("5.1.1"), "{r}");
    // Oversized command line.
    let r = raw.cmd(&format!("NOOP {}", "x".repeat(10_000)));
    assert!(r.starts_with('5'), "{r}");
    assert!(raw.cmd("NOOP").starts_with("250"));
    raw.cmd("QUIT");

    // Pipelined bytes after STARTTLS are discarded.
    let mut raw = Raw::connect(server.addr("submission"));
    raw.cmd("EHLO c.example");
    raw.send(b"STARTTLS\r\nMAIL FROM:<injected@example.com>\r\n");
    let r = raw.reply();
    assert!(r.starts_with("220"), "{r}");
    // The injected command must not be answered in plain text.
    raw.writer
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(raw.reader.buffer().is_empty(), "nothing after the 220");
    let mut buf = [0u8; 64];
    match raw.reader.get_mut().read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "server answered injected bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => {} // timeout: nothing was sent, as required
    }

    // Too many recipients (default 100).
    let mut raw = Raw::connect(server.addr("smtp"));
    raw.cmd("EHLO c.example");
    raw.cmd("MAIL FROM:<x@sender.example>");
    let mut last = String::new();
    for _ in 0..101 {
        last = raw.cmd("RCPT TO:<bob@example.com>");
    }
    assert!(last.starts_with("452") && last.contains("4.5.3"), "{last}");
    raw.cmd("QUIT");

    // Oversized message (max_message_size defaults to 50 MiB): use SIZE.
    let mut raw = Raw::connect(server.addr("smtp"));
    raw.cmd("EHLO c.example");
    let r = raw.cmd("MAIL FROM:<x@sender.example> SIZE=999999999999");
    assert!(r.starts_with("552") && r.contains("5.3.4"), "{r}");
    raw.cmd("QUIT");
}

#[test]
fn auth_brute_force_is_locked_out() {
    let server = TestServer::start_with(
        "[security]\nauth_failure_limit = 3\nauth_failure_window_secs = 600\nauth_lockout_secs = 600\n",
    );
    setup(&server);
    let script = format!(
        "{PY_PRELUDE}{}",
        r#"
codes = []
for attempt in range(6):
    s = smtplib.SMTP_SSL(HOST, port("submissions"), context=ctx, timeout=30)
    s.ehlo("brute.example")
    # One AUTH PLAIN per attempt (login() would try several mechanisms).
    s.user, s.password = "alice@example.com", "guess%d" % attempt
    try:
        code, resp = s.auth("PLAIN", s.auth_plain)
        codes.append(code)
    except smtplib.SMTPAuthenticationError as e:
        codes.append(e.smtp_code)
    except smtplib.SMTPException as e:
        codes.append(-1)
    try:
        s.quit()
    except Exception:
        pass
# Even the right password is refused while locked out.
s = smtplib.SMTP_SSL(HOST, port("submissions"), context=ctx, timeout=30)
s.ehlo("brute.example")
s.user, s.password = "alice@example.com", os.environ["PASSWORD"]
try:
    code, resp = s.auth("PLAIN", s.auth_plain)
    codes.append(code)
except smtplib.SMTPAuthenticationError as e:
    codes.append(e.smtp_code)
print(codes)
assert codes[:3] == [535, 535, 535], codes
assert all(c == 454 for c in codes[3:]), codes
"#
    );
    python(&script, &py_env(&server));
}

#[test]
fn sigkill_right_after_250_keeps_the_message_exactly_once() {
    let mut server = TestServer::start();
    setup(&server);
    let mut raw = Raw::connect(server.addr("smtp"));
    raw.cmd("EHLO k.example");
    assert!(raw.cmd("MAIL FROM:<x@sender.example>").starts_with("250"));
    assert!(raw.cmd("RCPT TO:<bob@example.com>").starts_with("250"));
    assert!(raw.cmd("DATA").starts_with("354"));
    raw.send(b"Subject: durable\r\nMessage-ID: <kill@sender.example>\r\n\r\nmust survive\r\n.\r\n");
    let r = raw.reply();
    assert!(r.starts_with("250"), "{r}");
    // SIGKILL at once: no chance to flush anything after the reply.
    let mut child = server.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    server.spawn();
    let messages = inbox(&mut server, "bob@example.com");
    let matching: Vec<_> = messages
        .iter()
        .filter(|m| String::from_utf8_lossy(m).contains("<kill@sender.example>"))
        .collect();
    assert_eq!(matching.len(), 1, "exactly once after SIGKILL and restart");
}
