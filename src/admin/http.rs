//! The HTTP listener on `listen.http`: `/metrics` (Prometheus text), `/healthz` (the process
//! serves) and `/readyz` (it takes clients and can reach its databases). A small HTTP/1.1
//! server: GET and HEAD only, one request per connection (`Connection: close`), requests of
//! at most 8 kB read within 5 s.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::proxy::Shared;

use super::{metrics, readiness};

const MAX_REQUEST: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Bind `addr` and serve until sluice shuts down. Returns the address bound.
pub async fn spawn(shared: &Arc<Shared>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let (weak, stop) = (Arc::downgrade(shared), shared.shutdown.clone());
    tokio::spawn(accept_loop(listener, weak, stop));
    tracing::info!(addr = %bound, "HTTP listening: /metrics, /healthz, /readyz");
    Ok(bound)
}

async fn accept_loop(listener: TcpListener, shared: Weak<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(READ_TIMEOUT * 2, serve(stream, shared)).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Read up to the end of the request head; None if it never came or is too large.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).ok()
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

fn plain(status: &'static str, body: impl Into<String>) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into(),
    }
}

async fn serve(mut stream: TcpStream, shared: Weak<Shared>) {
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let response = match (method, shared.upgrade()) {
        ("GET" | "HEAD", Some(shared)) => route(path, &shared).await,
        ("GET" | "HEAD", None) => plain("503 Service Unavailable", "sluice is shutting down\n"),
        _ => plain("405 Method Not Allowed", "GET or HEAD only\n"),
    };
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if method != "HEAD" {
        out.push_str(&response.body);
    }
    let _ = stream.write_all(out.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn route(path: &str, shared: &Arc<Shared>) -> Response {
    match path {
        "/metrics" => Response {
            status: "200 OK",
            content_type: metrics::CONTENT_TYPE,
            body: metrics::render(shared),
        },
        "/healthz" => plain("200 OK", "ok\n"),
        "/readyz" => match readiness::check(shared).await {
            Ok(()) => plain("200 OK", "ready\n"),
            Err(why) => plain("503 Service Unavailable", format!("not ready: {why}\n")),
        },
        _ => plain(
            "404 Not Found",
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}
