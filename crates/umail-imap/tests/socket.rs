//! Socket-level tests: the tokio driver on 127.0.0.1:0 with in-memory
//! services and a self-signed certificate, driven by Python's `imaplib`,
//! `mbsync` and a raw client that reads multi-MiB FETCH literals.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use umail_core::config::ImapConfig;
use umail_core::net::shutdown_channel;
use umail_core::{ConnectionInfo, Shutdown};
use umail_imap::{ImapServer, ListenerMode};

fn acceptor() -> tokio_rustls::TlsAcceptor {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn start(env: &common::Env, config: ImapConfig, shutdown: Shutdown) -> SocketAddr {
    let server = ImapServer::new(env.services.clone(), config, Some(acceptor()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut id = 0;
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            id += 1;
            let server = server.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let info = ConnectionInfo {
                    session_id: id,
                    peer,
                    local: addr,
                    listener: "imap".into(),
                };
                server
                    .serve_connection(stream, info, ListenerMode::Imap, shutdown)
                    .await;
            });
        }
    });
    addr
}

const SCRIPT: &str = r#"
import imaplib, ssl, sys
imaplib.Commands['MOVE'] = ('SELECTED',)
port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

def conn():
    m = imaplib.IMAP4("127.0.0.1", port)
    assert "LOGINDISABLED" in m.capabilities, m.capabilities
    m.starttls(ssl_context=ctx)
    assert "AUTH=PLAIN" in m.capabilities, m.capabilities
    typ, _ = m.login("alice@example.com", "secret")
    assert typ == "OK"
    return m

a = conn()
typ, data = a.select("INBOX")
assert typ == "OK" and data == [b"0"], data
msg = b"From: Bob <bob@example.org>\r\nSubject: hello imaplib\r\n\r\nbody text\r\n"
typ, data = a.append("INBOX", r"(\Flagged)", None, msg)
assert typ == "OK" and b"APPENDUID" in data[0], data
typ, data = a.fetch("1", "(FLAGS BODY.PEEK[])")
assert typ == "OK", data
assert data[0][1] == msg, data
assert b"\\Flagged" in data[0][0], data
typ, data = a.store("1", "+FLAGS", r"(\Seen)")
assert typ == "OK" and b"\\Seen" in data[0], data
typ, data = a.search(None, "SUBJECT", '"hello imaplib"', "SEEN")
assert data == [b"1"], data
typ, data = a.search("UTF-8", "BODY", "text")
assert data == [b"1"], data
typ, data = a.copy("1", "Archive")
assert typ == "OK", data
typ, data = a.status("Archive", "(MESSAGES)")
assert b"MESSAGES 1" in data[0], data
typ, data = a._simple_command("MOVE", "1", "Trash")
assert typ == "OK", data
typ, data = a.status("Trash", "(MESSAGES)")
assert b"MESSAGES 1" in data[0], data
a.append("INBOX", None, None, b"Subject: two\r\n\r\n2\r\n")
a.append("INBOX", None, None, b"Subject: three\r\n\r\n3\r\n")
typ, data = a.search(None, "ALL")
assert data == [b"1 2"], data
# SORT and THREAD are advertised only after login: refresh imaplib's list.
a._get_capabilities()
assert "SORT" in a.capabilities and "THREAD=REFERENCES" in a.capabilities, a.capabilities
typ, data = a.sort("(SUBJECT)", "UTF-8", "ALL")
assert typ == "OK" and data == [b"2 1"], data
typ, data = a.thread("REFERENCES", "UTF-8", "ALL")
assert typ == "OK" and data == [b"(1)(2)"], data
a.store("1", "+FLAGS.SILENT", r"(\Deleted)")
typ, data = a.expunge()
# imaplib also kept the EXPUNGE that MOVE sent.
assert typ == "OK" and data == [b"1", b"1"], data
typ, data = a.uid("FETCH", "1:*", "(UID BODYSTRUCTURE)")
assert typ == "OK" and b'BODYSTRUCTURE ("TEXT" "PLAIN"' in data[0], data

