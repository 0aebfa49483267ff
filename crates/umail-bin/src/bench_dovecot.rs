//! A throwaway Dovecot for benchmarks that compare umail with it on the
//! same mix: its own `dovecot.conf` in a temporary directory (loopback
//! port, passwd-file login, one Maildir, base_dir, state and log beside
//! it), run in the foreground (`dovecot -F -c FILE`) and stopped with
//! SIGTERM when dropped. Nothing outside the temporary directory is read
//! or written, so it runs beside an installed Dovecot.
//!
//! Started as root it uses the `dovecot` and `dovenull` system users that
//! Debian's package creates for its internal and login processes and
//! reads the Maildir as `nobody` (Dovecot refuses mail access as root);
//! otherwise everything runs as the current user (Dovecot's rootless
//! mode).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The uid and gid of `nobody` on Debian: Dovecot's mail user when the
/// benchmark runs as root.
const NOBODY: (u32, u32) = (65534, 65534);

/// A Dovecot serving POP3 on a loopback port, stopped on drop.
pub struct DovecotServer {
    process: Option<Child>,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for DovecotServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl DovecotServer {
    /// Writes the configuration, lets `fill` write messages into the
    /// Maildir's `cur` directory (the path it is given), then starts
    /// `binary` and waits for its POP3 greeting. `clients` sizes the
    /// process and per-user connection limits.
    pub fn start_pop3(
        binary: &Path,
        user: &str,
        password: &str,
        clients: usize,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<DovecotServer> {
        if !binary.exists() {
            bail!(
                "{} not found: install Debian's dovecot-pop3d (apt-get install dovecot-pop3d)",
                binary.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("umail-bench-dovecot")
            .tempdir()
            .context("temporary directory")?;
        let root = dir.path();
        // The login and mail processes run as other users and must reach
        // their files inside.
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
        let maildir = root.join("Maildir");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub))?;
        }
        let home = root.join("home");
        std::fs::create_dir(&home)?;
        fill(&maildir.join("cur")).context("filling the Dovecot Maildir")?;

        let me = std::fs::metadata(root)?;
        let (internal_user, login_user, mail_ids) = if me.uid() == 0 {
            for tree in [&maildir, &home] {
                chown_tree(tree, NOBODY)?;
            }
            ("dovecot".to_string(), "dovenull".to_string(), NOBODY)
        } else {
            let name = Command::new("id").arg("-un").output()?;
            let name = String::from_utf8(name.stdout)?.trim().to_string();
            (name.clone(), name, (me.uid(), me.gid()))
        };
        let passwd = root.join("passwd");
        std::fs::write(&passwd, format!("{user}:{{PLAIN}}{password}\n"))?;
        std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o644))?;

        let port = free_port()?;
        let config = root.join("dovecot.conf");
        let limit = clients + 20;
        std::fs::write(
            &config,
            format!(
                r#"# Written by umail bench: a throwaway POP3 server on loopback.
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = {internal_user}
default_login_user = {login_user}
default_process_limit = {limit}
default_client_limit = {client_limit}
first_valid_uid = 1
mail_location = maildir:{maildir}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home}
}}
protocol pop3 {{
  mail_max_userip_connections = {limit}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
{chroot}}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"#,
                root = root.display(),
                maildir = maildir.display(),
                passwd = passwd.display(),
                home = home.display(),
                uid = mail_ids.0,
                gid = mail_ids.1,
                client_limit = limit * 4 + 1000,
                // Rootless mode cannot chroot its login processes.
                chroot = if me.uid() == 0 { "" } else { "  chroot =\n" },
            ),
        )?;
        let log = std::fs::File::create(root.join("dovecot.stderr"))?;
        let process = Command::new(binary)
            .arg("-F")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server = DovecotServer {
            process: Some(process),
            addr: format!("127.0.0.1:{port}"),
            dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// `host:port` of the POP3 listener.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The master process's id (its children serve the connections).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    fn wait_ready(&mut self) -> Result<()> {
        use std::io::Read;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .process
                .as_mut()
                .and_then(|p| p.try_wait().ok().flatten())
            {
                bail!("dovecot exited ({status}) at start:\n{}", self.log_tail());
            }
            if let Ok(mut s) = std::net::TcpStream::connect(&self.addr) {
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut greeting = [0u8; 3];
                if s.read_exact(&mut greeting).is_ok() && &greeting == b"+OK" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "dovecot did not greet on {}:\n{}",
                    self.addr,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The end of Dovecot's logs, for error reports.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        for name in ["dovecot.stderr", "dovecot.log"] {
            if let Ok(t) = std::fs::read_to_string(self.dir.path().join(name)) {
                text.push_str(&t);
            }
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the master with SIGTERM (it stops its children), waiting up
    /// to 10 s before killing it.
    pub fn stop(&mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(process.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = process.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = process.kill();
        let _ = process.wait();
    }
}

/// A loopback port that was free a moment ago (Dovecot cannot report the
/// port it bound for port 0).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn chown_tree(path: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), (uid, gid))?;
        }
    }
    Ok(())
}

/// A Maildir file name with the sizes Dovecot reads instead of the file
/// (`S=` bytes on disk, `W=` the size with CRLF line ends) and the seen
/// flag, as Dovecot itself names delivered mail.
pub fn maildir_name(i: usize, file_size: usize, crlf_size: usize) -> String {
    format!("{i}.M{i}P1.bench,S={file_size},W={crlf_size}:2,S")
}
