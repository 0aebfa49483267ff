//! End-to-end outbound delivery through the real `umail` binary: umail to
//! umail over a static route (read back by POP3, DKIM-signed), a scripted
//! SMTP peer (4xx then 2xx, 5xx for one of two recipients, 5xx after DATA,
//! a dropped connection, a stalled peer), DSNs parsed back with mail-parser
//! (failed, delayed, success), MX routing through a loopback DNS responder,
//! queue priorities, the queue CLI, a SIGKILL during a delivery burst, and
//! Postfix as a real peer MTA.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestServer, python};
use mail_parser::{MessageParser, MimeHeaders};
use umail_core::MailStore;

const PASSWORD: &str = "correct-horse-battery";

fn setup(server: &TestServer, domain: &str, users: &[&str]) {
    server.umail_ok(&["domain", "add", domain]);
    for u in users {
        server.umail_ok(&[
            "user",
            "add",
            &format!("{u}@{domain}"),
            "--password",
            PASSWORD,
        ]);
    }
}

/// `[delivery]` with `keys` (TOML lines), then one static route to a
/// loopback port per `(domain, port)`.
fn delivery_config(keys: &str, routes: &[(&str, u16)]) -> String {
    let mut out = format!("[delivery]\n{keys}\n");
    for (domain, port) in routes {
        out.push_str(&format!(
            "\n[[delivery.route]]\ndomain = \"{domain}\"\nhost = \"127.0.0.1:{port}\"\n"
        ));
    }
    out
}

fn route(domain: &str, port: u16) -> String {
    delivery_config("retry_intervals_secs = [1]", &[(domain, port)])
}

/// Submits one message as alice@example.com through the submission port.
fn submit(server: &TestServer, to: &[&str], message_id: &str, extra_py: &str) {
    let script = format!(
        r#"
import os, smtplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
to = os.environ["TO"].split(",")
msg = ("From: Alice <alice@example.com>\r\nTo: " + ", ".join(to) + "\r\nSubject: outbound test\r\n"
       "Message-ID: <" + os.environ["MID"] + ">\r\nMIME-Version: 1.0\r\n\r\nHello from umail.\r\n.dot line\r\n").encode()
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=30)
s.starttls(context=ctx)
s.login("alice@example.com", os.environ["PASSWORD"])
{extra_py}
s.sendmail("alice@example.com", to, msg)
s.quit()
"#
    );
    python(
        &script,
        &[
            ("PORT", server.port("submission").to_string()),
            ("PASSWORD", PASSWORD.to_string()),
            ("TO", to.join(",")),
            ("MID", message_id.to_string()),
        ],
    );
}

/// Queue ids listed by `umail queue list [--queue Q]`.
fn queue_ids(server: &TestServer, queue: Option<&str>) -> Vec<String> {
    let mut args = vec!["queue", "list"];
    if let Some(q) = queue {
        args.extend(["--queue", q]);
    }
    server
        .umail_ok(&args)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.len() == 16 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .collect()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until nothing is active or deferred.
fn wait_queue_settled(server: &TestServer) {
    wait_until("the queue to settle", || {
        queue_ids(server, Some("active")).is_empty()
            && queue_ids(server, Some("deferred")).is_empty()
    });
}

/// Stops the server and returns the INBOX messages of `account`.
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
        let Some(mailbox) = store.mailbox(account, "INBOX").await.unwrap() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for meta in store.messages(account, mailbox.id).await.unwrap() {
            let c = store
                .message_content(account, mailbox.id, meta.uid)
                .await
                .unwrap()
                .expect("content");
            out.push(c.to_vec());
        }
        out
    })
}

/// The message/delivery-status part of a DSN, as text.
fn delivery_status(dsn: &[u8]) -> String {
    let msg = MessageParser::default().parse(dsn).expect("DSN parses");
    let ct = msg.content_type().expect("content type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let text = msg.body_text(0).expect("human-readable part");
    assert!(
        text.contains("could not be delivered") || text.contains("not been delivered"),
        "{text}"
    );
    assert!(text.contains("邮件"), "Chinese text: {text}");
    let part = msg
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.ctype() == "message" && c.subtype() == Some("delivery-status"))
        })
        .expect("message/delivery-status part");
    String::from_utf8_lossy(part.contents()).into_owned()
}

/// Per-recipient field groups of a delivery-status body.
fn recipient_fields(status: &str) -> Vec<Vec<(String, String)>> {
    status
        .split("\r\n\r\n")
        .skip(1)
        .filter(|g| !g.trim().is_empty())
        .map(|g| {
            g.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect()
        })
        .collect()
}

fn field<'a>(group: &'a [(String, String)], name: &str) -> &'a str {
    group
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {group:?}"))
}

// ---------------------------------------------------------------------------
// Scripted SMTP peer.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Script {
    /// Accept everything, except recipients starting with "reject".
    Normal,
    /// 451 for every RCPT.
    TempRcpt,
    /// 554 after the final dot.
    RejectData,
    /// Close the connection right after MAIL FROM.
    Drop,
    /// Answer the final dot only after a pause.
    Slow,
    /// Never answer MAIL FROM: wait 5 s, then close.
    Stall,
    /// Answer the final dot only once the test calls `Peer::release`.
    Held,
}

#[derive(Default)]
struct Received {
    /// (recipients, message) per accepted transaction.
    messages: Vec<(Vec<String>, String)>,
    /// MAIL commands seen (transactions started).
    mails: usize,
    /// `Script::Held` transactions may finish.
    released: bool,
}

