//! SORT / THREAD (RFC 5256), ESORT (RFC 5267) and SORT=DISPLAY (RFC 5957)
//! transcripts over the in-memory store.

mod common;

use common::*;

/// APPENDs `msg` to INBOX with the given INTERNALDATE.
async fn append_at(c: &mut Client, date: &str, msg: &str) {
    let r = c
        .send(&format!(
            "ap APPEND INBOX \"{date}\" {{{}+}}\r\n{msg}\r\n",
            msg.len()
        ))
        .await;
    assert!(r.starts_with("ap OK [APPENDUID"), "{r}");
}

fn message(headers: &[&str], body_len: usize) -> String {
    let mut m = String::new();
    for h in headers {
        m.push_str(h);
        m.push_str("\r\n");
    }
    m.push_str("\r\n");
    m.push_str(&"x".repeat(body_len));
    m.push_str("\r\n");
    m
}

async fn logged_in() -> (Env, Client) {
    let env = env();
    let mut c = Client::new(&env, plaintext_config());
    c.output();
    let r = c.login("alice@example.com", "secret").await;
    assert!(r.starts_with("l1 OK [CAPABILITY"), "{r}");
    (env, c)
}

/// Five messages whose every sort key orders them differently. A first
/// message is appended and expunged so that UID = sequence number + 1.
///
/// | seq | internal | Date (UTC)        | From (display)       | To (display)      | Cc  | base subject | size |
/// | 1   | 01-Feb   | 06-Feb 09:00      | carol (Zed)          | zoe (Yolanda)     | bob | beta         | 5th  |
/// | 2   | 03-Feb   | 06-Feb 04:00      | dave (Adam)          | mike (-)          | -   | alpha        | 2nd  |
/// | 3   | 02-Feb   | unparseable       | alice (-)            | adam (Bob)        | ann | beta         | 4th  |
/// | 4   | 04-Feb   | missing           | BOB (Bea)            | yan (Carl)        | zed | 中文 (GB2312) | 1st  |
/// | 5   | 05-Feb   | 07-Feb 10:00      | carol (-)            | quinn (Quinn)     | -   | alpha        | 3rd  |
async fn mailbox_with_five() -> (Env, Client) {
    let (env, mut c) = logged_in().await;
    append_at(
        &mut c,
        "01-Jan-2024 00:00:00 +0000",
        &message(&["Subject: gone"], 1),
    )
    .await;
    let msgs = [
        (
            "01-Feb-2024 12:00:00 +0000",
            message(
                &[
                    "From: Zed <carol@example.org>",
                    "To: \"Yolanda\" <zoe@example.org>",
                    "Cc: bob@example.org",
                    "Subject: Re: beta",
                    "Date: Tue, 6 Feb 2024 09:00:00 +0000",
                    "Message-ID: <b2@example.org>",
                    "References: <b1@example.org>",
                ],
                2000,
            ),
        ),
        (
            "03-Feb-2024 12:00:00 +0000",
            message(
                &[
                    "From: Adam <dave@example.org>",
                    "To: mike@example.org",
                    "Subject: Alpha",
                    "Date: Mon, 5 Feb 2024 23:00:00 -0500",
                    "Message-ID: <a1@example.org>",
                ],
                500,
            ),
        ),
        (
            "02-Feb-2024 12:00:00 +0000",
            message(
                &[
                    "From: \"\" <alice@example.org>",
                    "To: Bob <adam@example.org>",
                    "Cc: Ann <ann@example.org>",
                    "Subject: [list]   BETA",
                    "Date: not a date at all",
                    "Message-ID: <b1@example.org>",
                ],
                1500,
            ),
        ),
        (
            "04-Feb-2024 12:00:00 +0000",
            message(
                &[
                    "From: Bea <BOB@example.org>",
                    "To: Carl <yan@example.org>",
                    "Cc: Carol <zed@example.org>",
                    "Subject: =?GB2312?B?1tDOxA==?=",
                    "Message-ID: <c1@example.org>",
                    "In-Reply-To: <a1@example.org>",
                ],
                0,
            ),
        ),
        (
            "05-Feb-2024 12:00:00 +0000",
            message(
                &[
                    "From: carol@example.org",
                    "To: Quinn <quinn@example.org>",
                    "Subject: Fwd: alpha",
                    "Date: Wed, 7 Feb 2024 10:00:00 +0000",
                    "Message-ID: <a2@example.org>",
                    "References: <a1@example.org>",
                ],
                1000,
            ),
        ),
    ];
    for (date, m) in &msgs {
        append_at(&mut c, date, m).await;
    }
    c.send("s SELECT INBOX\r\n").await;
    let r = c.send("d STORE 1 +FLAGS.SILENT (\\Deleted)\r\n").await;
    assert!(r.ends_with("d OK STORE completed\r\n"), "{r}");
    let r = c.send("e EXPUNGE\r\n").await;
    assert_eq!(r, "* 1 EXPUNGE\r\ne OK EXPUNGE completed\r\n");
    (env, c)
}

