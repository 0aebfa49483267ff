//! The local admin socket: one JSON request per line, one JSON reply per
//! line. Only the owner of the data directory can connect (mode 0600), so
//! the socket needs no password.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use umail_core::Shutdown;
use umail_store::Store;

use crate::admin::{AdminReply, AdminRequest};

/// The socket's file name inside the data directory.
pub const SOCKET_NAME: &str = "admin.sock";

/// Largest request line accepted (a bulk import of many users fits).
const MAX_REQUEST: usize = 64 * 1024 * 1024;

/// Binds the socket (removing a stale one left by a crash), readable and
/// writable only by the owner.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        // Nobody answers on a leftover socket: the caller holds the database lock.
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the socket until shutdown.
pub async fn serve(listener: UnixListener, store: Store, mut shutdown: Shutdown) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.wait() => return,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(target: "admin", error = %e, "admin socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, store).await {
                tracing::warn!(target: "admin", error = %format!("{e:#}"), "admin socket session failed");
            }
        });
    }
}

async fn handle(stream: UnixStream, store: Store) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let reply: AdminReply = match serde_json::from_str::<AdminRequest>(&line) {
        Ok(request) => {
            tracing::info!(target: "admin", request = request.name(), "admin socket request");
            crate::handlers::execute(&store, request).await
        }
        Err(e) => Err(format!("malformed request: {e}")),
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await?;
    Ok(())
}

/// Sends one request to a running server.
pub async fn send(path: &Path, request: &AdminRequest) -> Result<AdminReply> {
    let stream = UnixStream::connect(path)
        .await
        .with_context(|| format!("connecting to {}", path.display()))?;
    let (read, mut write) = stream.into_split();
    let mut body = serde_json::to_vec(request)?;
    body.push(b'\n');
    write.write_all(&body).await?;
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    if line.is_empty() {
        anyhow::bail!("the server closed the admin socket without answering");
    }
    serde_json::from_str(&line).context("malformed reply from the server")
}
