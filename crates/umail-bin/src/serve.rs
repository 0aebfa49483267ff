//! The server builder ([`ServerBuilder`]) and `umail serve`: opens the
//! stores, binds every listener, starts the background tasks, runs until
//! SIGTERM or Ctrl-C, then shuts down gracefully.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use umail_core::config::Config;
use umail_core::net::{
    ConnectionLimiter, LimitExceeded, Shutdown, ShutdownTrigger, next_session_id, shutdown_channel,
};
use umail_core::{ConnectionInfo, Directory, Filter, FilterChain, MailStore, QueueStore, Services};
use umail_store::Store;

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

/// Composes a whole umail server from a [`Config`] and optional
/// integrator-supplied services, and starts it.
///
/// What is not supplied comes from the embedded store in
/// `config.server.data_dir` (opened, and on first start given a first
/// domain and administrator whose password is printed once). The admin
/// socket and HTTP API, remote collection and DKIM keys always use the
/// embedded store: with an integrator's own [`Directory`], the admin API
/// manages only what lives in the embedded store.
///
/// ```no_run
/// # async fn demo(my_directory: std::sync::Arc<dyn umail_core::Directory>) -> anyhow::Result<()> {
/// use umail_bin::ServerBuilder;
/// let server = ServerBuilder::new(Default::default())
///     .directory(my_directory)
///     .start()
///     .await?;
/// server.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct ServerBuilder {
    config: Config,
    directory: Option<Arc<dyn Directory>>,
    mail_store: Option<Arc<dyn MailStore>>,
    queue: Option<Arc<dyn QueueStore>>,
    filters: Vec<Arc<dyn Filter>>,
    announce: bool,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("directory", &self.directory.is_some())
            .field("mail_store", &self.mail_store.is_some())
            .field("queue", &self.queue.is_some())
            .field("filters", &self.filters.len())
            .finish()
    }
}

impl ServerBuilder {
    /// A server configured by `config`, on the embedded store.
    pub fn new(config: Config) -> ServerBuilder {
        ServerBuilder {
            config,
            directory: None,
            mail_store: None,
            queue: None,
            filters: Vec::new(),
            announce: false,
        }
    }

    /// Accounts, aliases, lists and domains come from `directory`.
    pub fn directory(mut self, directory: Arc<dyn Directory>) -> ServerBuilder {
        self.directory = Some(directory);
        self
    }

    /// Mailboxes and messages live in `store`.
    pub fn mail_store(mut self, store: Arc<dyn MailStore>) -> ServerBuilder {
        self.mail_store = Some(store);
        self
    }

    /// The outbound queue lives in `queue`.
    pub fn queue_store(mut self, queue: Arc<dyn QueueStore>) -> ServerBuilder {
        self.queue = Some(queue);
        self
    }

    /// Adds `filter` to the end of the filter chain every message meets
    /// (see `umail_core::ingest`).
    pub fn filter(mut self, filter: Arc<dyn Filter>) -> ServerBuilder {
        self.filters.push(filter);
        self
    }

    /// Prints what the server does at start (certificate, listeners,
    /// "ready") to stdout, as `umail serve` does. Off by default.
    pub fn announce(mut self, on: bool) -> ServerBuilder {
        self.announce = on;
        self
    }

