//! Verified backups of a data directory, and restoring them.
//!
//! A backup is a directory: [`DATABASE`] (a consistent copy of the whole
//! database taken from one read snapshot, so a server can keep running),
//! the files of `data_dir/tls` (the generated certificate and key), and
//! [`MANIFEST`] naming every file with its size and SHA-256. The copy is
//! opened and its invariants checked before the backup is reported done,
//! and the manifest is written last: a directory without one is not a
//! backup, so an interrupted run can never be restored by mistake.
//!
//! Restoring needs the database closed (no server running on it). Every
//! checksum is verified first; the database is copied next to the live
//! one, checked again, synced and renamed into place, so a failed restore
//! leaves the data directory as it was. Whatever is replaced is kept as
//! `NAME.before-restore-TIMESTAMP`.

use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Store;

/// The manifest's file name inside a backup directory.
pub const MANIFEST: &str = "manifest.json";
/// The database's file name, in a data directory and in a backup.
pub const DATABASE: &str = "umail.redb";
/// Manifest format understood by this version.
pub const FORMAT: u32 = 1;
/// Directories of the data directory copied along with the database.
pub const DATA_SUBDIRS: [&str; 1] = ["tls"];

/// Why a backup or a restore failed. Nothing is replaced by a failed
/// restore.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The destination of a backup exists and is not an empty directory.
    #[error("{0} exists and is not empty")]
    NotEmpty(PathBuf),
    /// The directory is not a backup (no manifest) or its manifest is
    /// unreadable, unsupported or names files a backup never writes.
    #[error("{0}")]
    NotABackup(String),
    /// A file does not match its manifest entry.
    #[error("{0} does not match the manifest (damaged or changed since the backup)")]
    Damaged(String),
    /// The database copy fails its invariant check, or cannot be opened.
    #[error("{0}")]
    Inconsistent(String),
    /// Restoring over an existing database without `force`.
    #[error("{0} already has a database; --force replaces it (the current one is kept next to it)")]
    Exists(PathBuf),
    /// Taking the database snapshot failed.
    #[error("snapshot: {0}")]
    Snapshot(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The manifest's record of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Path inside the backup directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
}

/// What a backup directory holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`] of the writer.
    pub format: u32,
    /// The umail version that wrote it.
    pub umail_version: String,
    /// Unix time the snapshot was taken.
    pub created: i64,
    /// The data directory it was taken from.
    pub source: String,
    /// Every file, the database first.
    pub files: Vec<FileRecord>,
}

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The backup directory (absolute).
    pub dir: PathBuf,
    /// The manifest written last.
    pub manifest: Manifest,
}

impl BackupSummary {
    /// Bytes in all files.
    pub fn bytes(&self) -> u64 {
        self.manifest.files.iter().map(|f| f.bytes).sum()
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    /// The restored backup's manifest.
    pub manifest: Manifest,
    /// Files that were replaced, kept under their new names.
    pub kept: Vec<PathBuf>,
}

/// Creates `dir` (and missing parents) readable by the owner only: data
/// directories and backups hold password hashes, private keys and mail.
pub fn create_private_dir(dir: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

/// Size and SHA-256 (hex) of a file.
pub fn sha256_file(path: &Path) -> Result<(u64, String), BackupError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
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
fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Copies `src` to `dst` (which must not exist) with mode 0600 and syncs it.
fn copy_synced(src: &Path, dst: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut from = std::fs::File::open(src).map_err(io(src))?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(io(dst))?;
    std::io::copy(&mut from, &mut to).map_err(io(dst))?;
    to.sync_all().map_err(io(dst))
}

/// Regular files directly inside `dir` (none when it does not exist).
fn files_in(dir: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let mut out = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                let e = e.map_err(io(dir))?;
                if e.file_type().map_err(io(dir))?.is_file() {
                    out.push(e.path());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(dir)(e)),
    }
    out.sort();
    Ok(out)
}

/// Opens the database at `path` and checks its invariants.
pub fn verify_database(path: &Path) -> Result<(), BackupError> {
    let store = Store::open(path)
        .map_err(|e| BackupError::Inconsistent(format!("opening {}: {e}", path.display())))?;
    store.check_invariants().map_err(|problems| {
        BackupError::Inconsistent(format!("{} is inconsistent:\n{problems}", path.display()))
    })
}

/// Writes a backup of `data_dir` into `dest` (created 0700; it must not
/// exist or be empty). `snapshot` writes the database copy to the path it
/// is given: [`Store::backup`] on an open store, or a request to the
/// server that has it open. The copy is verified, the other files copied,
/// and the manifest written last.
pub async fn backup<F, Fut>(
    data_dir: &Path,
    dest: &Path,
    snapshot: F,
) -> Result<BackupSummary, BackupError>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let dest = std::path::absolute(dest).map_err(io(dest))?;
    if dest.exists() {
        let empty = std::fs::read_dir(&dest)
            .map_err(io(&dest))?
            .next()
            .is_none();
        if !empty {
            return Err(BackupError::NotEmpty(dest));
        }
    }
    create_private_dir(&dest)?;
    let created = umail_core::unix_now();
    let db_copy = dest.join(DATABASE);
    snapshot(db_copy.clone())
        .await
        .map_err(BackupError::Snapshot)?;
    let check = db_copy.clone();
    tokio::task::spawn_blocking(move || verify_database(&check))
        .await
        .map_err(|e| BackupError::Inconsistent(e.to_string()))??;

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
        create_private_dir(&dest.join(sub))?;
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
            .unwrap_or_else(|_| data_dir.to_path_buf())
            .display()
            .to_string(),
        files,
    };
    let tmp = dest.join(format!("{MANIFEST}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| BackupError::NotABackup(e.to_string()))?;
        f.write_all(&json).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    let final_path = dest.join(MANIFEST);
    std::fs::rename(&tmp, &final_path).map_err(io(&final_path))?;
    sync_dir(&dest)?;
    Ok(BackupSummary {
        dir: dest,
        manifest,
    })
}

/// Reads a backup directory's manifest and checks every file against it.
pub fn verify_backup(src: &Path) -> Result<Manifest, BackupError> {
    let path = src.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|_| {
        BackupError::NotABackup(format!(
            "{} is not a umail backup (no {MANIFEST}; an interrupted backup has none)",
            src.display()
        ))
    })?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| BackupError::NotABackup(format!("reading {}: {e}", path.display())))?;
    if manifest.format != FORMAT {
        return Err(BackupError::NotABackup(format!(
            "backup format {} is not supported by umail {} (format {FORMAT})",
            manifest.format,
            env!("CARGO_PKG_VERSION")
        )));
    }
    if !manifest.files.iter().any(|f| f.path == DATABASE) {
        return Err(BackupError::NotABackup("the backup has no database".into()));
    }
    for f in &manifest.files {
        // Only the names a backup writes: nothing may escape the data dir.
        let allowed = f.path == DATABASE
            || DATA_SUBDIRS.iter().any(|d| {
                f.path.strip_prefix(&format!("{d}/")).is_some_and(|name| {
                    !name.is_empty() && !name.contains(['/', '\\']) && name != ".."
                })
            });
        if !allowed {
            return Err(BackupError::NotABackup(format!(
                "unexpected file {:?} in the manifest",
                f.path
            )));
        }
        let (bytes, sha256) = sha256_file(&src.join(&f.path))?;
        if bytes != f.bytes || sha256 != f.sha256 {
            return Err(BackupError::Damaged(f.path.clone()));
        }
    }
    Ok(manifest)
}