# IDLE in one session sees another session's APPEND.
b = conn()
b.select("INBOX")
tag = b._new_tag().decode()
b.send(("%s IDLE\r\n" % tag).encode())
line = b.readline()
assert line.startswith(b"+"), line
c = conn()
c.append("INBOX", None, None, b"Subject: pushed\r\n\r\nnew\r\n")
c.logout()
line = b.readline()
assert line == b"* 2 EXISTS\r\n", line
b.send(b"DONE\r\n")
line = b.readline()
assert line.startswith(tag.encode() + b" OK"), line
typ, data = b.logout()
assert typ == "BYE", (typ, data)
a.logout()
print("imaplib ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_imaplib_session() {
    let env = common::env();
    let addr = start(&env, ImapConfig::default(), Shutdown::never()).await;
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(addr.port().to_string())
            .output()
    })
    .await
    .expect("join")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("imaplib ok"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}

#[tokio::test]
async fn starttls_discards_pipelined_commands_and_shutdown_says_bye() {
    let env = common::env();
    let (trigger, shutdown) = shutdown_channel();
    let addr = start(&env, ImapConfig::default(), shutdown).await;
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).await.expect("greeting");
    assert!(
        line.starts_with("* OK [CAPABILITY IMAP4rev1 IMAP4rev2 STARTTLS"),
        "{line}"
    );
    // A command pipelined after STARTTLS must never run (RFC 9051 §6.2.1).
    r.get_mut()
        .write_all(b"a STARTTLS\r\nb LOGIN alice@example.com secret\r\n")
        .await
        .expect("write");
    line.clear();
    r.read_line(&mut line).await.expect("starttls reply");
    assert_eq!(line, "a OK Begin TLS negotiation now\r\n");
    // The server now expects a TLS ClientHello; the plaintext "b LOGIN" was
    // discarded, so no tagged reply to it ever arrives in clear text.
    let stream = r.into_inner();
    let mut client = tokio::time::timeout(std::time::Duration::from_secs(30), tls_connect(stream))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let mut tr = BufReader::new(&mut client);
    tr.get_mut().write_all(b"c NOOP\r\n").await.expect("write");
    line.clear();
    tr.read_line(&mut line).await.expect("noop");
    assert_eq!(line, "c OK completed\r\n");
    trigger.trigger();
    line.clear();
    tr.read_line(&mut line).await.expect("bye");
    assert_eq!(line, "* BYE Server shutting down\r\n");
}

#[tokio::test]
async fn refused_connection_gets_bye() {
    let env = common::env();
    let server = ImapServer::new(env.services.clone(), ImapConfig::default(), None);
    let mut buf = Vec::new();
    server
        .refuse_connection(&mut buf, umail_core::net::LimitExceeded::PerIp)
        .await;
    assert_eq!(buf, b"* BYE too many sessions from this address\r\n");
}

#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn tls_connect(
    stream: tokio::net::TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(NoVerify))
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name =
        rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    connector.connect(name, stream).await
}