struct Peer {
    port: u16,
    received: Arc<Mutex<Received>>,
}

impl Peer {
    /// Starts a peer whose n-th transaction (from 0) follows `script(n)`.
    fn start(script: impl Fn(usize) -> Script + Send + Sync + 'static) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Received::default()));
        let rec = Arc::clone(&received);
        let script = Arc::new(script);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let rec = Arc::clone(&rec);
                let script = Arc::clone(&script);
                std::thread::spawn(move || serve_peer(stream, &*script, rec));
            }
        });
        Peer { port, received }
    }

    fn messages(&self) -> Vec<(Vec<String>, String)> {
        self.received.lock().unwrap().messages.clone()
    }

    fn transactions(&self) -> usize {
        self.received.lock().unwrap().mails
    }

    fn release(&self) {
        self.received.lock().unwrap().released = true;
    }
}

fn serve_peer(
    stream: TcpStream,
    scripts: &(dyn Fn(usize) -> Script + Send + Sync),
    rec: Arc<Mutex<Received>>,
) {
    let mut script = Script::Normal;
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let say = |w: &mut TcpStream, s: &str| w.write_all(s.as_bytes()).is_ok();
    if !say(&mut w, "220 peer.test ESMTP scripted\r\n") {
        return;
    }
    let mut rcpts = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let up = line.to_ascii_uppercase();
        let reply = if up.starts_with("EHLO") {
            "250-peer.test\r\n250-8BITMIME\r\n250 SIZE 10000000\r\n".to_string()
        } else if up.starts_with("MAIL") {
            rcpts.clear();
            script = {
                let mut r = rec.lock().unwrap();
                r.mails += 1;
                scripts(r.mails - 1)
            };
            if script == Script::Drop {
                return;
            }
            if script == Script::Stall {
                std::thread::sleep(Duration::from_secs(5));
                return;
            }
            "250 2.1.0 ok\r\n".into()
        } else if up.starts_with("RCPT") {
            let addr = line[line.find('<').unwrap_or(0) + 1..line.find('>').unwrap_or(line.len())]
                .to_string();
            if script == Script::TempRcpt {
                "451 4.3.0 try again later\r\n".into()
            } else if addr.starts_with("reject") {
                "550 5.1.1 no such user here\r\n".into()
            } else {
                rcpts.push(addr);
                "250 2.1.5 ok\r\n".into()
            }
        } else if up.starts_with("DATA") {
            if !say(&mut w, "354 go ahead\r\n") {
                return;
            }
            let mut data = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == ".\r\n" {
                    break;
                }
                data.push_str(&line);
            }
            match script {
                Script::RejectData => "554 5.6.0 content rejected\r\n".into(),
                _ => {
                    if script == Script::Slow {
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    while script == Script::Held && !rec.lock().unwrap().released {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    rec.lock().unwrap().messages.push((rcpts.clone(), data));
                    "250 2.0.0 queued\r\n".into()
                }
            }
        } else if up.starts_with("QUIT") {
            let _ = say(&mut w, "221 bye\r\n");
            return;
        } else {
            "250 ok\r\n".into()
        };
        if !say(&mut w, &reply) {
            return;
        }
    }
}

fn sender(peer_port: u16) -> TestServer {
    let server = TestServer::start_with(&route("peer.test", peer_port));
    setup(&server, "example.com", &["alice"]);
    server
}

// ---------------------------------------------------------------------------

