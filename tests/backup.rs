//! `umail backup` and `umail restore` through the real binary: a backup
//! taken while the server runs, the data directory lost, the backup
//! restored, and the mail read back over POP3; plus every refusal an
//! operator can run into (running server, existing database, damaged or
//! incomplete backup, non-empty target).

mod common;

use std::path::Path;

use common::{TestServer, python};

const PASSWORD: &str = "correct-horse-battery";

/// Sends one message to alice@example.com through the MX port.
fn send(server: &TestServer, subject: &str) {
    python(
        r#"
import os, smtplib
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=30)
s.sendmail("bob@remote.example", ["alice@example.com"],
           ("From: bob@remote.example\r\nTo: alice@example.com\r\nSubject: " + os.environ["SUBJECT"] +
            "\r\n\r\nbody\r\n").encode())
s.quit()
"#,
        &[
            ("PORT", server.port("smtp").to_string()),
            ("SUBJECT", subject.to_string()),
        ],
    );
}

/// The subjects in alice's mailbox, read over POP3 (STLS).
fn subjects(server: &TestServer) -> Vec<String> {
    let out = python(
        r#"
import os, poplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
p = poplib.POP3("127.0.0.1", int(os.environ["PORT"]), timeout=30)
p.stls(context=ctx)
p.user("alice@example.com"); p.pass_(os.environ["PASSWORD"])
for i in range(1, p.stat()[0] + 1):
    for line in p.top(i, 0)[1]:
        if line.lower().startswith(b"subject:"):
            print(line[8:].strip().decode())
p.quit()
"#,
        &[
            ("PORT", server.port("pop3").to_string()),
            ("PASSWORD", PASSWORD.to_string()),
        ],
    );
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

fn fails_with(server: &TestServer, args: &[&str], needle: &str) {
    let out = server.umail(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(err.contains(needle), "{args:?}: {err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn backup_while_running_then_restore_after_losing_the_data() {
    let mut server = TestServer::start();
    server.umail_ok(&["domain", "add", "example.com"]);
    server.umail_ok(&["user", "add", "alice@example.com", "--password", PASSWORD]);
    send(&server, "before the backup");

    let backups = tempfile::tempdir().unwrap();
    let b1 = backups.path().join("b1");
    let b1s = b1.to_str().unwrap();
    let out = server.umail_ok(&["backup", b1s]);
    assert!(out.contains("verified") && out.contains("yes"), "{out}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b1.join("manifest.json")).unwrap()).unwrap();
    let paths: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"umail.redb"), "{paths:?}");
    assert!(paths.contains(&"tls/cert.pem"), "{paths:?}");
    assert!(paths.contains(&"tls/key.pem"), "{paths:?}");
    // Password hashes and private keys: owner only, in the data directory
    // and in the backup.
    use std::os::unix::fs::PermissionsExt;
    for dir in [server.data_dir(), b1.clone(), b1.join("tls")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
    fails_with(&server, &["backup", b1s], "not empty");
    fails_with(&server, &["restore", b1s], "stop it before restoring");

    // Mail after the backup is not in it.
    send(&server, "after the backup");
    assert_eq!(subjects(&server), ["after the backup", "before the backup"]);
    assert!(server.terminate().success());
    let cert_before = std::fs::read(server.data_dir().join("tls/cert.pem")).unwrap();

    fails_with(&server, &["restore", b1s], "already has a database");

    // A damaged copy is refused and changes nothing.
    let damaged = backups.path().join("damaged");
    copy_dir(&b1, &damaged);
    let db = damaged.join("umail.redb");
    let mut bytes = std::fs::read(&db).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&db, bytes).unwrap();
    let live = server.data_dir().join("umail.redb");
    let live_before = std::fs::read(&live).unwrap();
    fails_with(
        &server,
        &["restore", damaged.to_str().unwrap(), "--force"],
        "does not match the manifest",
    );
    assert!(std::fs::read(&live).unwrap() == live_before);

    // An interrupted backup (no manifest) is not a backup.
    let partial = backups.path().join("partial");
    copy_dir(&b1, &partial);
    std::fs::remove_file(partial.join("manifest.json")).unwrap();
    fails_with(
        &server,
        &["restore", partial.to_str().unwrap(), "--force"],
        "is not a umail backup",
    );

    // The disk dies: the data directory is gone.
    std::fs::remove_dir_all(server.data_dir()).unwrap();
    let out = server.umail_ok(&["restore", b1s]);
    assert!(out.contains("restored"), "{out}");
    assert_eq!(
        std::fs::read(server.data_dir().join("tls/cert.pem")).unwrap(),
        cert_before,
        "clients see the same certificate"
    );
    server.spawn();
    assert_eq!(subjects(&server), ["before the backup"]);
    send(&server, "after the restore");
    assert_eq!(
        subjects(&server),
        ["after the restore", "before the backup"]
    );

    // Offline backup, and --force keeps the database it replaces.
    assert!(server.terminate().success());
    let b2 = backups.path().join("b2");
    let out = server.umail_ok(&["backup", b2.to_str().unwrap()]);
    assert!(out.contains("verified"), "{out}");
    let out = server.umail_ok(&["restore", b1s, "--force"]);
    assert!(out.contains("before-restore"), "{out}");
    let kept: Vec<String> = std::fs::read_dir(server.data_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("umail.redb.before-restore-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    server.spawn();
    assert_eq!(subjects(&server), ["before the backup"]);
}
