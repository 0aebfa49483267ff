//! Crash safety: a child process (this test binary, re-executed) writes to
//! a database file and prints an `ACK` line after each acknowledged write;
//! the parent kills it with SIGKILL at a random moment, reopens the
//! database, and checks that every acknowledged write is there and that the
//! store's invariants hold. Repeated 20 times on the same file.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use umail_core::{DeliveryTarget, Flag, FlagOp, Flags, MailStore};
use umail_store::{NewDomain, NewUser, Store};

const DB_ENV: &str = "UMAIL_STORE_CRASH_CHILD_DB";
const RUN_ENV: &str = "UMAIL_STORE_CRASH_CHILD_RUN";
const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const RUNS: u64 = 20;
/// Most operations one child performs (it is killed long before).
const CHILD_MAX_OPS: u64 = 5_000;
/// How long the parent waits for any line before declaring the child stuck.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn body(run: u64, i: u64) -> Bytes {
    Bytes::from(format!(
        "Subject: run {run} message {i}\r\n\r\n{}\r\n",
        "z".repeat((i % 50) as usize)
    ))
}

/// The child side: does nothing unless started by the parent.
#[test]
fn crash_child() {
    let (Ok(path), Ok(run)) = (std::env::var(DB_ENV), std::env::var(RUN_ENV)) else {
        return;
    };
    let run: u64 = run.parse().expect("run number");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(child(path, run));
}

async fn child(path: String, run: u64) {
    let store = Store::open(&path).expect("child open");
    let inbox = store
        .mailbox(ALICE, "INBOX")
        .await
        .expect("mailbox")
        .expect("inbox")
        .id;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (run + 1));
    // Start on a fresh line whatever the harness printed before.
    println!();
    let mut live: Vec<u32> = Vec::new();
    for i in 0..CHILD_MAX_OPS {
        let choice = rng.below(100);
        if choice < 60 || live.is_empty() {
            let targets = [
                DeliveryTarget {
                    account: ALICE.into(),
                    mailbox: "INBOX".into(),
                    flags: Flags::new(),
                },
                DeliveryTarget {
                    account: BOB.into(),
                    mailbox: "INBOX".into(),
                    flags: Flags::new(),
                },
            ];
            let results = store
                .deliver(body(run, i), 0, &targets)
                .await
                .expect("deliver");
            let a = results[0].as_ref().expect("alice target");
            let b = results[1].as_ref().expect("bob target");
            println!("ACK deliver {} {} {run} {i}", a.uid, b.uid);
            live.push(a.uid);
        } else if choice < 85 {
            let uid = live[rng.below(live.len() as u64) as usize];
            println!("BEGIN flag {uid}");
            store
                .update_flags(
                    ALICE,
                    inbox,
                    &[uid],
                    FlagOp::Add,
                    &[Flag::Flagged].into(),
                    None,
                )
                .await
                .expect("flag");
            println!("ACK flag {uid}");
        } else {
            let idx = rng.below(live.len() as u64) as usize;
            let uid = live.swap_remove(idx);
            println!("BEGIN expunge {uid}");
            store
                .update_flags(
                    ALICE,
                    inbox,
                    &[uid],
                    FlagOp::Add,
                    &[Flag::Deleted].into(),
                    None,
                )
                .await
                .expect("mark deleted");
            let removed = store
                .expunge(ALICE, inbox, Some(&[uid]))
                .await
                .expect("expunge");
            assert_eq!(removed, vec![uid]);
            println!("ACK expunge {uid}");
        }
    }
}

/// The protocol part of a line: the test harness may print its own text
/// (`test crash_child ... `) in front of the child's first line.
fn marker(line: &str) -> &str {
    match (line.find("ACK "), line.find("BEGIN ")) {
        (Some(a), Some(b)) => &line[a.min(b)..],
        (Some(a), None) => &line[a..],
        (None, Some(b)) => &line[b..],
        (None, None) => "",
    }
}