async fn sort(c: &mut Client, tag: &str, args: &str) -> String {
    let r = c.send(&format!("{tag} {args}\r\n")).await;
    let ok = format!("{tag} OK ");
    assert!(r.contains(&ok), "{args}: {r}");
    r.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn capabilities_only_after_login() {
    let env = env();
    let mut c = Client::new(&env, plaintext_config());
    let g = c.output();
    assert!(!g.contains("SORT") && !g.contains("THREAD"), "{g}");
    let r = c.login("alice@example.com", "secret").await;
    assert!(
        r.contains(" SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT THREAD=REFERENCES ESORT"),
        "{r}"
    );
    let r = c.send("a CAPABILITY\r\n").await;
    assert!(r.contains(" ESORT"), "{r}");
    // Authenticated but not selected: SORT is not allowed yet.
    assert_eq!(
        c.send("b SORT (DATE) UTF-8 ALL\r\n").await,
        "b BAD SORT not allowed now\r\n"
    );
    assert_eq!(
        c.send("c THREAD REFERENCES UTF-8 ALL\r\n").await,
        "c BAD THREAD not allowed now\r\n"
    );
}

#[tokio::test]
async fn sort_by_each_key() {
    let (_env, mut c) = mailbox_with_five().await;
    for (key, expected) in [
        ("ARRIVAL", "* SORT 1 3 2 4 5"),
        // 3 has an unparseable Date and 4 none: their INTERNALDATE counts.
        // 2's "23:00 -0500" is 04:00 UTC, before 1's 09:00 UTC.
        ("DATE", "* SORT 3 4 2 1 5"),
        // addr-mailbox, i;ascii-casemap: alice BOB carol carol dave.
        ("FROM", "* SORT 3 4 1 5 2"),
        ("TO", "* SORT 3 2 5 4 1"),
        // No Cc sorts as the empty string, first.
        ("CC", "* SORT 2 5 3 1 4"),
        ("SIZE", "* SORT 4 2 5 3 1"),
        // Base subjects: alpha alpha beta beta 中文; ties by sequence.
        ("SUBJECT", "* SORT 2 5 1 3 4"),
        // Display name, else the address: Adam alice@ Bea carol@ Zed.
        ("DISPLAYFROM", "* SORT 2 3 4 5 1"),
        ("DISPLAYTO", "* SORT 3 4 2 5 1"),
        ("REVERSE SIZE", "* SORT 1 3 5 2 4"),
        ("REVERSE ARRIVAL", "* SORT 5 4 2 3 1"),
        // Several keys; REVERSE applies to the one it precedes.
        ("SUBJECT REVERSE DATE", "* SORT 5 2 1 3 4"),
        ("FROM SUBJECT", "* SORT 3 4 5 1 2"),
        ("REVERSE SUBJECT SIZE", "* SORT 4 3 1 2 5"),
        ("reverse from", "* SORT 2 1 5 4 3"),
    ] {
        let line = sort(&mut c, "a", &format!("SORT ({key}) UTF-8 ALL")).await;
        assert_eq!(line, expected, "SORT ({key})");
    }
    // US-ASCII is accepted as well.
    let line = sort(&mut c, "b", "SORT (SIZE) US-ASCII ALL").await;
    assert_eq!(line, "* SORT 4 2 5 3 1");
}

#[tokio::test]
async fn sort_with_search_criteria_and_uid_sort() {
    let (_env, mut c) = mailbox_with_five().await;
    assert_eq!(
        sort(&mut c, "a", "SORT (SIZE) UTF-8 FROM carol").await,
        "* SORT 5 1"
    );
    assert_eq!(
        sort(
            &mut c,
            "b",
            "SORT (REVERSE DATE) UTF-8 OR SUBJECT alpha LARGER 1800"
        )
        .await,
        "* SORT 5 1 2"
    );
    // The same charset handling as SEARCH: a UTF-8 literal finds the
    // GB2312-encoded subject.
    let r = c.send("c SORT (DATE) UTF-8 SUBJECT {6}\r\n").await;
    assert!(r.starts_with("+ "), "{r}");
    let r = c.send("中文\r\n").await;
    assert_eq!(r, "* SORT 4\r\nc OK SORT completed\r\n");
    assert_eq!(
        sort(&mut c, "d", "SORT (ARRIVAL) UTF-8 2:4").await,
        "* SORT 3 2 4"
    );
    assert_eq!(
        sort(&mut c, "e", "SORT (SIZE) UTF-8 DELETED").await,
        "* SORT"
    );
    // UID SORT answers with UIDs (UID = seq + 1 here).
    assert_eq!(
        sort(&mut c, "f", "UID SORT (SIZE) UTF-8 ALL").await,
        "* SORT 5 3 6 4 2"
    );
    assert_eq!(
        sort(&mut c, "g", "UID SORT (SUBJECT) UTF-8 UID 3:5").await,
        "* SORT 3 4 5"
    );
    // A MODSEQ search key adds the highest MODSEQ (RFC 7162 §3.1.5).
    let line = sort(&mut c, "h", "SORT (ARRIVAL) UTF-8 MODSEQ 1").await;
    assert!(line.starts_with("* SORT 1 3 2 4 5 (MODSEQ "), "{line}");
}

#[tokio::test]
async fn esort_return_options() {
    let (_env, mut c) = mailbox_with_five().await;
    assert_eq!(
        c.send("a SORT RETURN (MIN MAX COUNT ALL) (SIZE) UTF-8 ALL\r\n")
            .await,
        "* ESEARCH (TAG \"a\") MIN 4 MAX 1 COUNT 5 ALL 4,2,5,3,1\r\na OK SORT completed\r\n"
    );
    assert_eq!(
        c.send("b UID SORT RETURN (MIN MAX COUNT ALL) (SIZE) UTF-8 ALL\r\n")
            .await,
        "* ESEARCH (TAG \"b\") UID MIN 5 MAX 2 COUNT 5 ALL 5,3,6,4,2\r\nb OK SORT completed\r\n"
    );
    // ALL keeps the sort order; only ascending runs become ranges.
    assert_eq!(
        c.send("c SORT RETURN () (ARRIVAL) UTF-8 ALL\r\n").await,
        "* ESEARCH (TAG \"c\") ALL 1,3,2,4:5\r\nc OK SORT completed\r\n"
    );
    assert_eq!(
        c.send("d SORT RETURN (COUNT) (DATE) UTF-8 DELETED\r\n")
            .await,
        "* ESEARCH (TAG \"d\") COUNT 0\r\nd OK SORT completed\r\n"
    );
    assert_eq!(
        c.send("e SORT RETURN (MIN MAX) (DATE) UTF-8 DELETED\r\n")
            .await,
        "* ESEARCH (TAG \"e\")\r\ne OK SORT completed\r\n"
    );
    // SAVE (RFC 5182 with ESORT): the set is saved, nothing is returned.
    assert_eq!(
        c.send("f SORT RETURN (SAVE) (DATE) UTF-8 FROM carol\r\n")
            .await,
        "f OK SORT completed\r\n"
    );
    assert_eq!(
        c.send("g SEARCH $\r\n").await,
        "* SEARCH 1 5\r\ng OK SEARCH completed\r\n"
    );
}

#[tokio::test]
async fn thread_ordered_subject_and_references() {
    let (_env, mut c) = mailbox_with_five().await;
    // Subjects beta (3 oldest, then 1), 中文 (4), alpha (2, then 5);
    // threads ordered by their first message's sent date.
    assert_eq!(
        sort(&mut c, "a", "THREAD ORDEREDSUBJECT UTF-8 ALL").await,
        "* THREAD (3 1)(4)(2 5)"
    );
    // 1 references 3; 4 (In-Reply-To) and 5 (References) answer 2.
    assert_eq!(
        sort(&mut c, "b", "THREAD REFERENCES UTF-8 ALL").await,
        "* THREAD (3 1)(2 (4)(5))"
    );
    assert_eq!(
        sort(&mut c, "c", "UID THREAD REFERENCES UTF-8 ALL").await,
        "* THREAD (4 2)(3 (5)(6))"
    );
    // Without 2 the replies to it hang off a dummy: 4 and 5 become
    // siblings at the top level; 4's subject differs, so no merge.
    assert_eq!(
        sort(&mut c, "d", "THREAD REFERENCES US-ASCII NOT 2").await,
        "* THREAD (3 1)((4)(5))"
    );
    assert_eq!(
        sort(&mut c, "e", "THREAD REFERENCES UTF-8 DELETED").await,
        "* THREAD"
    );
}

#[tokio::test]
async fn errors_give_bad_or_badcharset() {
    let (_env, mut c) = mailbox_with_five().await;
    for cmd in [
        "a SORT (DATE) KOI8-R ALL",
        "a UID SORT (DATE) ISO-8859-1 ALL",
        "a THREAD REFERENCES KOI8-R ALL",
        "a SORT RETURN (ALL) (DATE) X-UNKNOWN ALL",
    ] {
        assert_eq!(
            c.send(&format!("{cmd}\r\n")).await,
            "a NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n",
            "{cmd}"
        );
    }
    for cmd in [
        "b SORT DATE UTF-8 ALL",
        "b SORT () UTF-8 ALL",
        "b SORT (FOO) UTF-8 ALL",
        "b SORT (REVERSE) UTF-8 ALL",
        "b SORT (REVERSE REVERSE DATE) UTF-8 ALL",
        "b SORT (DATE) UTF-8",
        "b SORT (DATE)",
        "b SORT (DATE SUBJECT UTF-8 ALL",
        "b SORT RETURN (FOO) (DATE) UTF-8 ALL",
        "b SORT (DATE) UTF-8 FROM",
        "b THREAD FOO UTF-8 ALL",
        "b THREAD REFERENCES UTF-8",
        "b THREAD REFERENCES",
        "b UID THREAD (REFERENCES) UTF-8 ALL",
    ] {
        let r = c.send(&format!("{cmd}\r\n")).await;
        assert!(r.starts_with("b BAD "), "{cmd}: {r}");
    }
    // The session carries on.
    assert_eq!(
        sort(&mut c, "c", "SORT (ARRIVAL) UTF-8 ALL").await,
        "* SORT 1 3 2 4 5"
    );
}

#[tokio::test]
async fn rev1_and_rev2_sessions_answer_alike() {
    let (_env, mut c) = mailbox_with_five().await;
    let rev1 = c.send("a SORT (SUBJECT) UTF-8 ALL\r\n").await;
    let rev1_thread = c.send("a THREAD REFERENCES UTF-8 ALL\r\n").await;
    c.send("u UNSELECT\r\n").await;
    assert_eq!(
        c.send("b ENABLE IMAP4rev2\r\n").await,
        "* ENABLED IMAP4rev2\r\nb OK ENABLE completed\r\n"
    );
    c.send("s SELECT INBOX\r\n").await;
    // SORT has no rev2 form: the untagged SORT stays (ESEARCH only with
    // RETURN), unlike SEARCH.
    assert_eq!(c.send("a SORT (SUBJECT) UTF-8 ALL\r\n").await, rev1);
    assert_eq!(
        c.send("a THREAD REFERENCES UTF-8 ALL\r\n").await,
        rev1_thread
    );
    assert_eq!(
        c.send("c SORT RETURN (COUNT) (SUBJECT) UTF-8 ALL\r\n")
            .await,
        "* ESEARCH (TAG \"c\") COUNT 5\r\nc OK SORT completed\r\n"
    );
}

#[tokio::test]
async fn chinese_subjects_sort_and_thread_together() {
    let (_env, mut c) = logged_in().await;
    for (date, subject) in [
        ("Fri, 2 Feb 2024 10:00:00 +0800", "=?GB2312?B?1tDOxA==?="),
        ("Sat, 3 Feb 2024 10:00:00 +0800", "Re: =?UTF-8?B?5Lit5paH?="),
        ("Thu, 1 Feb 2024 10:00:00 +0800", "English"),
        ("Sun, 4 Feb 2024 10:00:00 +0800", "=?GBK?B?06LOxA==?="),
    ] {
        let m = message(
            &[&format!("Subject: {subject}"), &format!("Date: {date}")],
            10,
        );
        append(&mut c, "INBOX", "", &m).await;
    }
    c.send("s SELECT INBOX\r\n").await;
    // 中 (U+4E2D) before 英 (U+82F1): UTF-8 octet order is code point order.
    assert_eq!(
        sort(&mut c, "a", "SORT (SUBJECT) UTF-8 ALL").await,
        "* SORT 3 1 2 4"
    );
    assert_eq!(
        sort(&mut c, "b", "THREAD ORDEREDSUBJECT UTF-8 ALL").await,
        "* THREAD (3)(1 2)(4)"
    );
    assert_eq!(
        sort(&mut c, "c", "THREAD REFERENCES UTF-8 ALL").await,
        "* THREAD (3)(1 2)(4)"
    );
}

#[tokio::test]
async fn references_dummies_and_subject_merge() {
    let (_env, mut c) = logged_in().await;
    let msgs = [
        // 1 and 2 answer a message that is not in the mailbox.
        (
            "Mon, 1 Jan 2024 10:00:00 +0000",
            "Re: lost",
            "<r1@x>",
            "<root@x>",
        ),
        (
            "Tue, 2 Jan 2024 10:00:00 +0000",
            "Re: lost",
            "<r2@x>",
            "<root@x>",
        ),
        // 3 and 4: same subject, no references: a dummy joins them.
        ("Wed, 3 Jan 2024 10:00:00 +0000", "topic", "<t1@x>", ""),
        ("Thu, 4 Jan 2024 10:00:00 +0000", "Topic", "<t2@x>", ""),
        // 5 original, 6 a reply by subject only: 6 goes under 5.
        ("Fri, 5 Jan 2024 10:00:00 +0000", "news", "<n1@x>", ""),
        ("Sat, 6 Jan 2024 10:00:00 +0000", "Re: news", "<n2@x>", ""),
    ];
    for (date, subject, id, refs) in msgs {
        let refs = if refs.is_empty() {
            String::new()
        } else {
            format!("References: {refs}")
        };
        let mut headers = vec![
            format!("Date: {date}"),
            format!("Subject: {subject}"),
            format!("Message-ID: {id}"),
        ];
        if !refs.is_empty() {
            headers.push(refs);
        }
        let h: Vec<&str> = headers.iter().map(|s| s.as_str()).collect();
        append(&mut c, "INBOX", "", &message(&h, 5)).await;
    }
    c.send("s SELECT INBOX\r\n").await;
    assert_eq!(
        sort(&mut c, "a", "THREAD REFERENCES UTF-8 ALL").await,
        "* THREAD ((1)(2))((3)(4))(5 6)"
    );
    assert_eq!(
        sort(&mut c, "b", "THREAD ORDEREDSUBJECT UTF-8 ALL").await,
        "* THREAD (1 2)(3 4)(5 6)"
    );
}

#[tokio::test]
async fn hostile_references_headers() {
    let (_env, mut c) = logged_in().await;
    // A reference cycle: A refs B, B refs A.
    let a = message(&["Subject: a", "Message-ID: <A@x>", "References: <B@x>"], 1);
    let b = message(&["Subject: b", "Message-ID: <B@x>", "References: <A@x>"], 1);
    // Duplicate Message-IDs: the first keeps the ID.
    let d1 = message(&["Subject: d", "Message-ID: <D@x>"], 1);
    let d2 = message(&["Subject: e", "Message-ID: <D@x>", "References: <D@x>"], 1);
    // A huge References header (20,000 IDs, ~300 KB) naming itself too.
    let mut huge = String::from("References:");
    for i in 0..20_000 {
        huge.push_str(&format!("\r\n <h{i}@x>"));
    }
    huge.push_str("\r\n <H@x>");
    let h = message(&["Subject: h", "Message-ID: <H@x>", &huge], 1);
    for (i, m) in [a, b, d1, d2, h].iter().enumerate() {
        append_at(&mut c, &format!("0{}-Mar-2024 10:00:00 +0000", i + 1), m).await;
    }
    // A 300-message chain, each referencing all earlier ones.
    let mut refs = String::new();
    for i in 0..300 {
        let m = message(
            &[
                "Subject: chain",
                &format!("Message-ID: <c{i}@x>"),
                &format!("References:{refs}"),
            ],
            1,
        );
        append_at(&mut c, "10-Mar-2024 10:00:00 +0000", &m).await;
        refs.push_str(&format!(" <c{i}@x>"));
    }
    c.send("s SELECT INBOX\r\n").await;
    let line = sort(&mut c, "a", "THREAD REFERENCES UTF-8 ALL").await;
    let chain: Vec<String> = (6..=305).map(|n| n.to_string()).collect();
    let expected = format!("* THREAD (2 1)(3 4)(5)({})", chain.join(" "));
    assert_eq!(line, expected);
    let line = sort(&mut c, "b", "THREAD ORDEREDSUBJECT UTF-8 ALL").await;
    assert!(
        line.starts_with("* THREAD (1)(2)(3)(4)(5)(6 (7)(8)"),
        "{}",
        &line[..60]
    );
    let line = sort(&mut c, "c", "SORT (REVERSE SUBJECT) UTF-8 ALL").await;
    assert!(line.starts_with("* SORT 5 4 3 6 7 "), "{}", &line[..40]);
}
