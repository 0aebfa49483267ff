//! The HTTP admin API: `POST /api/v1/admin` with an [`AdminRequest`] as
//! JSON, authenticated with HTTP Basic as a system administrator; `GET
//! /api/v1/health` without authentication. Same handlers as the CLI.
//!
//! It is deliberately small (one request per connection, bounded head and
//! body) and meant for a loopback or management-network listener.

use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use umail_core::{Directory, Shutdown};
use umail_store::Store;

use crate::admin::{AdminReply, AdminRequest};

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;
/// How long a client may take to send its request (slow clients must not
/// hold connections open).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to read the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the API until shutdown.
pub async fn serve(listener: TcpListener, store: Store, mut shutdown: Shutdown) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.wait() => return,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(target: "admin", error = %e, "admin API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let store = store.clone();
        // The request itself runs to its end, however long it takes (a
        // bulk import hashes a password per user), and its response is
        // written: only reading the request and writing the response are
        // bounded in time, as on the admin socket.
        tokio::spawn(handle(stream, store));
    }
}

struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

async fn read_request(stream: &mut TcpStream) -> Result<Request, (u16, &'static str)> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| (400, "read error"))?;
        if n == 0 {
            return Err((400, "incomplete request"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err((431, "request head too large"));
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| (400, "head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err((400, "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err((505, "HTTP/1.x only"));
    }
    let mut content_length = 0usize;
    let mut authorization = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err((400, "malformed header"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().map_err(|_| (400, "bad Content-Length"))?;
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err((501, "chunked bodies are not supported; send Content-Length"));
        }
    }
    if content_length > MAX_BODY {
        return Err((413, "body too large"));
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < content_length {
        let mut chunk = vec![0u8; (content_length - body.len()).min(64 * 1024)];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| (400, "read error"))?;
        if n == 0 {
            return Err((400, "incomplete body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(content_length);
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        authorization,
        body,
    })
}

async fn respond(stream: &mut TcpStream, status: u16, body: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Error",
    };
    let auth = if status == 401 {
        "WWW-Authenticate: Basic realm=\"umail admin\"\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

fn error_body(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

async fn is_system_admin(store: &Store, authorization: Option<&str>) -> bool {
    let Some(encoded) = authorization.and_then(|a| a.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((user, password)) = text.split_once(':') else {
        return false;
    };
    matches!(
        store.verify_password(user, password).await,
        Ok(Some(p)) if p.is_system_admin()
    )
}

async fn handle(mut stream: TcpStream, store: Store) {
    let request = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err((status, message))) => {
            return respond(&mut stream, status, &error_body(message)).await;
        }
        Err(_) => return respond(&mut stream, 408, &error_body("request timeout")).await,
    };
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/api/v1/health") => {
            respond(&mut stream, 200, r#"{"status":"ok"}"#).await;
        }
        ("POST", "/api/v1/admin") => {
            if !is_system_admin(&store, request.authorization.as_deref()).await {
                return respond(
                    &mut stream,
                    401,
                    &error_body("system administrator credentials required"),
                )
                .await;
            }
            let admin_request: AdminRequest = match serde_json::from_slice(&request.body) {
                Ok(r) => r,
                Err(e) => {
                    return respond(
                        &mut stream,
                        400,
                        &error_body(&format!("malformed request: {e}")),
                    )
                    .await;
                }
            };
            if matches!(admin_request, AdminRequest::Backup { .. }) {
                return respond(
                    &mut stream,
                    403,
                    &error_body("backups are taken with `umail backup` on the server itself"),
                )
                .await;
            }
            tracing::info!(target: "admin", request = admin_request.name(), "admin API request");
            let reply: AdminReply = crate::handlers::execute(&store, admin_request).await;
            let status = if reply.is_ok() { 200 } else { 422 };
            let body = serde_json::to_string(&reply).unwrap_or_default();
            respond(&mut stream, status, &body).await;
        }
        (_, "/api/v1/admin" | "/api/v1/health") => {
            respond(&mut stream, 405, &error_body("method not allowed")).await;
        }
        _ => respond(&mut stream, 404, &error_body("not found")).await,
    }
}