/// What the parent knows about one of Alice's messages.
#[derive(Debug, Clone)]
struct Expect {
    body: Bytes,
    /// Bob's copy.
    bob_uid: u32,
    /// Known flagged (`Some(true)`), known not (`Some(false)`), or unknown
    /// (a flag update was started but not acknowledged).
    flagged: Option<bool>,
    /// An expunge was started but not acknowledged: may be gone.
    maybe_gone: bool,
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crash.redb");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = Store::open(&path).expect("open");
        store
            .add_domain(NewDomain::new("example.com".parse().unwrap()))
            .await
            .unwrap();
        for u in [ALICE, BOB] {
            store
                .add_user(NewUser::new(u.parse().unwrap(), "pw"))
                .await
                .unwrap();
        }
        store.list_mailboxes(ALICE).await.unwrap();
        store.list_mailboxes(BOB).await.unwrap();
    });

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut rng = Rng(seed);
    let exe = std::env::current_exe().expect("current exe");
    let mut alice: BTreeMap<u32, Expect> = BTreeMap::new();
    let mut expunged: Vec<u32> = Vec::new();
    let mut total_acks = 0usize;

    for run in 0..RUNS {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(DB_ENV, &path)
            .env(RUN_ENV, run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        // Kill after a random number of acknowledgements, and a random
        // short while later so the kill lands anywhere in an operation.
        let kill_after = 1 + rng.below(40) as usize;
        let mut lines = Vec::new();
        let mut acks = 0;
        while acks < kill_after {
            match rx.recv_timeout(LINE_TIMEOUT) {
                Ok(line) => {
                    if marker(&line).starts_with("ACK ") {
                        acks += 1;
                    }
                    lines.push(line);
                }
                Err(e) => {
                    let _ = child.kill();
                    panic!(
                        "run {run} (seed {seed}): child stopped early or hung: {e:?}; lines {lines:?}"
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap child");
        reader.join().expect("reader thread");
        // Lines printed before the kill are acknowledged writes too.
        lines.extend(rx.try_iter());

        for line in &lines {
            let parts: Vec<&str> = marker(line).split_whitespace().collect();
            match parts.as_slice() {
                ["ACK", "deliver", a, b, r, i] => {
                    let (a, b, r, i): (u32, u32, u64, u64) = (
                        a.parse().unwrap(),
                        b.parse().unwrap(),
                        r.parse().unwrap(),
                        i.parse().unwrap(),
                    );
                    alice.insert(
                        a,
                        Expect {
                            body: body(r, i),
                            bob_uid: b,
                            flagged: Some(false),
                            maybe_gone: false,
                        },
                    );
                    total_acks += 1;
                }
                ["BEGIN", "flag", uid] => {
                    if let Some(e) = alice.get_mut(&uid.parse().unwrap())
                        && e.flagged != Some(true)
                    {
                        e.flagged = None;
                    }
                }
                ["ACK", "flag", uid] => {
                    alice
                        .get_mut(&uid.parse().unwrap())
                        .expect("flag of known")
                        .flagged = Some(true);
                    total_acks += 1;
                }
                ["BEGIN", "expunge", uid] => {
                    alice
                        .get_mut(&uid.parse().unwrap())
                        .expect("expunge of known")
                        .maybe_gone = true;
                }
                ["ACK", "expunge", uid] => {
                    let uid: u32 = uid.parse().unwrap();
                    alice.remove(&uid).expect("expunge of known");
                    expunged.push(uid);
                    total_acks += 1;
                }
                _ => {}
            }
        }

        // Reopen and verify.
        rt.block_on(async {
            let store = Store::open(&path)
                .unwrap_or_else(|e| panic!("run {run} (seed {seed}): reopen failed: {e}"));
            store
                .check_invariants()
                .unwrap_or_else(|e| panic!("run {run} (seed {seed}): invariants: {e}"));
            let inbox = store.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
            let bob_inbox = store.mailbox(BOB, "INBOX").await.unwrap().unwrap();
            let metas: BTreeMap<u32, Flags> = store
                .messages(ALICE, inbox.id)
                .await
                .unwrap()
                .into_iter()
                .map(|m| (m.uid, m.flags))
                .collect();
            for (uid, e) in &alice {
                let Some(flags) = metas.get(uid) else {
                    assert!(
                        e.maybe_gone,
                        "run {run} (seed {seed}): acknowledged uid {uid} lost"
                    );
                    continue;
                };
                if let Some(f) = e.flagged {
                    assert_eq!(
                        flags.contains(&Flag::Flagged),
                        f,
                        "run {run} (seed {seed}): uid {uid} flags {flags:?}"
                    );
                }
                assert_eq!(
                    store
                        .message_content(ALICE, inbox.id, *uid)
                        .await
                        .unwrap()
                        .as_ref(),
                    Some(&e.body),
                    "run {run} (seed {seed}): uid {uid} content"
                );
                assert_eq!(
                    store
                        .message_content(BOB, bob_inbox.id, e.bob_uid)
                        .await
                        .unwrap()
                        .as_ref(),
                    Some(&e.body),
                    "run {run} (seed {seed}): bob's copy of uid {uid}"
                );
            }
            for uid in &expunged {
                assert!(
                    !metas.contains_key(uid),
                    "run {run} (seed {seed}): expunged uid {uid} is back"
                );
            }
        });
        // Settle what is unknown now that the state is read: drop maybes.
        alice.retain(|_, e| !e.maybe_gone);
        let _ = run;
    }
    assert!(total_acks >= RUNS as usize, "every run acknowledged writes");
}
