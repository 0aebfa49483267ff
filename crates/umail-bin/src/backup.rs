//! `umail backup DIR` and `umail restore DIR`.
//!
//! A backup is a directory: `umail.redb` (a consistent copy of the whole
//! database taken from one read snapshot, so the server keeps running),
//! the TLS files the server generated in `data_dir/tls`, and
//! `manifest.json` naming every file with its size and SHA-256. The copy is
//! opened and its invariants checked before the backup is reported done.
//!
//! Restoring needs the server stopped. Every checksum is verified first;
//! the database is copied next to the live one, checked again, synced and
//! renamed into place, so a failed restore leaves the data directory as it
//! was. A database already there is kept as
//! `umail.redb.before-restore-TIMESTAMP` (only with `--force`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use umail_core::config::Config;

use crate::admin::{AdminRequest, Output};
use crate::admin_socket;

/// The manifest's file name inside a backup directory.
pub const MANIFEST: &str = "manifest.json";
/// The database's file name inside a backup directory.
pub const DATABASE: &str = "umail.redb";
/// Manifest format understood by this version.
pub const FORMAT: u32 = 1;
/// Directories of `data_dir` copied along with the database.
const DATA_SUBDIRS: [&str; 1] = ["tls"];

/// `backup.json`'s record of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileRecord {
    /// Path inside the backup directory, `/`-separated.
    path: String,
    bytes: u64,
    sha256: String,
}

/// What a backup directory holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    umail_version: String,
    /// Unix time the snapshot was taken.
    created: i64,
    /// The data directory it was taken from.
    source: String,
    files: Vec<FileRecord>,
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((total, hex))
}

/// Makes a rename or a new file in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Copies `src` to `dst` (which must not exist) and syncs it.
fn copy_synced(src: &Path, dst: &Path) -> Result<()> {
    let mut from =
        std::fs::File::open(src).with_context(|| format!("reading {}", src.display()))?;
    use std::os::unix::fs::OpenOptionsExt;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .with_context(|| format!("creating {}", dst.display()))?;
    std::io::copy(&mut from, &mut to).with_context(|| format!("writing {}", dst.display()))?;
    to.sync_all()?;
    Ok(())
}

/// Regular files directly inside `dir` (none when it does not exist).
fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                let e = e?;
                if e.file_type()?.is_file() {
                    out.push(e.path());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    }
    out.sort();
    Ok(out)
}

/// Opens the database at `path` and checks its invariants.
async fn verify_database(path: &Path) -> Result<()> {
    let store = umail_store::Store::open(path)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    store
        .check_invariants()
        .map_err(|problems| anyhow::anyhow!("{} is inconsistent:\n{problems}", path.display()))?;
    drop(store);
    Ok(())
}

