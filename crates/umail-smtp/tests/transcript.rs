//! Session-level transcript tests: bytes in, bytes out, over the in-memory
//! services. No sockets.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use umail_core::config::{SecurityConfig, SmtpConfig};
use umail_core::{
    Action, Address, Envelope, Filter, MessageData, QueueState, Quota, ReversePath, SessionInfo,
    Verdict,
};
use umail_smtp::ListenerMode;

fn cfg() -> SmtpConfig {
    SmtpConfig::default()
}

fn plain(user: &str, pw: &str) -> String {
    B64.encode(format!("\0{user}\0{pw}"))
}

/// A submission session after STARTTLS, EHLO and AUTH as alice.
async fn alice_submission(smtp: SmtpConfig) -> Harness {
    let mut h = Harness::new(ListenerMode::Submission, smtp);
    h.ehlo().await;
    assert!(h.send("STARTTLS\r\n").await.starts_with("220 2.0.0"));
    h.send("EHLO client.example\r\n").await;
    let r = h
        .send(format!(
            "AUTH PLAIN {}\r\n",
            plain("alice@example.com", "alice-pw")
        ))
        .await;
    assert_eq!(r, "235 2.7.0 Authentication successful\r\n");
    h
}

const MSG: &str = "From: a@remote.example\r\nTo: alice@example.com\r\nSubject: hi\r\n\r\nHello\r\n";

#[tokio::test]
async fn greeting_and_ehlo_on_mx() {
    let mut h = Harness::new(ListenerMode::Mx, cfg());
    assert_eq!(h.start().await, "220 mx.example.com ESMTP umail\r\n");
    let r = h.send("EHLO client.example\r\n").await;
    assert_eq!(
        r,
        "250-mx.example.com Hello client.example\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n\
         250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250-SMTPUTF8\r\n\
         250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250-STARTTLS\r\n250 HELP\r\n"
    );
    assert_eq!(
        h.send("HELO other\r\n").await,
        "250 mx.example.com Hello other\r\n"
    );
    assert_eq!(h.send("NOOP\r\n").await, "250 2.0.0 OK\r\n");
    assert!(h.send("HELP\r\n").await.starts_with("214-2.0.0 "));
    assert_eq!(h.send("QUIT\r\n").await, "221 2.0.0 mx.example.com Bye\r\n");
    assert!(h.session.is_closed());
}

#[tokio::test]
async fn mx_delivers_locally_with_trace_headers() {
    let mut h = Harness::new(ListenerMode::Mx, cfg());
    h.ehlo().await;
    let r = h
        .send(format!(
            "MAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n{MSG}..x\r\n.\r\n"
        ))
        .await;
    let c = codes(&r);
    assert_eq!(c, ["250", "250", "354", "250"], "{r}");
    assert!(r.contains("250 2.0.0 Ok queued as "), "{r}");
    let inbox = h.world.inbox("alice@example.com").await;
    assert_eq!(inbox.len(), 1);
    let m = String::from_utf8(inbox[0].clone()).unwrap();
    assert!(m.starts_with("Return-Path: <a@remote.example>\r\nReceived: from client.example ([192.0.2.10])\r\n\tby mx.example.com (umail) with ESMTP\r\n\tid "), "{m}");
    assert!(m.contains("\r\n\tfor <alice@example.com>; "), "{m}");
    assert!(m.ends_with(&format!("{MSG}.x\r\n")), "{m}");
}

#[tokio::test]
async fn pipelined_commands_answered_in_order() {
    let mut h = Harness::new(ListenerMode::Mx, cfg());
    h.start().await;
    let r = h
        .send(format!(
            "EHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<nobody@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n{MSG}.\r\nNOOP\r\nQUIT\r\n"
        ))
        .await;
    assert_eq!(
        codes(&r),
        ["250", "250", "550", "250", "354", "250", "250", "221"],
        "{r}"
    );
    assert_eq!(h.world.inbox("bob@example.com").await.len(), 1);
}

#[tokio::test]
async fn recipient_checks() {
    let mut h = Harness::new(ListenerMode::Mx, cfg());
    h.ehlo().await;
    h.send("MAIL FROM:<a@remote.example>\r\n").await;
    assert_eq!(
        h.send("RCPT TO:<nobody@example.com>\r\n").await,
        "550 5.1.1 User unknown\r\n"
    );
    assert!(
        h.send("RCPT TO:<frozen@example.com>\r\n")
            .await
            .starts_with("550 5.2.1 ")
    );
    assert!(
        h.send("RCPT TO:<dan@disabled.example>\r\n")
            .await
            .starts_with("550 5.2.1 ")
    );
    // Relay attempt on MX without authentication.
    assert_eq!(
        h.send("RCPT TO:<x@elsewhere.example>\r\n").await,
        "550 5.7.1 Relaying denied\r\n"
    );
    assert_eq!(
        h.send("RCPT TO:<Alice@EXAMPLE.com>\r\n").await,
        "250 2.1.5 Recipient OK\r\n"
    );
    // Non-ASCII address without SMTPUTF8.
    assert!(
        h.send("RCPT TO:<张三@example.com>\r\n".as_bytes())
            .await
            .starts_with("553 5.6.7 ")
    );
    assert!(
        h.send("RCPT TO:<bad address>\r\n")
            .await
            .starts_with("501 5.1.3 ")
    );
}

