//! SEARCH through the shared header-summary cache and batched reads:
//! the same UID in two mailboxes, or in a mailbox deleted and created
//! again (new UIDVALIDITY), never answers from the other message; summary
//! answers equal full-parse answers; FETCH of header items from a
//! header-only read equals the same items from a whole-message read;
//! batches larger than one store read.

mod common;

use common::*;

async fn logged_in(env: &Env) -> Client {
    let mut c = Client::new(env, plaintext_config());
    c.output();
    let r = c.login("alice@example.com", "secret").await;
    assert!(r.contains("l1 OK"), "{r}");
    c
}

async fn search(c: &mut Client, criteria: &str) -> String {
    let r = c.send(&format!("s UID SEARCH {criteria}\r\n")).await;
    let line = r.lines().next().unwrap_or_default().to_string();
    assert!(r.ends_with("s OK SEARCH completed\r\n"), "{r}");
    line
}

#[tokio::test]
async fn same_uid_elsewhere_or_after_uidvalidity_change_never_mixes() {
    let env = env();
    let mut c = logged_in(&env).await;
    assert!(c.send("c CREATE Work\r\n").await.contains("c OK"));
    append(&mut c, "INBOX", "", &sample_message("apples", "x")).await;
    append(&mut c, "Work", "", &sample_message("pears", "x")).await;

    c.send("a SELECT INBOX\r\n").await;
    assert_eq!(search(&mut c, "SUBJECT apples").await, "* SEARCH 1");
    assert_eq!(search(&mut c, "SUBJECT pears").await, "* SEARCH");
    c.send("b SELECT Work\r\n").await;
    assert_eq!(search(&mut c, "SUBJECT pears").await, "* SEARCH 1");
    assert_eq!(search(&mut c, "SUBJECT apples").await, "* SEARCH");
    assert!(!env.cache.is_empty());

    // Work again, with new UIDs: its UID 1 is another message now.
    c.send("u UNSELECT\r\n").await;
    assert!(c.send("d DELETE Work\r\n").await.contains("d OK"));
    assert!(c.send("e CREATE Work\r\n").await.contains("e OK"));
    append(&mut c, "Work", "", &sample_message("cherries", "x")).await;
    let r = c.send("f SELECT Work\r\n").await;
    assert!(r.contains("[UIDNEXT 2]"), "{r}");
    assert_eq!(search(&mut c, "SUBJECT cherries").await, "* SEARCH 1");
    assert_eq!(search(&mut c, "SUBJECT pears").await, "* SEARCH");

    // Another session of the server shares the cache and agrees.
    let mut other = logged_in(&env).await;
    other.send("a SELECT INBOX\r\n").await;
    assert_eq!(search(&mut other, "SUBJECT apples").await, "* SEARCH 1");
    assert_eq!(search(&mut other, "NOT SUBJECT apples").await, "* SEARCH");
}

