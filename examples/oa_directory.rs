//! An SMTP receiver whose users come from an OA system over HTTP: a custom
//! `umail_core::Directory`, plugged into `umail-smtp` with the embedded
//! `umail-store` holding the mail.
//!
//! The OA system is expected to answer:
//!
//! * `GET /mail/users` with `[{"email": "li.lei@corp.example", "name": "Li Lei", "enabled": true}, ...]`
//! * `POST /mail/verify` with `{"email": ..., "password": ...}` and status 200 when they match.
//!
//! ```sh
//! cargo run --example oa_directory -- http://127.0.0.1:8000 ./oa-mail.redb 127.0.0.1:2525
//! ```
//!
//! The user list is refreshed every minute; passwords stay in the OA system.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use umail_core::config::{SecurityConfig, SmtpConfig};
use umail_core::net::{next_session_id, shutdown_channel};
use umail_core::{
    AccountStatus, Address, ConnectionInfo, Directory, DirectoryError, Domain, Principal, Protocol,
    Quota, Resolution,
};
use umail_smtp::{ListenerMode, SmtpServer};

#[derive(Debug, Clone, Deserialize)]
struct OaUser {
    email: String,
    name: String,
    enabled: bool,
}

/// A directory backed by the OA system's HTTP API.
struct OaDirectory {
    base: String,
    users: RwLock<HashMap<String, Principal>>,
}

/// A minimal HTTP/1.0 client: enough for a trusted OA system on the LAN.
async fn http(
    base: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), DirectoryError> {
    let err = |e: &dyn std::fmt::Display| DirectoryError::Unavailable(format!("OA system: {e}"));
    let host = base
        .strip_prefix("http://")
        .ok_or_else(|| err(&"only http:// URLs"))?;
    let mut stream = TcpStream::connect(host).await.map_err(|e| err(&e))?;
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| err(&e))?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|e| err(&e))?
        .map_err(|e| err(&e))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| err(&"malformed response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err(&"no status"))?;
    Ok((status, body.to_string()))
}

impl OaDirectory {
    async fn refresh(&self) -> Result<usize, DirectoryError> {
        let (status, body) = http(&self.base, "GET", "/mail/users", "").await?;
        if status != 200 {
            return Err(DirectoryError::Unavailable(format!(
                "OA user list: HTTP {status}"
            )));
        }
        let list: Vec<OaUser> =
            serde_json::from_str(&body).map_err(|e| DirectoryError::Other(e.to_string()))?;
        let mut users = HashMap::new();
        for u in list {
            let Ok(address) = Address::parse(&u.email) else {
                continue; // skip what is not a mail address
            };
            users.insert(
                address.lookup_key(),
                Principal {
                    address,
                    display_name: u.name,
                    quota: Quota::default(),
                    protocols: vec![Protocol::Smtp, Protocol::Imap, Protocol::Pop3],
                    status: if u.enabled {
                        AccountStatus::Enabled
                    } else {
                        AccountStatus::Frozen
                    },
                    department: None,
                    roles: Vec::new(),
                },
            );
        }
        let n = users.len();
        *self.users.write().unwrap_or_else(|e| e.into_inner()) = users;
        Ok(n)
    }

    fn lookup(&self, key: &str) -> Option<Principal> {
        self.users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }
}

#[async_trait]
impl Directory for OaDirectory {
    async fn verify_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<Principal>, DirectoryError> {
        let Ok(address) = Address::parse(username) else {
            return Ok(None);
        };
        let Some(principal) = self.lookup(&address.lookup_key()) else {
            return Ok(None);
        };
        let body =
            serde_json::json!({ "email": address.to_string(), "password": password }).to_string();
        let (status, _) = http(&self.base, "POST", "/mail/verify", &body).await?;
        Ok((status == 200 && principal.status == AccountStatus::Enabled).then_some(principal))
    }

    async fn principal(&self, username: &str) -> Result<Option<Principal>, DirectoryError> {
        Ok(Address::parse(username)
            .ok()
            .and_then(|a| self.lookup(&a.lookup_key())))
    }

    async fn resolve(&self, address: &Address) -> Result<Resolution, DirectoryError> {
        if !self.is_local_domain(address.domain()).await? {
            return Ok(Resolution::NotLocal);
        }
        Ok(match self.lookup(&address.lookup_key()) {
            Some(p) if p.status == AccountStatus::Frozen => {
                Resolution::Unavailable(umail_core::Unavailability::FrozenAccount)
            }
            Some(p) => Resolution::Local(p),
            None => Resolution::Unknown,
        })
    }

    async fn is_local_domain(&self, domain: &Domain) -> Result<bool, DirectoryError> {
        Ok(self
            .users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|p| p.address.domain() == domain))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8000".to_string());
    let db = args.next().unwrap_or_else(|| "./oa-mail.redb".to_string());
    let bind = args.next().unwrap_or_else(|| "127.0.0.1:2525".to_string());

    let directory = Arc::new(OaDirectory {
        base,
        users: RwLock::new(HashMap::new()),
    });
    println!("{} users from the OA system", directory.refresh().await?);
    let refresher = Arc::clone(&directory);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            if let Err(e) = refresher.refresh().await {
                eprintln!("keeping the previous user list: {e}");
            }
        }
    });

    // Mail is stored by the embedded store. It keeps its own account table,
    // so OA users are mirrored into it on first delivery by the operator's
    // provisioning (`umail user add`), or use your own MailStore instead.
    let store = umail_store::Store::open(&db)?;
    let mut services = store.services("mx.corp.example", &SecurityConfig::default());
    services.directory = directory;
    let server = Arc::new(SmtpServer::new(services, SmtpConfig::default(), None));
    let listener = TcpListener::bind(&bind).await?;
    println!("SMTP (MX) on {}", listener.local_addr()?);
    let (_trigger, shutdown) = shutdown_channel();
    loop {
        let (stream, peer) = listener.accept().await?;
        let info = ConnectionInfo {
            session_id: next_session_id(),
            peer,
            local: stream.local_addr()?,
            listener: "smtp".to_string(),
        };
        let (server, shutdown) = (Arc::clone(&server), shutdown.clone());
        tokio::spawn(async move {
            server
                .serve_connection(stream, info, ListenerMode::Mx, shutdown)
                .await;
        });
    }
}
