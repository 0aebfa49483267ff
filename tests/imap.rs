//! End-to-end IMAP tests through the real `umail` binary: Python's imaplib
//! (STARTTLS + LOGIN, implicit TLS + AUTHENTICATE PLAIN, the common
//! commands, a `客户/2026年` folder across UTF-8 and modified-UTF-7
//! clients, QRESYNC), a message submitted with smtplib read back byte for
//! byte, and `mbsync` (Debian `isync`) syncing hundreds of messages down,
//! changing and deleting them locally and syncing back.

mod common;

use common::{TestServer, python};

const PASSWORD: &str = "imap-e2e-password";

fn setup(server: &TestServer) {
    server.umail_ok(&["domain", "add", "example.com"]);
    server.umail_ok(&["user", "add", "alice@example.com", "--password", PASSWORD]);
    server.umail_ok(&["user", "add", "bob@example.com", "--password", PASSWORD]);
}

fn py_env(server: &TestServer) -> Vec<(&'static str, String)> {
    vec![
        ("PORT_IMAP", server.port("imap").to_string()),
        ("PORT_IMAPS", server.port("imaps").to_string()),
        ("PORT_SUBMISSION", server.port("submission").to_string()),
        ("PASSWORD", PASSWORD.to_string()),
    ]
}

const PY_PRELUDE: &str = r#"
import imaplib, os, re, ssl, subprocess, sys, time
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
HOST = "127.0.0.1"
PW = os.environ["PASSWORD"]
def port(name): return int(os.environ["PORT_" + name.upper()])
def ok(res):
    typ, data = res
    assert typ == "OK", (typ, data)
    return data
imaplib.Commands.setdefault("MOVE", ("SELECTED",))
"#;

