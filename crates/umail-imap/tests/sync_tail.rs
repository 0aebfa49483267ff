//! A selected session learns of new messages by reading only the UIDs
//! above the last one it knows (`MailStore::messages_after`): new
//! messages whose flags changed, or that were expunged, before the session
//! looked are reported once and with their current state.

mod common;

use common::*;

#[tokio::test]
async fn new_messages_changed_or_gone_before_the_session_looks() {
    let env = env();
    let mut a = Client::new(&env, plaintext_config());
    a.output();
    a.login("alice@example.com", "secret").await;
    append(&mut a, "INBOX", "", &sample_message("one", "x")).await;
    a.send("s SELECT INBOX\r\n").await;

    let mut b = Client::new(&env, plaintext_config());
    b.output();
    b.login("alice@example.com", "secret").await;
    b.send("s SELECT INBOX\r\n").await;
    append(&mut b, "INBOX", "", &sample_message("two", "x")).await;
    append(&mut b, "INBOX", "", &sample_message("three", "x")).await;
    b.send("a UID STORE 2 +FLAGS.SILENT (\\Flagged)\r\n").await;
    b.send("b UID STORE 3 +FLAGS.SILENT (\\Deleted)\r\n").await;
    b.send("c UID STORE 1 +FLAGS.SILENT (\\Seen)\r\n").await;
    let r = b.send("d EXPUNGE\r\n").await;
    assert!(r.contains("* 3 EXPUNGE"), "{r}");

    // UID 3 came and went: only UID 2 is new, with its current flags.
    let r = a.send("n NOOP\r\n").await;
    assert_eq!(
        r,
        "* 1 FETCH (FLAGS (\\Seen) UID 1)\r\n* 2 EXISTS\r\nn OK completed\r\n"
    );
    let r = a.send("f FETCH 1:* (UID FLAGS)\r\n").await;
    assert_eq!(
        r,
        "* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n* 2 FETCH (UID 2 FLAGS (\\Flagged))\r\nf OK FETCH completed\r\n"
    );
    assert_eq!(a.send("m NOOP\r\n").await, "m OK completed\r\n");

    // A flag change after the read arrives as an event, once.
    b.send("e UID STORE 2 -FLAGS.SILENT (\\Flagged)\r\n").await;
    append(&mut b, "INBOX", "(\\Seen)", &sample_message("four", "x")).await;
    let r = a.send("o NOOP\r\n").await;
    assert_eq!(
        r,
        "* 2 FETCH (FLAGS () UID 2)\r\n* 3 EXISTS\r\no OK completed\r\n"
    );
    let r = a.send("g UID SEARCH SUBJECT four\r\n").await;
    assert_eq!(r, "* SEARCH 4\r\ng OK SEARCH completed\r\n");
}

/// SELECT of the mailbox already selected reuses the view brought up to
/// date from the change feed: the answer is that of a fresh SELECT (the
/// pending updates are not sent, the new view replaces them).
#[tokio::test]
async fn selecting_the_selected_mailbox_again_equals_a_fresh_select() {
    let env = env();
    let mut a = Client::new(&env, plaintext_config());
    a.output();
    a.login("alice@example.com", "secret").await;
    for s in ["one", "two", "three"] {
        append(&mut a, "INBOX", "", &sample_message(s, "x")).await;
    }
    a.send("e ENABLE CONDSTORE\r\n").await;
    a.send("s SELECT INBOX\r\n").await;

    let mut b = Client::new(&env, plaintext_config());
    b.output();
    b.login("alice@example.com", "secret").await;
    b.send("s SELECT INBOX\r\n").await;
    b.send("a UID STORE 2 +FLAGS.SILENT ($Work)\r\n").await;
    b.send("b UID STORE 1 +FLAGS.SILENT (\\Deleted)\r\n").await;
    b.send("c EXPUNGE\r\n").await;
    append(&mut b, "INBOX", "(\\Seen)", &sample_message("four", "x")).await;

    let again = a.send("t SELECT INBOX\r\n").await;
    // A new session's SELECT is the reference.
    let mut c = Client::new(&env, plaintext_config());
    c.output();
    c.login("alice@example.com", "secret").await;
    c.send("e ENABLE CONDSTORE\r\n").await;
    let fresh = c.send("t SELECT INBOX\r\n").await;
    assert_eq!(again, fresh);
    assert!(again.contains("* 3 EXISTS\r\n"), "{again}");
    assert!(
        !again.contains("EXPUNGE") && !again.contains("FETCH"),
        "{again}"
    );
    // Flags and MODSEQs as a fresh read gives them.
    let got = a.send("f FETCH 1:* (UID FLAGS)\r\n").await;
    assert_eq!(got, c.send("f FETCH 1:* (UID FLAGS)\r\n").await);
    assert!(
        got.starts_with("* 1 FETCH (UID 2 FLAGS ($Work) MODSEQ ("),
        "{got}"
    );
    assert!(
        got.contains("* 3 FETCH (UID 4 FLAGS (\\Seen) MODSEQ ("),
        "{got}"
    );
    assert_eq!(a.send("n NOOP\r\n").await, "n OK completed\r\n");
}
