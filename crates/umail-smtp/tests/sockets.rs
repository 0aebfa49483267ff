//! Socket-level tests: `SmtpServer` on 127.0.0.1:0 with a self-signed
//! certificate over the in-memory services, driven by Python's smtplib and
//! by lettre. Delivered messages are read back from the store and compared
//! byte for byte, including a multi-MiB message from umail's own client
//! and pipelined batches several times the read buffer.

mod common;

use std::net::SocketAddr;
use std::process::Command as Process;
use std::sync::Arc;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use umail_core::config::SmtpConfig;
use umail_core::net::{LimitExceeded, shutdown_channel};
use umail_core::{ConnectionInfo, QueueStore, Shutdown};
use umail_smtp::{ListenerMode, SmtpServer};

fn acceptor() -> tokio_rustls::TlsAcceptor {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

struct Running {
    world: World,
    mx: SocketAddr,
    submission: SocketAddr,
    submissions: SocketAddr,
}

async fn listen(server: Arc<SmtpServer>, mode: ListenerMode, shutdown: Shutdown) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let local = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let server = server.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let info = ConnectionInfo {
                    session_id: umail_core::net::next_session_id(),
                    peer,
                    local,
                    listener: mode.name().into(),
                };
                server.serve_connection(stream, info, mode, shutdown).await;
            });
        }
    });
    local
}

async fn start(smtp: SmtpConfig) -> Running {
    let world = world();
    let server = Arc::new(SmtpServer::new(
        world.services.clone(),
        smtp,
        Some(acceptor()),
    ));
    let mx = listen(server.clone(), ListenerMode::Mx, Shutdown::never()).await;
    let submission = listen(server.clone(), ListenerMode::Submission, Shutdown::never()).await;
    let submissions = listen(server, ListenerMode::Submissions, Shutdown::never()).await;
    Running {
        world,
        mx,
        submission,
        submissions,
    }
}

const PY: &str = r#"
import smtplib, ssl, sys
mx, sub, subs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
def msg(tag):
    return ("From: alice@example.com\r\nTo: bob@example.com\r\nSubject: %s\r\n\r\n"
            ".leading dot\r\nline two\r\n" % tag).encode()

# submission: STARTTLS + AUTH PLAIN
s = smtplib.SMTP("127.0.0.1", sub)
s.ehlo("py.client")
try:
    s.login("alice@example.com", "alice-pw")
    raise SystemExit("AUTH before TLS must fail")
except smtplib.SMTPNotSupportedError:
    pass
s.starttls(context=ctx)
s.ehlo("py.client")
assert "auth" in s.esmtp_features, s.esmtp_features
s.user, s.password = "alice@example.com", "alice-pw"
code, _ = s.auth("PLAIN", s.auth_plain)
assert code == 235, code
s.sendmail("alice@example.com", ["bob@example.com", "far@remote.example"], msg("plain"))
s.quit()

# submission: STARTTLS + AUTH LOGIN, with a wrong password first
s = smtplib.SMTP("127.0.0.1", sub)
s.starttls(context=ctx)
s.ehlo("py.client")
s.user, s.password = "alice@example.com", "wrong"
try:
    s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    raise SystemExit("wrong password accepted")
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
s.password = "alice-pw"
code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
assert code == 235, code
s.sendmail("alice@example.com", ["bob@example.com"], msg("login"))
s.quit()

# submissions: implicit TLS
s = smtplib.SMTP_SSL("127.0.0.1", subs, context=ctx)
s.login("alice@example.com", "alice-pw")
s.sendmail("alice@example.com", ["bob@example.com"], msg("implicit"))
s.quit()

# MX: plain delivery, relay refused
s = smtplib.SMTP("127.0.0.1", mx)
s.ehlo("mx.client")
s.sendmail("someone@remote.example", ["bob@example.com"], msg("mx"))
try:
    s.sendmail("someone@remote.example", ["x@elsewhere.example"], msg("relay"))
    raise SystemExit("relay accepted")
except smtplib.SMTPRecipientsRefused as e:
    assert e.recipients["x@elsewhere.example"][0] == 550, e.recipients
s.quit()
print("PYTHON-OK")
"#;

fn msg(tag: &str) -> String {
    format!(
        "From: alice@example.com\r\nTo: bob@example.com\r\nSubject: {tag}\r\n\r\n.leading dot\r\nline two\r\n"
    )
}