/// Restores the backup in `src` into `data_dir`, whose database must not
/// be open. Without `force` an existing database is an error; with it,
/// everything replaced is kept beside the new files.
pub fn restore(data_dir: &Path, src: &Path, force: bool) -> Result<RestoreSummary, BackupError> {
    let manifest = verify_backup(src)?;
    let live = data_dir.join(DATABASE);
    if !force && live.exists() {
        return Err(BackupError::Exists(data_dir.to_path_buf()));
    }
    create_private_dir(data_dir)?;

    // The database: copied beside the live one, verified, then renamed in.
    let staged = data_dir.join(format!("{DATABASE}.restoring"));
    match std::fs::remove_file(&staged) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&staged)(e)),
    }
    copy_synced(&src.join(DATABASE), &staged)?;
    if let Err(e) = verify_database(&staged) {
        let _ = std::fs::remove_file(&staged);
        return Err(e);
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let mut kept = Vec::new();
    if live.exists() {
        let old = data_dir.join(format!("{DATABASE}.before-restore-{stamp}"));
        std::fs::rename(&live, &old).map_err(io(&live))?;
        kept.push(old);
    }
    std::fs::rename(&staged, &live).map_err(io(&live))?;
    sync_dir(data_dir)?;

    for f in manifest.files.iter().filter(|f| f.path != DATABASE) {
        let dst = data_dir.join(&f.path);
        if let Some(parent) = dst.parent() {
            create_private_dir(parent)?;
        }
        if dst.exists() {
            let old = PathBuf::from(format!("{}.before-restore-{stamp}", dst.display()));
            std::fs::rename(&dst, &old).map_err(io(&dst))?;
            kept.push(old);
        }
        copy_synced(&src.join(&f.path), &dst)?;
        if let Some(parent) = dst.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(RestoreSummary { manifest, kept })
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
            let err = verify_backup(dir.path()).unwrap_err().to_string();
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

    #[tokio::test]
    async fn backup_then_restore_into_an_empty_directory() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path().join(DATABASE)).unwrap();
        store
            .add_domain(crate::NewDomain::new("example.com".parse().unwrap()))
            .await
            .unwrap();
        std::fs::create_dir(data.path().join("tls")).unwrap();
        std::fs::write(data.path().join("tls/cert.pem"), b"cert").unwrap();
        let dest = tempfile::tempdir().unwrap();
        let summary = backup(data.path(), dest.path(), |path| {
            let store = store.clone();
            async move {
                store
                    .backup(&path)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
        .await
        .unwrap();
        assert_eq!(summary.manifest.files.len(), 2);
        drop(store);

        let target = tempfile::tempdir().unwrap();
        let restored = restore(target.path(), dest.path(), false).unwrap();
        assert!(restored.kept.is_empty());
        let store = Store::open(target.path().join(DATABASE)).unwrap();
        assert_eq!(store.list_domains().unwrap().len(), 1);
        assert_eq!(
            std::fs::read(target.path().join("tls/cert.pem")).unwrap(),
            b"cert"
        );
        // A second restore needs --force and keeps what it replaces.
        drop(store);
        assert!(matches!(
            restore(target.path(), dest.path(), false),
            Err(BackupError::Exists(_))
        ));
        let again = restore(target.path(), dest.path(), true).unwrap();
        assert_eq!(again.kept.len(), 2);
    }
}