#[tokio::test]
async fn summaries_answer_as_the_full_parse_does() {
    let env = env();
    let mut c = logged_in(&env).await;
    let messages = [
        sample_message("Quarterly report", "numbers"),
        // GB2312 encoded word: "中文".
        "From: =?GBK?B?1cXI/Q==?= <zs@example.cn>\r\nTo: a@example.com, \"B\" <b@example.com>\r\nCc: c@example.com\r\nSubject: =?GB2312?B?1tDOxA==?=\r\nDate: Tue, 6 Feb 2024 10:00:00 +0000\r\n\r\nbody\r\n".to_string(),
        // Two Subject fields, a folded one and a Bcc.
        "Subject: first\r\nSubject: second\r\n folded part\r\nBcc: hidden@example.net\r\nFrom: x@example.org\r\n\r\nbody\r\n".to_string(),
        // No header fields of interest, bare LF line ends.
        "X-Other: Quarterly\n\nbody\n".to_string(),
        // Unparsable date, empty subject.
        "Subject:\r\nDate: yesterday\r\nFrom: <>\r\n\r\n".to_string(),
    ];
    for m in &messages {
        append(&mut c, "INBOX", "", m).await;
    }
    c.send("a SELECT INBOX\r\n").await;
    let keys = [
        "SUBJECT quarterly",
        "SUBJECT 中文",
        "SUBJECT \"\"",
        "SUBJECT second",
        "SUBJECT \"folded part\"",
        "FROM 张三",
        "FROM zs@EXAMPLE.cn",
        "FROM bob",
        "TO b@example.com",
        "TO \"\"",
        "CC c@example",
        "BCC hidden",
        "HEADER Subject first",
        "HEADER FROM \"\"",
        "HEADER X-Other quarterly",
        "SENTON 6-Feb-2024",
        "SENTBEFORE 6-Feb-2024",
        "SENTSINCE 1-Jan-2000",
        "NOT SUBJECT quarterly",
        "OR SUBJECT first FROM bob",
        "UID 2:* SUBJECT 中文",
    ];
    for key in keys {
        let key = key
            .replace("中文", "{6+}\r\n中文")
            .replace("张三", "{6+}\r\n张三");
        let summary = search(&mut c, &format!("CHARSET UTF-8 {key}")).await;
        // BODY forces the whole-message parse for the same criteria.
        let parsed = search(
            &mut c,
            &format!("CHARSET UTF-8 OR ({key}) BODY no-such-text-anywhere"),
        )
        .await;
        assert_eq!(summary, parsed, "{key}");
    }
    assert_eq!(search(&mut c, "SUBJECT quarterly").await, "* SEARCH 1");
    assert_eq!(
        search(&mut c, "CHARSET UTF-8 SUBJECT {6+}\r\n中文").await,
        "* SEARCH 2"
    );
    assert_eq!(search(&mut c, "SUBJECT second").await, "* SEARCH 3");
    assert_eq!(search(&mut c, "SENTON 6-Feb-2024").await, "* SEARCH 2");
}

#[tokio::test]
async fn header_only_fetch_equals_whole_message_fetch() {
    let env = env();
    let mut c = logged_in(&env).await;
    let multipart = "From: a@example.com\r\nSubject: parts\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\none\r\n--b--\r\n";
    append(&mut c, "INBOX", "", &sample_message("hello", "body")).await;
    append(&mut c, "INBOX", "", multipart).await;
    append(&mut c, "INBOX", "", "Subject: no body").await;
    c.send("a SELECT INBOX\r\n").await;
    for uid in 1..=3 {
        let items = "UID ENVELOPE RFC822.HEADER BODY.PEEK[HEADER] BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)] BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT)]<0.20>";
        let header = c.send(&format!("f UID FETCH {uid} ({items})\r\n")).await;
        assert!(header.ends_with("f OK FETCH completed\r\n"), "{header}");
        let whole = c
            .send(&format!("g UID FETCH {uid} ({items} BODY.PEEK[TEXT])\r\n"))
            .await;
        let head = header.split(")\r\nf OK").next().unwrap();
        assert!(whole.starts_with(head), "{header}\n---\n{whole}");
    }
}

#[tokio::test]
async fn searches_and_fetches_span_several_batches() {
    let env = env();
    let mut c = logged_in(&env).await;
    for i in 0..600 {
        let subject = if i % 3 == 0 {
            format!("hit {i}")
        } else {
            format!("miss {i}")
        };
        append(&mut c, "INBOX", "", &sample_message(&subject, "text")).await;
    }
    c.send("a SELECT INBOX\r\n").await;
    let hits: Vec<String> = (0..600)
        .filter(|i| i % 3 == 0)
        .map(|i| (i + 1).to_string())
        .collect();
    let expect = format!("* SEARCH {}", hits.join(" "));
    // Twice: from the store, then from the cache.
    assert_eq!(search(&mut c, "SUBJECT hit").await, expect);
    assert_eq!(search(&mut c, "SUBJECT hit").await, expect);
    assert_eq!(
        search(&mut c, "OR SUBJECT hit BODY nothing-here").await,
        expect
    );
    let r = c
        .send("f FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
        .await;
    assert_eq!(
        r.matches(" FETCH (BODY[HEADER.FIELDS (SUBJECT)] {").count(),
        600
    );
    assert!(
        r.contains("* 600 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {21}\r\nSubject: miss 599\r\n\r\n)"),
        "{}",
        &r[r.len() - 200..]
    );
    let r = c.send("g FETCH 1:* (BODY.PEEK[TEXT])\r\n").await;
    assert_eq!(r.matches("BODY[TEXT] {6}\r\ntext\r\n)").count(), 600);
}
