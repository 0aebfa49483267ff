//! Shared fixtures: in-memory services, a self-signed certificate and a
//! POP3 server on loopback.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use umail_core::config::{Pop3Config, SecurityConfig};
use umail_core::lockout::AuthLockout;
use umail_core::memory::{MemoryDirectory, MemoryMailStore, MemoryQueue};
use umail_core::net::{ShutdownTrigger, next_session_id, shutdown_channel};
use umail_core::store::INBOX;
use umail_core::{ConnectionInfo, FilterChain, MailStore, Services};
use umail_pop3::{ListenerMode, Pop3Server};

pub const ALICE: &str = "alice@example.com";

pub struct Fixture {
    pub dir: Arc<MemoryDirectory>,
    pub store: Arc<MemoryMailStore>,
    pub server: Arc<Pop3Server>,
    pub pop3: SocketAddr,
    pub pop3s: SocketAddr,
    pub cert_der: CertificateDer<'static>,
    pub ca_file: tempfile::NamedTempFile,
    /// One message per finished connection.
    pub finished: mpsc::UnboundedReceiver<()>,
    pub shutdown: ShutdownTrigger,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Fixture {
    pub async fn start(config: Pop3Config) -> Fixture {
        let dir = Arc::new(MemoryDirectory::new());
        dir.add_user(ALICE, "secret");
        let store = Arc::new(MemoryMailStore::new());
        let services = Services {
            directory: dir.clone(),
            store: store.clone(),
            queue: Arc::new(MemoryQueue::new()),
            filter: Arc::new(FilterChain::new()),
            lockout: Arc::new(AuthLockout::new(&SecurityConfig::default())),
            hostname: "localhost".to_string(),
        };
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("certificate");
        let cert_der = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert_der.clone()], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let mut ca_file = tempfile::NamedTempFile::new().expect("tempfile");
        ca_file
            .write_all(ck.cert.pem().as_bytes())
            .expect("write pem");
        ca_file.flush().expect("flush");

        let server = Arc::new(Pop3Server::new(services, config, Some(acceptor)));
        let (trigger, shutdown) = shutdown_channel();
        let (tx, finished) = mpsc::unbounded_channel();
        let mut addrs = Vec::new();
        for mode in [ListenerMode::Pop3, ListenerMode::Pop3s] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let local = listener.local_addr().expect("addr");
            addrs.push(local);
            let server = server.clone();
            let tx = tx.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, peer)) = listener.accept().await else {
                        return;
                    };
                    let server = server.clone();
                    let tx = tx.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        let info = ConnectionInfo {
                            session_id: next_session_id(),
                            peer,
                            local,
                            listener: "pop3".into(),
                        };
                        server.serve_connection(stream, info, mode, shutdown).await;
                        let _ = tx.send(());
                    });
                }
            });
        }
        Fixture {
            dir,
            store,
            server,
            pop3: addrs[0],
            pop3s: addrs[1],
            cert_der,
            ca_file,
            finished,
            shutdown: trigger,
        }
    }

    pub async fn deliver(&self, message: &[u8]) -> u32 {
        self.store
            .append(
                ALICE,
                INBOX,
                Bytes::copy_from_slice(message),
                Default::default(),
                0,
            )
            .await
            .expect("append")
            .uid
    }

    pub async fn inbox_uids(&self) -> Vec<u32> {
        let mb = self.store.mailbox(ALICE, INBOX).await.unwrap().unwrap();
        self.store
            .messages(ALICE, mb.id)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.uid)
            .collect()
    }

    pub async fn uid_validity(&self) -> u32 {
        self.store
            .mailbox(ALICE, INBOX)
            .await
            .unwrap()
            .unwrap()
            .uid_validity
    }

    /// Waits until `n` more connections have finished on the server side.
    pub async fn wait_finished(&mut self, n: usize) {
        for _ in 0..n {
            self.finished.recv().await.expect("server alive");
        }
    }

    pub fn tls_connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).expect("root");
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from("localhost").expect("name")
    }

    /// Runs a Python script with `host port cafile` arguments; returns stdout.
    pub async fn python(&self, port: u16, script: &str) -> String {
        let out = tokio::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg("127.0.0.1")
            .arg(port.to_string())
            .arg(self.ca_file.path())
            .output()
            .await
            .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "python failed: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}
