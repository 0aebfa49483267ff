//! `umail backup DIR` and `umail restore DIR`: the CLI side of
//! [`umail_store::backup`], which holds the logic (what a backup contains,
//! how it is verified, how a restore stays atomic). Here: who takes the
//! database snapshot (the running server over its admin socket, or this
//! process on the closed database) and how the result is printed.

use std::path::Path;

use anyhow::{Result, ensure};
use umail_core::config::Config;
use umail_store::backup;

use crate::admin::{AdminRequest, Output};
use crate::admin_socket;

/// `umail backup DIR`: works with the server running or stopped.
pub async fn backup(config: &Config, dest: &Path) -> Result<Output> {
    let data_dir = &config.server.data_dir;
    let socket = data_dir.join(admin_socket::SOCKET_NAME);
    let summary = if crate::serve::socket_is_live(&socket) {
        // The running server owns the database: it writes the snapshot.
        backup::backup(data_dir, dest, |path| async move {
            match admin_socket::send(&socket, &AdminRequest::Backup { path }).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(message)) => Err(message),
                Err(e) => Err(format!("{e:#}")),
            }
        })
        .await?
    } else {
        ensure!(
            crate::database_path(data_dir).exists(),
            "no database in {} (pass --data-dir)",
            data_dir.display()
        );
        let store = crate::open_store(data_dir)?;
        backup::backup(data_dir, dest, |path| async move {
            store
                .backup(&path)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await?
    };
    Ok(Output::Record {
        fields: vec![
            ("backup".into(), summary.dir.display().to_string()),
            ("files".into(), summary.manifest.files.len().to_string()),
            ("bytes".into(), summary.bytes().to_string()),
            ("verified".into(), "yes".into()),
        ],
    })
}

/// `umail restore DIR [--force]`: the server must be stopped.
pub async fn restore(config: &Config, src: &Path, force: bool) -> Result<Output> {
    let data_dir = config.server.data_dir.clone();
    let socket = data_dir.join(admin_socket::SOCKET_NAME);
    ensure!(
        !crate::serve::socket_is_live(&socket),
        "umail serve is running on {}: stop it before restoring",
        data_dir.display()
    );
    let src = src.to_path_buf();
    let restored = tokio::task::spawn_blocking(move || {
        backup::restore(&data_dir, &src, force).map(|r| (r, src))
    })
    .await??;
    let (summary, src) = restored;
    let manifest = &summary.manifest;
    let mut fields = vec![
        ("restored".into(), src.display().to_string()),
        (
            "taken".into(),
            chrono::DateTime::from_timestamp(manifest.created, 0)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_default(),
        ),
        ("from".into(), manifest.source.clone()),
        ("files".into(), manifest.files.len().to_string()),
    ];
    for k in summary.kept {
        fields.push(("kept".into(), k.display().to_string()));
    }
    Ok(Output::Record { fields })
}
