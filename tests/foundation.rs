//! End-to-end tests of the foundation: `umail serve` on a fresh data
//! directory, configuration errors, the management CLI with the server
//! stopped and running, bulk import, graceful shutdown, the HTTP admin API.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{TestServer, umail_bin, umail_cmd};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn fresh_start_announces_listeners_and_admin_password_once() {
    let mut server = TestServer::start();
    for name in [
        "smtp",
        "submission",
        "submissions",
        "imap",
        "imaps",
        "pop3",
        "pop3s",
        "admin",
    ] {
        let addr = server.addr(name);
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0, "{name} must report the bound port");
        TcpStream::connect(addr).unwrap_or_else(|e| panic!("{name} at {addr}: {e}"));
    }
    let password = server
        .admin_password
        .clone()
        .expect("admin password printed");
    assert!(
        password.len() >= 16,
        "generated password is strong: {password}"
    );
    assert_eq!(
        server.admin_address.as_deref(),
        Some("admin@mail.test.example")
    );
    assert!(server.data_dir().join("tls/cert.pem").exists());
    assert!(server.data_dir().join("umail.redb").exists());

    // The first domain and the admin exist.
    let domains = server.umail_ok(&["domain", "list"]);
    assert!(domains.contains("mail.test.example"), "{domains}");
    let admins = server.umail_ok(&["admin", "list"]);
    assert!(admins.contains("admin@mail.test.example"), "{admins}");

    // A restart must not create another admin or print a password again.
    assert!(server.terminate().success());
    server.spawn();
    assert!(
        !server
            .stdout_lines
            .iter()
            .any(|l| l.contains("system administrator") || l.contains("created domain")),
        "{:?}",
        server.stdout_lines
    );
}

#[test]
fn unknown_config_key_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[smtp]\nmax_recipent = 5\n").unwrap();
    let out = umail_cmd(&config, &["serve"], None);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("max_recipent"), "{err}");
    assert!(
        err.contains("line 2"),
        "the error points at the line: {err}"
    );
}