#[tokio::test]
async fn postmaster_without_domain() {
    let w = world();
    w.directory.add_domain(HOST);
    w.directory.add_user("postmaster@mx.example.com", "pw");
    let mut h = Harness::with_world(w, ListenerMode::Mx, cfg());
    h.ehlo().await;
    h.send("MAIL FROM:<>\r\n").await;
    assert_eq!(
        h.send("RCPT TO:<Postmaster>\r\n").await,
        "250 2.1.5 Recipient OK\r\n"
    );
}

#[tokio::test]
async fn sequence_errors() {
    let mut h = Harness::new(ListenerMode::Mx, cfg());
    h.start().await;
    assert_eq!(
        h.send("MAIL FROM:<a@remote.example>\r\n").await,
        "503 5.5.1 Send EHLO/HELO first\r\n"
    );
    h.send("EHLO c\r\n").await;
    assert!(
        h.send("RCPT TO:<alice@example.com>\r\n")
            .await
            .starts_with("503 5.5.1 ")
    );
    assert!(h.send("DATA\r\n").await.starts_with("503 5.5.1 "));
    h.send("MAIL FROM:<a@remote.example>\r\n").await;
    assert_eq!(
        h.send("MAIL FROM:<a@remote.example>\r\n").await,
        "503 5.5.1 Nested MAIL command\r\n"
    );
    assert_eq!(
        h.send("DATA\r\n").await,
        "554 5.5.1 No valid recipients\r\n"
    );
    assert!(h.send("FOO\r\n").await.starts_with("500 5.5.1 "));
    assert!(
        h.send("MAIL FROM:<a@remote.example> X-FOO=1\r\n")
            .await
            .starts_with("555 5.5.4 ")
    );
    assert_eq!(h.send("RSET\r\n").await, "250 2.0.0 Flushed\r\n");
    assert!(
        h.send("VRFY alice@example.com\r\n")
            .await
            .starts_with("502 5.5.1 ")
    );
    assert!(
        h.send("EXPN team@example.com\r\n")
            .await
            .starts_with("502 5.5.1 ")
    );
}

#[tokio::test]
async fn oversized_command_line_is_refused_and_session_continues() {
    let mut h = Harness::new(
        ListenerMode::Mx,
        SmtpConfig {
            max_command_line: 64,
            ..cfg()
        },
    );
    h.ehlo().await;
    let long = format!("NOOP {}\r\nNOOP\r\n", "x".repeat(200));
    assert_eq!(
        h.send(long).await,
        "500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n"
    );
    // A long line split across reads.
    assert_eq!(h.send("x".repeat(100)).await, "500 5.5.2 Line too long\r\n");
    assert_eq!(h.send("yyy\r\nNOOP\r\n").await, "250 2.0.0 OK\r\n");
    // Bare LF as a command terminator.
    assert!(h.send("NOOP\n").await.starts_with("500 5.5.2 Bare LF"));
}