/// `umail backup DIR`: works with the server running or stopped.
pub async fn backup(config: &Config, dest: &Path) -> Result<Output> {
    let data_dir = &config.server.data_dir;
    let dest = std::path::absolute(dest).with_context(|| format!("{}", dest.display()))?;
    if dest.exists() {
        let empty = std::fs::read_dir(&dest)
            .with_context(|| format!("{} is not a directory", dest.display()))?
            .next()
            .is_none();
        ensure!(empty, "{} exists and is not empty", dest.display());
    }
    crate::create_private_dir(&dest)?;
    let created = umail_core::unix_now();
    let db_copy = dest.join(DATABASE);

    let socket = data_dir.join(admin_socket::SOCKET_NAME);
    if crate::serve::socket_is_live(&socket) {
        // The running server owns the database: it writes the snapshot.
        let reply = admin_socket::send(
            &socket,
            &AdminRequest::Backup {
                path: db_copy.clone(),
            },
        )
        .await?;
        if let Err(message) = reply {
            bail!("{message}");
        }
    } else {
        ensure!(
            crate::database_path(data_dir).exists(),
            "no database in {} (pass --data-dir)",
            data_dir.display()
        );
        let store = crate::open_store(data_dir)?;
        store
            .backup(&db_copy)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        drop(store);
    }
    verify_database(&db_copy).await?;

    let mut files = Vec::new();
    let (bytes, sha256) = sha256_file(&db_copy)?;
    files.push(FileRecord {
        path: DATABASE.into(),
        bytes,
        sha256,
    });
    for sub in DATA_SUBDIRS {
        let from = files_in(&data_dir.join(sub))?;
        if from.is_empty() {
            continue;
        }
        crate::create_private_dir(&dest.join(sub))?;
        for src in from {
            let name = src.file_name().unwrap_or_default().to_string_lossy();
            let rel = format!("{sub}/{name}");
            let dst = dest.join(&rel);
            copy_synced(&src, &dst)?;
            let (bytes, sha256) = sha256_file(&dst)?;
            files.push(FileRecord {
                path: rel,
                bytes,
                sha256,
            });
        }
        sync_dir(&dest.join(sub))?;
    }
    let manifest = Manifest {
        format: FORMAT,
        umail_version: env!("CARGO_PKG_VERSION").into(),
        created,
        source: std::path::absolute(data_dir)
            .unwrap_or_else(|_| data_dir.clone())
            .display()
            .to_string(),
        files,
    };
    // Written last and atomically: a directory without a manifest is not a
    // backup, so an interrupted run can never be restored by mistake.
    let tmp = dest.join(format!("{MANIFEST}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&manifest)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dest.join(MANIFEST))?;
    sync_dir(&dest)?;
    let total: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    Ok(Output::Record {
        fields: vec![
            ("backup".into(), dest.display().to_string()),
            ("files".into(), manifest.files.len().to_string()),
            ("bytes".into(), total.to_string()),
            ("verified".into(), "yes".into()),
        ],
    })
}

/// Reads and checks a backup directory's manifest and every file's checksum.
fn read_verified_manifest(src: &Path) -> Result<Manifest> {
    let path = src.join(MANIFEST);
    let text = std::fs::read(&path).with_context(|| {
        format!(
            "{} is not a umail backup (no {MANIFEST}; an interrupted backup has none)",
            src.display()
        )
    })?;
    let manifest: Manifest =
        serde_json::from_slice(&text).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        manifest.format == FORMAT,
        "backup format {} is not supported by umail {} (format {FORMAT})",
        manifest.format,
        env!("CARGO_PKG_VERSION")
    );
    ensure!(
        manifest.files.iter().any(|f| f.path == DATABASE),
        "the backup has no database"
    );
    for f in &manifest.files {
        // Only the names a backup writes: nothing may escape the data dir.
        let allowed = f.path == DATABASE
            || DATA_SUBDIRS.iter().any(|d| {
                f.path.strip_prefix(&format!("{d}/")).is_some_and(|name| {
                    !name.is_empty() && !name.contains(['/', '\\']) && name != ".."
                })
            });
        ensure!(allowed, "unexpected file {:?} in the manifest", f.path);
        let (bytes, sha256) = sha256_file(&src.join(&f.path))?;
        ensure!(
            bytes == f.bytes && sha256 == f.sha256,
            "{} does not match the manifest (damaged or changed since the backup)",
            f.path
        );
    }
    Ok(manifest)
}

/// `umail restore DIR [--force]`: the server must be stopped.
pub async fn restore(config: &Config, src: &Path, force: bool) -> Result<Output> {
    let data_dir = &config.server.data_dir;
    let socket = data_dir.join(admin_socket::SOCKET_NAME);
    ensure!(
        !crate::serve::socket_is_live(&socket),
        "umail serve is running on {}: stop it before restoring",
        data_dir.display()
    );
    let manifest = read_verified_manifest(src)?;
    let live = crate::database_path(data_dir);
    ensure!(
        force || !live.exists(),
        "{} already has a database; --force replaces it (the current one is kept next to it)",
        data_dir.display()
    );
    crate::create_private_dir(data_dir)?;

    // The database: copied beside the live one, verified, then renamed in.
    let staged = data_dir.join(format!("{DATABASE}.restoring"));
    match std::fs::remove_file(&staged) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", staged.display())),
    }
    copy_synced(&src.join(DATABASE), &staged)?;
    if let Err(e) = verify_database(&staged).await {
        let _ = std::fs::remove_file(&staged);
        return Err(e);
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let mut kept = Vec::new();
    if live.exists() {
        let old = data_dir.join(format!("{DATABASE}.before-restore-{stamp}"));
        std::fs::rename(&live, &old)?;
        kept.push(old.display().to_string());
    }
    std::fs::rename(&staged, &live)?;
    sync_dir(data_dir)?;

    for f in manifest.files.iter().filter(|f| f.path != DATABASE) {
        let dst = data_dir.join(&f.path);
        if let Some(parent) = dst.parent() {
            crate::create_private_dir(parent)?;
        }
        if dst.exists() {
            let old = PathBuf::from(format!("{}.before-restore-{stamp}", dst.display()));
            std::fs::rename(&dst, &old)?;
            kept.push(old.display().to_string());
        }
        copy_synced(&src.join(&f.path), &dst)?;
        if let Some(parent) = dst.parent() {
            sync_dir(parent)?;
        }
    }
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
    for k in kept {
        fields.push(("kept".into(), k));
    }
    Ok(Output::Record { fields })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_cannot_escape_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DATABASE), b"db").unwrap();
        let (bytes, sha256) = sha256_file(&dir.path().join(DATABASE)).unwrap();
        for bad in [
            "../umail.redb",
            "tls/../../x",
            "tls/",
            "other/x",
            "/etc/passwd",
        ] {
            let m = Manifest {
                format: FORMAT,
                umail_version: "0".into(),
                created: 0,
                source: String::new(),
                files: vec![
                    FileRecord {
                        path: DATABASE.into(),
                        bytes,
                        sha256: sha256.clone(),
                    },
                    FileRecord {
                        path: bad.into(),
                        bytes: 0,
                        sha256: String::new(),
                    },
                ],
            };
            std::fs::write(dir.path().join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
            let err = read_verified_manifest(dir.path()).unwrap_err().to_string();
            assert!(err.contains("unexpected file"), "{bad}: {err}");
        }
    }

    #[test]
    fn sha256_of_a_known_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            (
                3,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()
            )
        );
    }
}