#[test]
fn umail_to_umail_over_static_route_read_by_pop3_with_dkim() {
    let receiver = TestServer::start();
    setup(&receiver, "partner.example", &["bob"]);
    let mut sender = TestServer::start_with(&route("partner.example", receiver.port("smtp")));
    setup(&sender, "example.com", &["alice"]);
    let none = sender.umail(&["domain", "dkim", "show", "example.com"]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no DKIM key for example.com"));
    let out = sender.umail_ok(&["domain", "dkim", "generate", "example.com"]);
    assert!(
        out.contains("umail._domainkey.example.com. IN TXT ( \"v=DKIM1; k=rsa; p=MII"),
        "{out}"
    );
    let shown = sender.umail_ok(&["domain", "dkim", "show", "example.com"]);
    assert!(shown.contains("v=DKIM1; k=rsa; p=MII"), "{shown}");

    submit(&sender, &["bob@partner.example"], "e2e-1@example.com", "");
    let script = r#"
import os, poplib, ssl, time
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
for _ in range(300):
    p = poplib.POP3_SSL("127.0.0.1", int(os.environ["PORT"]), context=ctx, timeout=30)
    p.user("bob@partner.example"); p.pass_(os.environ["PASSWORD"])
    n, _ = p.stat()
    if n:
        _, lines, _ = p.retr(1)
        print("\n".join(l.decode("utf-8", "replace") for l in lines))
        p.quit()
        break
    p.quit()
    time.sleep(0.2)
else:
    raise SystemExit("message never arrived")
"#;
    let text = python(
        script,
        &[
            ("PORT", receiver.port("pop3s").to_string()),
            ("PASSWORD", PASSWORD.to_string()),
        ],
    );
    assert!(text.contains("Message-ID: <e2e-1@example.com>"), "{text}");
    assert!(text.contains("Hello from umail."), "{text}");
    assert!(text.contains("\n.dot line"), "dot-stuffing undone: {text}");
    assert!(
        text.contains("DKIM-Signature:") && text.contains("d=example.com"),
        "{text}"
    );
    assert!(text.contains("Return-Path: <alice@example.com>"), "{text}");
    wait_queue_settled(&sender);
    assert!(
        queue_ids(&sender, None).is_empty(),
        "delivered entries leave the queue"
    );
    assert!(sender.terminate().success());
}

#[test]
fn temporary_failure_then_success_delivers_exactly_once() {
    let peer = Peer::start(|n| {
        if n == 0 {
            Script::TempRcpt
        } else {
            Script::Normal
        }
    });
    let sender = sender(peer.port);
    submit(&sender, &["bob@peer.test"], "retry@example.com", "");
    wait_until("the retry to deliver", || !peer.messages().is_empty());
    wait_queue_settled(&sender);
    std::thread::sleep(Duration::from_millis(1500));
    let msgs = peer.messages();
    assert_eq!(msgs.len(), 1, "exactly one copy");
    assert_eq!(msgs[0].0, vec!["bob@peer.test"]);
    assert!(msgs[0].1.contains("Message-ID: <retry@example.com>"));
    assert!(
        msgs[0].1.contains("\r\n..dot line\r\n"),
        "dot-stuffed on the wire"
    );
    assert!(peer.transactions() >= 2);
    assert!(queue_ids(&sender, None).is_empty());
}

#[test]
fn rcpt_5xx_for_one_of_two_bounces_that_one() {
    let peer = Peer::start(|_| Script::Normal);
    let mut sender = sender(peer.port);
    submit(
        &sender,
        &["bob@peer.test", "reject-me@peer.test"],
        "split@example.com",
        "",
    );
    wait_until("delivery", || !peer.messages().is_empty());
    wait_queue_settled(&sender);
    let failed = queue_ids(&sender, Some("failed"));
    assert_eq!(failed.len(), 1, "the entry stays in the failed queue");
    let show = sender.umail_ok(&["queue", "show", &failed[0]]);
    assert!(
        show.contains("rcpt reject-me@peer.test") && show.contains("550 5.1.1"),
        "{show}"
    );
    assert!(show.contains("delivered: 250"), "{show}");
    let msgs = peer.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0, vec!["bob@peer.test"]);
    // Deleting from the failed queue works.
    sender.umail_ok(&["queue", "delete", &failed[0]]);
    assert!(queue_ids(&sender, None).is_empty());

    let inbox = inbox(&mut sender, "alice@example.com");
    assert_eq!(inbox.len(), 1, "one DSN");
    let dsn = &inbox[0];
    let text = String::from_utf8_lossy(dsn);
    assert!(text.starts_with("Return-Path: <>"), "{text}");
    let status = delivery_status(dsn);
    assert!(
        status.contains("Reporting-MTA: dns; mail.test.example"),
        "{status}"
    );
    let groups = recipient_fields(&status);
    assert_eq!(groups.len(), 1, "only the failed recipient: {status}");
    let g = &groups[0];
    assert_eq!(field(g, "final-recipient"), "rfc822; reject-me@peer.test");
    assert_eq!(field(g, "action"), "failed");
    assert_eq!(field(g, "status"), "5.1.1");
    assert_eq!(field(g, "remote-mta"), "dns; 127.0.0.1");
    assert!(field(g, "diagnostic-code").contains("550 5.1.1 no such user here"));
    // RET absent: headers only.
    assert!(
        text.contains("text/rfc822-headers") && text.contains("Message-ID: <split@example.com>")
    );
}

#[test]
fn data_5xx_bounces_every_recipient_with_full_message_on_ret_full() {
    let peer = Peer::start(|_| Script::RejectData);
    let mut sender = sender(peer.port);
    submit(
        &sender,
        &["bob@peer.test", "carol@peer.test"],
        "data5xx@example.com",
        "s.ehlo(); s.esmtp_features['dsn'] = ''\nold = s.sendmail\ns.sendmail = lambda f, t, m: old(f, t, m, mail_options=['RET=FULL', 'ENVID=QQ42'], rcpt_options=['NOTIFY=FAILURE'])",
    );
    wait_queue_settled(&sender);
    assert_eq!(queue_ids(&sender, Some("failed")).len(), 1);
    let inbox = inbox(&mut sender, "alice@example.com");
    assert_eq!(inbox.len(), 1, "one DSN for both recipients");
    let status = delivery_status(&inbox[0]);
    assert!(status.contains("Original-Envelope-Id: QQ42"), "{status}");
    let groups = recipient_fields(&status);
    assert_eq!(groups.len(), 2);
    for (g, who) in groups.iter().zip(["bob@peer.test", "carol@peer.test"]) {
        assert_eq!(field(g, "final-recipient"), format!("rfc822; {who}"));
        assert_eq!(field(g, "action"), "failed");
        assert_eq!(field(g, "status"), "5.6.0");
    }
    let text = String::from_utf8_lossy(&inbox[0]);
    assert!(
        text.contains("message/rfc822") && text.contains("Hello from umail."),
        "RET=FULL returns the body"
    );
}