#[test]
fn imaplib_starttls_plain_commands_and_utf8_folders() {
    let server = TestServer::start();
    setup(&server);
    let mutf7 = umail_imap::codec::utf7::encode("客户/2026年");
    let mut env = py_env(&server);
    env.push(("MUTF7", mutf7.clone()));
    let script = format!(
        "{PY_PRELUDE}{}",
        r#"
# STARTTLS + LOGIN on the imap listener; LOGIN is refused before TLS.
M = imaplib.IMAP4(HOST, port("imap"))
assert "STARTTLS" in M.capabilities and "LOGINDISABLED" in M.capabilities, M.capabilities
try:
    M.login("alice@example.com", PW)
    raise SystemExit("LOGIN accepted before TLS")
except imaplib.IMAP4.error:
    pass
ok(M.starttls(ssl_context=ctx))
ok(M.login("alice@example.com", PW))
caps = ok(M.capability())[0].decode()
for c in ["IMAP4rev2", "IDLE", "MOVE", "UIDPLUS", "CONDSTORE", "QRESYNC", "ESEARCH", "SPECIAL-USE", "UTF8=ACCEPT"]:
    assert c in caps.split(), (c, caps)

# APPEND three messages, SELECT, FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE.
for i, subj in enumerate(["alpha", "beta", "gamma"]):
    msg = ("From: Bob <bob@example.com>\r\nTo: alice@example.com\r\nSubject: %s\r\n"
           "Message-ID: <%s@example.com>\r\n\r\nbody %d\r\n" % (subj, subj, i)).encode()
    typ, data = M.append("INBOX", "(\\Flagged)" if i == 1 else None, None, msg)
    assert typ == "OK" and b"APPENDUID" in data[0], data
typ, data = M.select("INBOX")
assert typ == "OK" and data[0] == b"3", data
data = ok(M.fetch("1:3", "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
subjects = [d[1] for d in data if isinstance(d, tuple)]
assert subjects == [b"Subject: alpha\r\n\r\n", b"Subject: beta\r\n\r\n", b"Subject: gamma\r\n\r\n"], subjects
data = ok(M.fetch("2", "(BODY[TEXT])"))
assert data[0][1] == b"body 1\r\n", data
data = ok(M.fetch("2", "(FLAGS)"))
assert b"\\Seen" in data[0] and b"\\Flagged" in data[0], data
ok(M.store("3", "+FLAGS", "(\\Answered $Label1)"))
assert ok(M.search(None, "ANSWERED"))[0] == b"3"
assert ok(M.search(None, "FLAGGED"))[0] == b"2"
assert ok(M.search("UTF-8", "SUBJECT", "gam"))[0] == b"3"
assert ok(M.uid("SEARCH", "BODY", "body"))[0] == b"1 2 3"
typ, data = M.copy("1:2", "Archive")
assert typ == "OK" and b"COPYUID" in data[0], data
typ, data = M.uid("MOVE", "3", "Trash")
assert typ == "OK", data
ok(M.store("1", "+FLAGS", "(\\Deleted)"))
ok(M.expunge())
typ, data = M.select("INBOX", readonly=True)
assert data[0] == b"1", data
assert ok(M.select("Archive"))[0] == b"2"
assert ok(M.select("Trash"))[0] == b"1"
data = ok(M.fetch("1", "(FLAGS)"))
assert b"$Label1" in data[0] and b"\\Answered" in data[0], data

# A UTF-8 client creates 客户/2026年 ...
ok(M.unselect())
ok(M.enable("UTF8=ACCEPT"))
ok(M.create('"客户/2026年"'))
data = ok(M.list('""', '"客户/*"'))
assert any("客户/2026年" in d.decode() for d in data), data
M.logout()

# ... and a rev1 client (implicit TLS, AUTHENTICATE PLAIN) sees modified UTF-7.
N = imaplib.IMAP4_SSL(HOST, port("imaps"), ssl_context=ctx)
ok(N.authenticate("PLAIN", lambda _: b"\0alice@example.com\0" + PW.encode()))
data = ok(N.list('""', "*"))
names = [d.decode() for d in data]
mutf7 = os.environ["MUTF7"]
assert any(n.endswith('"' + mutf7 + '"') or n.endswith(" " + mutf7) for n in names), (mutf7, names)
assert not any("客户" in n for n in names), names
typ, data = N.select('"%s"' % mutf7)
assert typ == "OK" and data[0] == b"0", data
N.logout()

# Wrong passwords: NO, and the connection stays usable until the limit.
B = imaplib.IMAP4_SSL(HOST, port("imaps"), ssl_context=ctx)
try:
    B.login("alice@example.com", "wrong")
    raise SystemExit("wrong password accepted")
except imaplib.IMAP4.error as e:
    assert "AUTHENTICATIONFAILED" in str(e), e
print("ok")
"#
    );
    assert!(python(&script, &env).contains("ok"));
}

#[test]
fn message_submitted_over_smtp_reads_back_byte_for_byte() {
    let server = TestServer::start();
    setup(&server);
    let script = format!(
        "{PY_PRELUDE}{}",
        r#"
import smtplib
MSG = (b"From: Alice <alice@example.com>\r\nTo: bob@example.com\r\n"
       b"Subject: =?UTF-8?B?5rWL6K+V?=\r\nMessage-ID: <imap-e2e@example.com>\r\n"
       b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
       b"Content-Transfer-Encoding: 8bit\r\n\r\n"
       b"Hello Bob,\r\n.leading dot line\r\n\xe4\xbd\xa0\xe5\xa5\xbd\r\n")
s = smtplib.SMTP(HOST, port("submission"), timeout=30)
s.starttls(context=ctx)
s.login("alice@example.com", PW)
s.sendmail("alice@example.com", ["bob@example.com"], MSG)
s.quit()

M = imaplib.IMAP4(HOST, port("imap"))
ok(M.starttls(ssl_context=ctx))
ok(M.login("bob@example.com", PW))
deadline = time.time() + 30
while True:
    typ, data = M.select("INBOX")
    if data[0] != b"0" or time.time() > deadline:
        break
    time.sleep(0.2)
assert data[0] == b"1", data
data = ok(M.fetch("1", "(RFC822.SIZE BODY.PEEK[])"))
stored = data[0][1]
# umail adds Return-Path and Received at delivery; the rest is the message.
rest = stored
added = []
while rest.startswith(b"Return-Path:") or rest.startswith(b"Received:"):
    m = re.match(rb"(?:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)", rest)
    added.append(m.group(0))
    rest = rest[m.end():]
assert any(a.startswith(b"Received:") for a in added), added
assert rest == MSG, (rest, MSG)
assert ("RFC822.SIZE %d" % len(stored)).encode() in data[0][0], data[0][0]
data = ok(M.fetch("1", "(FLAGS)"))
assert b"\\Seen" not in data[0], data
print("ok")
"#
    );
    assert!(python(&script, &py_env(&server)).contains("ok"));
}

#[test]
fn mbsync_syncs_hundreds_down_changes_locally_and_back() {
    let have = std::process::Command::new("mbsync")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(have, "mbsync not found: install the Debian package isync");
    let server = TestServer::start_with("[imap]\nplaintext_auth_without_tls = true\n");
    setup(&server);
    let work = tempfile::tempdir().expect("tempdir");
    let mut env = py_env(&server);
    env.push(("WORK", work.path().display().to_string()));
    let script = format!(
        "{PY_PRELUDE}{}",
        r#"
N = 300
W = os.environ["WORK"]
M = imaplib.IMAP4(HOST, port("imap"))
ok(M.login("bob@example.com", PW))
for i in range(N):
    msg = ("From: sender%d@example.org\r\nTo: bob@example.com\r\nSubject: message %d\r\n"
           "Message-ID: <m%d@example.org>\r\n\r\nbody %d\r\n" % (i, i, i, i)).encode()
    ok(M.append("INBOX", "(\\Seen)" if i % 3 == 0 else None, None, msg))
M.logout()

os.makedirs(os.path.join(W, "mail"), exist_ok=True)
cfg = os.path.join(W, "mbsyncrc")
with open(cfg, "w") as f:
    f.write("IMAPAccount umail\nHost 127.0.0.1\nPort %d\nUser bob@example.com\nPass %s\n"
            "SSLType None\nAuthMechs LOGIN\n\n"
            "IMAPStore remote\nAccount umail\n\n"
            "MaildirStore local\nPath %s/mail/\nInbox %s/mail/INBOX\n\n"
            "Channel sync\nFar :remote:\nNear :local:\nPatterns INBOX\nCreate Both\n"
            "Expunge Both\nSyncState *\n" % (port("imap"), PW, W, W))
def mbsync():
    r = subprocess.run(["mbsync", "-c", cfg, "-a"], capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout, r.stderr)

# Down.
mbsync()
def local():
    out = {}
    for sub in ["cur", "new"]:
        d = os.path.join(W, "mail/INBOX", sub)
        for name in os.listdir(d):
            with open(os.path.join(d, name), "rb") as fh:
                mid = re.search(rb"Message-ID: <(m\d+)@", fh.read()).group(1).decode()
            out[mid] = os.path.join(d, name)
    return out
files = local()
assert len(files) == N, len(files)
seen_down = [m for m, p in files.items() if "S" in p.rsplit(":2,", 1)[-1]]
assert len(seen_down) == N // 3, len(seen_down)

# Local changes: flag 20, mark 10 more seen, delete 30.
def set_flags(path, add):
    base, _, fl = path.rpartition(":2,")
    if ":2," not in path:
        base, fl = path, ""
    new = base + ":2," + "".join(sorted(set(fl) | set(add)))
    d = os.path.dirname(path)
    if os.path.basename(d) == "new":
        new = os.path.join(os.path.dirname(d), "cur", os.path.basename(new))
    os.rename(path, new)
flag = ["m%d" % i for i in range(0, 40, 2)]
seen = ["m%d" % i for i in range(1, 30, 3)]
gone = ["m%d" % i for i in range(100, 130)]
for m in flag: set_flags(files[m], "F")
files = local()
for m in seen: set_flags(files[m], "S")
files = local()
for m in gone: os.remove(files[m])

# Up.
mbsync()

# The server state matches, seen over IMAP.
M = imaplib.IMAP4(HOST, port("imap"))
ok(M.login("bob@example.com", PW))
typ, data = M.select("INBOX", readonly=True)
assert data[0] == str(N - len(gone)).encode(), data
data = ok(M.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"))
server = {}
for d in data:
    if isinstance(d, tuple):
        mid = re.search(rb"<(m\d+)@", d[1]).group(1).decode()
        server[mid] = re.search(rb"FLAGS \(([^)]*)\)", d[0]).group(1).decode()
expect_ids = {"m%d" % i for i in range(N)} - set(gone)
assert set(server) == expect_ids, sorted(set(server) ^ expect_ids)[:10]
for mid, fl in server.items():
    i = int(mid[1:])
    want_seen = i % 3 == 0 or mid in seen
    want_flag = mid in flag
    assert ("\\Seen" in fl) == want_seen, (mid, fl)
    assert ("\\Flagged" in fl) == want_flag, (mid, fl)
    assert "\\Deleted" not in fl, (mid, fl)
M.logout()
# A second sync changes nothing.
mbsync()
assert len(local()) == N - len(gone)
print("ok")
"#
    );
    assert!(python(&script, &env).contains("ok"));
}
