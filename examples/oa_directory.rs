//! A complete mail server whose users come from an OA system over HTTP: a
//! custom `umail_core::Directory` given to `umail_bin::ServerBuilder`, with
//! the embedded store holding the mail. Passwords stay in the OA system:
//! SMTP AUTH, IMAP and POP3 logins are checked by asking it.
//!
//! The OA system is expected to answer:
//!
//! * `GET /mail/users` with `[{"email": "li.lei@corp.example", "name": "Li Lei", "enabled": true}, ...]`
//! * `POST /mail/verify` with `{"email": ..., "password": ...}` and status 200 when they match.
//!
//! ```sh
//! cargo run --example oa_directory -- http://127.0.0.1:8000 [umail.toml]
//! ```
//!
//! The user list is refreshed every minute. Each OA user gets a mailbox
//! account in the embedded store (with a random password nobody knows:
//! logins go to the OA system), so the mail stays when the OA system is
//! down. For `https://` OA systems, enable reqwest's `rustls-tls` feature.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use umail_core::config::Config;
use umail_core::{
    AccountStatus, Address, Directory, DirectoryError, Domain, Principal, Protocol, Quota,
    Resolution,
};

#[derive(Debug, Clone, Deserialize)]
struct OaUser {
    email: String,
    name: String,
    enabled: bool,
}

/// A directory backed by the OA system's HTTP API.
struct OaDirectory {
    base: String,
    http: reqwest::Client,
    users: RwLock<HashMap<String, Principal>>,
}

fn unavailable(e: impl std::fmt::Display) -> DirectoryError {
    DirectoryError::Unavailable(format!("OA system: {e}"))
}

impl OaDirectory {
    async fn refresh(&self) -> Result<usize, DirectoryError> {
        let list: Vec<OaUser> = self
            .http
            .get(format!("{}/mail/users", self.base))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unavailable)?
            .json()
            .await
            .map_err(|e| DirectoryError::Other(e.to_string()))?;
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

    /// Gives every OA user an account (and its domain) in the mail store.
    async fn provision(
        &self,
        store: &umail_store::Store,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let users: Vec<Principal> = self
            .users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for p in users {
            if store.get_domain(p.address.domain())?.is_none() {
                store
                    .add_domain(umail_store::NewDomain::new(p.address.domain().clone()))
                    .await?;
            }
            if store.get_user(&p.address)?.is_none() {
                let unknowable: String = (0..4)
                    .map(|_| format!("{:016x}", rand::random::<u64>()))
                    .collect();
                let mut user = umail_store::NewUser::new(p.address.clone(), unknowable);
                user.display_name = p.display_name.clone();
                store.add_user(user).await?;
            }
        }
        Ok(())
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
        let status = self
            .http
            .post(format!("{}/mail/verify", self.base))
            .json(&serde_json::json!({ "email": address.to_string(), "password": password }))
            .send()
            .await
            .map_err(unavailable)?
            .status();
        Ok(
            (status.is_success() && principal.status == AccountStatus::Enabled)
                .then_some(principal),
        )
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
    let config: Config = match args.next() {
        Some(path) => toml::from_str(&std::fs::read_to_string(path)?)?,
        None => Config::default(),
    };

    let directory = Arc::new(OaDirectory {
        base: base.trim_end_matches('/').to_string(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        users: RwLock::new(HashMap::new()),
    });
    println!("{} users from the OA system", directory.refresh().await?);

    let server = umail_bin::ServerBuilder::new(config)
        .directory(directory.clone())
        .start()
        .await?;
    directory.provision(server.embedded_store()).await?;
    let store = server.embedded_store().clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            match directory.refresh().await {
                Ok(_) => {
                    if let Err(e) = directory.provision(&store).await {
                        eprintln!("provisioning: {e}");
                    }
                }
                Err(e) => eprintln!("keeping the previous user list: {e}"),
            }
        }
    });
    for (name, addr) in server.listeners() {
        println!("listening {name} {addr}");
    }
    println!("ready");
    server.run_until_signal().await;
    Ok(())
}
