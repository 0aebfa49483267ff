//! The SMTP client against scripted peers on loopback: HELO fallback,
//! PIPELINING with per-recipient replies, CHUNKING, STARTTLS (required,
//! verified, refused), AUTH PLAIN, SMTPUTF8 refusal (5.6.7), SIZE, the
//! timeouts of a slow peer, and multi-MiB messages received byte for byte
//! over DATA and BDAT.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use umail_core::{Address, Envelope, Recipient, ReversePath};
use umail_smtp::client::{
    ClientError, ClientSettings, RcptOutcome, SmtpConnection, Timeouts, TlsPolicy,
};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Clone, Default)]
struct PeerOpts {
    /// Reject EHLO with 500 (old server).
    no_ehlo: bool,
    /// Extra EHLO keywords.
    features: Vec<&'static str>,
    /// Offer STARTTLS with this acceptor.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Delay before the greeting.
    greeting_delay: Option<Duration>,
    /// Delay before answering the end of data.
    data_delay: Option<Duration>,
    /// Expected AUTH PLAIN initial response.
    auth: Option<&'static str>,
}

type Transcript = Arc<Mutex<Vec<String>>>;

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

async fn peer(opts: PeerOpts) -> (std::net::SocketAddr, Transcript) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Transcript = Arc::default();
    let l2 = Arc::clone(&log);
    tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let _ = serve(Box::new(sock), opts, l2).await;
    });
    (addr, log)
}

async fn serve(sock: Box<dyn Io>, opts: PeerOpts, log: Transcript) -> std::io::Result<()> {
    if let Some(d) = opts.greeting_delay {
        tokio::time::sleep(d).await;
    }
    let mut r = BufReader::new(sock);
    r.get_mut().write_all(b"220 peer ESMTP\r\n").await?;
    let mut tls_done = false;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        log.lock().unwrap().push(line.trim_end().to_string());
        let up = line.to_ascii_uppercase();
        let reply: String = if up.starts_with("EHLO") {
            if opts.no_ehlo {
                "500 5.5.1 what?\r\n".into()
            } else {
                let mut feats = opts.features.clone();
                if opts.tls.is_some() && !tls_done {
                    feats.push("STARTTLS");
                }
                let mut s = String::from("250-peer");
                for f in feats {
                    s.push_str("\r\n250-");
                    s.push_str(f);
                }
                s.push_str("\r\n250 HELP\r\n");
                s
            }
        } else if up.starts_with("HELO") {
            "250 peer\r\n".into()
        } else if up.starts_with("STARTTLS") {
            r.get_mut().write_all(b"220 2.0.0 go\r\n").await?;
            let acceptor = opts.tls.clone().expect("tls");
            let inner = r.into_inner();
            let tls = acceptor.accept(inner).await?;
            r = BufReader::new(Box::new(tls));
            tls_done = true;
            log.lock().unwrap().push("<tls>".into());
            continue;
        } else if up.starts_with("AUTH PLAIN") {
            if Some(line.trim_end()["AUTH PLAIN ".len()..].trim()) == opts.auth {
                "235 2.7.0 ok\r\n".into()
            } else {
                "535 5.7.8 bad\r\n".into()
            }
        } else if up.starts_with("RCPT") {
            if up.contains("<REJECT") {
                "550 5.1.1 unknown\r\n".into()
            } else if up.contains("<LATER") {
                "450 4.2.1 later\r\n".into()
            } else {
                "250 2.1.5 ok\r\n".into()
            }
        } else if up.starts_with("BDAT") {
            let n: usize = up
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let mut buf = vec![0u8; n];
            r.read_exact(&mut buf).await?;
            log.lock()
                .unwrap()
                .push(format!("<bdat {}>", String::from_utf8_lossy(&buf)));
            "250 2.0.0 chunk ok\r\n".into()
        } else if up.starts_with("DATA") {
            r.get_mut().write_all(b"354 go\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                data.push_str(&line);
            }
            log.lock().unwrap().push(format!("<data {data}>"));
            if let Some(d) = opts.data_delay {
                tokio::time::sleep(d).await;
            }
            "250 2.0.0 data ok\r\n".into()
        } else if up.starts_with("QUIT") {
            r.get_mut().write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            "250 ok\r\n".into()
        };
        r.get_mut().write_all(reply.as_bytes()).await?;
    }
}