async fn data_transcript(body: &[u8]) -> (String, Harness) {
    let mut h = Harness::new(ListenerMode::Mx, cfg());
    h.ehlo().await;
    h.send("MAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        .await;
    let out = h.send(body).await;
    (out, h)
}

#[tokio::test]
async fn bare_lf_in_data_is_refused_without_splitting() {
    // "\n.\n" does not end the data: the MAIL after it is message text.
    let (out, mut h) = data_transcript(b"Subject: x\r\n\r\nline\n.\nMAIL FROM:<evil@remote.example>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nevil\r\n.\r\nNOOP\r\n").await;
    assert_eq!(
        out,
        "554 5.6.0 Message contains a bare CR or LF; lines must end with CRLF\r\n250 2.0.0 OK\r\n"
    );
    assert!(h.world.inbox("alice@example.com").await.is_empty());
    assert!(h.world.inbox("bob@example.com").await.is_empty());
    // The transaction is over.
    assert!(
        h.send("RCPT TO:<bob@example.com>\r\n")
            .await
            .starts_with("503 ")
    );
}

#[tokio::test]
async fn smuggling_lf_dot_crlf_pattern() {
    let (out, h) =
        data_transcript(b"Subject: x\r\n\r\nline\n.\r\nMAIL FROM:<evil@remote.example>\r\n.\r\n")
            .await;
    assert_eq!(codes(&out), ["554"], "{out}");
    assert!(h.world.inbox("alice@example.com").await.is_empty());
}

#[tokio::test]
async fn bare_cr_in_data_is_refused() {
    let (out, h) =
        data_transcript(b"Subject: x\r\n\r\nline\r.\rMAIL FROM:<e@remote.example>\r\n.\r\n").await;
    assert_eq!(codes(&out), ["554"], "{out}");
    assert!(h.world.inbox("alice@example.com").await.is_empty());
    let (out, _) = data_transcript(b"Subject: x\r\n\r\nab\rcd\r\n.\r\n").await;
    assert!(out.starts_with("554 5.6.0 "), "{out}");
}

#[tokio::test]
async fn long_data_line_is_refused() {
    let mut h = Harness::new(
        ListenerMode::Mx,
        SmtpConfig {
            max_data_line: 100,
            ..cfg()
        },
    );
    h.ehlo().await;
    h.send("MAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        .await;
    let out = h
        .send(format!("Subject: x\r\n\r\n{}\r\n.\r\n", "y".repeat(300)))
        .await;
    assert!(
        out.starts_with("554 5.6.0 Message contains a line longer than 100"),
        "{out}"
    );
}

#[tokio::test]
async fn size_limit_while_streaming_and_declared() {
    let mut h = Harness::new(
        ListenerMode::Mx,
        SmtpConfig {
            max_message_size: 100,
            ..cfg()
        },
    );
    h.ehlo().await;
    assert_eq!(
        h.send("MAIL FROM:<a@remote.example> SIZE=101\r\n").await,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    h.send("MAIL FROM:<a@remote.example> SIZE=50\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        .await;
    // Sent in pieces: the bound trips before the end of the data.
    for _ in 0..5 {
        assert_eq!(
            h.send("0123456789012345678901234567890123456789\r\n").await,
            ""
        );
    }
    assert_eq!(
        h.send(".\r\n").await,
        "552 5.3.4 Message size exceeds fixed limit\r\n"
    );
    assert!(h.world.inbox("alice@example.com").await.is_empty());
    assert_eq!(h.send("NOOP\r\n").await, "250 2.0.0 OK\r\n");
}

#[tokio::test]
async fn too_many_recipients() {
    let mut h = Harness::new(
        ListenerMode::Mx,
        SmtpConfig {
            max_recipients: 2,
            ..cfg()
        },
    );
    h.ehlo().await;
    let out = h
        .send("MAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<bob@example.com>\r\nRCPT TO:<carol@example.com>\r\n")
        .await;
    assert!(out.ends_with("452 4.5.3 Too many recipients\r\n"), "{out}");
}

#[tokio::test]
async fn rset_limit_closes() {
    let mut h = Harness::new(
        ListenerMode::Mx,
        SmtpConfig {
            max_rset: 2,
            ..cfg()
        },
    );
    h.ehlo().await;
    let out = h.send("RSET\r\nRSET\r\nRSET\r\nNOOP\r\n").await;
    assert_eq!(codes(&out), ["250", "250", "421"], "{out}");
    assert!(out.contains("421 4.7.0 "));
    assert!(h.session.is_closed());
}

#[tokio::test]
async fn error_limit_closes() {
    let mut h = Harness::new(
        ListenerMode::Mx,
        SmtpConfig {
            max_errors: 3,
            ..cfg()
        },
    );
    h.ehlo().await;
    let out = h.send("FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n").await;
    assert_eq!(codes(&out), ["500", "500", "500", "421"], "{out}");
    assert!(h.session.is_closed());
}

#[tokio::test]
async fn loop_detection_by_received_count() {
    let mut h = Harness::new(
        ListenerMode::Mx,
        SmtpConfig {
            max_received_headers: 2,
            ..cfg()
        },
    );
    h.ehlo().await;
    h.send("MAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        .await;
    let out = h
        .send("Received: a\r\nReceived: b\r\nReceived: c\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
        .await;
    assert_eq!(
        out,
        "554 5.4.6 Too many Received headers: mail loop detected\r\n"
    );
    assert!(h.world.inbox("alice@example.com").await.is_empty());
}

#[tokio::test]
async fn idle_timeout_and_shutdown() {
    let mut h = Harness::new(ListenerMode::Mx, cfg());
    h.ehlo().await;
    h.session.handle_timeout();
    assert_eq!(
        h.run().await,
        "421 4.4.2 mx.example.com Idle timeout, closing connection\r\n"
    );
    assert!(h.session.is_closed());

    // Shutdown during DATA: the message finishes, then 421 4.3.2.
    let mut h = Harness::new(ListenerMode::Mx, cfg());
    h.ehlo().await;
    h.send("MAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\nSubject: x\r\n")
        .await;
    h.session.handle_shutdown();
    let out = h.send("\r\nbody\r\n.\r\nNOOP\r\n").await;
    assert_eq!(codes(&out), ["250", "421"], "{out}");
    assert!(out.contains("421 4.3.2 "));
    assert_eq!(h.world.inbox("alice@example.com").await.len(), 1);
}

#[tokio::test]
async fn starttls_discards_pipelined_commands_and_resets() {
    let mut h = Harness::new(ListenerMode::Mx, cfg());
    h.ehlo().await;
    let out = h
        .send("STARTTLS\r\nMAIL FROM:<evil@remote.example>\r\nRCPT TO:<alice@example.com>\r\n")
        .await;
    assert_eq!(out, "220 2.0.0 Ready to start TLS\r\n");
    // After TLS the session starts over: EHLO is needed again.
    assert_eq!(
        h.send("MAIL FROM:<a@remote.example>\r\n").await,
        "503 5.5.1 Send EHLO/HELO first\r\n"
    );
    let ehlo = h.send("EHLO c\r\n").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(
        !ehlo.contains("AUTH"),
        "MX offers no AUTH by default: {ehlo}"
    );
    assert_eq!(
        h.send("STARTTLS\r\n").await,
        "503 5.5.1 TLS already active\r\n"
    );
}

#[tokio::test]
async fn submission_requires_tls_then_auth() {
    let mut h = Harness::new(ListenerMode::Submission, cfg());
    let ehlo = h.ehlo().await;
    assert!(ehlo.contains("250-STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "no AUTH before TLS: {ehlo}");
    let auth = format!("AUTH PLAIN {}\r\n", plain("alice@example.com", "alice-pw"));
    assert_eq!(
        h.send(&auth).await,
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    assert_eq!(
        h.send("MAIL FROM:<alice@example.com>\r\n").await,
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    h.send("STARTTLS\r\n").await;
    let ehlo = h.send("EHLO c\r\n").await;
    assert!(
        ehlo.contains("250-AUTH PLAIN LOGIN SCRAM-SHA-256\r\n"),
        "{ehlo}"
    );
    assert_eq!(
        h.send("MAIL FROM:<alice@example.com>\r\n").await,
        "530 5.7.0 Authentication required\r\n"
    );
    assert_eq!(
        h.send(&auth).await,
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(h.send(&auth).await, "503 5.5.1 Already authenticated\r\n");
}

#[tokio::test]
async fn wrong_password_then_lockout() {
    let security = SecurityConfig {
        auth_failure_limit: 2,
        ..SecurityConfig::default()
    };
    let mut h = Harness::with_world(world_with(None, security), ListenerMode::Submissions, cfg());
    h.ehlo().await;
    let bad = format!("AUTH PLAIN {}\r\n", plain("alice@example.com", "wrong"));
    assert_eq!(
        h.send(&bad).await,
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    assert_eq!(
        h.send(&bad).await,
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    // Locked: even the right password is refused now.
    let good = format!("AUTH PLAIN {}\r\n", plain("alice@example.com", "alice-pw"));
    assert_eq!(
        h.send(&good).await,
        "454 4.7.0 Too many failed authentications, try again later\r\n"
    );
    assert!(h.session.principal().is_none());
}

#[tokio::test]
async fn auth_syntax_errors() {
    let mut h = Harness::new(ListenerMode::Submissions, cfg());
    h.ehlo().await;
    assert_eq!(
        h.send("AUTH FOO\r\n").await,
        "504 5.5.4 Unrecognized authentication type\r\n"
    );
    assert_eq!(
        h.send("AUTH PLAIN !!!\r\n").await,
        "501 5.5.4 Syntax error: AUTH mechanism [initial-response]\r\n"
    );
    assert_eq!(h.send("AUTH PLAIN\r\n").await, "334 \r\n");
    assert_eq!(
        h.send("*\r\n").await,
        "501 5.0.0 Authentication cancelled\r\n"
    );
    assert_eq!(h.send("AUTH PLAIN\r\n").await, "334 \r\n");
    assert_eq!(
        h.send("not base64!\r\n").await,
        "501 5.5.2 Invalid base64 data\r\n"
    );
    h.send("MAIL FROM:<a@remote.example>\r\n").await;
}

#[tokio::test]
async fn auth_login_with_challenges() {
    let mut h = Harness::new(ListenerMode::Submissions, cfg());
    h.ehlo().await;
    assert_eq!(
        h.send("AUTH LOGIN\r\n").await,
        format!("334 {}\r\n", B64.encode("Username:"))
    );
    assert_eq!(
        h.send(format!("{}\r\n", B64.encode("bob@example.com")))
            .await,
        format!("334 {}\r\n", B64.encode("Password:"))
    );
    assert_eq!(
        h.send(format!("{}\r\n", B64.encode("bob-pw"))).await,
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(
        h.session.principal().map(|p| p.account()),
        Some("bob@example.com".into())
    );
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("key");
    m.update(data);
    m.finalize().into_bytes().into()
}

#[tokio::test]
async fn auth_scram_sha256_with_final_challenge() {
    use sha2::Digest;
    let mut h = Harness::new(ListenerMode::Submissions, cfg());
    h.ehlo().await;
    let bare = "n=carol@example.com,r=clientnonce123";
    let out = h
        .send(format!(
            "AUTH SCRAM-SHA-256 {}\r\n",
            B64.encode(format!("n,,{bare}"))
        ))
        .await;
    let server_first = String::from_utf8(
        B64.decode(out.trim_end().strip_prefix("334 ").expect("334"))
            .unwrap(),
    )
    .unwrap();
    let mut salt = Vec::new();
    let mut iter = 0;
    let mut nonce = "";
    for attr in server_first.split(',') {
        if let Some(v) = attr.strip_prefix("s=") {
            salt = B64.decode(v).unwrap();
        } else if let Some(v) = attr.strip_prefix("i=") {
            iter = v.parse().unwrap();
        } else if let Some(v) = attr.strip_prefix("r=") {
            nonce = v;
        }
    }
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(b"carol-pw", &salt, iter, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key: [u8; 32] = sha2::Sha256::digest(client_key).into();
    let without_proof = format!("c={},r={nonce}", B64.encode("n,,"));
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let sig = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
    let out = h
        .send(format!(
            "{}\r\n",
            B64.encode(format!("{without_proof},p={}", B64.encode(proof)))
        ))
        .await;
    // RFC 4954 §4: the server's final data comes as a 334 challenge.
    let server_final = String::from_utf8(
        B64.decode(out.trim_end().strip_prefix("334 ").expect("334"))
            .unwrap(),
    )
    .unwrap();
    let server_key = hmac(&salted, b"Server Key");
    assert_eq!(
        server_final,
        format!(
            "v={}",
            B64.encode(hmac(&server_key, auth_message.as_bytes()))
        )
    );
    assert_eq!(
        h.send("\r\n").await,
        "235 2.7.0 Authentication successful\r\n"
    );
}

#[tokio::test]
async fn authenticated_sender_must_match() {
    let mut h = alice_submission(cfg()).await;
    assert!(
        h.send("MAIL FROM:<bob@example.com>\r\n")
            .await
            .starts_with("553 5.7.1 ")
    );
    // An alias of alice's is fine.
    assert_eq!(
        h.send("MAIL FROM:<alice.smith@example.com>\r\n").await,
        "250 2.1.0 Sender OK\r\n"
    );

    let mut h = alice_submission(SmtpConfig {
        sender_must_match_auth: false,
        ..cfg()
    })
    .await;
    assert_eq!(
        h.send("MAIL FROM:<bob@example.com>\r\n").await,
        "250 2.1.0 Sender OK\r\n"
    );
}

#[tokio::test]
async fn submission_queues_remote_and_delivers_local() {
    let mut h = alice_submission(cfg()).await;
    let out = h
        .send(format!(
            "MAIL FROM:<alice@example.com> BODY=8BITMIME\r\nRCPT TO:<x@remote.example> NOTIFY=FAILURE\r\nRCPT TO:<y@remote.example>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n{MSG}.\r\n"
        ))
        .await;
    assert_eq!(
        codes(&out),
        ["250", "250", "250", "250", "354", "250"],
        "{out}"
    );
    let bob = h.world.inbox("bob@example.com").await;
    assert_eq!(bob.len(), 1);
    let m = String::from_utf8_lossy(&bob[0]).into_owned();
    assert!(m.contains("with ESMTPSA (TLSv1.3 TLS13_AES_128_GCM_SHA256)\r\n\t(authenticated as alice@example.com)"), "{m}");
    use umail_core::QueueStore;
    let entries = h.world.queue.list(None).await.unwrap();
    assert_eq!(entries.len(), 1, "one queue entry per message");
    let rcpts: Vec<String> = entries[0]
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.to_string())
        .collect();
    assert_eq!(rcpts, ["x@remote.example", "y@remote.example"]);
    assert!(entries[0].envelope.recipients[0].notify.failure);
    assert_eq!(entries[0].envelope.auth, Some(addr("alice@example.com")));
    let content = h.world.queue.content(entries[0].id).await.unwrap().unwrap();
    assert!(content.starts_with(b"Received: from client.example"));
    assert!(!content.starts_with(b"Return-Path"));
    assert!(content.ends_with(MSG.as_bytes()));
}

#[tokio::test]
async fn over_quota_permanent_and_temporary() {
    for (temporary, expected) in [
        (false, "552 5.2.2 Mailbox full\r\n"),
        (true, "452 4.2.2 Mailbox full\r\n"),
    ] {
        let w = world();
        w.set_quota(
            "carol@example.com",
            Quota {
                bytes: 1000,
                messages: 0,
            },
        );
        let mut h = Harness::with_world(
            w,
            ListenerMode::Mx,
            SmtpConfig {
                over_quota_temporary: temporary,
                ..cfg()
            },
        );
        h.ehlo().await;
        h.send("MAIL FROM:<a@remote.example> SIZE=2000\r\n").await;
        assert_eq!(h.send("RCPT TO:<carol@example.com>\r\n").await, expected);
        // Without a declared size the next message still fits the count.
        h.send("RSET\r\nMAIL FROM:<a@remote.example>\r\n").await;
        assert_eq!(
            h.send("RCPT TO:<carol@example.com>\r\n").await,
            "250 2.1.5 Recipient OK\r\n"
        );
    }
}

#[tokio::test]
async fn private_list_and_alias_expansion() {
    let mut h = Harness::new(ListenerMode::Mx, cfg());
    h.ehlo().await;
    h.send("MAIL FROM:<a@remote.example>\r\n").await;
    assert_eq!(
        h.send("RCPT TO:<team@example.com>\r\n").await,
        "550 5.7.1 Not allowed to post to this list\r\n"
    );
    h.send("RSET\r\n").await;
    let out = h
        .send(format!("MAIL FROM:<alice@example.com>\r\nRCPT TO:<team@example.com>\r\nRCPT TO:<sales@example.com>\r\nRCPT TO:<loop1@example.com>\r\nDATA\r\n{MSG}.\r\n"))
        .await;
    assert_eq!(
        codes(&out),
        ["250", "250", "250", "250", "354", "250"],
        "{out}"
    );
    // Deduplicated: one copy each despite list + alias + loop.
    assert_eq!(h.world.inbox("alice@example.com").await.len(), 1);
    assert_eq!(h.world.inbox("bob@example.com").await.len(), 1);
    // The alias's remote target is queued (forwarding by a local alias is not relaying).
    use umail_core::QueueStore;
    let entries = h.world.queue.list(None).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].envelope.recipients[0].address,
        addr("partner@remote.example")
    );
    assert_eq!(
        entries[0].envelope.recipients[0].orcpt.as_deref(),
        Some("rfc822;sales@example.com")
    );
}

#[tokio::test]
async fn vrfy_and_expn_when_enabled() {
    let mut h = Harness::new(
        ListenerMode::Mx,
        SmtpConfig {
            allow_vrfy: true,
            allow_expn: true,
            ..cfg()
        },
    );
    h.ehlo().await;
    assert_eq!(
        h.send("VRFY <alice@example.com>\r\n").await,
        "250 2.1.5 alice <alice@example.com>\r\n"
    );
    assert_eq!(
        h.send("VRFY nobody@example.com\r\n").await,
        "550 5.1.1 User unknown\r\n"
    );
    assert!(h.send("VRFY alice\r\n").await.starts_with("252 2.1.5 "));
    assert_eq!(
        h.send("EXPN team@example.com\r\n").await,
        "250-2.1.5 <alice@example.com>\r\n250 2.1.5 <bob@example.com>\r\n"
    );
}

#[tokio::test]
async fn bdat_chunks_and_refused_chunk_is_consumed() {
    let mut h = Harness::new(ListenerMode::Mx, cfg());
    h.ehlo().await;
    // BDAT without a transaction: the chunk (which looks like commands) is discarded.
    let out = h.send("BDAT 6\r\nQUIT\r\nNOOP\r\n").await;
    assert_eq!(out, "503 5.5.1 Need MAIL command\r\n250 2.0.0 OK\r\n");
    assert!(!h.session.is_closed());
    let part1 = "Subject: chunked\r\n";
    let part2 = "\r\nbody\r\n";
    let out = h
        .send(format!(
            "MAIL FROM:<a@remote.example> BODY=BINARYMIME\r\nRCPT TO:<alice@example.com>\r\nBDAT {}\r\n{part1}BDAT {} LAST\r\n{part2}",
            part1.len(),
            part2.len()
        ))
        .await;
    assert_eq!(codes(&out), ["250", "250", "250", "250"], "{out}");
    assert!(out.contains(&format!("250 2.0.0 {} octets received", part1.len())));
    let inbox = h.world.inbox("alice@example.com").await;
    assert!(inbox[0].ends_with(format!("{part1}{part2}").as_bytes()));
    // DATA is refused for BINARYMIME.
    h.send("MAIL FROM:<a@remote.example> BODY=BINARYMIME\r\nRCPT TO:<alice@example.com>\r\n")
        .await;
    assert_eq!(
        h.send("DATA\r\n").await,
        "503 5.5.1 BODY=BINARYMIME requires BDAT\r\n"
    );
}

#[tokio::test]
async fn bdat_bare_lf_and_size() {
    let mut h = Harness::new(
        ListenerMode::Mx,
        SmtpConfig {
            max_message_size: 20,
            ..cfg()
        },
    );
    h.ehlo().await;
    let out = h.send("MAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.com>\r\nBDAT 5 LAST\r\na\nb\r\n").await;
    assert!(
        out.ends_with("554 5.6.0 Message contains a bare CR or LF; lines must end with CRLF\r\n"),
        "{out}"
    );
    let out = h.send("MAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.com>\r\nBDAT 30 LAST\r\n0123456789012345678901234567\r\n").await;
    assert!(
        out.ends_with("552 5.3.4 Message size exceeds fixed limit\r\n"),
        "{out}"
    );
    assert!(h.world.inbox("alice@example.com").await.is_empty());
    assert_eq!(h.send("NOOP\r\n").await, "250 2.0.0 OK\r\n");
}

// ----- directory failure -----

struct BrokenDirectory;

#[async_trait]
impl umail_core::Directory for BrokenDirectory {
    async fn verify_password(
        &self,
        _: &str,
        _: &str,
    ) -> Result<Option<umail_core::Principal>, umail_core::DirectoryError> {
        Err(umail_core::DirectoryError::Unavailable("down".into()))
    }
    async fn principal(
        &self,
        _: &str,
    ) -> Result<Option<umail_core::Principal>, umail_core::DirectoryError> {
        Err(umail_core::DirectoryError::Unavailable("down".into()))
    }
    async fn resolve(
        &self,
        _: &Address,
    ) -> Result<umail_core::Resolution, umail_core::DirectoryError> {
        Err(umail_core::DirectoryError::Unavailable("down".into()))
    }
    async fn is_local_domain(
        &self,
        _: &umail_core::Domain,
    ) -> Result<bool, umail_core::DirectoryError> {
        Err(umail_core::DirectoryError::Unavailable("down".into()))
    }
}

#[tokio::test]
async fn directory_error_is_temporary_never_unknown() {
    let mut w = world();
    w.services.directory = Arc::new(BrokenDirectory);
    let mut h = Harness::with_world(w, ListenerMode::Submissions, cfg());
    h.ehlo().await;
    let auth = format!("AUTH PLAIN {}\r\n", plain("alice@example.com", "alice-pw"));
    assert_eq!(
        h.send(&auth).await,
        "454 4.7.0 Temporary authentication failure\r\n"
    );
    let mut w = world();
    w.services.directory = Arc::new(BrokenDirectory);
    let mut h = Harness::with_world(w, ListenerMode::Mx, cfg());
    h.ehlo().await;
    h.send("MAIL FROM:<a@remote.example>\r\n").await;
    assert_eq!(
        h.send("RCPT TO:<alice@example.com>\r\n").await,
        "451 4.3.0 Temporary directory failure, try again later\r\n"
    );
}

// ----- filters -----

struct TestFilter;

#[async_trait]
impl Filter for TestFilter {
    fn name(&self) -> &str {
        "test"
    }
    async fn on_helo(&self, _: &SessionInfo, name: &str) -> Verdict {
        if name == "spammer" {
            Verdict::reject(550, "5.7.1", "go away")
        } else {
            Verdict::pass()
        }
    }
    async fn on_mail(&self, _: &SessionInfo, from: &ReversePath) -> Verdict {
        match from
            .address()
            .map(|a| a.local_part().to_string())
            .as_deref()
        {
            Some("tempfail") => Verdict::tempfail(451, "4.7.1", "later"),
            _ => Verdict::pass(),
        }
    }
    async fn on_rcpt(&self, _: &SessionInfo, _: &Envelope, rcpt: &Address) -> Verdict {
        if rcpt.local_part() == "carol" {
            Verdict::reject(550, "5.7.1", "carol refuses")
        } else {
            Verdict::pass()
        }
    }
    async fn on_data(&self, _: &SessionInfo, _: &Envelope, m: MessageData<'_>) -> Verdict {
        match m.parsed.subject() {
            Some("discard me") => Verdict::of(umail_core::Disposition::Discard),
            Some("reject me") => Verdict::reject(554, "5.7.1", "content refused"),
            Some("quarantine me") => {
                Verdict::of(umail_core::Disposition::Quarantine("spam".into()))
            }
            Some("hold me") => Verdict::of(umail_core::Disposition::Hold("approval".into())),
            Some("tag me") => Verdict::with_actions(vec![
                Action::TagSubject("[SPAM]".into()),
                Action::AddHeader {
                    name: "X-Spam".into(),
                    value: "yes\r\nInjected: no".into(),
                },
                Action::FileInto("Spam".into()),
            ]),
            _ => Verdict::pass(),
        }
    }
}

async fn filtered() -> Harness {
    let w = world_with(Some(Arc::new(TestFilter)), SecurityConfig::default());
    let mut h = Harness::with_world(w, ListenerMode::Mx, cfg());
    h.start().await;
    h
}

async fn send_subject(h: &mut Harness, subject: &str) -> String {
    h.send(format!(
        "MAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\nSubject: {subject}\r\n\r\nbody\r\n.\r\n"
    ))
    .await
}

#[tokio::test]
async fn filter_verdicts_at_each_stage() {
    let mut h = filtered().await;
    assert_eq!(h.send("EHLO spammer\r\n").await, "550 5.7.1 go away\r\n");
    h.send("EHLO fine\r\n").await;
    assert_eq!(
        h.send("MAIL FROM:<tempfail@remote.example>\r\n").await,
        "451 4.7.1 later\r\n"
    );
    h.send("MAIL FROM:<a@remote.example>\r\n").await;
    assert_eq!(
        h.send("RCPT TO:<carol@example.com>\r\n").await,
        "550 5.7.1 carol refuses\r\n"
    );
    h.send("RSET\r\n").await;
    assert!(
        send_subject(&mut h, "reject me")
            .await
            .ends_with("554 5.7.1 content refused\r\n")
    );
    assert!(
        send_subject(&mut h, "discard me")
            .await
            .contains("250 2.0.0 Ok queued as")
    );
    assert!(h.world.inbox("alice@example.com").await.is_empty());
    assert!(
        send_subject(&mut h, "quarantine me")
            .await
            .contains("250 2.0.0 Ok queued as")
    );
    assert!(h.world.inbox("alice@example.com").await.is_empty());
    assert_eq!(h.world.mailbox("alice@example.com", "Junk").await.len(), 1);
    assert!(
        send_subject(&mut h, "tag me")
            .await
            .contains("250 2.0.0 Ok queued as")
    );
    let spam = h.world.mailbox("alice@example.com", "Spam").await;
    assert_eq!(spam.len(), 1);
    let m = String::from_utf8_lossy(&spam[0]).into_owned();
    assert!(
        m.starts_with("Return-Path: <a@remote.example>\r\nX-Spam: yes  Injected: no\r\nReceived: "),
        "{m}"
    );
    assert!(m.contains("\r\nSubject: [SPAM] tag me\r\n"), "{m}");
    assert!(
        send_subject(&mut h, "hold me")
            .await
            .contains("250 2.0.0 Ok queued as")
    );
    use umail_core::QueueStore;
    let held = h.world.queue.list(Some(QueueState::Held)).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0].envelope.recipients[0].address,
        addr("alice@example.com")
    );
    // Held from its first commit, with the filter's reason for the operator.
    assert_eq!(held[0].attempts, 0);
    assert_eq!(held[0].log.len(), 1);
    assert_eq!(held[0].log[0].result, "held: approval");
}

#[tokio::test]
async fn connect_refusal_serves_only_quit() {
    struct NoConnect;
    #[async_trait]
    impl Filter for NoConnect {
        fn name(&self) -> &str {
            "noconnect"
        }
        async fn on_connect(&self, _: &SessionInfo) -> Verdict {
            Verdict::reject(554, "5.7.1", "blocked")
        }
    }
    let w = world_with(Some(Arc::new(NoConnect)), SecurityConfig::default());
    let mut h = Harness::with_world(w, ListenerMode::Mx, cfg());
    assert_eq!(h.start().await, "554 5.7.1 blocked\r\n");
    assert_eq!(
        h.send("EHLO c\r\n").await,
        "503 5.5.1 No SMTP service here\r\n"
    );
    assert!(h.send("QUIT\r\n").await.starts_with("221 "));
}

// ----- per-domain size limit -----

struct SmallDomain(Arc<umail_core::memory::MemoryDirectory>);

#[async_trait]
impl umail_core::Directory for SmallDomain {
    async fn verify_password(
        &self,
        u: &str,
        p: &str,
    ) -> Result<Option<umail_core::Principal>, umail_core::DirectoryError> {
        self.0.verify_password(u, p).await
    }
    async fn principal(
        &self,
        u: &str,
    ) -> Result<Option<umail_core::Principal>, umail_core::DirectoryError> {
        self.0.principal(u).await
    }
    async fn resolve(
        &self,
        a: &Address,
    ) -> Result<umail_core::Resolution, umail_core::DirectoryError> {
        self.0.resolve(a).await
    }
    async fn is_local_domain(
        &self,
        d: &umail_core::Domain,
    ) -> Result<bool, umail_core::DirectoryError> {
        self.0.is_local_domain(d).await
    }
    async fn domain_settings(
        &self,
        d: &umail_core::Domain,
    ) -> Result<Option<umail_core::DomainSettings>, umail_core::DirectoryError> {
        Ok(self.0.domain_settings(d).await?.map(|mut s| {
            s.max_message_size = 50;
            s
        }))
    }
}

#[tokio::test]
async fn domain_size_limit_at_rcpt_and_while_streaming() {
    let mut w = world();
    w.services.directory = Arc::new(SmallDomain(w.directory.clone()));
    let mut h = Harness::with_world(w, ListenerMode::Mx, cfg());
    h.ehlo().await;
    h.send("MAIL FROM:<a@remote.example> SIZE=100\r\n").await;
    assert_eq!(
        h.send("RCPT TO:<alice@example.com>\r\n").await,
        "552 5.3.4 Message size exceeds the limit of the recipient's domain\r\n"
    );
    h.send("RSET\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        .await;
    let out = h
        .send(format!("Subject: x\r\n\r\n{}\r\n.\r\n", "z".repeat(80)))
        .await;
    assert_eq!(out, "552 5.3.4 Message size exceeds fixed limit\r\n");
    assert!(h.world.inbox("alice@example.com").await.is_empty());
}

#[tokio::test]
async fn future_release_schedules_every_copy_and_is_bounded() {
    let mut h = Harness::new(ListenerMode::Submission, cfg());
    h.ehlo().await;
    assert!(h.send("STARTTLS\r\n").await.starts_with("220 2.0.0"));
    let ehlo = h.send("EHLO client.example\r\n").await;
    // RFC 4865 §3: the longest interval and the latest date-time.
    let line = ehlo
        .lines()
        .find(|l| l.starts_with("250-FUTURERELEASE "))
        .unwrap_or_else(|| panic!("{ehlo}"));
    let mut words = line.split_whitespace().skip(1);
    assert_eq!(words.next(), Some("604800"));
    let latest = chrono::DateTime::parse_from_rfc3339(words.next().unwrap()).unwrap();
    assert!(latest.timestamp() > umail_core::unix_now());
    let r = h
        .send(format!(
            "AUTH PLAIN {}\r\n",
            plain("alice@example.com", "alice-pw")
        ))
        .await;
    assert!(r.starts_with("235"), "{r}");
    let r = h
        .send("MAIL FROM:<alice@example.com> HOLDFOR=604801\r\n")
        .await;
    assert!(r.starts_with("501 5.5.4"), "{r}");
    let before = umail_core::unix_now();
    let out = h
        .send(format!(
            "MAIL FROM:<alice@example.com> HOLDFOR=3600\r\nRCPT TO:<x@remote.example>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n{MSG}.\r\n"
        ))
        .await;
    assert_eq!(codes(&out), ["250", "250", "250", "354", "250"], "{out}");
    assert!(
        h.world.inbox("bob@example.com").await.is_empty(),
        "the local copy waits too"
    );
    use umail_core::QueueStore;
    let entries = h.world.queue.list(None).await.unwrap();
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    let rcpts: Vec<String> = e
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.to_string())
        .collect();
    assert_eq!(rcpts, ["bob@example.com", "x@remote.example"]);
    assert!(e.next_attempt >= before + 3600, "{e:?}");
    assert_eq!(e.envelope.release_at, Some(e.next_attempt));
    assert!(
        h.world
            .queue
            .due(before + 3599, 10)
            .await
            .unwrap()
            .is_empty(),
        "not due before the release time"
    );
}

#[tokio::test]
async fn future_release_is_not_offered_on_mx() {
    let mut h = Harness::new(ListenerMode::Mx, cfg());
    h.ehlo().await;
    let r = h.send("MAIL FROM:<a@remote.example> HOLDFOR=60\r\n").await;
    assert_eq!(r, "555 5.5.4 Parameter not recognized: HOLDFOR\r\n");
}