/// Checks `delivered` = Return-Path + one Received field + `original`.
fn check_delivered(delivered: &[u8], from: &str, original: &str, with: &str) {
    let text = String::from_utf8_lossy(delivered);
    let rp = format!("Return-Path: <{from}>\r\n");
    assert!(text.starts_with(&rp), "{text}");
    assert!(text.ends_with(original), "{text}");
    let trace = &text[rp.len()..text.len() - original.len()];
    assert!(trace.starts_with("Received: from "), "{trace}");
    assert!(trace.contains(&format!(" with {with}")), "{trace}");
    // Exactly one field: every other line is a continuation.
    assert!(
        trace
            .split("\r\n")
            .skip(1)
            .all(|l| l.is_empty() || l.starts_with('\t')),
        "{trace}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_against_all_listeners() {
    let r = start(SmtpConfig::default()).await;
    let (mx, sub, subs) = (r.mx.port(), r.submission.port(), r.submissions.port());
    let out = tokio::task::spawn_blocking(move || {
        Process::new("python3")
            .arg("-c")
            .arg(PY)
            .arg(mx.to_string())
            .arg(sub.to_string())
            .arg(subs.to_string())
            .output()
            .expect("python3 runs")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("PYTHON-OK"),
        "stdout: {stdout}\nstderr: {stderr}"
    );

    let bob = r.world.inbox("bob@example.com").await;
    assert_eq!(bob.len(), 4, "plain, login, implicit, mx");
    check_delivered(
        &bob[0],
        "alice@example.com",
        &msg("plain"),
        "ESMTPSA (TLSv1.3",
    );
    check_delivered(
        &bob[1],
        "alice@example.com",
        &msg("login"),
        "ESMTPSA (TLSv1.3",
    );
    check_delivered(
        &bob[2],
        "alice@example.com",
        &msg("implicit"),
        "ESMTPSA (TLSv1.3",
    );
    check_delivered(&bob[3], "someone@remote.example", &msg("mx"), "ESMTP\r\n");
    let queued = r.world.queue.list(None).await.expect("queue");
    assert_eq!(queued.len(), 1);
    assert_eq!(
        queued[0].envelope.recipients[0].address,
        addr("far@remote.example")
    );
    let content = r
        .world
        .queue
        .content(queued[0].id)
        .await
        .expect("q")
        .expect("content");
    assert!(content.ends_with(msg("plain").as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lettre_starttls_and_implicit_tls() {
    use lettre::address::Envelope;
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

    let r = start(SmtpConfig::default()).await;
    let tls = || {
        TlsParameters::builder("localhost".into())
            .dangerous_accept_invalid_certs(true)
            .build_rustls()
            .expect("tls params")
    };
    let envelope = Envelope::new(
        Some("alice@example.com".parse().expect("from")),
        vec!["bob@example.com".parse().expect("to")],
    )
    .expect("envelope");
    for (port, wrapper, mech, tag) in [
        (
            r.submission.port(),
            false,
            Mechanism::Plain,
            "lettre-starttls",
        ),
        (
            r.submissions.port(),
            true,
            Mechanism::Login,
            "lettre-implicit",
        ),
    ] {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(port)
            .tls(if wrapper {
                Tls::Wrapper(tls())
            } else {
                Tls::Required(tls())
            })
            .credentials(Credentials::new(
                "alice@example.com".into(),
                "alice-pw".into(),
            ))
            .authentication(vec![mech])
            .build();
        let resp = transport
            .send_raw(&envelope, msg(tag).as_bytes())
            .await
            .expect("sent");
        assert!(resp.is_positive());
    }
    let bob = r.world.inbox("bob@example.com").await;
    assert_eq!(bob.len(), 2);
    // lettre always writes "\r\n.\r\n" after the message, so a message that
    // already ends in CRLF arrives with one more empty line (RFC 5321
    // §4.1.1.4: the first CRLF of the terminator ends the last line).
    let sent = |tag: &str| format!("{}\r\n", msg(tag));
    check_delivered(
        &bob[0],
        "alice@example.com",
        &sent("lettre-starttls"),
        "ESMTPSA",
    );
    check_delivered(
        &bob[1],
        "alice@example.com",
        &sent("lettre-implicit"),
        "ESMTPSA",
    );

    // Submission without AUTH is refused.
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(r.submission.port())
        .tls(Tls::Required(tls()))
        .build();
    let err = transport
        .send_raw(&envelope, msg("x").as_bytes())
        .await
        .expect_err("refused");
    assert_eq!(
        err.status().map(|c| c.to_string()),
        Some("530".into()),
        "{err}"
    );
}

async fn read_all(stream: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn refuse_connection_writes_421() {
    let w = world();
    let server = SmtpServer::new(w.services.clone(), SmtpConfig::default(), None);
    let (client, srv) = tokio::io::duplex(1024);
    server.refuse_connection(srv, LimitExceeded::PerIp).await;
    let mut client = client;
    let mut out = String::new();
    client.read_to_string(&mut out).await.expect("read");
    assert_eq!(
        out,
        "421 4.7.0 mx.example.com too many sessions from this address, try again later\r\n"
    );
}

#[tokio::test]
async fn graceful_shutdown_and_idle_timeout_over_tcp() {
    let w = world();
    let server = Arc::new(SmtpServer::new(
        w.services.clone(),
        SmtpConfig {
            idle_timeout_secs: 1,
            ..SmtpConfig::default()
        },
        None,
    ));
    let (trigger, shutdown) = shutdown_channel();
    let addr = listen(server, ListenerMode::Mx, shutdown).await;

    // Idle: the server says 421 4.4.2 and closes.
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let out = read_all(&mut idle).await;
    assert!(
        out.starts_with("220 ")
            && out.ends_with("421 4.4.2 mx.example.com Idle timeout, closing connection\r\n"),
        "{out}"
    );

    // Shutdown in the middle of DATA: the message completes, then 421 4.3.2.
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).await.expect("greeting");
    assert!(buf[..n].starts_with(b"220 "));
    c.write_all(
        b"EHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n",
    )
    .await
    .expect("write");
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("354 ") {
        let n = c.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    trigger.trigger();
    c.write_all(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        .await
        .expect("write");
    let out = read_all(&mut c).await;
    assert!(out.starts_with("250 2.0.0 Ok queued as "), "{out}");
    assert!(
        out.ends_with("421 4.3.2 mx.example.com Service shutting down, closing connection\r\n"),
        "{out}"
    );
    assert_eq!(w.inbox("alice@example.com").await.len(), 1);
}

/// umail's own SMTP client (the queue runner's) hands a multi-MiB message
/// to the real server over STARTTLS and BDAT, and the store holds it byte
/// for byte after the trace fields (issue 20's audit: no status line or
/// reply can overtake the message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_client_delivers_a_multi_mib_message_byte_exact() {
    use umail_smtp::client::{ClientSettings, RcptOutcome, SmtpConnection, Timeouts, TlsPolicy};
    let r = start(SmtpConfig::default()).await;
    let mut message =
        b"From: someone@remote.example\r\nTo: bob@example.com\r\nSubject: big\r\n\r\n".to_vec();
    let mut n = 0u32;
    while message.len() < 12 * 1024 * 1024 {
        n += 1;
        match n % 1000 {
            0 => message.extend_from_slice(b".\r\n"),
            1 => message.extend_from_slice(b"..two dots\r\n"),
            _ => {
                message.extend(std::iter::repeat_n(b'A' + (n % 26) as u8, 76));
                message.extend_from_slice(b"\r\n");
            }
        }
    }
    let settings = ClientSettings {
        hello_name: "client.test".into(),
        server_name: "localhost".into(),
        tls: TlsPolicy::Required,
        verify_certificate: false,
        auth: None,
        timeouts: Timeouts::uniform(std::time::Duration::from_secs(60)),
    };
    let mut c = SmtpConnection::connect(r.mx, settings)
        .await
        .expect("connect");
    assert!(c.is_tls() && c.capabilities().chunking);
    let mut envelope = umail_core::Envelope::new(umail_core::ReversePath::Address(addr(
        "someone@remote.example",
    )));
    envelope
        .recipients
        .push(umail_core::Recipient::new(addr("bob@example.com")));
    let out = c
        .send(&envelope, &[&envelope.recipients[0]], &message)
        .await
        .expect("send");
    assert!(matches!(&out[0], RcptOutcome::Delivered(_)), "{out:?}");
    c.quit().await;
    let bob = r.world.inbox("bob@example.com").await;
    assert_eq!(bob.len(), 1);
    let stored = &bob[0];
    assert!(
        stored.ends_with(&message),
        "stored {} bytes do not end with the {} sent",
        stored.len(),
        message.len()
    );
    let trace = String::from_utf8_lossy(&stored[..stored.len() - message.len()]);
    assert!(
        trace.starts_with("Return-Path: <someone@remote.example>\r\nReceived: from "),
        "{trace}"
    );
}

/// Replies to a pipelined batch several times larger than the server's
/// read buffer (16 KiB) come back complete and in order (RFC 2920 §3.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_replies_beyond_the_read_buffer_come_back_in_order() {
    let r = start(SmtpConfig::default()).await;
    let mut c = tokio::net::TcpStream::connect(r.mx).await.expect("connect");
    let mut batch = b"EHLO c\r\nMAIL FROM:<a@remote.example>\r\n".to_vec();
    // max_recipients is 100: the rest get 452 (RFC 5321 §4.5.3.1.10).
    for _ in 0..150 {
        batch.extend_from_slice(b"RCPT TO:<bob@example.com>\r\n");
    }
    batch.extend_from_slice(b"RSET\r\n");
    for _ in 0..10_000 {
        batch.extend_from_slice(b"NOOP\r\n");
    }
    batch.extend_from_slice(b"QUIT\r\n");
    assert!(batch.len() > 3 * 16 * 1024);
    let (mut read, mut write) = c.split();
    let (_, replies) = tokio::join!(
        async { write.write_all(&batch).await.expect("write") },
        async {
            let mut out = Vec::new();
            read.read_to_end(&mut out).await.expect("read");
            out
        }
    );
    let replies = String::from_utf8(replies).expect("ASCII replies");
    assert!(
        replies.len() > 10_000 * 8,
        "{} bytes of replies",
        replies.len()
    );
    // The last line of each reply: its code tells which command it answers.
    let codes: Vec<&str> = replies
        .split("\r\n")
        .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
        .map(|l| &l[..3])
        .collect();
    let mut want = vec!["220", "250", "250"];
    want.extend(std::iter::repeat_n("250", 100));
    want.extend(std::iter::repeat_n("452", 50));
    want.push("250");
    want.extend(std::iter::repeat_n("250", 10_000));
    want.push("221");
    assert_eq!(codes.len(), want.len(), "{replies:.2000}");
    assert!(codes == want, "replies out of order");
}