fn settings(tls: TlsPolicy) -> ClientSettings {
    ClientSettings {
        hello_name: "client.test".into(),
        server_name: "localhost".into(),
        tls,
        verify_certificate: false,
        auth: None,
        timeouts: Timeouts::uniform(Duration::from_secs(10)),
    }
}

fn envelope(rcpts: &[&str]) -> Envelope {
    let mut e = Envelope::new(ReversePath::Address("a@example.com".parse().unwrap()));
    for r in rcpts {
        e.recipients
            .push(Recipient::new(Address::parse_with(r, true).unwrap()));
    }
    e
}

const MSG: &[u8] = b"Subject: t\r\n\r\n.dot\r\nbody\r\n";

#[tokio::test]
async fn helo_fallback_and_per_recipient_replies_without_pipelining() {
    let (addr, log) = peer(PeerOpts {
        no_ehlo: true,
        ..PeerOpts::default()
    })
    .await;
    let mut c = SmtpConnection::connect(addr, settings(TlsPolicy::Opportunistic))
        .await
        .unwrap();
    assert!(!c.capabilities().esmtp);
    let env = envelope(&["ok@x.test", "reject@x.test", "later@x.test"]);
    let rcpts: Vec<&Recipient> = env.recipients.iter().collect();
    let out = c.send(&env, &rcpts, MSG).await.unwrap();
    assert!(matches!(&out[0], RcptOutcome::Delivered(r) if r.code == 250));
    assert!(matches!(&out[1], RcptOutcome::Failed(r) if r.status() == "5.1.1"));
    assert!(matches!(&out[2], RcptOutcome::Deferred(r) if r.code == 450));
    c.quit().await;
    let log = log.lock().unwrap().clone();
    assert_eq!(log[0], "EHLO client.test");
    assert_eq!(log[1], "HELO client.test");
    assert_eq!(
        log[2], "MAIL FROM:<a@example.com>",
        "no ESMTP parameters after HELO"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("<data ") && l.contains("\r\n..dot\r\nbody\r\n>")),
        "{log:?}"
    );
}

#[tokio::test]
async fn pipelining_chunking_and_connection_reuse() {
    let (addr, log) = peer(PeerOpts {
        features: vec!["PIPELINING", "CHUNKING", "8BITMIME", "SIZE 1000"],
        ..PeerOpts::default()
    })
    .await;
    let mut c = SmtpConnection::connect(addr, settings(TlsPolicy::Opportunistic))
        .await
        .unwrap();
    let env = envelope(&["ok@x.test", "reject@x.test"]);
    let rcpts: Vec<&Recipient> = env.recipients.iter().collect();
    let out = c.send(&env, &rcpts, MSG).await.unwrap();
    assert!(matches!(&out[0], RcptOutcome::Delivered(r) if r.lines[0] == "2.0.0 chunk ok"));
    assert!(matches!(&out[1], RcptOutcome::Failed(_)));
    // Second message on the same connection: RSET first.
    let out = c.send(&env, &rcpts[..1], b"x\xc3\xa9\r\n").await.unwrap();
    assert!(matches!(&out[0], RcptOutcome::Delivered(_)));
    assert_eq!(c.transactions(), 2);
    // Too large for SIZE 1000: refused before MAIL.
    let big = vec![b'a'; 2000];
    let out = c.send(&env, &rcpts[..1], &big).await.unwrap();
    assert!(
        matches!(&out[0], RcptOutcome::Failed(r) if r.status() == "5.3.4"),
        "{out:?}"
    );
    c.quit().await;
    let log = log.lock().unwrap().clone();
    assert!(
        log.contains(&"MAIL FROM:<a@example.com> SIZE=26".to_string()),
        "{log:?}"
    );
    assert!(
        log.contains(&format!("<bdat {}>", String::from_utf8_lossy(MSG))),
        "BDAT carries the raw message: {log:?}"
    );
    assert!(log.contains(&"RSET".to_string()));
    assert!(
        log.iter()
            .any(|l| l.starts_with("MAIL FROM:<a@example.com> SIZE=5 BODY=8BITMIME")),
        "{log:?}"
    );
    assert_eq!(log.iter().filter(|l| l.starts_with("MAIL")).count(), 2);
}