#[test]
fn dropped_connection_is_retried() {
    let peer = Peer::start(|n| if n == 0 { Script::Drop } else { Script::Normal });
    let sender = sender(peer.port);
    submit(&sender, &["bob@peer.test"], "drop@example.com", "");
    wait_until("delivery after the drop", || !peer.messages().is_empty());
    wait_queue_settled(&sender);
    assert_eq!(peer.messages().len(), 1);
    assert!(queue_ids(&sender, None).is_empty());
}

#[test]
fn queue_cli_hold_release_flush_and_null_sender_never_bounced() {
    // The peer refuses every recipient temporarily: the entry stays deferred.
    let peer = Peer::start(|n| {
        if n < 2 {
            Script::TempRcpt
        } else {
            Script::Normal
        }
    });
    let mut sender = TestServer::start_with(&delivery_config(
        "retry_intervals_secs = [3600]",
        &[("peer.test", peer.port)],
    ));
    setup(&sender, "example.com", &["alice"]);
    submit(&sender, &["bob@peer.test"], "cli@example.com", "");
    wait_until("a deferred entry", || {
        queue_ids(&sender, Some("deferred")).len() == 1
    });
    let id = queue_ids(&sender, Some("deferred")).remove(0);
    let show = sender.umail_ok(&["queue", "show", &id]);
    assert!(show.contains("deferred: 451 4.3.0"), "{show}");
    sender.umail_ok(&["queue", "hold", &id]);
    assert_eq!(queue_ids(&sender, Some("held")), vec![id.clone()]);
    // Held entries are not attempted, even when flushed.
    let before = peer.transactions();
    sender.umail_ok(&["queue", "flush"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(peer.transactions(), before);
    sender.umail_ok(&["queue", "release", &id]);
    wait_until("second attempt", || peer.transactions() > before);
    wait_until("deferred again", || {
        queue_ids(&sender, Some("deferred")).len() == 1
    });
    sender.umail_ok(&["queue", "flush", "--domain", "peer.test"]);
    wait_until("delivery after flush", || !peer.messages().is_empty());
    wait_queue_settled(&sender);
    assert!(queue_ids(&sender, None).is_empty());
    assert!(
        sender
            .umail(&["queue", "show", "00000000DEADBEEF"])
            .status
            .code()
            != Some(0)
    );
    assert!(
        sender
            .umail(&["queue", "list", "--queue", "bogus"])
            .status
            .code()
            != Some(0)
    );
    assert!(
        inbox(&mut sender, "alice@example.com").is_empty(),
        "no DSN for a delivered message"
    );
}

#[test]
fn sigkill_during_a_burst_loses_nothing() {
    const N: usize = 30;
    let peer = Peer::start(|_| Script::Slow);
    let mut sender = sender(peer.port);
    let script = r#"
import os, smtplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=30)
s.starttls(context=ctx)
s.login("alice@example.com", os.environ["PASSWORD"])
for i in range(int(os.environ["N"])):
    s.sendmail("alice@example.com", ["bob@peer.test"],
               ("From: alice@example.com\r\nSubject: burst\r\nMessage-ID: <burst-%d@example.com>\r\n\r\nx\r\n" % i).encode())
s.quit()
"#;
    python(
        script,
        &[
            ("PORT", sender.port("submission").to_string()),
            ("PASSWORD", PASSWORD.to_string()),
            ("N", N.to_string()),
        ],
    );
    wait_until("the burst to start", || !peer.messages().is_empty());
    let mut child = sender.child.take().expect("running");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let at_kill = peer.messages().len();
    sender.spawn();
    wait_until("every message delivered", || {
        let ids: std::collections::HashSet<String> = peer
            .messages()
            .iter()
            .filter_map(|(_, m)| {
                m.lines()
                    .find(|l| l.starts_with("Message-ID:"))
                    .map(str::to_string)
            })
            .collect();
        ids.len() == N
    });
    wait_queue_settled(&sender);
    assert!(queue_ids(&sender, None).is_empty());
    assert!(at_kill < N || peer.messages().len() >= N);
}

/// A throwaway Postfix instance on a loopback port that accepts mail for
/// `postfix.test` and puts it on hold (so its queue shows what it accepted).
struct Postfix {
    dir: tempfile::TempDir,
    port: u16,
}

impl Postfix {
    fn start() -> Postfix {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(d.join("queue")).unwrap();
        std::fs::create_dir_all(d.join("data")).unwrap();
        let chown = std::process::Command::new("chown")
            .arg("postfix")
            .arg(d.join("data"))
            .status()
            .expect("chown");
        assert!(
            chown.success(),
            "the postfix user must exist (apt-get install postfix)"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = d.display();
        std::fs::write(
            dir.path().join("main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination = postfix.test
local_recipient_maps =
mynetworks = 127.0.0.0/8
smtpd_end_of_data_restrictions = check_client_access static:HOLD
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
biff = no
alias_maps =
alias_database =
"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("master.cf"),
            format!(
                "127.0.0.1:{port} inet n - n - - smtpd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"
            ),
        )
        .unwrap();
        let pf = Postfix { dir, port };
        let out = pf.postfix(&["start"]);
        assert!(
            out.status.success(),
            "postfix start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until("postfix to listen", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        pf
    }

    fn postfix(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("postfix")
            .arg("-c")
            .arg(self.dir.path())
            .args(args)
            .output()
            .expect("postfix must be installed (apt-get install postfix)")
    }

    fn queue(&self) -> String {
        let out = std::process::Command::new("postqueue")
            .arg("-c")
            .arg(self.dir.path())
            .arg("-p")
            .output()
            .expect("postqueue");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = self.postfix(&["stop"]);
    }
}

#[test]
fn postfix_accepts_mail_from_umail() {
    let postfix = Postfix::start();
    let sender = TestServer::start_with(&route("postfix.test", postfix.port));
    setup(&sender, "example.com", &["alice"]);
    submit(
        &sender,
        &["bob@postfix.test", "carol@postfix.test"],
        "to-postfix@example.com",
        "",
    );
    wait_until("postfix to log the message", || {
        postfix
            .log()
            .contains("message-id=<to-postfix@example.com>")
    });
    wait_queue_settled(&sender);
    assert!(
        queue_ids(&sender, None).is_empty(),
        "Postfix's 250 removes the entry"
    );
    let log = postfix.log();
    assert!(log.contains("message-id=<to-postfix@example.com>"), "{log}");
    assert!(
        log.contains("Client host triggers HOLD action; from=<alice@example.com>"),
        "{log}"
    );
    let queue = postfix.queue();
    assert!(
        queue.contains("alice@example.com")
            && queue.contains("bob@postfix.test")
            && queue.contains("carol@postfix.test"),
        "{queue}"
    );
    assert!(queue.contains("1 Request"), "exactly one copy: {queue}");
}

#[test]
fn relay_mode_uses_the_smart_host_with_starttls_and_auth() {
    // The smart host lets its relay account send for other domains.
    let relay = TestServer::start_with("[smtp]\nsender_must_match_auth = false\n");
    setup(&relay, "partner.example", &["bob", "relayuser"]);
    let mut sender = TestServer::start_with(&format!(
        "[delivery]\nmode = \"relay\"\nretry_intervals_secs = [1]\nrelay = \"smtp://relayuser%40partner.example:{PASSWORD}@127.0.0.1:{}\"\n",
        relay.port("submission")
    ));
    setup(&sender, "example.com", &["alice"]);
    submit(&sender, &["bob@partner.example"], "relayed@example.com", "");
    wait_queue_settled(&sender);
    assert!(queue_ids(&sender, None).is_empty());
    let mut relay = relay;
    let inbox = inbox(&mut relay, "bob@partner.example");
    assert_eq!(inbox.len(), 1);
    let text = String::from_utf8_lossy(&inbox[0]);
    assert!(text.contains("Message-ID: <relayed@example.com>"), "{text}");
    assert!(
        text.contains("with ESMTPSA")
            && text.contains("authenticated as relayuser@partner.example"),
        "{text}"
    );
    assert!(sender.terminate().success());
}

#[test]
fn expired_message_bounces_with_5_4_7() {
    let peer = Peer::start(|_| Script::TempRcpt);
    let mut sender = TestServer::start_with(&delivery_config(
        "retry_intervals_secs = [1]\nmax_queue_age_secs = 2",
        &[("peer.test", peer.port)],
    ));
    setup(&sender, "example.com", &["alice"]);
    submit(&sender, &["bob@peer.test"], "expire@example.com", "");
    wait_until("the entry to expire", || {
        queue_ids(&sender, Some("failed")).len() == 1
    });
    wait_queue_settled(&sender);
    assert!(peer.messages().is_empty());
    let inbox = inbox(&mut sender, "alice@example.com");
    assert_eq!(inbox.len(), 1);
    let status = delivery_status(&inbox[0]);
    let groups = recipient_fields(&status);
    assert_eq!(field(&groups[0], "status"), "5.4.7");
    assert_eq!(field(&groups[0], "action"), "failed");
    assert!(field(&groups[0], "diagnostic-code").contains("451 4.3.0 try again later"));
}

#[test]
fn notify_success_and_never_are_honoured() {
    let peer = Peer::start(|_| Script::Normal);
    let mut sender = sender(peer.port);
    let script = r#"
import os, smtplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=30)
s.starttls(context=ctx); s.ehlo()
s.login("alice@example.com", os.environ["PASSWORD"])
assert s.has_extn("dsn"), s.esmtp_features
code, _ = s.mail("alice@example.com", ["ENVID=notify-1"]); assert code == 250
code, _ = s.rcpt("bob@peer.test", ["NOTIFY=SUCCESS", "ORCPT=rfc822;boss@example.com"]); assert code == 250
code, _ = s.rcpt("reject-silently@peer.test", ["NOTIFY=NEVER"]); assert code == 250
code, _ = s.data(b"From: alice@example.com\r\nSubject: notify\r\nMessage-ID: <notify@example.com>\r\n\r\nhi\r\n"); assert code == 250
s.quit()
"#;
    python(
        script,
        &[
            ("PORT", sender.port("submission").to_string()),
            ("PASSWORD", PASSWORD.to_string()),
        ],
    );
    wait_until("delivery", || !peer.messages().is_empty());
    wait_queue_settled(&sender);
    let inbox = inbox(&mut sender, "alice@example.com");
    assert_eq!(
        inbox.len(),
        1,
        "a success DSN for bob, nothing for NOTIFY=NEVER"
    );
    let msg = MessageParser::default().parse(&inbox[0][..]).unwrap();
    let part = msg
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.subtype() == Some("delivery-status"))
        })
        .expect("delivery-status");
    let status = String::from_utf8_lossy(part.contents()).into_owned();
    assert!(
        status.contains("Original-Envelope-Id: notify-1"),
        "{status}"
    );
    let groups = recipient_fields(&status);
    assert_eq!(groups.len(), 1, "{status}");
    // The peer has no DSN extension: RFC 3461 §5.2.2 says "relayed".
    assert_eq!(field(&groups[0], "action"), "relayed");
    assert_eq!(field(&groups[0], "status"), "2.0.0");
    assert_eq!(
        field(&groups[0], "final-recipient"),
        "rfc822; bob@peer.test"
    );
    assert_eq!(
        field(&groups[0], "original-recipient"),
        "rfc822;boss@example.com"
    );
}

