//! Minimal HTTP for the tests: a GET for the admin listener and
//! Prometheus' API, and a raw exchange for the browser chat's listener
//! (plain or under TLS).

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::WAIT;

/// `GET path`: status code (0 when nothing answered) and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let (response, _) = exchange(stream, &request).await;
    let (status, _, body) = split(&response);
    (status, String::from_utf8_lossy(&body).to_string())
}

/// Sends `request` as written and reads until the server closes the
/// connection, for at most `WAIT`: the raw response (empty when nothing
/// answered) and whether the server closed it.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &str) -> (Vec<u8>, bool) {
    let mut response = Vec::new();
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (response, false);
    }
    // A read error after some bytes (a TLS peer closing without
    // close_notify, say) keeps what arrived and counts as closed.
    let closed = tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .is_ok();
    (response, closed)
}

/// A response's status code (0 without one), head and body.
pub fn split(response: &[u8]) -> (u16, String, Vec<u8>) {
    let (head, body) = match response.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => (&response[..end], &response[end + 4..]),
        None => (response, &[][..]),
    };
    let head = String::from_utf8_lossy(head).to_string();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head, body.to_vec())
}
