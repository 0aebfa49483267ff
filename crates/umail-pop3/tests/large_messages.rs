//! Byte-exact retrieval of messages on both sides of every output buffer
//! size (0 B, 1 B, 16 KiB − 1, 16 KiB, 16 KiB + 1, 1 MiB, 25 MiB) through
//! `RETR`, `TOP n 0` and `TOP n N`, over plain POP3, `STLS` and implicit
//! TLS, read by a raw client that checks every byte and by Python's
//! `poplib`. A message's status line must come first, its body must be the
//! delivered message with RFC 1939 §3 byte-stuffing undone, and the next
//! response must follow the terminator.

mod common;

use std::io::Write;

use common::{ALICE, Fixture, connect};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use umail_core::config::Pop3Config;

const KIB: usize = 1024;
const SIZES: [usize; 7] = [
    0,
    1,
    16 * KIB - 1,
    16 * KIB,
    16 * KIB + 1,
    1024 * KIB,
    25 * 1024 * KIB,
];
/// Body lines asked for with `TOP n N`.
const TOP_LINES: usize = 7;

/// A message of exactly `size` bytes: a header, then lines of varied
/// length with long unchanged runs (so the encoder hands out full pieces,
/// as it does for a base64 attachment),
/// lines starting with `.` (one of them a lone `.`, which would end the
/// response if not stuffed), bare-LF line ends, and a last line without a
/// line end.
fn message(size: usize) -> Vec<u8> {
    if size <= 1 {
        return b"x"[..size].to_vec();
    }
    let mut out = format!("Subject: size {size}\r\nX-Filler: yes\r\n\r\n").into_bytes();
    let mut n = 0usize;
    while out.len() < size {
        n += 1;
        // The special lines come early (so small messages have them) and
        // then every 1009 lines, leaving runs longer than any piece.
        let line = match n % 1009 {
            0 | 5 => ".\r\n".to_string(),
            1 => format!("..two dots {n}\r\n"),
            2 => format!(".one dot {n}\r\n"),
            3 => format!("bare lf {n}\n"),
            _ => format!("line {n} {}\r\n", "abcdefghij".repeat(n % 31)),
        };
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(size);
    // The last line has no line end, and no half of one.
    let last = out.len() - 1;
    out[last] = b'z';
    out
}

/// The message's lines without their line ends (CRLF or bare LF).
fn lines(message: &[u8]) -> Vec<&[u8]> {
    if message.is_empty() {
        return Vec::new();
    }
    let body = message.strip_suffix(b"\n").unwrap_or(message);
    body.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect()
}

/// What a client must read for `RETR` (`top: None`) or `TOP n top`, once
/// the stuffing is undone: every line CRLF-terminated.
fn expected(message: &[u8], top: Option<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut in_header = true;
    let mut body_left = top;
    for line in lines(message) {
        if !in_header {
            match body_left.as_mut() {
                Some(0) => break,
                Some(n) => *n -= 1,
                None => {}
            }
        }
        if in_header && line.is_empty() {
            in_header = false;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

#[derive(Debug, Clone, Copy)]
enum Transport {
    Plain,
    Stls,
    ImplicitTls,
}

const TRANSPORTS: [Transport; 3] = [Transport::Plain, Transport::Stls, Transport::ImplicitTls];

struct Client {
    r: BufReader<Box<dyn Stream>>,
}

impl Client {
    async fn open(f: &Fixture, transport: Transport) -> Client {
        let stream: Box<dyn Stream> = match transport {
            Transport::Plain => Box::new(connect(f.pop3).await),
            Transport::Stls => {
                let mut r = BufReader::new(connect(f.pop3).await);
                assert!(line(&mut r).await.starts_with(b"+OK"));
                r.get_mut().write_all(b"STLS\r\n").await.unwrap();
                assert!(line(&mut r).await.starts_with(b"+OK"));
                let tls = f
                    .tls_connector()
                    .connect(Fixture::server_name(), r.into_inner())
                    .await
                    .expect("STLS handshake");
                Box::new(tls)
            }
            Transport::ImplicitTls => Box::new(
                f.tls_connector()
                    .connect(Fixture::server_name(), connect(f.pop3s).await)
                    .await
                    .expect("TLS handshake"),
            ),
        };
        let mut c = Client {
            r: BufReader::new(stream),
        };
        if !matches!(transport, Transport::Stls) {
            assert!(line(&mut c.r).await.starts_with(b"+OK"), "greeting");
        }
        c.command(&format!("USER {ALICE}")).await;
        c.command("PASS secret").await;
        c
    }

    async fn command(&mut self, cmd: &str) -> String {
        self.r
            .get_mut()
            .write_all(format!("{cmd}\r\n").as_bytes())
            .await
            .unwrap();
        let status = line(&mut self.r).await;
        let status = String::from_utf8(status).expect("status line is text");
        assert!(status.starts_with("+OK"), "{cmd}: {status:?}");
        status
    }

    /// A multi-line response body with the stuffing undone.
    async fn body(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let l = line(&mut self.r).await;
            assert!(l.ends_with(b"\r\n"), "line without CRLF in a response");
            if l == b".\r\n" {
                return out;
            }
            // RFC 1939 §3: a line starting with '.' arrives with one more.
            if l[0] == b'.' {
                assert_eq!(l[1], b'.', "unstuffed line starting with '.'");
                out.extend_from_slice(&l[1..]);
            } else {
                out.extend_from_slice(&l);
            }
        }
    }
}

async fn line<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Vec<u8> {
    let mut l = Vec::new();
    r.read_until(b'\n', &mut l).await.expect("read");
    assert!(!l.is_empty(), "connection closed");
    l
}

async fn fixture_with_every_size() -> (Fixture, Vec<Vec<u8>>) {
    let f = Fixture::start(Pop3Config {
        plaintext_auth_without_tls: true,
        ..Pop3Config::default()
    })
    .await;
    let messages: Vec<Vec<u8>> = SIZES.iter().map(|s| message(*s)).collect();
    for m in &messages {
        f.deliver(m).await;
    }
    (f, messages)
}

#[tokio::test]
async fn raw_client_reads_every_size_byte_exact_on_every_transport() {
    let (f, messages) = fixture_with_every_size().await;
    for transport in TRANSPORTS {
        let mut c = Client::open(&f, transport).await;
        for (i, m) in messages.iter().enumerate() {
            let n = i + 1;
            let what = format!("{transport:?} message {n} ({} bytes)", m.len());
            let status = c.command(&format!("RETR {n}")).await;
            // The status line comes first and announces the stored size.
            assert_eq!(status, format!("+OK {} octets\r\n", m.len()), "{what}");
            let got = c.body().await;
            assert!(got == expected(m, None), "{what}: RETR body differs");
            for top in [0, TOP_LINES] {
                c.command(&format!("TOP {n} {top}")).await;
                let got = c.body().await;
                assert!(
                    got == expected(m, Some(top)),
                    "{what}: TOP {top} body differs"
                );
            }
        }
        // The connection is still in step after the largest message.
        let status = c.command("STAT").await;
        let total: usize = messages.iter().map(Vec::len).sum();
        assert_eq!(status, format!("+OK {} {total}\r\n", messages.len()));
        c.command("QUIT").await;
        let mut rest = Vec::new();
        c.r.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "bytes after QUIT: {rest:?}");
    }
}

#[tokio::test]
async fn poplib_reads_every_size_on_every_transport() {
    let (f, messages) = fixture_with_every_size().await;
    let mut digests = String::new();
    for m in &messages {
        for top in [None, Some(0), Some(TOP_LINES)] {
            digests.push_str(&hex(&Sha256::digest(expected(m, top))));
            digests.push(' ');
        }
        digests.push('\n');
    }
    let mut expected_file = tempfile::NamedTempFile::new().unwrap();
    expected_file.write_all(digests.as_bytes()).unwrap();
    let script = format!(
        r#"
import hashlib, poplib, ssl, sys
host, port, ca, pop3s, expected = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
want = [l.split() for l in open(expected).read().splitlines()]
sizes = {sizes:?}
def digest(lines):
    return hashlib.sha256(b"".join(l + b"\r\n" for l in lines)).hexdigest()
for transport in ("plain", "stls", "ssl"):
    if transport == "ssl":
        p = poplib.POP3_SSL(host, pop3s, context=ctx, timeout=120)
    else:
        p = poplib.POP3(host, port, timeout=120)
        if transport == "stls":
            p.stls(ctx)
    p.user("{ALICE}"); p.pass_("secret")
    count, total = p.stat()
    assert count == len(sizes) and total == sum(sizes), (count, total)
    for n in range(1, count + 1):
        resp, lines, octets = p.retr(n)
        assert resp == b"+OK %d octets" % sizes[n - 1], (transport, n, resp)
        assert digest(lines) == want[n - 1][0], (transport, n, "RETR")
        for k, top in ((1, 0), (2, {TOP_LINES})):
            resp, lines, octets = p.top(n, top)
            assert resp.startswith(b"+OK"), resp
            assert digest(lines) == want[n - 1][k], (transport, n, "TOP", top)
    print(transport, p.quit().decode())
"#,
        sizes = SIZES,
    );
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg("127.0.0.1")
        .arg(f.pop3.port().to_string())
        .arg(f.ca_file.path())
        .arg(f.pop3s.port().to_string())
        .arg(expected_file.path())
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "poplib failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let transports: Vec<&str> = stdout
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(transports, ["plain", "stls", "ssl"], "{stdout}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn expected_form_follows_rfc_1939() {
    let m = b"A: 1\nB: 2\r\n\r\nl1\n.l2\r\nl3";
    assert_eq!(
        expected(m, None),
        b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\nl3\r\n"
    );
    assert_eq!(expected(m, Some(0)), b"A: 1\r\nB: 2\r\n\r\n");
    assert_eq!(expected(m, Some(2)), b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\n");
    assert_eq!(expected(b"", None), b"");
    assert_eq!(expected(b"x", Some(0)), b"x\r\n");
    for size in SIZES {
        assert_eq!(message(size).len(), size);
    }
}

/// The crate's own client (collection and `umail import pop3`) against the
/// server: `RETR` and `TOP` of every size on every transport give the
/// RFC 1939 form of the stored message, and the size bound of `retr` is
/// exact (the message fits a bound of its own length, not one less).
#[tokio::test]
async fn pop3_client_reads_every_size_on_every_transport() {
    use umail_pop3::client::{
        ClientError, ConnectOptions, LoginMethod, Pop3Client, Secret, Security,
    };
    let (f, messages) = fixture_with_every_size().await;
    for security in [Security::None, Security::StartTls, Security::Implicit] {
        let port = match security {
            Security::Implicit => f.pop3s.port(),
            _ => f.pop3.port(),
        };
        let options = ConnectOptions::new("localhost", port, security, Some(f.tls_connector()));
        let mut c = Pop3Client::connect(&options).await.expect("connect");
        c.login(ALICE, &Secret::new("secret"), LoginMethod::Password, true)
            .await
            .expect("login");
        let listing = c.list().await.expect("LIST");
        for (i, m) in messages.iter().enumerate() {
            let n = i as u32 + 1;
            let what = format!("{security:?} message {n} ({} bytes)", m.len());
            assert_eq!(listing[i], (n, m.len() as u64), "{what}: LIST");
            let want = expected(m, None);
            let got = c.retr(n, want.len() as u64).await.expect("RETR");
            assert!(got == want, "{what}: RETR differs");
            for top in [0, TOP_LINES] {
                let got = c.top(n, top as u64, u64::MAX).await.expect("TOP");
                assert!(got == expected(m, Some(top)), "{what}: TOP {top} differs");
            }
        }
        // One byte under the bound is refused (and ends the session).
        let largest = messages.len() as u32;
        let want = expected(&messages[messages.len() - 1], None).len() as u64;
        let e = c.retr(largest, want - 1).await.unwrap_err();
        assert!(
            matches!(e, ClientError::TooLarge(b) if b == want - 1),
            "{e:?}"
        );
    }
}

/// The client's line reader across its buffer boundaries: a peer sends
/// the same responses in pieces of 1 byte up to 64 KiB, so CRLFs, stuffed
/// dots and terminators are split at every place, and lines of exactly
/// the client's longest line are accepted while one byte more is refused.
#[tokio::test]
async fn pop3_client_reassembles_responses_split_at_every_boundary() {
    use std::time::Duration;

    use umail_pop3::client::{ClientError, Pop3Client};
    use umail_pop3::codec::MessageEncoder;

    const MAX_LINE: usize = 4096;
    // A message with lines of 0, 1, MAX_LINE - 1 and MAX_LINE bytes, dot
    // starts, a lone dot and a last line without a line end.
    let mut m = b"Subject: split\r\n\r\n\r\n.\r\n..\r\n.x\r\n".to_vec();
    for len in [1, 1023, 1024, 1025, MAX_LINE - 1, MAX_LINE] {
        m.extend(std::iter::repeat_n(b'a', len));
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(&message(300 * KIB)[..]);
    let long_line = vec![b'b'; MAX_LINE + 1];
    let mut script = b"+OK ready\r\n".to_vec();
    script.extend_from_slice(format!("+OK {} octets\r\n", m.len()).as_bytes());
    script.extend(MessageEncoder::retr(bytes::Bytes::from(m.clone())).to_vec());
    script.extend_from_slice(b"+OK\r\n");
    script.extend_from_slice(&long_line);
    script.extend_from_slice(b"\r\n.\r\n");
    for piece in [1, 2, 3, 1023, 1024, 1025, 4095, 4096, 4097, 64 * KIB] {
        let (client_end, mut peer) = tokio::io::duplex(piece.max(64));
        let script = script.clone();
        let peer_task = tokio::spawn(async move {
            for chunk in script.chunks(piece) {
                if peer.write_all(chunk).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            // Keep the pipe open until the client is done reading.
            let mut sink = Vec::new();
            let _ = peer.read_to_end(&mut sink).await;
        });
        let mut c = Pop3Client::over(
            Box::new(client_end),
            Duration::from_secs(30),
            MAX_LINE,
            false,
        )
        .await
        .expect("greeting");
        let got = c.retr(1, u64::MAX).await.expect("RETR");
        assert!(got == expected(&m, None), "piece {piece}: RETR differs");
        let e = c.retr(2, u64::MAX).await.unwrap_err();
        assert!(
            matches!(&e, ClientError::Protocol(t) if t == "line too long"),
            "piece {piece}: {e:?}"
        );
        drop(c);
        peer_task.await.unwrap();
    }
}