#[test]
fn direct_then_relay_sends_what_direct_delivery_deferred_to_the_smart_host() {
    let relay = TestServer::start_with("[smtp]\nsender_must_match_auth = false\n");
    setup(&relay, "partner.example", &["relayuser"]);
    let relay_sink = Peer::start(|_| Script::Normal);
    // The smart host forwards peer.test to a sink; direct delivery is always deferred.
    let mut relay = relay;
    assert!(relay.terminate().success());
    let text = std::fs::read_to_string(relay.config_path()).unwrap();
    std::fs::write(
        relay.config_path(),
        format!("{text}\n{}", route("peer.test", relay_sink.port)),
    )
    .unwrap();
    relay.spawn();
    let direct = Peer::start(|_| Script::TempRcpt);
    let sender = TestServer::start_with(&delivery_config(
        &format!(
            "mode = \"direct-then-relay\"\nretry_intervals_secs = [1]\nrelay = \"smtp://relayuser%40partner.example:{PASSWORD}@127.0.0.1:{}\"",
            relay.port("submission")
        ),
        &[("peer.test", direct.port)],
    ));
    setup(&sender, "example.com", &["alice"]);
    submit(&sender, &["bob@peer.test"], "dtr@example.com", "");
    wait_until("delivery through the smart host", || {
        !relay_sink.messages().is_empty()
    });
    wait_queue_settled(&sender);
    assert!(
        direct.transactions() >= 1,
        "direct delivery was tried first"
    );
    assert!(direct.messages().is_empty());
    let msgs = relay_sink.messages();
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].1.contains("Message-ID: <dtr@example.com>"));
    assert!(queue_ids(&sender, None).is_empty());
}

