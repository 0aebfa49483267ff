//! QRESYNC (RFC 7162 §3.2) transcripts: ENABLE, SELECT (QRESYNC ...),
//! UID FETCH (CHANGEDSINCE n VANISHED), and VANISHED instead of EXPUNGE;
//! over a store that remembers expunges and over one that does not (the
//! known-UID fallback with seq-match-data).

mod common;

use std::sync::Arc;

use common::*;
use umail_core::memory::RequiredOnly;

fn has_line(out: &str, line: &str) -> bool {
    out.lines().any(|l| l == line)
}

/// The number in `[CODE n]` of an untagged OK.
fn code_value(out: &str, code: &str) -> u64 {
    let start = out.find(&format!("[{code} ")).expect(code) + code.len() + 2;
    out[start..]
        .split(']')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("number")
}

async fn logged_in_with(env: &Env, n: usize) -> Client {
    let mut c = Client::new(env, plaintext_config());
    c.output();
    c.login("alice@example.com", "secret").await;
    for i in 0..n {
        append(
            &mut c,
            "INBOX",
            "",
            &sample_message(&format!("m{i}"), "body"),
        )
        .await;
    }
    c
}

async fn other_session(env: &Env) -> Client {
    let mut b = Client::new(env, plaintext_config());
    b.output();
    b.login("alice@example.com", "secret").await;
    b.send("b0 SELECT INBOX\r\n").await;
    b
}

#[tokio::test]
async fn qresync_select_fetch_and_vanished() {
    let env = env();
    let mut a = logged_in_with(&env, 5).await;
    let r = a.send("c CAPABILITY\r\n").await;
    assert!(r.contains(" QRESYNC "), "{r}");
    // RFC 7162 §3.2.5: QRESYNC before ENABLE is BAD.
    let r = a.send("s0 SELECT INBOX (QRESYNC (1 1))\r\n").await;
    assert!(r.starts_with("s0 BAD"), "{r}");
    let r = a.send("e ENABLE QRESYNC\r\n").await;
    assert_eq!(r, "* ENABLED QRESYNC\r\ne OK ENABLE completed\r\n");
    let r = a.send("s1 SELECT INBOX\r\n").await;
    let validity = code_value(&r, "UIDVALIDITY");
    let known = code_value(&r, "HIGHESTMODSEQ");
    // Without QRESYNC, VANISHED is refused.
    let mut plain = logged_in_with(&env, 0).await;
    plain.send("p1 SELECT INBOX\r\n").await;
    let r = plain
        .send("p2 UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)\r\n")
        .await;
    assert!(r.starts_with("p2 BAD"), "{r}");

    // Another session flags UID 2 and expunges UIDs 3 and 4.
    let mut b = other_session(&env).await;
    b.send("b1 UID STORE 2 +FLAGS (\\Flagged)\r\n").await;
    b.send("b2 UID STORE 3:4 +FLAGS (\\Deleted)\r\n").await;
    let r = b.send("b3 EXPUNGE\r\n").await;
    assert!(r.contains("* 3 EXPUNGE"), "{r}");

    // A resynchronises with SELECT (QRESYNC).
    let r = a
        .send(&format!(
            "s2 SELECT INBOX (QRESYNC ({validity} {known}))\r\n"
        ))
        .await;
    assert!(has_line(&r, "* OK [CLOSED] Previous mailbox closed"), "{r}");
    assert!(has_line(&r, "* 3 EXISTS"), "{r}");
    assert!(has_line(&r, "* VANISHED (EARLIER) 3:4"), "{r}");
    let flagged = r
        .lines()
        .find(|l| l.starts_with("* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ ("))
        .unwrap_or_else(|| panic!("{r}"));
    assert!(!r.contains("FETCH (UID 1 "), "{r}");
    let v = r.find("VANISHED").unwrap_or(0);
    let f = r.find(flagged).unwrap_or(0);
    assert!(v < f, "VANISHED comes before FETCH: {r}");
    assert!(
        r.ends_with("s2 OK [READ-WRITE] SELECT completed\r\n"),
        "{r}"
    );

    // known-uids limits both reports.
    let r = a
        .send(&format!(
            "s3 SELECT INBOX (QRESYNC ({validity} {known} 1,3))\r\n"
        ))
        .await;
    assert!(has_line(&r, "* VANISHED (EARLIER) 3"), "{r}");
    assert!(!r.contains("FETCH"), "{r}");
    // A different UIDVALIDITY: a plain SELECT.
    let r = a
        .send(&format!(
            "s4 SELECT INBOX (QRESYNC ({} {known}))\r\n",
            validity + 1
        ))
        .await;
    assert!(!r.contains("VANISHED") && !r.contains("FETCH"), "{r}");
    // An up-to-date client hears nothing.
    let now = code_value(&r, "HIGHESTMODSEQ");
    let r = a
        .send(&format!("s5 SELECT INBOX (QRESYNC ({validity} {now}))\r\n"))
        .await;
    assert!(!r.contains("VANISHED") && !r.contains("FETCH"), "{r}");

    // UID FETCH (CHANGEDSINCE VANISHED): RFC 7162 §3.2.6.
    let r = a
        .send(&format!(
            "f1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE {known} VANISHED)\r\n"
        ))
        .await;
    let mut lines = r.lines();
    assert_eq!(lines.next(), Some("* VANISHED (EARLIER) 3:4"), "{r}");
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (")),
        "{r}"
    );
    let r = a
        .send(&format!(
            "f2 UID FETCH 4:5 (FLAGS) (CHANGEDSINCE {known} VANISHED)\r\n"
        ))
        .await;
    assert_eq!(
        r, "* VANISHED (EARLIER) 4\r\nf2 OK FETCH completed\r\n",
        "{r}"
    );
    let r = a.send("f3 UID FETCH 1:* (FLAGS) (VANISHED)\r\n").await;
    assert!(r.starts_with("f3 BAD"), "{r}");
    let r = a
        .send("f4 FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)\r\n")
        .await;
    assert!(r.starts_with("f4 BAD"), "{r}");

    // Expunges are VANISHED now: our own ...
    a.send("x1 UID STORE 5 +FLAGS.SILENT (\\Deleted)\r\n").await;
    let r = a.send("x2 EXPUNGE\r\n").await;
    assert_eq!(r, "* VANISHED 5\r\nx2 OK EXPUNGE completed\r\n");
    // ... another session's, at an allowed point ...
    b.send("b4 NOOP\r\n").await;
    b.send("b5 UID STORE 1 +FLAGS.SILENT (\\Deleted)\r\n").await;
    b.send("b6 UID EXPUNGE 1\r\n").await;
    let r = a.send("x3 FETCH 1 (UID)\r\n").await;
    assert!(!r.contains("VANISHED"), "not during FETCH: {r}");
    let r = a.send("x4 NOOP\r\n").await;
    assert_eq!(r, "* VANISHED 1\r\nx4 OK completed\r\n");
    // ... and MOVE's.
    let r = a.send("x5 UID MOVE 2 Archive\r\n").await;
    assert!(has_line(&r, "* VANISHED 2"), "{r}");
    assert!(!r.contains("EXPUNGE"), "{r}");
}

