//! End-to-end remote collection between two real `umail` servers: the
//! "old" one is the remote POP3 server, the "new" one collects from it
//! (MultiPOP with `umail fetch`, the scheduler, `umail import pop3` with
//! the server running and stopped, and DomainPOP routing).

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, python, umail_cmd};

const PASSWORD: &str = "correct-horse-battery";
const REMOTE_PASSWORD: &str = "remote-Secret-4711";

const PY_PRELUDE: &str = r#"
import json, os, poplib, smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
HOST = "127.0.0.1"

def deliver(port, rcpt, messages):
    s = smtplib.SMTP(HOST, port, timeout=60)
    for m in messages:
        s.sendmail("sender@remote.example", [rcpt], m)
    s.quit()

def simple(to, subj, cc=None, mid=None):
    cc_line = "Cc: %s\r\n" % cc if cc else ""
    return ("From: sender@remote.example\r\nTo: %s\r\n%sSubject: %s\r\n"
            "Message-ID: <%s@remote.example>\r\n\r\nbody %s\r\n" % (to, cc_line, subj, mid or subj, subj))

def subjects(port, user, password):
    p = poplib.POP3_SSL(HOST, port, context=ctx, timeout=60)
    p.user(user)
    p.pass_(password)
    out = []
    for i in range(1, p.stat()[0] + 1):
        for l in p.top(i, 0)[1]:
            if l.lower().startswith(b"subject:"):
                out.append(l.split(b":", 1)[1].strip().decode())
    p.quit()
    return sorted(out)
"#;

fn py(body: &str, env: &[(&str, String)]) -> String {
    python(&format!("{PY_PRELUDE}\n{body}"), env)
}

/// Delivers `subjects` (simple messages) to `rcpt` on `server`'s MX.
fn deliver(server: &TestServer, rcpt: &str, subjects: &[&str]) {
    let list = serde_json::to_string(subjects).unwrap();
    py(
        &format!(
            "deliver(int(os.environ['SMTP']), {rcpt:?}, [simple({rcpt:?}, s) for s in json.loads({list:?})])"
        ),
        &[("SMTP", server.port("smtp").to_string())],
    );
}

/// Subjects in `user`'s INBOX on `server`, sorted.
fn subjects(server: &TestServer, user: &str, password: &str) -> Vec<String> {
    let out = py(
        &format!("print(json.dumps(subjects(int(os.environ['POP3S']), {user:?}, {password:?})))"),
        &[("POP3S", server.port("pop3s").to_string())],
    );
    serde_json::from_str(out.trim()).expect("json")
}

fn cert(server: &TestServer) -> String {
    server.data_dir().join("tls/cert.pem").display().to_string()
}

fn old_server() -> TestServer {
    let old = TestServer::start();
    old.umail_ok(&["domain", "add", "old.example"]);
    for u in ["carol", "erin", "catchall"] {
        old.umail_ok(&[
            "user",
            "add",
            &format!("{u}@old.example"),
            "--password",
            REMOTE_PASSWORD,
        ]);
    }
    old
}