#[test]
fn refused_destination_is_remembered_and_deferred() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sender = sender(port);
    submit(&sender, &["bob@peer.test"], "refused@example.com", "");
    wait_until("a retry that skips the refusing host", || {
        let ids = queue_ids(&sender, Some("deferred"));
        ids.len() == 1
            && sender
                .umail_ok(&["queue", "show", &ids[0]])
                .contains("refused connections recently")
    });
    let id = queue_ids(&sender, Some("deferred")).remove(0);
    let show = sender.umail_ok(&["queue", "show", &id]);
    assert!(show.contains("4.4.1"), "{show}");
    sender.umail_ok(&["queue", "delete", &id]);
    assert!(queue_ids(&sender, None).is_empty());
}

/// The Message-IDs of the peer's accepted messages, in arrival order.
fn message_ids(peer: &Peer) -> Vec<String> {
    peer.messages()
        .iter()
        .map(|(_, m)| {
            let start = m.find("Message-ID: <").expect("Message-ID") + 13;
            m[start..start + m[start..].find('>').unwrap()].to_string()
        })
        .collect()
}

#[test]
fn higher_priority_leaves_first_and_operators_can_change_it() {
    let open = Arc::new(AtomicBool::new(false));
    let gate = Arc::clone(&open);
    let peer = Peer::start(move |_| {
        if gate.load(Ordering::SeqCst) {
            Script::Normal
        } else {
            Script::TempRcpt
        }
    });
    // One connection at a time and no automatic retry: the delivery order
    // below is decided by priority alone.
    let mut sender = TestServer::start_with(&delivery_config(
        "retry_intervals_secs = [3600]\nmax_connections = 1",
        &[("peer.test", peer.port)],
    ));
    setup(&sender, "example.com", &["alice"]);
    let add_header = |h: &str| format!("msg = b\"{h}\\r\\n\" + msg");
    submit(&sender, &["bob@peer.test"], "normal-1@example.com", "");
    submit(&sender, &["bob@peer.test"], "normal-2@example.com", "");
    submit(
        &sender,
        &["bob@peer.test"],
        "urgent@example.com",
        &add_header("X-Priority: 1 (Highest)"),
    );
    submit(
        &sender,
        &["bob@peer.test"],
        "bulk@example.com",
        &add_header("Precedence: bulk"),
    );
    wait_until("all four to be deferred", || {
        queue_ids(&sender, Some("deferred")).len() == 4
    });
    let summary = sender.umail_ok(&["queue", "summary"]);
    let row = |name: &str| -> Vec<String> {
        summary
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} in {summary}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row("(all)")[1..5], ["0", "4", "0", "0"], "{summary}");
    assert_eq!(row("peer.test")[1..5], ["0", "4", "0", "0"], "{summary}");
    let list = sender.umail_ok(&["queue", "list"]);
    let priority_of = |list: &str, mid_index: usize| {
        // Rows are id, queue, priority, ...; ids ascend with submission.
        let mut rows: Vec<(String, String)> = list
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let id = w.next()?;
                (id.len() == 16).then(|| (id.to_string(), w.nth(1).unwrap_or("").to_string()))
            })
            .collect();
        rows.sort();
        rows[mid_index].1.clone()
    };
    assert_eq!(priority_of(&list, 0), "normal", "{list}");
    assert_eq!(priority_of(&list, 2), "high", "{list}");
    assert_eq!(priority_of(&list, 3), "low", "{list}");
    // The operator raises the second normal message.
    let mut ids = queue_ids(&sender, None);
    ids.sort();
    let out = sender.umail_ok(&["queue", "priority", &ids[1], "high"]);
    assert!(out.contains("priority high"), "{out}");
    assert!(
        sender
            .umail_ok(&["queue", "show", &ids[1]])
            .contains("high")
    );
    let bad = sender.umail(&["queue", "priority", &ids[1], "urgentest"]);
    assert!(!bad.status.success());

    // Flushed while the server is stopped, so that all four are due at
    // once when the runner starts: the order is the runner's choice.
    assert!(sender.terminate().success());
    sender.umail_ok(&["queue", "flush"]);
    open.store(true, Ordering::SeqCst);
    sender.spawn();
    wait_until("all four delivered", || peer.messages().len() == 4);
    let order = message_ids(&peer);
    let mut first_two = order[..2].to_vec();
    first_two.sort();
    assert_eq!(
        first_two,
        ["normal-2@example.com", "urgent@example.com"],
        "{order:?}"
    );
    assert_eq!(
        order[2..],
        ["normal-1@example.com", "bulk@example.com"],
        "{order:?}"
    );
    wait_queue_settled(&sender);
}

