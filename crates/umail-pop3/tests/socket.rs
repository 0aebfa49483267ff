//! Socket-level tests: the real driver on 127.0.0.1 driven by Python's
//! `poplib` and by raw Rust clients.

mod common;

use common::{ALICE, Fixture, connect};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use umail_core::config::Pop3Config;

const MSG1: &[u8] = b"From: a@example.org\r\nSubject: one\r\n\r\nHello\r\n.dot\r\n";
const MSG2: &[u8] = b"Subject: two\n\nbare lf body\n";

async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).await.expect("read");
    line
}

#[tokio::test]
async fn poplib_stls_user_pass_retr() {
    let f = Fixture::start(Pop3Config::default()).await;
    f.deliver(MSG1).await;
    f.deliver(MSG2).await;
    let out = f
        .python(
            f.pop3.port(),
            r#"
import poplib, ssl, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
p = poplib.POP3(host, port, timeout=20)
caps = p.capa()
assert 'STLS' in caps and 'USER' not in caps, caps
assert caps['SASL'] == ['SCRAM-SHA-256'], caps
try:
    p.user('alice@example.com')
    raise SystemExit('USER accepted before TLS')
except poplib.error_proto as e:
    assert b'[AUTH]' in e.args[0], e
p.stls(context=ctx)
caps = p.capa()
assert 'USER' in caps and 'STLS' not in caps, caps
assert caps['SASL'] == ['PLAIN', 'SCRAM-SHA-256'], caps
p.user('alice@example.com')
p.pass_('secret')
print(p.stat())
resp, lines, octets = p.retr(1)
print(lines)
resp, lines, octets = p.retr(2)
print(lines)
resp, lines, octets = p.top(1, 0)
print(lines)
print(p.quit())
"#,
        )
        .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("(2, {})", MSG1.len() + MSG2.len()));
    // poplib un-stuffs ".dot".
    assert_eq!(
        lines[1],
        "[b'From: a@example.org', b'Subject: one', b'', b'Hello', b'.dot']"
    );
    assert_eq!(lines[2], "[b'Subject: two', b'', b'bare lf body']");
    assert_eq!(lines[3], "[b'From: a@example.org', b'Subject: one', b'']");
    assert!(lines[4].starts_with("b'+OK"), "{out}");
}

#[tokio::test]
async fn poplib_implicit_tls_and_stable_uidl() {
    let f = Fixture::start(Pop3Config::default()).await;
    f.deliver(MSG1).await;
    f.deliver(MSG2).await;
    let script = r#"
import poplib, ssl, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
seen = []
for _ in range(2):
    p = poplib.POP3_SSL(host, port, context=ctx, timeout=20)
    assert 'STLS' not in p.capa()
    p.user('alice@example.com')
    p.pass_('secret')
    seen.append(p.uidl()[1])
    p.quit()
assert seen[0] == seen[1], seen
for line in seen[0]:
    print(line.decode())
"#;
    let out = f.python(f.pop3s.port(), script).await;
    let v = f.uid_validity().await;
    assert_eq!(out, format!("1 {v}.1\n2 {v}.2\n"));
    // Same identity after a "restart": a fresh server over the same store
    // would compute the same UIDL, since it is the IMAP identity.
    let out2 = f.python(f.pop3s.port(), script).await;
    assert_eq!(out, out2);
}

#[tokio::test]
async fn poplib_dele_quit_removes() {
    let f = Fixture::start(Pop3Config::default()).await;
    f.deliver(MSG1).await;
    f.deliver(MSG2).await;
    f.python(
        f.pop3s.port(),
        r#"
import poplib, ssl, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
p = poplib.POP3_SSL(host, port, context=ssl.create_default_context(cafile=ca), timeout=20)
p.user('alice@example.com'); p.pass_('secret')
p.dele(1)
p.quit()
"#,
    )
    .await;
    assert_eq!(f.inbox_uids().await, vec![2]);
}

#[tokio::test]
async fn poplib_dele_then_dropped_connection_removes_nothing() {
    let mut f = Fixture::start(Pop3Config::default()).await;
    f.deliver(MSG1).await;
    f.deliver(MSG2).await;
    f.python(
        f.pop3s.port(),
        r#"
import poplib, ssl, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
p = poplib.POP3_SSL(host, port, context=ssl.create_default_context(cafile=ca), timeout=20)
p.user('alice@example.com'); p.pass_('secret')
p.dele(1); p.dele(2)
p.close()  # no QUIT
"#,
    )
    .await;
    f.wait_finished(1).await;
    assert_eq!(f.inbox_uids().await, vec![1, 2]);
    assert_eq!(f.server.sessions_of(ALICE), 0);
}