#[tokio::test]
async fn smtputf8_message_to_a_peer_without_it_fails_with_5_6_7() {
    let (addr, log) = peer(PeerOpts {
        features: vec!["8BITMIME"],
        ..PeerOpts::default()
    })
    .await;
    let mut c = SmtpConnection::connect(addr, settings(TlsPolicy::Opportunistic))
        .await
        .unwrap();
    let env = envelope(&["用户@例子.test"]);
    let rcpts: Vec<&Recipient> = env.recipients.iter().collect();
    let out = c.send(&env, &rcpts, MSG).await.unwrap();
    match &out[0] {
        RcptOutcome::Failed(r) => assert_eq!(r.status(), "5.6.7"),
        other => panic!("{other:?}"),
    }
    c.quit().await;
    assert!(!log.lock().unwrap().iter().any(|l| l.starts_with("MAIL")));
}

#[tokio::test]
async fn starttls_then_auth_plain() {
    let (addr, log) = peer(PeerOpts {
        tls: Some(acceptor()),
        features: vec!["AUTH PLAIN LOGIN"],
        auth: Some("AHVzZXIAcGFzcw=="),
        ..PeerOpts::default()
    })
    .await;
    let mut s = settings(TlsPolicy::Required);
    s.auth = Some(("user".into(), "pass".into()));
    let mut c = SmtpConnection::connect(addr, s).await.unwrap();
    assert!(c.is_tls());
    let env = envelope(&["ok@x.test"]);
    let out = c.send(&env, &[&env.recipients[0]], MSG).await.unwrap();
    assert!(matches!(&out[0], RcptOutcome::Delivered(_)));
    c.quit().await;
    let log = log.lock().unwrap().clone();
    let tls_at = log.iter().position(|l| l == "<tls>").unwrap();
    let auth_at = log
        .iter()
        .position(|l| l.starts_with("AUTH PLAIN"))
        .unwrap();
    assert!(tls_at < auth_at, "credentials only after TLS: {log:?}");
    assert_eq!(log[tls_at + 1], "EHLO client.test", "EHLO again after TLS");
}