#[test]
fn delayed_dsn_is_sent_once_while_retrying() {
    let peer = Peer::start(|_| Script::TempRcpt);
    let mut sender = TestServer::start_with(&delivery_config(
        "retry_intervals_secs = [1]\ndelay_notify_secs = 1",
        &[("peer.test", peer.port)],
    ));
    setup(&sender, "example.com", &["alice"]);
    submit(&sender, &["bob@peer.test"], "slowly@example.com", "");
    wait_until("the delay notice", || {
        let ids = queue_ids(&sender, Some("deferred"));
        ids.len() == 1
            && sender
                .umail_ok(&["queue", "show", &ids[0]])
                .contains("delay DSN queued")
    });
    // Several more attempts after the notice: still only one notice.
    let seen = peer.transactions();
    wait_until("two more attempts", || peer.transactions() >= seen + 2);
    let id = queue_ids(&sender, Some("deferred")).remove(0);
    sender.umail_ok(&["queue", "delete", &id]);
    wait_queue_settled(&sender);
    let inbox = inbox(&mut sender, "alice@example.com");
    assert_eq!(inbox.len(), 1, "exactly one delay notice");
    let dsn = &inbox[0];
    let parsed = MessageParser::default().parse(&dsn[..]).unwrap();
    assert!(
        parsed.subject().unwrap().starts_with("Delayed Mail"),
        "{:?}",
        parsed.subject()
    );
    let status = delivery_status(dsn);
    let groups = recipient_fields(&status);
    assert_eq!(groups.len(), 1, "{status}");
    assert_eq!(field(&groups[0], "action"), "delayed");
    assert_eq!(
        field(&groups[0], "final-recipient"),
        "rfc822; bob@peer.test"
    );
    assert!(field(&groups[0], "status").starts_with("4."), "{status}");
    assert!(
        field(&groups[0], "diagnostic-code").contains("451"),
        "{status}"
    );
    // Five days (the default maximum age) after arrival.
    let until = chrono::DateTime::parse_from_rfc2822(field(&groups[0], "will-retry-until"))
        .expect("Will-Retry-Until is a date");
    let arrival = chrono::DateTime::parse_from_rfc2822(
        status
            .lines()
            .find_map(|l| l.strip_prefix("Arrival-Date: "))
            .expect("Arrival-Date"),
    )
    .unwrap();
    assert_eq!((until - arrival).num_seconds(), 5 * 24 * 3600);
    assert!(peer.messages().is_empty());
}

#[test]
fn stalled_peer_times_out_and_the_retry_delivers_once() {
    let peer = Peer::start(|n| {
        if n == 0 {
            Script::Stall
        } else {
            Script::Normal
        }
    });
    let sender = TestServer::start_with(&format!(
        "{}\n[delivery.timeouts]\nmail_secs = 1\n",
        delivery_config("retry_intervals_secs = [1]", &[("peer.test", peer.port)])
    ));
    setup(&sender, "example.com", &["alice"]);
    submit(&sender, &["bob@peer.test"], "stalled@example.com", "");
    wait_until("the retry to deliver", || !peer.messages().is_empty());
    wait_queue_settled(&sender);
    assert_eq!(message_ids(&peer), ["stalled@example.com"]);
    assert_eq!(peer.transactions(), 2, "one stalled attempt, one delivery");
}