fn new_server() -> TestServer {
    let new = TestServer::start();
    new.umail_ok(&["domain", "add", "example.com"]);
    for u in ["alice", "bob", "dave", "frank"] {
        new.umail_ok(&[
            "user",
            "add",
            &format!("{u}@example.com"),
            "--password",
            PASSWORD,
        ]);
    }
    new
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn multipop_leave_on_server_no_duplicates_scheduler_and_offline_run() {
    let old = old_server();
    let mut new = new_server();
    deliver(&old, "carol@old.example", &["c1", "c2", "c3"]);

    let port = old.port("pop3s").to_string();
    let ca = cert(&old);
    // The password comes from standard input.
    let out = umail_cmd(
        &new.config_path(),
        &[
            "fetch",
            "add",
            "alice@example.com",
            "--host",
            "localhost",
            "--port",
            &port,
            "--tls",
            "implicit",
            "--ca-file",
            &ca,
            "--user",
            "carol@old.example",
            "--password",
            "-",
            "--interval",
            "5",
            "--enabled",
            "false",
        ],
        Some(&format!("{REMOTE_PASSWORD}\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = new.umail_ok(&["fetch", "list"]);
    assert!(list.contains("carol@old.example@localhost"), "{list}");
    let show = new.umail_ok(&["fetch", "show", "alice@example.com", "1"]);
    assert!(show.contains("never fetched"), "{show}");
    let json = new.umail_ok(&["--json", "fetch", "list", "alice@example.com"]);
    for text in [&list, &show, &json] {
        assert!(!text.contains(REMOTE_PASSWORD), "password shown: {text}");
    }

    // Immediate fetch through the running server.
    let run = new.umail_ok(&["fetch", "run", "alice@example.com", "1"]);
    assert!(run.contains("3 fetched"), "{run}");
    assert_eq!(
        subjects(&new, "alice@example.com", PASSWORD),
        sorted(&["c1", "c2", "c3"])
    );
    // Left on the server; a second run collects nothing again.
    assert_eq!(
        subjects(&old, "carol@old.example", REMOTE_PASSWORD),
        sorted(&["c1", "c2", "c3"])
    );
    let run = new.umail_ok(&["fetch", "run", "alice@example.com", "1"]);
    assert!(
        run.contains("0 fetched") && run.contains("3 seen before"),
        "{run}"
    );
    assert_eq!(subjects(&new, "alice@example.com", PASSWORD).len(), 3);

    // A wrong password fails, is reported, and does not leak it.
    new.umail_ok(&[
        "fetch",
        "set",
        "alice@example.com",
        "1",
        "--password",
        "wrong-password-x",
    ]);
    let run = new.umail_ok(&["fetch", "run", "alice@example.com", "1"]);
    assert!(run.contains("failed"), "{run}");
    let show = new.umail_ok(&["fetch", "show", "alice@example.com", "1"]);
    assert!(show.contains("failing (1x)"), "{show}");
    assert!(!show.contains("wrong-password-x"), "{show}");

    // The scheduler picks up new mail once the account is enabled again.
    new.umail_ok(&[
        "fetch",
        "set",
        "alice@example.com",
        "1",
        "--password",
        REMOTE_PASSWORD,
        "--enabled",
        "true",
    ]);
    deliver(&old, "carol@old.example", &["c4", "c5"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = subjects(&new, "alice@example.com", PASSWORD);
        if got.len() == 5 {
            assert_eq!(got, sorted(&["c1", "c2", "c3", "c4", "c5"]));
            break;
        }
        assert!(got.len() < 5, "duplicates: {got:?}");
        assert!(
            Instant::now() < deadline,
            "the scheduler did not collect c4 and c5: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // With the server stopped the CLI fetches on the database directly,
    // and the seen UIDLs (persisted) still prevent duplicates.
    assert!(new.terminate().success());
    deliver(&old, "carol@old.example", &["c6"]);
    let run = new.umail_ok(&["fetch", "run"]);
    assert!(
        run.contains("1 fetched") && run.contains("5 seen before"),
        "{run}"
    );
    new.spawn();
    assert_eq!(
        subjects(&new, "alice@example.com", PASSWORD),
        sorted(&["c1", "c2", "c3", "c4", "c5", "c6"])
    );
    new.umail_ok(&["fetch", "remove", "alice@example.com", "1"]);
    assert!(!new.umail_ok(&["fetch", "list"]).contains("carol"));
}

#[test]
fn import_through_running_server_and_batch_offline() {
    let old = old_server();
    let mut new = new_server();
    deliver(&old, "carol@old.example", &["i1", "i2", "i3", "i4"]);
    deliver(&old, "erin@old.example", &["e1", "e2"]);
    let from = format!("localhost:{}", old.port("pop3s"));
    let ca = cert(&old);

    // Server running: the import runs inside it over the admin socket.
    let args = [
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
    ];
    let stdin = format!("{REMOTE_PASSWORD}\n");
    let out = umail_cmd(&new.config_path(), &args, Some(&stdin));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("imported") && l.trim_end().ends_with(" 4")),
        "{text}"
    );
    assert_eq!(
        subjects(&new, "bob@example.com", PASSWORD),
        sorted(&["i1", "i2", "i3", "i4"])
    );
    // Re-running imports nothing new.
    deliver(&old, "carol@old.example", &["i5"]);
    let out = umail_cmd(&new.config_path(), &args, Some(&stdin));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("already_imported") && l.trim_end().ends_with(" 4")),
        "{text}"
    );
    assert_eq!(
        subjects(&new, "bob@example.com", PASSWORD),
        sorted(&["i1", "i2", "i3", "i4", "i5"])
    );
    assert_eq!(
        subjects(&old, "carol@old.example", REMOTE_PASSWORD).len(),
        5
    );

    // Server stopped: a batch file, without --leave-on-server (moves the mail).
    assert!(new.terminate().success());
    let batch = new.dir.path().join("accounts.txt");
    std::fs::write(
        &batch,
        format!(
            "# old server, account, password, local address\n{from} erin@old.example {REMOTE_PASSWORD} frank@example.com\n"
        ),
    )
    .unwrap();
    // The old server's self-signed certificate accepted without a CA file.
    let out = new.umail(&[
        "import",
        "pop3",
        "--batch",
        batch.to_str().unwrap(),
        "--no-tls-verify",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{err}");
    assert!(err.contains("[1/1]") && err.contains("2 messages"), "{err}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("deleted_on_server") && l.trim_end().ends_with(" 2")),
        "{text}"
    );
    new.spawn();
    assert_eq!(
        subjects(&new, "frank@example.com", PASSWORD),
        sorted(&["e1", "e2"])
    );
    assert!(subjects(&old, "erin@old.example", REMOTE_PASSWORD).is_empty());

    // An untrusted certificate is refused (verification is on by default).
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
            REMOTE_PASSWORD,
            "--to",
            "bob@example.com",
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("certificate"), "{err}");
    assert!(!err.contains(REMOTE_PASSWORD), "{err}");

    // A missing local user is a clear error.
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
            REMOTE_PASSWORD,
            "--to",
            "nobody@example.com",
            "--ca-file",
            &ca,
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn domainpop_routes_by_headers_dedupes_and_falls_back() {
    let old = old_server();
    let new = new_server();
    let messages = r#"
m = [
    simple("alice@example.com", "d1"),
    simple("bob@example.com", "d2", cc="Alice <alice@example.com>", mid="shared"),
    simple("nobody@example.com", "d3"),
    # The second copy of d2 (one per recipient at the old provider).
    simple("bob@example.com", "d2", cc="alice@example.com", mid="shared"),
    simple("someone@elsewhere.example", "d4"),
]
deliver(int(os.environ['SMTP']), "catchall@old.example", m)
"#;
    py(messages, &[("SMTP", old.port("smtp").to_string())]);
    // STLS on the plain POP3 port this time.
    let port = old.port("pop3").to_string();
    new.umail_ok(&[
        "fetch",
        "domain",
        "set",
        "example.com",
        "--host",
        "localhost",
        "--port",
        &port,
        "--tls",
        "starttls",
        "--ca-file",
        &cert(&old),
        "--user",
        "catchall@old.example",
        "--password",
        REMOTE_PASSWORD,
        "--fallback",
        "dave@example.com",
        "--enabled",
        "false",
    ]);
    let show = new.umail_ok(&["fetch", "domain", "show", "example.com"]);
    assert!(show.contains("dave@example.com"), "{show}");
    assert!(show.contains("starttls"), "{show}");
    assert!(!show.contains(REMOTE_PASSWORD), "{show}");

    let run = new.umail_ok(&["fetch", "run", "--domain", "example.com"]);
    assert!(run.contains("5 fetched"), "{run}");
    assert!(run.contains("1 duplicates"), "{run}");
    assert!(run.contains("2 to fallback"), "{run}");
    assert_eq!(
        subjects(&new, "alice@example.com", PASSWORD),
        sorted(&["d1", "d2"])
    );
    assert_eq!(subjects(&new, "bob@example.com", PASSWORD), sorted(&["d2"]));
    assert_eq!(
        subjects(&new, "dave@example.com", PASSWORD),
        sorted(&["d3", "d4"])
    );
    // Left on the server, and not delivered again.
    let run = new.umail_ok(&["fetch", "run", "--domain", "example.com"]);
    assert!(
        run.contains("0 fetched") && run.contains("5 seen before"),
        "{run}"
    );
    assert_eq!(subjects(&new, "alice@example.com", PASSWORD).len(), 2);

    // A configured header list replaces the default one: routing by Cc only.
    py(
        r#"deliver(int(os.environ['SMTP']), "catchall@old.example", [simple("bob@example.com", "d5", cc="frank@example.com")])"#,
        &[("SMTP", old.port("smtp").to_string())],
    );
    new.umail_ok(&["fetch", "domain", "set", "example.com", "--header", "Cc"]);
    let run = new.umail_ok(&["fetch", "run", "--domain", "example.com"]);
    assert!(run.contains("1 fetched"), "{run}");
    assert_eq!(
        subjects(&new, "frank@example.com", PASSWORD),
        sorted(&["d5"])
    );
    assert_eq!(subjects(&new, "bob@example.com", PASSWORD), sorted(&["d2"]));
    new.umail_ok(&["fetch", "domain", "remove", "example.com"]);
    let out = new.umail(&["fetch", "domain", "show", "example.com"]);
    assert!(!out.status.success());
}

/// `fetch show` of alice's first remote account.
fn show_alice(new: &TestServer) -> String {
    new.umail_ok(&["fetch", "show", "alice@example.com", "1"])
}

#[test]
fn multipop_over_quota_leaves_mail_on_the_server_until_it_fits() {
    let old = old_server();
    let new = new_server();
    deliver(&old, "carol@old.example", &["q1", "q2"]);
    new.umail_ok(&["user", "set", "alice@example.com", "--quota", "100"]);
    let port = old.port("pop3s").to_string();
    new.umail_ok(&[
        "fetch",
        "add",
        "alice@example.com",
        "--host",
        "localhost",
        "--port",
        &port,
        "--ca-file",
        &cert(&old),
        "--user",
        "carol@old.example",
        "--password",
        REMOTE_PASSWORD,
        "--leave-on-server",
        "false",
        "--enabled",
        "false",
    ]);

    // Mailbox full: nothing collected, nothing deleted, the refusal named.
    let run = new.umail_ok(&["fetch", "run", "alice@example.com", "1"]);
    assert!(run.contains("0 fetched"), "{run}");
    assert!(run.contains("1 refused (left on server)"), "{run}");
    assert!(run.contains("1 deferred"), "{run}");
    assert!(run.contains("552 5.2.2 Mailbox full"), "{run}");
    assert!(!run.contains("deleted on server"), "{run}");
    assert_eq!(
        subjects(&old, "carol@old.example", REMOTE_PASSWORD),
        sorted(&["q1", "q2"])
    );
    assert!(subjects(&new, "alice@example.com", PASSWORD).is_empty());
    let show = show_alice(&new);
    assert!(
        show.lines().any(|l| l.starts_with("refused_1")
            && l.contains("#1 uidl ")
            && l.contains("552 5.2.2 Mailbox full")),
        "{show}"
    );
    assert!(
        show.lines()
            .any(|l| l.starts_with("refused ") && l.contains(" 1 (left")),
        "{show}"
    );

    // Tried again and reported again; still on the server.
    let run = new.umail_ok(&["fetch", "run", "alice@example.com", "1"]);
    assert!(
        run.contains("1 refused") && run.contains("(2 attempts)"),
        "{run}"
    );
    assert_eq!(
        subjects(&old, "carol@old.example", REMOTE_PASSWORD).len(),
        2
    );

    // Room again: collected, and only now deleted from the old server.
    new.umail_ok(&["user", "set", "alice@example.com", "--quota", "0"]);
    let run = new.umail_ok(&["fetch", "run", "alice@example.com", "1"]);
    assert!(
        run.contains("2 fetched") && run.contains("2 deleted on server"),
        "{run}"
    );
    assert!(!run.contains("refused"), "{run}");
    assert_eq!(
        subjects(&new, "alice@example.com", PASSWORD),
        sorted(&["q1", "q2"])
    );
    assert!(subjects(&old, "carol@old.example", REMOTE_PASSWORD).is_empty());
    let show = show_alice(&new);
    assert!(!show.contains("refused_1"), "{show}");
}

#[test]
fn domainpop_unroutable_without_fallback_stays_on_the_server() {
    let old = old_server();
    let new = new_server();
    py(
        r#"deliver(int(os.environ['SMTP']), "catchall@old.example",
            [simple("alice@example.com", "r1"), simple("nobody@example.com", "r2")])"#,
        &[("SMTP", old.port("smtp").to_string())],
    );
    let port = old.port("pop3s").to_string();
    new.umail_ok(&[
        "fetch",
        "domain",
        "set",
        "example.com",
        "--host",
        "localhost",
        "--port",
        &port,
        "--ca-file",
        &cert(&old),
        "--user",
        "catchall@old.example",
        "--password",
        REMOTE_PASSWORD,
        "--leave-on-server",
        "false",
        "--enabled",
        "false",
    ]);
    let run = new.umail_ok(&["fetch", "run", "--domain", "example.com"]);
    assert!(
        run.contains("1 fetched") && run.contains("1 deleted on server"),
        "{run}"
    );
    assert!(run.contains("1 refused (left on server)"), "{run}");
    assert!(run.contains("no fallback address is set"), "{run}");
    assert_eq!(
        subjects(&new, "alice@example.com", PASSWORD),
        sorted(&["r1"])
    );
    assert_eq!(
        subjects(&old, "catchall@old.example", REMOTE_PASSWORD),
        sorted(&["r2"])
    );
    let show = new.umail_ok(&["fetch", "domain", "show", "example.com"]);
    assert!(
        show.lines()
            .any(|l| l.starts_with("refused_1") && l.contains("550 5.1.1")),
        "{show}"
    );

    // A fallback set later takes it, and only then is it deleted.
    new.umail_ok(&[
        "fetch",
        "domain",
        "set",
        "example.com",
        "--fallback",
        "dave@example.com",
    ]);
    let run = new.umail_ok(&["fetch", "run", "--domain", "example.com"]);
    assert!(
        run.contains("1 fetched") && run.contains("1 to fallback"),
        "{run}"
    );
    assert!(!run.contains("refused"), "{run}");
    assert_eq!(
        subjects(&new, "dave@example.com", PASSWORD),
        sorted(&["r2"])
    );
    assert!(subjects(&old, "catchall@old.example", REMOTE_PASSWORD).is_empty());
}

#[test]
fn import_refused_by_quota_stays_on_the_old_server() {
    let old = old_server();
    let new = new_server();
    deliver(&old, "erin@old.example", &["m1", "m2"]);
    new.umail_ok(&["user", "set", "bob@example.com", "--quota", "100"]);
    let from = format!("localhost:{}", old.port("pop3s"));
    let ca = cert(&old);
    let args = [
        "import",
        "pop3",
        "--from",
        &from,
        "--user",
        "erin@old.example",
        "--password",
        REMOTE_PASSWORD,
        "--to",
        "bob@example.com",
        "--ca-file",
        &ca,
    ];
    // Through the running server, without --leave-on-server.
    let out = new.umail(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{err}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("imported") && l.trim_end().ends_with(" 0")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("refused_1") && l.contains("552 5.2.2 Mailbox full")),
        "{text}"
    );
    assert!(err.contains("0 messages imported, 1 refused"), "{err}");
    assert_eq!(
        subjects(&old, "erin@old.example", REMOTE_PASSWORD),
        sorted(&["m1", "m2"])
    );

    // Room again: imported, and only now deleted from the old server.
    new.umail_ok(&["user", "set", "bob@example.com", "--quota", "0"]);
    let out = new.umail(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("deleted_on_server") && l.trim_end().ends_with(" 2")),
        "{text}"
    );
    assert!(!text.contains("refused_1"), "{text}");
    assert_eq!(
        subjects(&new, "bob@example.com", PASSWORD),
        sorted(&["m1", "m2"])
    );
    assert!(subjects(&old, "erin@old.example", REMOTE_PASSWORD).is_empty());
}