#[tokio::test]
async fn qresync_without_expunge_records_falls_back_to_known_uids() {
    let mut env = env();
    env.services.store = Arc::new(RequiredOnly(env.store.clone()));
    let mut a = logged_in_with(&env, 6).await;
    a.send("e ENABLE QRESYNC\r\n").await;
    let mut b = other_session(&env).await;
    // UID 1 goes before A's last sync.
    b.send("b1 UID STORE 1 +FLAGS.SILENT (\\Deleted)\r\n").await;
    b.send("b2 EXPUNGE\r\n").await;
    let r = a.send("s1 SELECT INBOX\r\n").await;
    let validity = code_value(&r, "UIDVALIDITY");
    let known = code_value(&r, "HIGHESTMODSEQ");
    // A knows UIDs 2..6 as messages 1..5. Then UID 5 goes.
    b.send("b3 UID STORE 5 +FLAGS.SILENT (\\Deleted)\r\n").await;
    b.send("b4 EXPUNGE\r\n").await;
    // No known-uids: every missing UID below UIDNEXT (a superset).
    let r = a
        .send(&format!(
            "s2 SELECT INBOX (QRESYNC ({validity} {known}))\r\n"
        ))
        .await;
    assert!(has_line(&r, "* VANISHED (EARLIER) 1,5"), "{r}");
    // known-uids: only those.
    let r = a
        .send(&format!(
            "s3 SELECT INBOX (QRESYNC ({validity} {known} 2:6))\r\n"
        ))
        .await;
    assert!(has_line(&r, "* VANISHED (EARLIER) 5"), "{r}");
    // seq-match-data shows messages 1..3 unchanged (UIDs 2..4): nothing
    // at or below UID 4 is reported.
    let r = a
        .send(&format!(
            "s4 SELECT INBOX (QRESYNC ({validity} {known} 1:6 (1:3 2:4)))\r\n"
        ))
        .await;
    assert!(has_line(&r, "* VANISHED (EARLIER) 5"), "{r}");
    // UID FETCH VANISHED: UIDs of the set not shown, up to the highest shown.
    let r = a
        .send(&format!(
            "f1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE {known} VANISHED)\r\n"
        ))
        .await;
    assert!(r.starts_with("* VANISHED (EARLIER) 1,5\r\n"), "{r}");
}