/// `mbsync` (isync) round trip with hundreds of messages: push a Maildir
/// to the server, change flags on the server, pull into a fresh Maildir.
/// CI must install the `isync` package.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbsync_round_trip_hundreds_of_messages() {
    use umail_core::MailStore;
    const N: usize = 300;
    let have = std::process::Command::new("mbsync")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(have, "mbsync not found: install the Debian package isync");
    let env = common::env();
    let config = ImapConfig {
        plaintext_auth_without_tls: true,
        ..ImapConfig::default()
    };
    let addr = start(&env, config, Shutdown::never()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let write_config = |maildir: &str| {
        let cfg = format!(
            "IMAPAccount test\nHost 127.0.0.1\nPort {port}\nUser alice@example.com\nPass secret\nSSLType None\nAuthMechs LOGIN\n\n\
             IMAPStore remote\nAccount test\n\n\
             MaildirStore local\nPath {root}/{maildir}/\nInbox {root}/{maildir}/INBOX\n\n\
             Channel sync\nFar :remote:\nNear :local:\nPatterns INBOX\nCreate Both\nExpunge Both\nSyncState *\n",
            port = addr.port(),
            root = root.display(),
        );
        let path = root.join(format!("{maildir}.rc"));
        std::fs::write(&path, cfg).expect("write config");
        path
    };
    // A Maildir with N messages.
    let inbox = root.join("first/INBOX");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(inbox.join(sub)).expect("maildir");
    }
    for i in 0..N {
        let msg = format!(
            "From: sender{i}@example.org\r\nTo: alice@example.com\r\nSubject: message {i}\r\nMessage-ID: <m{i}@example.org>\r\n\r\nbody {i}\r\n"
        );
        let flags = if i % 3 == 0 { "S" } else { "" };
        std::fs::write(inbox.join("cur").join(format!("{i}.umail:2,{flags}")), msg)
            .expect("write message");
    }
    let run = |cfg: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("mbsync")
                .arg("-c")
                .arg(&cfg)
                .arg("-a")
                .output()
        })
        .await
        .expect("join")
        .expect("mbsync runs")
    };
    let out = run(write_config("first")).await;
    assert!(
        out.status.success(),
        "push failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let store = env.store.clone();
    let inbox_info = store
        .mailbox("alice@example.com", "INBOX")
        .await
        .expect("store")
        .expect("inbox");
    let msgs = store
        .messages("alice@example.com", inbox_info.id)
        .await
        .expect("messages");
    assert_eq!(msgs.len(), N);
    let seen = msgs
        .iter()
        .filter(|m| m.flags.contains(&umail_core::Flag::Seen))
        .count();
    assert_eq!(seen, N.div_ceil(3));
    // Flag ten messages on the server, then pull everything into a fresh Maildir.
    let uids: Vec<u32> = msgs.iter().take(10).map(|m| m.uid).collect();
    let mut flagged = umail_core::Flags::new();
    flagged.insert(umail_core::Flag::Flagged);
    store
        .update_flags(
            "alice@example.com",
            inbox_info.id,
            &uids,
            umail_core::FlagOp::Add,
            &flagged,
            None,
        )
        .await
        .expect("flags");
    std::fs::create_dir_all(root.join("second")).expect("second maildir root");
    let out = run(write_config("second")).await;
    assert!(
        out.status.success(),
        "pull failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files = Vec::new();
    for sub in ["cur", "new"] {
        if let Ok(rd) = std::fs::read_dir(root.join("second/INBOX").join(sub)) {
            files.extend(
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    assert_eq!(files.len(), N);
    let flagged_files = files
        .iter()
        .filter(|f| f.rsplit_once(":2,").is_some_and(|(_, fl)| fl.contains('F')))
        .count();
    assert_eq!(flagged_files, 10);
}

/// Reads one response (its line and every literal it carries). Returns
/// the text with the literals' bytes left out, and the literals.
async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> (String, Vec<Vec<u8>>) {
    use tokio::io::AsyncReadExt;
    let mut text = Vec::new();
    let mut literals = Vec::new();
    loop {
        let mut line = Vec::new();
        assert!(
            r.read_until(b'\n', &mut line).await.expect("read") > 0,
            "closed"
        );
        text.extend_from_slice(&line);
        // RFC 9051 §4.3: a literal is announced by {n} at the end of a line.
        let size = line.strip_suffix(b"}\r\n").and_then(|head| {
            let open = head.iter().rposition(|b| *b == b'{')?;
            std::str::from_utf8(&head[open + 1..])
                .ok()?
                .parse::<usize>()
                .ok()
        });
        let Some(size) = size else {
            return (String::from_utf8_lossy(&text).into_owned(), literals);
        };
        let mut literal = vec![0u8; size];
        r.read_exact(&mut literal).await.expect("literal");
        literals.push(literal);
    }
}

/// Sends `command` tagged `tag` and reads up to its tagged reply: the
/// untagged responses' texts and literals, and the tagged line.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    r: &mut BufReader<S>,
    tag: &str,
    command: &str,
) -> (Vec<String>, Vec<Vec<u8>>, String) {
    r.get_mut()
        .write_all(format!("{tag} {command}\r\n").as_bytes())
        .await
        .expect("write");
    let (mut texts, mut literals) = (Vec::new(), Vec::new());
    loop {
        let (text, mut l) = read_response(r).await;
        if text.starts_with(&format!("{tag} ")) {
            return (texts, literals, text);
        }
        texts.push(text);
        literals.append(&mut l);
    }
}

/// FETCH of multi-MiB messages (each one larger than every buffer of the
/// driver, and several in one response) gives each message byte for byte
/// after its literal header, before the tagged OK, in plain text and
/// after STARTTLS; partial fetches give exactly the slice asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_of_multi_mib_messages_is_byte_exact() {
    use umail_core::MailStore;
    let env = common::env();
    let mut messages = Vec::new();
    for (i, size) in [1024 * 1024, 5 * 1024 * 1024 + 3, 17 * 1024 * 1024 + 1]
        .into_iter()
        .enumerate()
    {
        // Text that looks like protocol (a literal header, a tagged OK, a
        // closing parenthesis) and 8-bit bytes, in long runs.
        let mut m = format!("Subject: big {i}\r\n\r\n").into_bytes();
        let mut n = 0u32;
        while m.len() < size {
            n += 1;
            match n % 499 {
                0 => m.extend_from_slice(b"{12}\r\n"),
                1 => m.extend_from_slice(b"a1 OK FETCH completed)\r\n"),
                2 => m.extend_from_slice("\u{4e2d}\u{6587} caf\u{e9}\r\n".as_bytes()),
                _ => {
                    m.extend(std::iter::repeat_n(b'a' + (n % 26) as u8, 76));
                    m.extend_from_slice(b"\r\n");
                }
            }
        }
        m.truncate(size);
        env.store
            .append(
                "alice@example.com",
                "INBOX",
                bytes::Bytes::from(m.clone()),
                Default::default(),
                0,
            )
            .await
            .expect("append");
        messages.push(m);
    }
    let config = ImapConfig {
        plaintext_auth_without_tls: true,
        ..ImapConfig::default()
    };
    let addr = start(&env, config, Shutdown::never()).await;
    for starttls in [false, true] {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut plain = BufReader::new(stream);
        let (_, _) = read_response(&mut plain).await;
        let stream: Box<dyn Stream> = if starttls {
            let (_, _, ok) = exchange(&mut plain, "s", "STARTTLS").await;
            assert!(ok.starts_with("s OK"), "{ok}");
            Box::new(tls_connect(plain.into_inner()).await.expect("handshake"))
        } else {
            Box::new(plain.into_inner())
        };
        let mut r = BufReader::new(stream);
        let (_, _, ok) = exchange(&mut r, "l", "LOGIN alice@example.com secret").await;
        assert!(ok.starts_with("l OK"), "{ok}");
        let (_, _, ok) = exchange(&mut r, "s", "SELECT INBOX").await;
        assert!(ok.starts_with("s OK"), "{ok}");

        let (texts, literals, ok) = exchange(&mut r, "a1", "FETCH 1:3 (UID BODY.PEEK[])").await;
        assert!(ok.starts_with("a1 OK"), "{ok}");
        assert_eq!(literals.len(), 3, "{texts:?}");
        for (i, (got, want)) in literals.iter().zip(&messages).enumerate() {
            assert!(
                got == want,
                "starttls {starttls}, message {}: {} bytes, want {}",
                i + 1,
                got.len(),
                want.len()
            );
            let text = &texts[i];
            assert!(
                text.starts_with(&format!(
                    "* {} FETCH (UID {} BODY[] {{{}}}\r\n",
                    i + 1,
                    i + 1,
                    want.len()
                )) && text.ends_with(")\r\n"),
                "{text:.200}"
            );
        }

        let (texts, literals, ok) =
            exchange(&mut r, "a2", "FETCH 3 (BODY.PEEK[]<1000.9000000>)").await;
        assert!(ok.starts_with("a2 OK"), "{ok}");
        assert_eq!(literals.len(), 1, "{texts:?}");
        assert!(literals[0] == messages[2][1000..9_001_000], "partial fetch");
        assert!(
            texts[0].starts_with("* 3 FETCH (BODY[]<1000> {9000000}\r\n"),
            "{:.100}",
            texts[0]
        );

        // The session is still in step.
        let (_, _, ok) = exchange(&mut r, "n", "NOOP").await;
        assert!(ok.starts_with("n OK"), "{ok}");
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}