#[tokio::test]
async fn wrong_credentials_fail() {
    let (addr, _) = peer(PeerOpts {
        tls: Some(acceptor()),
        features: vec!["AUTH PLAIN"],
        auth: Some("nope"),
        ..PeerOpts::default()
    })
    .await;
    let mut s = settings(TlsPolicy::Required);
    s.auth = Some(("user".into(), "pass".into()));
    match SmtpConnection::connect(addr, s).await {
        Err(ClientError::Auth(r)) => assert_eq!(r.code, 535),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn required_tls_not_offered_and_unverifiable_certificate_fail() {
    let (addr, _) = peer(PeerOpts::default()).await;
    assert!(matches!(
        SmtpConnection::connect(addr, settings(TlsPolicy::Required)).await,
        Err(ClientError::Tls(_))
    ));
    // A self-signed certificate does not pass verification.
    let (addr, _) = peer(PeerOpts {
        tls: Some(acceptor()),
        ..PeerOpts::default()
    })
    .await;
    let mut s = settings(TlsPolicy::Required);
    s.verify_certificate = true;
    assert!(matches!(
        SmtpConnection::connect(addr, s).await,
        Err(ClientError::Tls(_))
    ));
    // Credentials are never sent without TLS.
    let (addr, log) = peer(PeerOpts {
        features: vec!["AUTH PLAIN"],
        ..PeerOpts::default()
    })
    .await;
    let mut s = settings(TlsPolicy::Opportunistic);
    s.auth = Some(("user".into(), "pass".into()));
    assert!(matches!(
        SmtpConnection::connect(addr, s).await,
        Err(ClientError::Tls(_))
    ));
    assert!(!log.lock().unwrap().iter().any(|l| l.starts_with("AUTH")));
}

#[tokio::test]
async fn slow_peer_times_out() {
    let (addr, _) = peer(PeerOpts {
        greeting_delay: Some(Duration::from_secs(5)),
        ..PeerOpts::default()
    })
    .await;
    let mut s = settings(TlsPolicy::Opportunistic);
    s.timeouts = Timeouts::uniform(Duration::from_millis(300));
    match SmtpConnection::connect(addr, s.clone()).await {
        Err(e @ ClientError::Timeout("greeting")) => assert_eq!(e.as_reply().status(), "4.4.2"),
        other => panic!("{other:?}"),
    }
    let (addr, _) = peer(PeerOpts {
        data_delay: Some(Duration::from_secs(5)),
        ..PeerOpts::default()
    })
    .await;
    let mut c = SmtpConnection::connect(addr, s).await.unwrap();
    let env = envelope(&["ok@x.test"]);
    match c.send(&env, &[&env.recipients[0]], MSG).await {
        Err(ClientError::Timeout("end of data")) => {}
        other => panic!("{other:?}"),
    }
}

/// A peer that keeps the exact bytes of every message it receives: DATA
/// with the RFC 5321 §4.5.2 transparency undone, or the BDAT chunks
/// (RFC 3030) as they came. It offers CHUNKING and STARTTLS as asked.
async fn exact_peer(
    chunking: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let mut r: BufReader<Box<dyn Io>> = BufReader::new(Box::new(sock));
        r.get_mut().write_all(b"220 exact ESMTP\r\n").await.unwrap();
        let mut tls_done = false;
        let mut chunks = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line).await.unwrap() == 0 {
                return;
            }
            let up = String::from_utf8_lossy(&line).to_ascii_uppercase();
            let reply: &[u8] = if up.starts_with("EHLO") {
                let mut s = String::from("250-exact\r\n250-PIPELINING\r\n250-8BITMIME\r\n");
                if chunking {
                    s.push_str("250-CHUNKING\r\n");
                }
                if tls.is_some() && !tls_done {
                    s.push_str("250-STARTTLS\r\n");
                }
                s.push_str("250 HELP\r\n");
                r.get_mut().write_all(s.as_bytes()).await.unwrap();
                continue;
            } else if up.starts_with("STARTTLS") {
                r.get_mut().write_all(b"220 2.0.0 go\r\n").await.unwrap();
                let stream = r.into_inner();
                let secured = tls.clone().unwrap().accept(stream).await.unwrap();
                r = BufReader::new(Box::new(secured));
                tls_done = true;
                continue;
            } else if up.starts_with("DATA") {
                r.get_mut().write_all(b"354 go\r\n").await.unwrap();
                let mut message = Vec::new();
                loop {
                    line.clear();
                    assert!(r.read_until(b'\n', &mut line).await.unwrap() > 0);
                    if line == b".\r\n" {
                        break;
                    }
                    let unstuffed = if line.starts_with(b".") {
                        &line[1..]
                    } else {
                        &line[..]
                    };
                    message.extend_from_slice(unstuffed);
                }
                tx.send(message).unwrap();
                b"250 2.0.0 data ok\r\n"
            } else if up.starts_with("BDAT") {
                let mut words = up.split_whitespace().skip(1);
                let n: usize = words.next().unwrap().parse().unwrap();
                let mut chunk = vec![0u8; n];
                r.read_exact(&mut chunk).await.unwrap();
                chunks.extend_from_slice(&chunk);
                if words.next() == Some("LAST") {
                    tx.send(std::mem::take(&mut chunks)).unwrap();
                }
                b"250 2.0.0 chunk ok\r\n"
            } else if up.starts_with("QUIT") {
                r.get_mut().write_all(b"221 bye\r\n").await.unwrap();
                return;
            } else {
                b"250 ok\r\n"
            };
            r.get_mut().write_all(reply).await.unwrap();
        }
    });
    (addr, rx)
}

