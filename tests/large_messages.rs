//! Large messages end to end through the real `umail` binary (issue 20):
//! messages on both sides of the POP3 server's output buffer sizes
//! (1 B, 16 KiB − 1, 16 KiB, 16 KiB + 1, 1 MiB, 25 MiB) are delivered to
//! one server over SMTP and IMAP APPEND, read back over IMAP, and then
//! retrieved over POP3 by fetchmail and by `umail import pop3` into a second
//! server. Every copy is compared byte for byte (sizes and SHA-256 in the
//! failure report) with what the first server stored, in the form RFC 1939
//! gives it: CRLF line ends, byte-stuffing undone, a last line without a
//! line end completed.
//!
//! The bodies have what breaks a careless writer: a lone `.` line, lines
//! starting with `.` and `..`, a last line without CRLF, and long runs of
//! plain base64-like lines (as an attachment has), so the server's output
//! pieces reach full size.
//!
//! Also here: `umail bench pop3` verifies what it retrieves, and the admin
//! socket and HTTP API answer with responses far larger than any of their
//! buffers.

mod common;

use std::path::Path;
use std::process::Command;

use common::{TestServer, python, umail_cmd};
use sha2::{Digest, Sha256};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const OLD_PASSWORD: &str = "remote-Secret-4711";
const NEW_PASSWORD: &str = "correct-horse-battery";

/// How a case reaches the first server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// SMTP to the MX listener: the server prepends its trace headers, and
    /// SMTP itself completes a last line without CRLF.
    Smtp,
    /// IMAP APPEND: stored as given (bare LFs become CRLF), so the stored
    /// size is exact and the last line can stay without a line end.
    Append,
}

struct Case {
    name: String,
    via: Via,
    source: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for size in [16 * KIB - 1, 16 * KIB, 16 * KIB + 1, MIB, 25 * MIB] {
        out.push(Case::new(Via::Smtp, size, false));
    }
    for size in [1, 16 * KIB - 1, 16 * KIB, 16 * KIB + 1] {
        out.push(Case::new(Via::Append, size, false));
    }
    out.push(Case::new(Via::Append, MIB, true));
    out
}

impl Case {
    fn new(via: Via, size: usize, bare_lf: bool) -> Case {
        let name = format!(
            "{}-{size}{}",
            if via == Via::Smtp { "smtp" } else { "append" },
            if bare_lf { "-lf" } else { "" }
        );
        let source = if size == 1 {
            b"x".to_vec()
        } else {
            message(&name, size, bare_lf)
        };
        assert_eq!(source.len(), size);
        Case { name, via, source }
    }
}

/// A message of exactly `size` bytes: a header, a run of base64-like
/// lines (an attachment) that is longer than any output piece from the
/// start (so even the 16 KiB cases fill a whole piece), broken every 1009
/// lines by a lone `.` line or one starting with `.`, and at the end the
/// special lines: a lone `.`, `..` and `.` starts, a bare LF if asked, and
/// a last line without a line end.
fn message(name: &str, size: usize, bare_lf: bool) -> Vec<u8> {
    let mut out = format!(
        "From: sender@remote.example\r\nTo: carol@old.example\r\nSubject: {name}\r\n\
         Message-ID: <{name}@remote.example>\r\n\r\n"
    )
    .into_bytes();
    let tail = format!(
        ".\r\n..two dots\r\n.one dot\r\n{}.\r\nlast line without a line end",
        if bare_lf { "bare lf\n" } else { "" }
    );
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut seed = size as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut base64_line = |len: usize| -> Vec<u8> {
        let mut line: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                B64[(seed >> 58) as usize]
            })
            .collect();
        line.extend_from_slice(b"\r\n");
        line
    };
    let filler_end = size - tail.len();
    let mut n = 0usize;
    loop {
        let line = match n % 1009 {
            1007 => b".\r\n".to_vec(),
            1008 => format!(".dotted line {n}\r\n").into_bytes(),
            _ => base64_line(76),
        };
        // Leave room for one last filler line of at least one character.
        if out.len() + line.len() + 3 > filler_end {
            break;
        }
        out.extend_from_slice(&line);
        n += 1;
    }
    let last = base64_line(filler_end - out.len() - 2);
    out.extend_from_slice(&last);
    out.extend_from_slice(tail.as_bytes());
    out
}