#[tokio::test]
async fn poplib_two_concurrent_sessions() {
    let f = Fixture::start(Pop3Config::default()).await;
    f.deliver(MSG1).await;
    f.deliver(MSG2).await;
    let out = f
        .python(
            f.pop3s.port(),
            r#"
import poplib, ssl, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
a = poplib.POP3_SSL(host, port, context=ctx, timeout=20)
a.user('alice@example.com'); a.pass_('secret')
b = poplib.POP3_SSL(host, port, context=ctx, timeout=20)
b.user('alice@example.com'); b.pass_('secret')
print(a.stat()[0], b.stat()[0])
a.dele(1)
print(a.quit())
b.dele(1); b.dele(2)
print(b.quit())
"#,
        )
        .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "2 2");
    assert!(lines[1].contains("1 messages deleted"), "{out}");
    assert!(lines[2].contains("2 messages deleted"), "{out}");
    assert!(f.inbox_uids().await.is_empty());
}

#[tokio::test]
async fn stls_discards_pipelined_commands() {
    let f = Fixture::start(Pop3Config::default()).await;
    let tcp = connect(f.pop3).await;
    let mut r = BufReader::new(tcp);
    assert!(
        read_line(&mut r)
            .await
            .starts_with("+OK umail POP3 server ready")
    );
    // Injected after STLS in the same packet: must never be executed.
    r.get_mut()
        .write_all(b"STLS\r\nUSER alice@example.com\r\n")
        .await
        .unwrap();
    assert_eq!(read_line(&mut r).await, "+OK begin TLS negotiation\r\n");
    let tcp = r.into_inner();
    let tls = f
        .tls_connector()
        .connect(Fixture::server_name(), tcp)
        .await
        .expect("TLS handshake");
    let mut r = BufReader::new(tls);
    r.get_mut().write_all(b"PASS secret\r\n").await.unwrap();
    assert_eq!(read_line(&mut r).await, "-ERR USER first\r\n");
    r.get_mut()
        .write_all(b"USER alice@example.com\r\nPASS secret\r\nSTAT\r\nQUIT\r\n")
        .await
        .unwrap();
    assert_eq!(read_line(&mut r).await, "+OK send PASS\r\n");
    assert!(read_line(&mut r).await.starts_with("+OK maildrop has 0"));
    assert_eq!(read_line(&mut r).await, "+OK 0 0\r\n");
    assert!(
        read_line(&mut r)
            .await
            .starts_with("+OK umail POP3 server signing off")
    );
}

#[tokio::test]
async fn oversized_line_and_pipelining_over_tcp() {
    let f = Fixture::start(Pop3Config {
        plaintext_auth_without_tls: true,
        ..Pop3Config::default()
    })
    .await;
    f.deliver(MSG1).await;
    let tcp = connect(f.pop3).await;
    let mut r = BufReader::new(tcp);
    read_line(&mut r).await;
    let mut burst = vec![b'X'; 5000];
    burst.extend_from_slice(b"\r\nUSER alice@example.com\r\nPASS secret\r\nLIST\r\nQUIT\r\n");
    r.get_mut().write_all(&burst).await.unwrap();
    assert_eq!(read_line(&mut r).await, "-ERR line too long\r\n");
    assert_eq!(read_line(&mut r).await, "+OK send PASS\r\n");
    assert!(read_line(&mut r).await.starts_with("+OK maildrop has 1"));
    assert!(read_line(&mut r).await.starts_with("+OK 1 messages"));
    assert_eq!(read_line(&mut r).await, format!("1 {}\r\n", MSG1.len()));
    assert_eq!(read_line(&mut r).await, ".\r\n");
    assert!(
        read_line(&mut r)
            .await
            .starts_with("+OK umail POP3 server signing off")
    );
    assert_eq!(read_line(&mut r).await, "", "connection closed");
}

#[tokio::test]
async fn graceful_shutdown_says_goodbye_and_deletes_nothing() {
    let mut f = Fixture::start(Pop3Config {
        plaintext_auth_without_tls: true,
        ..Pop3Config::default()
    })
    .await;
    f.deliver(MSG1).await;
    let tcp = connect(f.pop3).await;
    let mut r = BufReader::new(tcp);
    read_line(&mut r).await;
    r.get_mut()
        .write_all(b"USER alice@example.com\r\nPASS secret\r\nDELE 1\r\n")
        .await
        .unwrap();
    read_line(&mut r).await;
    read_line(&mut r).await;
    assert_eq!(read_line(&mut r).await, "+OK message 1 deleted\r\n");
    f.shutdown.trigger();
    assert_eq!(
        read_line(&mut r).await,
        "-ERR [SYS/TEMP] server shutting down\r\n"
    );
    assert_eq!(read_line(&mut r).await, "");
    f.wait_finished(1).await;
    assert_eq!(f.inbox_uids().await, vec![1]);
}

#[tokio::test]
async fn refuse_connection_replies_and_closes() {
    let f = Fixture::start(Pop3Config::default()).await;
    let (client, server_side) = tokio::io::duplex(1024);
    f.server
        .refuse_connection(server_side, umail_core::net::LimitExceeded::PerIp)
        .await;
    let mut r = BufReader::new(client);
    assert_eq!(
        read_line(&mut r).await,
        "-ERR [SYS/TEMP] too many sessions from this address; try again later\r\n"
    );
}