/// A message of `size` bytes: base64-like runs (an attachment), 8-bit
/// text, lines starting with `.` and `..`, lone `.` lines (every 997
/// lines, and at the start), and a CRLF at the end when `crlf_end`.
fn big_message(size: usize, crlf_end: bool) -> Vec<u8> {
    let mut out = b"Subject: big\r\n\r\n.\r\n..\r\n.x\r\n".to_vec();
    let mut n = 0u64;
    while out.len() < size {
        n += 1;
        match n % 997 {
            0 => out.extend_from_slice(b".\r\n"),
            1 => out.extend_from_slice(".ligne accentu\u{e9}e \u{4e2d}\u{6587}\r\n".as_bytes()),
            _ => {
                let c = b'A' + (n % 26) as u8;
                out.extend(std::iter::repeat_n(c, 76));
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    // The last line is cut short and padded, never left with half a CRLF.
    let text_end = if crlf_end { size - 2 } else { size };
    out.truncate(text_end);
    while matches!(out.last(), Some(b'\r' | b'\n')) {
        out.pop();
    }
    out.resize(text_end, b'z');
    if crlf_end {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Messages larger than the client's 64 KiB write pieces and the peer's
/// reads reach the peer byte for byte over DATA and BDAT, in plain text
/// and after STARTTLS, several on one connection.
#[tokio::test]
async fn multi_mib_messages_arrive_byte_exact_over_data_and_bdat() {
    const KIB: usize = 1024;
    let messages: Vec<Vec<u8>> = [64 * KIB - 1, 64 * KIB, 64 * KIB + 1, 3 * 1024 * KIB + 7]
        .into_iter()
        .map(|size| big_message(size, true))
        .chain([big_message(1024 * KIB, false)])
        .collect();
    for m in &messages {
        assert_eq!(m.ends_with(b"\r\n"), m.len() != 1024 * KIB);
        assert!(
            !m.windows(2).any(|w| (w[0] == b'\r') != (w[1] == b'\n')),
            "bare CR or LF"
        );
    }
    for chunking in [false, true] {
        for tls in [None, Some(acceptor())] {
            let what = format!("chunking {chunking}, tls {}", tls.is_some());
            let with_tls = tls.is_some();
            let (addr, mut received) = exact_peer(chunking, tls).await;
            let mut c = SmtpConnection::connect(addr, settings(TlsPolicy::Opportunistic))
                .await
                .unwrap();
            assert_eq!(c.is_tls(), with_tls, "{what}");
            let env = envelope(&["ok@x.test"]);
            for m in &messages {
                let out = c.send(&env, &[&env.recipients[0]], m).await.unwrap();
                assert!(
                    matches!(&out[0], RcptOutcome::Delivered(_)),
                    "{what}: {out:?}"
                );
                let got = received.recv().await.unwrap();
                // The client completes a last line without CRLF (RFC 5321
                // §4.1.1.4); nothing else changes.
                let mut want = m.clone();
                if !want.ends_with(b"\r\n") {
                    want.extend_from_slice(b"\r\n");
                }
                assert!(
                    got == want,
                    "{what}: {} bytes sent, {} received, first difference at {:?}",
                    want.len(),
                    got.len(),
                    got.iter().zip(&want).position(|(a, b)| a != b)
                );
            }
            c.quit().await;
        }
    }
}

#[test]
fn reply_fuzz_entry_survives_odd_input() {
    for input in [
        &b"\x05250-a\r\n250 b\r\n"[..],
        b"\x00220 ok\r\n250-PIPELINING\r\n250-SIZE x\r\n250 AUTH\r\n",
        b"\xff\xfe999 x\r\n",
        b"\x03550",
        b"",
    ] {
        umail_smtp::client::reply::fuzz_reply(input);
    }
}
