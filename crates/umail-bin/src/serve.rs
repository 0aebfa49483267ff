//! `umail serve`: opens the store, binds every listener, runs until SIGTERM
//! or Ctrl-C, then shuts down gracefully.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use umail_core::config::Config;
use umail_core::net::{
    ConnectionLimiter, LimitExceeded, Shutdown, next_session_id, shutdown_channel,
};
use umail_core::{ConnectionInfo, Services};

use crate::{admin_socket, bootstrap, tls};

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One protocol's entry points, as the accept loop sees them.
#[derive(Clone)]
struct Protocol {
    serve: Arc<dyn Fn(TcpStream, ConnectionInfo, Shutdown) -> BoxFuture + Send + Sync>,
    refuse: Arc<dyn Fn(TcpStream, LimitExceeded) -> BoxFuture + Send + Sync>,
}

/// Counts running sessions so shutdown can wait for them.
#[derive(Default)]
struct SessionTracker {
    active: AtomicUsize,
    idle: Notify,
}

impl SessionTracker {
    fn enter(self: &Arc<Self>) -> SessionGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        SessionGuard(Arc::clone(self))
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct SessionGuard(Arc<SessionTracker>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The host name used in greetings: configured, else the machine's
/// fully-qualified name, else `localhost`.
pub fn effective_hostname(config: &Config) -> String {
    if let Some(h) = &config.server.hostname {
        return h.clone();
    }
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let machine = machine.trim();
    if machine.contains('.') && umail_core::Domain::parse(machine).is_ok() {
        machine.to_ascii_lowercase()
    } else {
        "localhost".to_string()
    }
}

/// Prints a line to stdout immediately (operators and tests read it).
pub fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the server until a shutdown signal.
pub async fn run(config: Config) -> Result<()> {
    let data_dir = config.server.data_dir.clone();
    crate::create_private_dir(&data_dir)?;
    crate::warn_if_shared(&data_dir);
    let hostname = effective_hostname(&config);
    let cache = usize::try_from(config.server.database_cache_bytes).unwrap_or(usize::MAX);
    let store = crate::open_store_with(
        &data_dir,
        &umail_store::StoreOptions::with_cache_bytes(cache),
    )?;
    bootstrap::first_run(&store, &hostname).await?;

    let (acceptor, cert_path) = tls::load_acceptor(&config.tls, &data_dir, &hostname)?;
    announce(&format!("umail: TLS certificate {}", cert_path.display()));

    let services = store.services(hostname.clone(), &config.security);
    let limiter = ConnectionLimiter::new(
        config.server.max_sessions,
        config.server.max_sessions_per_ip,
    );
    let (trigger, shutdown) = shutdown_channel();
    let tracker = Arc::new(SessionTracker::default());

    let mut listeners = Vec::new();
    for (name, addrs, protocol) in protocols(&config, &services, &acceptor) {
        for addr in addrs {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {name} listener on {addr}"))?;
            let bound = listener.local_addr()?;
            announce(&format!("umail: listening {name} {bound}"));
            listeners.push(tokio::spawn(accept_loop(
                name,
                listener,
                protocol.clone(),
                Arc::clone(&limiter),
                shutdown.clone(),
                Arc::clone(&tracker),
            )));
        }
    }
    let socket_path = data_dir.join(admin_socket::SOCKET_NAME);
    let admin_listener = admin_socket::bind(&socket_path)?;
    let admin_task = tokio::spawn(admin_socket::serve(
        admin_listener,
        store.clone(),
        shutdown.clone(),
    ));
    announce(&format!("umail: admin socket {}", socket_path.display()));
    for addr in &config.listeners.admin {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding admin listener on {addr}"))?;
        announce(&format!(
            "umail: listening admin {}",
            listener.local_addr()?
        ));
        listeners.push(tokio::spawn(crate::admin_http::serve(
            listener,
            store.clone(),
            shutdown.clone(),
        )));
    }
    crate::collect::start(&config, &store, &services, &shutdown);
    crate::delivery::spawn_runner(&config, store.clone(), services.clone(), shutdown.clone());
    announce(&format!("umail: ready on {hostname}"));

    wait_for_signal().await;
    tracing::info!(target: "admin", "shutting down: no new connections, finishing sessions");
    trigger.trigger();
    for l in listeners {
        let _ = l.await;
    }
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    if tokio::time::timeout(grace, tracker.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            target: "admin",
            sessions = tracker.active.load(Ordering::SeqCst),
            "grace period over; closing remaining sessions"
        );
    }
    let _ = admin_task.await;
    let _ = std::fs::remove_file(&socket_path);
    drop(services);
    drop(store);
    tracing::info!(target: "admin", "stopped");
    Ok(())
}

fn protocols(
    config: &Config,
    services: &Services,
    acceptor: &tokio_rustls::TlsAcceptor,
) -> Vec<(&'static str, Vec<SocketAddr>, Protocol)> {
    use umail_imap::{ImapServer, ListenerMode as ImapMode};
    use umail_pop3::{ListenerMode as PopMode, Pop3Server};
    use umail_smtp::{ListenerMode as SmtpMode, SmtpServer};

    let smtp = Arc::new(SmtpServer::new(
        services.clone(),
        config.smtp.clone(),
        Some(acceptor.clone()),
    ));
    let imap = Arc::new(ImapServer::new(
        services.clone(),
        config.imap.clone(),
        Some(acceptor.clone()),
    ));
    let pop3 = Arc::new(Pop3Server::new(
        services.clone(),
        config.pop3.clone(),
        Some(acceptor.clone()),
    ));

    macro_rules! protocol {
        ($server:expr, $mode:expr) => {{
            let serve_server = Arc::clone(&$server);
            let refuse_server = Arc::clone(&$server);
            Protocol {
                serve: Arc::new(move |stream, info, shutdown| {
                    let s = Arc::clone(&serve_server);
                    Box::pin(async move { s.serve_connection(stream, info, $mode, shutdown).await })
                }),
                refuse: Arc::new(move |stream, reason| {
                    let s = Arc::clone(&refuse_server);
                    Box::pin(async move { s.refuse_connection(stream, reason).await })
                }),
            }
        }};
    }

    let l = &config.listeners;
    vec![
        ("smtp", l.smtp.clone(), protocol!(smtp, SmtpMode::Mx)),
        (
            "submission",
            l.submission.clone(),
            protocol!(smtp, SmtpMode::Submission),
        ),
        (
            "submissions",
            l.submissions.clone(),
            protocol!(smtp, SmtpMode::Submissions),
        ),
        ("imap", l.imap.clone(), protocol!(imap, ImapMode::Imap)),
        ("imaps", l.imaps.clone(), protocol!(imap, ImapMode::Imaps)),
        ("pop3", l.pop3.clone(), protocol!(pop3, PopMode::Pop3)),
        ("pop3s", l.pop3s.clone(), protocol!(pop3, PopMode::Pop3s)),
    ]
}

async fn accept_loop(
    name: &'static str,
    listener: TcpListener,
    protocol: Protocol,
    limiter: Arc<ConnectionLimiter>,
    mut shutdown: Shutdown,
    tracker: Arc<SessionTracker>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(target: "admin", listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        match limiter.try_acquire(peer.ip()) {
            Ok(permit) => {
                let info = ConnectionInfo {
                    session_id: next_session_id(),
                    peer,
                    local,
                    listener: name.to_string(),
                };
                let guard = tracker.enter();
                let serve = Arc::clone(&protocol.serve);
                let session_shutdown = shutdown.clone();
                tokio::spawn(async move {
                    serve(stream, info, session_shutdown).await;
                    drop(permit);
                    drop(guard);
                });
            }
            Err(reason) => {
                tracing::info!(target: "admin", listener = name, %peer, %reason, "connection refused");
                let refuse = Arc::clone(&protocol.refuse);
                tokio::spawn(async move { refuse(stream, reason).await });
            }
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(target: "admin", error = %e, "cannot install SIGTERM handler");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// True when a file at `path` looks like a live admin socket.
pub fn socket_is_live(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}