#[test]
fn cli_manages_the_directory_without_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("umail.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| umail_cmd(&config, args, None);
    let ok = |args: &[&str]| {
        let out = run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };

    // Nothing exists yet: reading fails clearly, adding a domain creates the database.
    let out = run(&["user", "list"]);
    assert!(!out.status.success());
    ok(&[
        "domain",
        "add",
        "example.com",
        "--max-users",
        "2",
        "--default-quota",
        "1G",
    ]);
    ok(&["domain", "add", "例子.中国"]);
    let domains = ok(&["domain", "list"]);
    assert!(domains.contains("example.com"));
    assert!(domains.contains("xn--fsqu00a.xn--fiqs8s"), "{domains}");

    ok(&[
        "user",
        "add",
        "alice@example.com",
        "--password",
        "s3cret-Pass",
        "--name",
        "Alice",
    ]);
    let shown = ok(&["user", "show", "alice@example.com"]);
    assert!(shown.contains("Alice"), "{shown}");
    assert!(
        shown.contains("1073741824") || shown.contains("1G") || shown.contains("1.0 GiB"),
        "{shown}"
    );
    // Password from stdin.
    let out = umail_cmd(
        &config,
        &["user", "add", "bob@example.com", "--password", "-"],
        Some("pw-from-stdin\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // Domain user limit.
    let out = run(&["user", "add", "carol@example.com", "--password", "x"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");

    // Bad input: one-line errors naming the problem, non-zero exit.
    for (args, needle) in [
        (
            vec!["user", "add", "not-an-address", "--password", "x"],
            "not-an-address",
        ),
        (
            vec!["user", "add", "dave@nowhere.example", "--password", "x"],
            "nowhere.example",
        ),
        (vec!["domain", "add", "bad_domain!"], "bad_domain!"),
        (
            vec!["user", "add", "alice@example.com", "--password", "x"],
            "alice@example.com",
        ),
        (
            vec!["user", "set", "alice@example.com", "--quota", "12Q"],
            "12Q",
        ),
    ] {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: {err}");
    }

    // Freeze, alias, list, department, domain alias.
    ok(&["user", "freeze", "bob@example.com"]);
    assert!(ok(&["user", "show", "bob@example.com"]).contains("frozen"));
    ok(&["user", "unfreeze", "bob@example.com"]);
    ok(&[
        "alias",
        "add",
        "sales@example.com",
        "alice@example.com",
        "partner@remote.example",
    ]);
    assert!(ok(&["alias", "list"]).contains("sales@example.com"));
    ok(&["list", "add", "team@example.com", "--name", "Team"]);
    ok(&[
        "list",
        "members",
        "add",
        "team@example.com",
        "alice@example.com",
    ]);
    ok(&[
        "list",
        "members",
        "add",
        "team@example.com",
        "bob@example.com",
        "--receive-only",
    ]);
    let members = ok(&["list", "show", "team@example.com"]);
    assert!(
        members.contains("alice@example.com") && members.contains("bob@example.com"),
        "{members}"
    );
    ok(&["department", "add", "example.com", "Sales"]);
    ok(&[
        "department",
        "add",
        "example.com",
        "North",
        "--parent",
        "Sales",
        "--order",
        "2",
    ]);
    let tree = ok(&["department", "list", "example.com"]);
    assert!(tree.contains("Sales") && tree.contains("North"), "{tree}");
    ok(&[
        "user",
        "set",
        "alice@example.com",
        "--department",
        "Sales/North",
    ]);
    let dept = ok(&["department", "show", "example.com", "Sales/North"]);
    assert!(dept.contains("alice@example.com"), "{dept}");
    assert!(ok(&["alias", "show", "sales@example.com"]).contains("partner@remote.example"));
    let out = run(&["department", "remove", "example.com", "Sales"]);
    assert!(
        !out.status.success(),
        "a department with children cannot be removed"
    );
    // Reorganisation: North leaves Sales for the top level as "Field";
    // alice follows.
    ok(&[
        "department",
        "set",
        "example.com",
        "Sales/North",
        "--parent",
        "-",
        "--rename",
        "Field",
    ]);
    let dept = ok(&["department", "show", "example.com", "Field"]);
    assert!(dept.contains("alice@example.com"), "{dept}");
    let out = run(&[
        "department",
        "set",
        "example.com",
        "Field",
        "--parent",
        "Field",
    ]);
    assert!(
        !out.status.success(),
        "a department cannot be its own parent"
    );
    ok(&["department", "remove", "example.com", "Sales"]);
    ok(&["domain", "alias", "add", "old.example", "example.com"]);
    assert!(ok(&["domain", "alias", "list"]).contains("old.example"));

    // JSON output.
    let json = ok(&["--json", "user", "list", "example.com"]);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value.as_array().unwrap().len(), 2);

    ok(&["user", "remove", "bob@example.com"]);
    assert!(!ok(&["user", "list"]).contains("bob@example.com"));
    let out = run(&["domain", "remove", "example.com"]);
    assert!(!out.status.success(), "domain with users needs --force");
    ok(&["domain", "remove", "example.com", "--force"]);
}

#[test]
fn cli_goes_through_the_admin_socket_while_serving() {
    let server = TestServer::start();
    assert!(server.data_dir().join("admin.sock").exists());
    server.umail_ok(&["domain", "add", "live.example"]);
    server.umail_ok(&["user", "add", "eve@live.example", "--password", "pw-12345"]);
    assert!(
        server
            .umail_ok(&["user", "list"])
            .contains("eve@live.example")
    );
    let out = server.umail(&["user", "add", "eve@live.example", "--password", "x"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("eve@live.example"));
}

#[test]
fn bulk_import_checks_every_row_before_creating_any() {
    let server = TestServer::start();
    server.umail_ok(&["domain", "add", "import.example"]);
    let bad = server.dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "address,password,name,quota,department\n\
         u1@import.example,pw1,User One,1G,\n\
         u2@import.example,pw2,User Two,,\n\
         u3@unknown-domain.example,pw3,,,\n",
    )
    .unwrap();
    let out = server.umail(&["user", "import", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("line 4"), "{}", stderr(&out));
    assert!(
        !server
            .umail_ok(&["user", "list", "import.example"])
            .contains("u1@"),
        "nothing half-written"
    );

    let good = server.dir.path().join("good.csv");
    let mut text = String::from("address,password,name\n");
    for i in 0..50 {
        text.push_str(&format!(
            "user{i}@import.example,password-{i},\"User, {i}\"\n"
        ));
    }
    std::fs::write(&good, text).unwrap();
    let out = server.umail_ok(&["user", "import", good.to_str().unwrap()]);
    assert!(out.contains("50"), "{out}");
    let listed = server.umail_ok(&["--json", "user", "list", "import.example"]);
    let value: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(value.as_array().unwrap().len(), 50);
}

#[test]
fn sigterm_shuts_down_cleanly_and_data_survives() {
    let mut server = TestServer::start();
    server.umail_ok(&["domain", "add", "persist.example"]);
    server.umail_ok(&[
        "user",
        "add",
        "p@persist.example",
        "--password",
        "pw-abcdef",
    ]);
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(!server.data_dir().join("admin.sock").exists());
    // Offline access after shutdown.
    assert!(
        server
            .umail_ok(&["user", "list"])
            .contains("p@persist.example")
    );
    server.spawn();
    assert!(
        server
            .umail_ok(&["user", "list"])
            .contains("p@persist.example")
    );
}

fn http(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn http_admin_api_requires_a_system_admin() {
    let server = TestServer::start();
    let addr = server.addr("admin");
    let health = http(addr, "GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let body = r#"{"op":"domain_add","domain":"api.example","limits":{}}"#;
    let unauth = http(
        addr,
        &format!(
            "POST /api/v1/admin HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(unauth.starts_with("HTTP/1.1 401"), "{unauth}");

    use base64::Engine;
    let creds = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        server.admin_address.as_deref().unwrap(),
        server.admin_password.as_deref().unwrap()
    ));
    let ok = http(
        addr,
        &format!(
            "POST /api/v1/admin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {creds}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(server.umail_ok(&["domain", "list"]).contains("api.example"));

    let dup = http(
        addr,
        &format!(
            "POST /api/v1/admin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {creds}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(dup.starts_with("HTTP/1.1 422"), "{dup}");

    // A backup writes a path of the caller's choosing: local CLI only.
    let target = server.dir.path().join("via-http");
    let body = format!(r#"{{"op":"backup","path":"{}"}}"#, target.display());
    let refused = http(
        addr,
        &format!(
            "POST /api/v1/admin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {creds}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(!target.exists());
}

#[test]
fn version_and_help_work() {
    let out = std::process::Command::new(umail_bin())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "domain", "user", "alias", "list", "department"] {
        assert!(text.contains(cmd), "{text}");
    }
}

#[test]
fn first_start_without_a_hostname_hosts_the_machine_name_or_localhost() {
    // The README's first command sets no hostname: the first domain is the
    // machine's FQDN, or `localhost` when it has none (single-label names
    // are otherwise refused). Listeners on port 0, as every test.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("umail.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = \"{}\"\n[listeners]\nsmtp = [\"127.0.0.1:0\"]\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(umail_bin())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.unwrap();
        let ready = line.starts_with("umail: ready");
        lines.push(line);
        if ready {
            break;
        }
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text = lines.join("\n");
    assert!(
        text.contains("umail: ready"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let expected = if machine.trim().contains('.') {
        machine.trim().to_ascii_lowercase()
    } else {
        "localhost".to_string()
    };
    assert!(
        text.contains(&format!("system administrator admin@{expected} ")),
        "{text}"
    );
}

#[test]
fn the_readme_configuration_reference_is_a_valid_configuration() {
    // Operators copy it: a renamed or removed key must fail here, not at
    // their first start.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let section = &readme[readme
        .find("## Configuration")
        .expect("configuration section")..];
    let start = section.find("```toml\n").expect("toml block") + "```toml\n".len();
    let block = &section[start..start + section[start..].find("```").expect("block end")];
    let config: umail_core::config::Config =
        toml::from_str(block).unwrap_or_else(|e| panic!("README configuration: {e}"));
    assert_eq!(config.delivery.timeouts.data_term_secs, 600);
    assert_eq!(config.server.database_cache_bytes, 268_435_456);
}
