//! `umail bench delivery`: outbound throughput from the queue to a local
//! SMTP sink over loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use umail_core::config::{DeliveryConfig, RouteConfig};
use umail_core::net::shutdown_channel;
use umail_core::{Envelope, QueueStore, Recipient, ReversePath};
use umail_store::Store;

use super::DeliveryBenchArgs;

/// A minimal SMTP sink: accepts everything, counts messages.
async fn sink(listener: TcpListener, count: Arc<AtomicUsize>) {
    while let Ok((sock, _)) = listener.accept().await {
        let count = Arc::clone(&count);
        // Without this, Nagle holds each pipelined reply until the client's
        // delayed ACK: the bench would measure 40 ms timers, not umail.
        let _ = sock.set_nodelay(true);
        tokio::spawn(async move {
            let (r, mut w) = sock.into_split();
            let mut r = BufReader::new(r);
            if w.write_all(b"220 sink ESMTP\r\n").await.is_err() {
                return;
            }
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let up = line.to_ascii_uppercase();
                let reply: &[u8] = if up.starts_with("EHLO") {
                    b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 CHUNKING\r\n"
                } else if up.starts_with("BDAT") {
                    let n: usize = up
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let mut buf = vec![0u8; n];
                    if r.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    b"250 2.0.0 ok\r\n"
                } else if up.starts_with("QUIT") {
                    let _ = w.write_all(b"221 bye\r\n").await;
                    return;
                } else {
                    b"250 2.0.0 ok\r\n"
                };
                if w.write_all(reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Runs `umail bench delivery`.
pub async fn bench(args: DeliveryBenchArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path().join("bench.redb")).context("opening bench store")?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(sink(listener, Arc::clone(&count)));

    let body = {
        let mut m = b"From: bench@bench.example\r\nTo: sink@sink.example\r\nSubject: bench\r\n\r\n"
            .to_vec();
        while m.len() < args.size {
            m.extend_from_slice(
                b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuv\r\n",
            );
        }
        Bytes::from(m)
    };
    let from = ReversePath::Address("bench@bench.example".parse()?);
    let rcpt = Recipient::new("sink@sink.example".parse()?);
    for _ in 0..args.messages {
        let mut env = Envelope::new(from.clone());
        env.recipients.push(rcpt.clone());
        store
            .enqueue(env, body.clone(), umail_core::unix_now())
            .await?;
    }
    let cfg = DeliveryConfig {
        route: vec![RouteConfig {
            domain: "sink.example".into(),
            host: addr.to_string(),
            require_tls: false,
            verify_certificate: false,
            user: None,
            password: None,
        }],
        max_connections: args.connections,
        max_connections_per_host: args.connections,
        ..DeliveryConfig::default()
    };
    let services = store.services("bench.example", &Default::default());
    let config = umail_core::config::Config {
        delivery: cfg,
        ..Default::default()
    };
    let runner = super::runner(&config, store.clone(), services)?;
    let (trigger, shutdown) = shutdown_channel();
    let start = Instant::now();
    let task = runner.spawn(shutdown);
    let deadline = start + Duration::from_secs(600);
    while count.load(Ordering::Relaxed) < args.messages && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = count.load(Ordering::Relaxed);
    let sent_secs = start.elapsed().as_secs_f64();
    // A message is done when its queue entry is durably removed, not when
    // the sink has it: the figure includes the drain.
    while !store.list(None).await?.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    trigger.trigger();
    let _ = task.await;
    println!(
        "delivery: {delivered} messages of {} bytes over {} connections in {secs:.2} s: {:.0} messages/s (last one at the sink after {sent_secs:.2} s)",
        body.len(),
        args.connections,
        delivered as f64 / secs.max(1e-9)
    );
    anyhow::ensure!(
        delivered == args.messages,
        "only {delivered} of {} messages delivered",
        args.messages
    );
    Ok(())
}