#[test]
fn mx_routing_through_dns_with_fallback_implicit_mx_null_mx_and_failures() {
    use common::dns::{self, Answer, a, mx};
    let peer = Peer::start(|_| Script::Normal);
    // The peer listens on 127.0.0.1 only: 127.0.0.2 refuses connections.
    let ns = dns::start(|name, qtype| {
        let recs = match name {
            "mx.test" => vec![mx(10, "down.mx.test"), mx(20, "up.mx.test")],
            "down.mx.test" => vec![a([127, 0, 0, 2])],
            "up.mx.test" => vec![a([127, 0, 0, 1])],
            "amx.test" => vec![a([127, 0, 0, 1])],
            "null.test" => vec![mx(0, ".")],
            "broken.test" => return Answer::ServFail,
            _ => return Answer::NxDomain,
        };
        dns::only(recs, qtype)
    });
    let mut sender = TestServer::start_with(&format!(
        "[delivery]\nretry_intervals_secs = [3600]\nmx_port = {}\n\n[dns]\nnameservers = [\"{ns}\"]\ntimeout_secs = 2\n",
        peer.port
    ));
    setup(&sender, "example.com", &["alice"]);
    submit(
        &sender,
        &[
            "bob@mx.test",
            "carol@amx.test",
            "dave@null.test",
            "erin@nx.test",
            "frank@broken.test",
        ],
        "dns@example.com",
        "",
    );
    wait_until("the MX and implicit-MX copies", || {
        peer.messages().len() == 2
    });
    wait_until("the DNS failure to be deferred", || {
        let ids = queue_ids(&sender, Some("deferred"));
        ids.len() == 1
            && sender
                .umail_ok(&["queue", "show", &ids[0]])
                .contains("frank@broken.test")
    });
    let id = queue_ids(&sender, Some("deferred")).remove(0);
    let show = sender.umail_ok(&["queue", "show", &id]);
    assert!(show.contains("deferred: 451 4.4.3"), "{show}");
    assert!(show.contains("bob@mx.test"), "{show}");
    let mut rcpts: Vec<String> = peer.messages().into_iter().flat_map(|(r, _)| r).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["bob@mx.test", "carol@amx.test"]);

    sender.umail_ok(&["queue", "delete", &id]);
    let inbox = inbox(&mut sender, "alice@example.com");
    assert_eq!(inbox.len(), 1, "one DSN for both unroutable domains");
    let status = delivery_status(&inbox[0]);
    let groups = recipient_fields(&status);
    assert_eq!(groups.len(), 2, "{status}");
    for g in &groups {
        assert_eq!(field(g, "action"), "failed");
    }
    let by = |who: &str| {
        groups
            .iter()
            .find(|g| field(g, "final-recipient").contains(who))
            .unwrap_or_else(|| panic!("{who} in {status}"))
    };
    // RFC 7505 §4.2: null MX is 5.1.10; a domain that does not exist 5.1.2.
    assert_eq!(field(by("dave@null.test"), "status"), "5.1.10");
    assert_eq!(field(by("erin@nx.test"), "status"), "5.1.2");
}

#[test]
fn a_blocked_destination_does_not_starve_the_others() {
    // slow.test answers nothing until released; every connection slot but
    // its own per-host share must stay free for other destinations.
    let slow = Peer::start(|_| Script::Held);
    let fast = Peer::start(|_| Script::Normal);
    let sender = TestServer::start_with(&delivery_config(
        "retry_intervals_secs = [1]\nmax_connections = 3\nmax_connections_per_host = 1",
        &[("slow.test", slow.port), ("fast.test", fast.port)],
    ));
    setup(&sender, "example.com", &["alice"]);
    for n in 0..5 {
        submit(
            &sender,
            &["bob@slow.test"],
            &format!("slow-{n}@example.com"),
            "",
        );
    }
    submit(&sender, &["carol@fast.test"], "fast@example.com", "");
    wait_until("the other destination's message", || {
        fast.messages().len() == 1
    });
    assert!(slow.messages().is_empty(), "slow.test is still held");
    assert_eq!(slow.transactions(), 1, "one connection to the held host");
    slow.release();
    wait_until("the held destination's backlog", || {
        slow.messages().len() == 5
    });
    wait_queue_settled(&sender);
}

#[test]
fn scheduled_sending_waits_in_the_queue_until_released() {
    let peer = Peer::start(|_| Script::Normal);
    let mut sender = sender(peer.port);
    // smtplib passes MAIL parameters through mail_options.
    let hold = "orig = s.sendmail\ns.sendmail = lambda fr, to, m: orig(fr, to, m, mail_options=['HOLDFOR=3600'])";
    submit(
        &sender,
        &["bob@peer.test", "alice@example.com"],
        "later@example.com",
        hold,
    );
    let ids = queue_ids(&sender, Some("active"));
    assert_eq!(ids.len(), 1, "both copies wait in one entry");
    let show = sender.umail_ok(&["queue", "show", &ids[0]]);
    let next = show
        .lines()
        .find_map(|l| l.trim().strip_prefix("next_attempt"))
        .map(|v| v.trim().trim_start_matches(':').trim().to_string())
        .unwrap_or_else(|| panic!("{show}"));
    let next = chrono::NaiveDateTime::parse_from_str(&next, "%Y-%m-%d %H:%M:%S UTC")
        .unwrap_or_else(|e| panic!("{next:?}: {e}"))
        .and_utc()
        .timestamp();
    assert!(
        next > umail_core::unix_now() + 3000,
        "released in an hour: {show}"
    );
    assert_eq!(peer.transactions(), 0);
    // The operator (or the clock) releases it.
    sender.umail_ok(&["queue", "flush", &ids[0]]);
    wait_until("the released message at the peer", || {
        peer.messages().len() == 1
    });
    wait_queue_settled(&sender);
    assert_eq!(message_ids(&peer), ["later@example.com"]);
    let inbox = inbox(&mut sender, "alice@example.com");
    assert_eq!(inbox.len(), 1, "the local copy is delivered at release too");
}