/// Bare LFs become CRLF (what the store does to an APPENDed message).
fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 64);
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' && (i == 0 || bytes[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(*b);
    }
    out
}

/// What a POP3 client holds after `RETR` of `stored`, once the stuffing is
/// undone (RFC 1939 §3): every line ends in CRLF.
fn pop3_form(stored: &[u8]) -> Vec<u8> {
    let mut out = crlf(stored);
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `None` when equal, else a line with both sizes, both SHA-256 digests and
/// the first differing offset.
fn compare(what: &str, got: &[u8], want: &[u8]) -> Option<String> {
    if got == want {
        return None;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    Some(format!(
        "{what}: got {} bytes sha256 {}, want {} bytes sha256 {}; first difference at byte {at}",
        got.len(),
        hex(&Sha256::digest(got)),
        want.len(),
        hex(&Sha256::digest(want)),
    ))
}

const PY_PRELUDE: &str = r#"
import imaplib, os, smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
HOST = "127.0.0.1"

def imap(port, user, password):
    m = imaplib.IMAP4_SSL(HOST, port, ssl_context=ctx)
    m.login(user, password)
    return m
"#;

/// Delivers every file of `dir` (sorted by name; `.smtp` over SMTP, else
/// IMAP APPEND) to `carol@old.example` on `server`, in order.
fn deliver(server: &TestServer, dir: &Path) {
    python(
        &format!(
            r#"{PY_PRELUDE}
d = os.environ["CASES"]
s = smtplib.SMTP(HOST, int(os.environ["SMTP"]), timeout=300)
m = imap(int(os.environ["IMAPS"]), "carol@old.example", os.environ["PASSWORD"])
for name in sorted(os.listdir(d)):
    data = open(os.path.join(d, name), "rb").read()
    if name.endswith(".smtp"):
        refused = s.sendmail("sender@remote.example", ["carol@old.example"], data)
        assert not refused, refused
    else:
        typ, resp = m.append("INBOX", None, None, data)
        assert typ == "OK", (name, resp)
s.quit()
m.logout()
"#
        ),
        &[
            ("CASES", dir.display().to_string()),
            ("SMTP", server.port("smtp").to_string()),
            ("IMAPS", server.port("imaps").to_string()),
            ("PASSWORD", OLD_PASSWORD.to_string()),
        ],
    );
}

/// Every message of `user`'s INBOX on `server` as IMAP `BODY.PEEK[]` gives
/// it, in UID order.
fn inbox(server: &TestServer, user: &str, password: &str) -> Vec<Vec<u8>> {
    let out = tempfile::tempdir().expect("tempdir");
    python(
        &format!(
            r#"{PY_PRELUDE}
m = imap(int(os.environ["IMAPS"]), os.environ["ACCOUNT"], os.environ["PASSWORD"])
typ, data = m.select("INBOX", readonly=True)
assert typ == "OK", data
typ, data = m.uid("SEARCH", None, "ALL")
for i, uid in enumerate(data[0].split()):
    typ, data = m.uid("FETCH", uid, "(BODY.PEEK[])")
    assert typ == "OK" and isinstance(data[0], tuple), data
    open(os.path.join(os.environ["OUT"], "%05d" % i), "wb").write(data[0][1])
m.logout()
"#
        ),
        &[
            ("IMAPS", server.port("imaps").to_string()),
            ("ACCOUNT", user.to_string()),
            ("PASSWORD", password.to_string()),
            ("OUT", out.path().display().to_string()),
        ],
    );
    read_sorted(out.path())
}

/// The files of `dir`, sorted by name.
fn read_sorted(dir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read(p).expect("read file"))
        .collect()
}

/// A header field line or a continuation line (RFC 5322 §2.2).
fn is_header_line(line: &[u8]) -> bool {
    if line[0] == b' ' || line[0] == b'\t' {
        return true;
    }
    line.iter()
        .position(|b| *b == b':')
        .is_some_and(|colon| colon > 0 && line[..colon].iter().all(|b| (33..=126).contains(b)))
}

/// Removes the `Received` field fetchmail adds (after `Return-Path`, if
/// any); `None` when there is none.
fn strip_fetchmail_received(message: &[u8]) -> Option<Vec<u8>> {
    let mut lines: Vec<&[u8]> = message.split_inclusive(|b| *b == b'\n').collect();
    let start = lines
        .iter()
        .take(2)
        .position(|l| l.starts_with(b"Received: from 127.0.0.1 "))?;
    let mut end = start + 1;
    while end < lines.len() && matches!(lines[end].first(), Some(b' ' | b'\t')) {
        end += 1;
    }
    let field = lines[start..end].concat();
    if !field.windows(11).any(|w| w == b"(fetchmail-") {
        return None;
    }
    lines.drain(start..end);
    Some(lines.concat())
}

/// Retrieves carol's mailbox on `old` with fetchmail (implicit TLS,
/// messages kept on the server); one string per problem.
fn fetchmail(old: &TestServer, want: &[Vec<u8>], names: &[String]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let delivered = root.join("delivered");
    std::fs::create_dir(&delivered).unwrap();
    // The MDA keeps each message in its own file, numbered in order
    // (fetchmail runs it once per message, one at a time).
    let mda = root.join("mda.sh");
    std::fs::write(
        &mda,
        format!(
            "#!/bin/sh\nn=$(ls {d} | wc -l)\nexec cat > {d}/$(printf %05d \"$n\")\n",
            d = delivered.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&mda, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rc = root.join("fetchmailrc");
    // `no stripcr` keeps the CRs of CRLF, so every byte can be compared;
    // `no rewrite` leaves the address headers alone; `bad-header accept`
    // takes the 1-byte message, which has no header.
    std::fs::write(
        &rc,
        format!(
            "set no syslog\n\
             poll 127.0.0.1 with protocol POP3 port {port} bad-header accept\n\
             \tuser \"carol@old.example\" there with password \"{OLD_PASSWORD}\" is \"carol\" here\n\
             \tssl no sslcertck keep fetchall no rewrite no stripcr\n\
             \tmda \"{mda}\"\n",
            port = old.port("pop3s"),
            mda = mda.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new("fetchmail")
        .arg("-f")
        .arg(&rc)
        .arg("--idfile")
        .arg(root.join("fetchids"))
        .arg("--pidfile")
        .arg(root.join("fetchmail.pid"))
        .arg("--nosslcertck")
        .env("HOME", root)
        .output()
        .expect("run fetchmail");
    if !out.status.success() {
        return vec![format!(
            "fetchmail failed ({})\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )];
    }
    let got = read_sorted(&delivered);
    if got.len() != want.len() {
        return vec![format!(
            "fetchmail delivered {} messages, want {}",
            got.len(),
            want.len()
        )];
    }
    let mut problems = Vec::new();
    for ((got, want), name) in got.iter().zip(want).zip(names) {
        match strip_fetchmail_received(got) {
            None => problems.push(format!("fetchmail {name}: no fetchmail Received field")),
            Some(body) => {
                // A message without a header/body separator (the 1-byte
                // one) gets one from fetchmail.
                let mut want = want.clone();
                if !want.windows(4).any(|w| w == b"\r\n\r\n") {
                    want.extend_from_slice(b"\r\n");
                }
                problems.extend(compare(&format!("fetchmail {name}"), &body, &want));
            }
        }
    }
    problems
}

/// Imports carol's mailbox on `old` into bob on `new` with `umail import
/// pop3` (implicit TLS, left on the old server); one string per problem.
fn import(old: &TestServer, new: &TestServer, want: &[Vec<u8>], names: &[String]) -> Vec<String> {
    let from = format!("localhost:{}", old.port("pop3s"));
    let ca = old.data_dir().join("tls/cert.pem").display().to_string();
    let out = umail_cmd(
        &new.config_path(),
        &[
            "import",
            "pop3",
            "--from",
            &from,
            "--user",
            "carol@old.example",
            "--password",
            "-",
            "--to",
            "bob@example.com",
            "--ca-file",
            &ca,
            "--leave-on-server",
        ],
        Some(&format!("{OLD_PASSWORD}\n")),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return vec![format!(
            "umail import pop3 failed ({})\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )];
    }
    let got = inbox(new, "bob@example.com", NEW_PASSWORD);
    if got.len() != want.len() {
        return vec![format!(
            "the import stored {} messages, want {}\n{stdout}",
            got.len(),
            want.len()
        )];
    }
    // The importing side stores what RETR gave it, adding nothing.
    got.iter()
        .zip(want)
        .zip(names)
        .filter_map(|((got, want), name)| compare(&format!("import {name}"), got, want))
        .collect()
}

#[test]
fn large_messages_reach_fetchmail_and_a_second_server_byte_exact() {
    assert!(
        Command::new("fetchmail").arg("--version").output().is_ok(),
        "fetchmail is required (apt-get install -y fetchmail)"
    );
    let old = TestServer::start();
    old.umail_ok(&["domain", "add", "old.example"]);
    old.umail_ok(&[
        "user",
        "add",
        "carol@old.example",
        "--password",
        OLD_PASSWORD,
    ]);
    let new = TestServer::start();
    new.umail_ok(&["domain", "add", "example.com"]);
    new.umail_ok(&["user", "add", "bob@example.com", "--password", NEW_PASSWORD]);

    let cases = cases();
    let names: Vec<String> = cases.iter().map(|c| c.name.clone()).collect();
    let sources = tempfile::tempdir().expect("tempdir");
    for (i, case) in cases.iter().enumerate() {
        let ext = if case.via == Via::Smtp {
            "smtp"
        } else {
            "append"
        };
        std::fs::write(sources.path().join(format!("{i:02}.{ext}")), &case.source).unwrap();
    }
    deliver(&old, sources.path());

    // What the first server stored is what was delivered: after its own
    // trace fields for SMTP (which completes the last line), as given with
    // bare LFs made CRLF for APPEND.
    let stored = inbox(&old, "carol@old.example", OLD_PASSWORD);
    assert_eq!(stored.len(), cases.len(), "messages stored");
    for (case, stored) in cases.iter().zip(&stored) {
        match case.via {
            Via::Smtp => {
                let mut sent = case.source.clone();
                sent.extend_from_slice(b"\r\n");
                assert!(
                    stored.ends_with(&sent),
                    "{}: stored {} bytes do not end with the {} delivered",
                    case.name,
                    stored.len(),
                    sent.len()
                );
                let trace = &stored[..stored.len() - sent.len()];
                assert!(
                    trace.ends_with(b"\r\n")
                        && trace
                            .split(|b| *b == b'\n')
                            .filter(|l| !l.is_empty())
                            .all(is_header_line),
                    "{}: unexpected prefix {:?}",
                    case.name,
                    String::from_utf8_lossy(trace)
                );
            }
            Via::Append => {
                assert!(
                    compare(&case.name, stored, &crlf(&case.source)).is_none(),
                    "{}",
                    compare(&case.name, stored, &crlf(&case.source)).unwrap_or_default()
                );
            }
        }
    }
    let want: Vec<Vec<u8>> = stored.iter().map(|m| pop3_form(m)).collect();

    let mut problems = fetchmail(&old, &want, &names);
    problems.extend(import(&old, &new, &want, &names));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn helpers_follow_rfc_1939_and_fetchmail() {
    assert_eq!(pop3_form(b"a\nb\r\nc"), b"a\r\nb\r\nc\r\n");
    assert_eq!(pop3_form(b"x"), b"x\r\n");
    assert_eq!(pop3_form(b"a\r\n"), b"a\r\n");
    for case in cases() {
        assert!(!case.source.ends_with(b"\n"), "{}", case.name);
        assert!(
            case.source.len() == 1 || case.source.windows(3).any(|w| w == b"\n.\r"),
            "{}: no lone dot line",
            case.name
        );
        // The body's first line the server changes (a '.' start) comes
        // late, so its first output piece is a full one.
        if case.source.len() > 1 {
            let body = case
                .source
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap()
                + 2;
            let first_dot = case.source[body..].windows(2).position(|w| w == b"\n.");
            assert!(first_dot.unwrap() > 15 * KIB, "{}", case.name);
        }
    }
    let fetched = b"Return-Path: <a@b>\r\nReceived: from 127.0.0.1 [127.0.0.1]\r\n\tby vm with POP3 (fetchmail-6.4.37)\r\n\tfor <c@d>; now\r\nReceived: from x\r\n\r\nbody\r\n";
    assert_eq!(
        strip_fetchmail_received(fetched).unwrap(),
        b"Return-Path: <a@b>\r\nReceived: from x\r\n\r\nbody\r\n"
    );
    assert_eq!(strip_fetchmail_received(b"Subject: x\r\n\r\nb\r\n"), None);
}

/// `umail bench pop3` verifies every message it retrieves (size and
/// SHA-256) and prints a figure only when all matched, for umail and for a
/// throwaway Dovecot on the same mix.
#[test]
fn bench_pop3_verifies_every_message_beside_dovecot() {
    assert!(
        Path::new("/usr/sbin/dovecot").exists(),
        "dovecot is required (apt-get install -y dovecot-pop3d)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(common::umail_bin())
        .args([
            "bench",
            "pop3",
            "--clients",
            "2",
            "--messages",
            "20",
            "--size",
            "20K",
            "--compare-dovecot",
        ])
        .current_dir(dir.path())
        .output()
        .expect("run umail bench pop3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for server in ["umail", "dovecot"] {
        assert!(
            stdout.contains(&format!("{server}: retrieved 40 messages, 0.8 MB in "))
                && stdout.contains(&format!("{server}: throughput ")),
            "{stdout}"
        );
    }
    assert_eq!(
        stdout
            .matches("every message verified (size, SHA-256)")
            .count(),
        2,
        "{stdout}"
    );
}

/// Messages the bench did not generate cannot be verified: the run fails,
/// names them, and prints no figure.
#[test]
fn bench_pop3_refuses_a_figure_for_messages_it_cannot_verify() {
    let server = TestServer::start_with("[pop3]\nplaintext_auth_without_tls = true\n");
    server.umail_ok(&["domain", "add", "example.com"]);
    server.umail_ok(&["user", "add", "bob@example.com", "--password", NEW_PASSWORD]);
    python(
        &format!(
            r#"{PY_PRELUDE}
s = smtplib.SMTP(HOST, int(os.environ["SMTP"]), timeout=60)
s.sendmail("a@remote.example", ["bob@example.com"], b"Subject: plain\r\n\r\nnot a bench message\r\n")
s.quit()
"#
        ),
        &[("SMTP", server.port("smtp").to_string())],
    );
    let addr = server.addr("pop3").to_string();
    let out = server.umail(&[
        "bench",
        "pop3",
        "--target",
        &addr,
        "--user",
        "bob@example.com",
        "--password",
        NEW_PASSWORD,
        "--clients",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("target: 2 of 2 messages did not match; no figure")
            && stdout.contains("no X-Bench-Body field"),
        "{stdout}"
    );
    assert!(!stdout.contains("throughput"), "{stdout}");
    assert!(stderr.contains("no throughput figure reported"), "{stderr}");
}

/// One request to the HTTP admin API as the system administrator: the
/// status code and the body, checked against its `Content-Length`.
fn admin_http(server: &TestServer, body: &str) -> (u16, Vec<u8>) {
    use base64::Engine;
    use std::io::{Read, Write};
    let creds = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        server.admin_address.as_deref().expect("admin"),
        server.admin_password.as_deref().expect("password")
    ));
    let mut stream = std::net::TcpStream::connect(server.addr("admin")).expect("connect");
    write!(
        stream,
        "POST /api/v1/admin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {creds}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read");
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head")
        + 4;
    let head = String::from_utf8_lossy(&response[..head_end]).into_owned();
    let status = head[9..12].parse().expect("status code");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .trim()
        .parse()
        .expect("a number");
    let body = response[head_end..].to_vec();
    assert_eq!(body.len(), length, "Content-Length differs from the body");
    (status, body)
}

/// Every string in a JSON value, in document order.
fn json_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(o) => o.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

/// The admin socket (the CLI while the server runs) and the HTTP admin API
/// carry requests and replies far larger than any of their buffers whole:
/// an alias of 20,000 targets (a 700 KB request, ~800 KB replies) and
/// users whose display names are 256 Chinese characters (Content-Length
/// counts bytes, not characters).
#[test]
fn admin_socket_and_http_carry_responses_larger_than_any_buffer() {
    let server = TestServer::start();
    server.umail_ok(&["domain", "add", "example.com"]);
    let mut targets: Vec<String> = (0..20_000)
        .map(|i| format!("member{i:05}@partner{:02}.example", i % 97))
        .collect();
    let request = serde_json::json!({
        "op": "alias_add", "alias": "partners@example.com", "targets": targets,
    })
    .to_string();
    assert!(request.len() > 500_000);
    let (status, body) = admin_http(&server, &request);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    targets.sort();

    // Through the admin socket, as text and as JSON.
    let text = server.umail_ok(&["alias", "show", "partners@example.com"]);
    let mut shown: Vec<String> = text
        .split_whitespace()
        .filter(|w| w.contains("@partner"))
        .map(str::to_string)
        .collect();
    shown.sort();
    assert!(shown == targets, "{} of 20000 targets shown", shown.len());
    let json = server.umail_ok(&["--json", "alias", "show", "partners@example.com"]);
    let value: serde_json::Value = serde_json::from_str(&json).expect("JSON reply");
    let mut strings = Vec::new();
    json_strings(&value, &mut strings);
    strings.retain(|s| s.contains("@partner"));
    strings.sort();
    assert!(
        strings == targets,
        "{} of 20000 targets in JSON",
        strings.len()
    );

    // Through HTTP.
    let (status, body) = admin_http(
        &server,
        r#"{"op":"alias_show","alias":"partners@example.com"}"#,
    );
    assert_eq!(status, 200);
    assert!(body.len() > 500_000, "{} bytes", body.len());
    let value: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
    let mut strings = Vec::new();
    json_strings(&value, &mut strings);
    strings.retain(|s| s.contains("@partner"));
    strings.sort();
    assert!(
        strings == targets,
        "{} of 20000 targets over HTTP",
        strings.len()
    );

    // Multi-byte text: the length is in bytes.
    let name = "\u{7528}\u{6237}".repeat(128);
    for i in 0..4 {
        let request = serde_json::json!({
            "op": "user_add", "address": format!("u{i}@example.com"),
            "password": "correct-horse-battery", "fields": {"display_name": name},
        })
        .to_string();
        let (status, body) = admin_http(&server, &request);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let (status, body) = admin_http(&server, r#"{"op":"user_list","domain":"example.com"}"#);
    assert_eq!(status, 200);
    let text = String::from_utf8(body).expect("UTF-8 body");
    assert_eq!(text.matches(&name).count(), 4, "{text:.300}");
    let listed = server.umail_ok(&["user", "list", "example.com"]);
    assert_eq!(listed.matches(&name).count(), 4, "{listed:.300}");
}