    /// Opens the stores, binds every configured listener and starts the
    /// queue runner and the collector. Returns once everything listens.
    pub async fn start(self) -> Result<RunningServer> {
        let ServerBuilder {
            config,
            directory,
            mail_store,
            queue,
            filters,
            announce,
        } = self;
        let say = move |line: &str| {
            if announce {
                self::announce(line);
            }
        };
        let data_dir = config.server.data_dir.clone();
        crate::create_private_dir(&data_dir)?;
        crate::warn_if_shared(&data_dir);
        let hostname = effective_hostname(&config);
        let cache = usize::try_from(config.server.database_cache_bytes).unwrap_or(usize::MAX);
        let store = crate::open_store_with(
            &data_dir,
            &umail_store::StoreOptions::with_cache_bytes(cache),
        )?;
        if directory.is_none() {
            bootstrap::first_run(&store, &hostname).await?;
        }

        let (acceptor, cert_path) = tls::load_acceptor(&config.tls, &data_dir, &hostname)?;
        say(&format!("umail: TLS certificate {}", cert_path.display()));

        let mut services = store.services(hostname.clone(), &config.security);
        if let Some(d) = directory {
            services.directory = d;
        }
        if let Some(m) = mail_store {
            services.store = m;
        }
        if let Some(q) = queue {
            services.queue = q;
        }
        let mut chain = FilterChain::new();
        for f in filters {
            chain.push(f);
        }
        services.filter = Arc::new(chain);

        let limiter = ConnectionLimiter::new(
            config.server.max_sessions,
            config.server.max_sessions_per_ip,
        );
        let (trigger, shutdown) = shutdown_channel();
        let tracker = Arc::new(SessionTracker::default());

        let mut bound = Vec::new();
        let mut tasks = Vec::new();
        for (name, addrs, protocol) in protocols(&config, &services, &acceptor) {
            for addr in addrs {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {name} listener on {addr}"))?;
                let local = listener.local_addr()?;
                say(&format!("umail: listening {name} {local}"));
                bound.push((name, local));
                tasks.push(tokio::spawn(accept_loop(
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
        say(&format!("umail: admin socket {}", socket_path.display()));
        for addr in &config.listeners.admin {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding admin listener on {addr}"))?;
            let local = listener.local_addr()?;
            say(&format!("umail: listening admin {local}"));
            bound.push(("admin", local));
            tasks.push(tokio::spawn(crate::admin_http::serve(
                listener,
                store.clone(),
                shutdown.clone(),
            )));
        }
        crate::collect::start(&config, &store, &services, &shutdown);
        crate::delivery::spawn_runner(&config, store.clone(), services.clone(), shutdown.clone());
        say(&format!("umail: ready on {hostname}"));
        Ok(RunningServer {
            hostname,
            services,
            store,
            listeners: bound,
            trigger,
            tasks,
            admin_task,
            tracker,
            socket_path,
            grace: Duration::from_secs(config.server.shutdown_grace_secs),
        })
    }
}

/// A started server. Dropping it does not stop it: call
/// [`shutdown`](RunningServer::shutdown) (or
/// [`run_until_signal`](RunningServer::run_until_signal)).
pub struct RunningServer {
    hostname: String,
    services: Services,
    store: Store,
    listeners: Vec<(&'static str, SocketAddr)>,
    trigger: ShutdownTrigger,
    tasks: Vec<JoinHandle<()>>,
    admin_task: JoinHandle<()>,
    tracker: Arc<SessionTracker>,
    socket_path: PathBuf,
    grace: Duration,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("hostname", &self.hostname)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl RunningServer {
    /// The host name in greetings and `Received` fields.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The services every protocol runs on (directory, store, queue,
    /// filter chain).
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The embedded store (admin API, collection, DKIM keys, and whatever
    /// was not supplied to the builder).
    pub fn embedded_store(&self) -> &Store {
        &self.store
    }

    /// Every bound listener: (`smtp`, `submission`, `submissions`, `imap`,
    /// `imaps`, `pop3`, `pop3s` or `admin`, address).
    pub fn listeners(&self) -> &[(&'static str, SocketAddr)] {
        &self.listeners
    }

    /// The first address the listener `name` is bound to.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
    }

    /// Waits for SIGTERM or Ctrl-C, then shuts down.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        self.shutdown().await;
    }

    /// Stops accepting connections, lets sessions finish for up to
    /// `server.shutdown_grace_secs`, stops the background tasks and
    /// removes the admin socket.
    pub async fn shutdown(self) {
        tracing::info!(target: "admin", "shutting down: no new connections, finishing sessions");
        self.trigger.trigger();
        for t in self.tasks {
            let _ = t.await;
        }
        if tokio::time::timeout(self.grace, self.tracker.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                target: "admin",
                sessions = self.tracker.active.load(Ordering::SeqCst),
                "grace period over; closing remaining sessions"
            );
        }
        let _ = self.admin_task.await;
        let _ = std::fs::remove_file(&self.socket_path);
        tracing::info!(target: "admin", "stopped");
    }
}

/// `umail serve`: runs the server until a shutdown signal.
pub async fn run(config: Config) -> Result<()> {
    ServerBuilder::new(config)
        .announce(true)
        .start()
        .await?
        .run_until_signal()
        .await;
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
