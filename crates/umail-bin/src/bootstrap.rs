//! First start on an empty data directory: a first domain and a system
//! administrator whose generated password is printed once.

use anyhow::{Context, Result};
use rand::Rng;
use umail_core::{Address, AdminRole, Domain};
use umail_store::{NewDomain, NewUser, Store};

use crate::serve::announce;

/// Creates the first domain and administrator when the store has no domain.
pub async fn first_run(store: &Store, hostname: &str) -> Result<()> {
    if !store.list_domains().context("reading domains")?.is_empty() {
        return Ok(());
    }
    let domain = Domain::parse(hostname)
        .or_else(|_| Domain::parse("localhost"))
        .context("choosing the first domain")?;
    store
        .add_domain(NewDomain::new(domain.clone()))
        .await
        .with_context(|| format!("creating domain {domain}"))?;
    let address = Address::new("admin", domain.clone()).context("administrator address")?;
    let password = generate_password();
    let mut user = NewUser::new(address.clone(), password.clone());
    user.display_name = "System administrator".to_string();
    store
        .add_user(user)
        .await
        .with_context(|| format!("creating {address}"))?;
    store
        .grant_role(&address, AdminRole::System)
        .await
        .context("granting the system role")?;
    announce(&format!("umail: created domain {domain}"));
    announce(&format!(
        "umail: system administrator {address} password {password}"
    ));
    announce(
        "umail: the password is shown only once; change it with `umail user set ADDRESS --password -`",
    );
    Ok(())
}

/// 20 characters from an alphabet without look-alikes (~115 bits).
fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
