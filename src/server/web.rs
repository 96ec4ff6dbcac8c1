//! The browser chat (`web = true` on a `ws`/`wss` listener). The first
//! HTTP request on a connection decides what it is: a WebSocket upgrade
//! goes on to MQTT as on any WebSocket listener (the bytes already read
//! are replayed to the handshake); a plain GET gets the chat page or one
//! of its scripts, and the connection closes. Page and MQTT share one
//! port, so one origin.
//!
//! Only a fixed list of files is served, so no request path ever reaches
//! the file system. The page itself (`web/index.html`, `app.js`,
//! `view.js`, `actions.js`, `style.css`, `e2ee.js`) is built into the
//! binary and always matches it; the third-party libraries are read from
//! `web_root/node_modules`, where
//! `npm ci --prefix web` puts them (nothing third-party is in the
//! repository).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Longest request head read before answering 431: browsers send about
/// 1 KiB, and the WebSocket handshake behind it refuses larger ones too.
const MAX_HEAD: usize = 8 * 1024;
/// Most request headers parsed.
const MAX_HEADERS: usize = 64;

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const VIEW_JS: &str = include_str!("../../web/view.js");
const ACTIONS_JS: &str = include_str!("../../web/actions.js");
const STYLE_CSS: &str = include_str!("../../web/style.css");
const E2EE_JS: &str = include_str!("../../web/e2ee.js");

/// The libraries the page loads, by their URL, and where npm puts them
/// under `web_root`. cbor-x's no-eval build runs under a CSP without
/// `unsafe-eval`. libsodium (two files: the library and its wrappers) is
/// what `e2ee.js` loads when someone joins with a passphrase.
const VENDOR: [(&str, &str); 4] = [
    ("/vendor/mqtt.min.js", "node_modules/mqtt/dist/mqtt.min.js"),
    (
        "/vendor/cbor-x.min.js",
        "node_modules/cbor-x/dist/index-no-eval.min.js",
    ),
    (
        "/vendor/libsodium-sumo.js",
        "node_modules/libsodium-sumo/dist/modules-sumo/libsodium-sumo.js",
    ),
    (
        "/vendor/libsodium-wrappers-sumo.js",
        "node_modules/libsodium-wrappers-sumo/dist/modules-sumo/libsodium-wrappers.js",
    ),
];

/// The third-party libraries of one `web = true` listener, each read from
/// disk on its first request and then served from this one copy: a
/// response holds a cheap clone of the `Bytes`, so clients that never read
/// their answer do not each hold a file-sized buffer (the file is ~340 KB).
/// A library that is missing is not remembered as missing: it is looked
/// for again on the next request (`npm ci` may run while the broker does).
pub(crate) struct Libraries {
    root: PathBuf,
    loaded: [tokio::sync::OnceCell<Bytes>; VENDOR.len()],
}

impl Libraries {
    pub(crate) fn new(root: PathBuf) -> Self {
        Libraries {
            root,
            loaded: Default::default(),
        }
    }

    /// The library served at `url`: `None` when no library is, `Some(Err)`
    /// with the file's path when it cannot be read.
    async fn get(&self, url: &str) -> Option<Result<Bytes, (PathBuf, io::Error)>> {
        let index = VENDOR.iter().position(|(known, _)| *known == url)?;
        let file = self.root.join(VENDOR[index].1);
        let body = self.loaded[index]
            .get_or_try_init(|| async { tokio::fs::read(&file).await.map(Bytes::from) })
            .await;
        Some(body.cloned().map_err(|e| (file, e)))
    }
}

/// The page may load only its own files and open a WebSocket to its own
/// origin; nothing from the internet. MQTT.js runs its keep-alive timer in
/// a worker made from a blob (timers in background tabs are throttled).
/// `'wasm-unsafe-eval'` lets libsodium (end-to-end encryption) compile its
/// WebAssembly, which it carries in its own script; it allows no `eval`
/// of JavaScript. Without it libsodium does not start.
const CSP: &str =
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; connect-src 'self'; \
                   worker-src blob:; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the first request on a `web = true` listener turned out to be.
pub(super) enum Opening<S> {
    /// A WebSocket upgrade: the stream, with the request still to be read.
    Upgrade(Rewound<S>),
    /// A page request, answered; the connection is done.
    Served,
}

/// The third-party files a `web = true` listener serves that are missing
/// under `web_root`, for a start-up warning.
pub(crate) fn missing_libraries(web_root: &Path) -> Vec<PathBuf> {
    VENDOR
        .iter()
        .map(|(_, file)| web_root.join(file))
        .filter(|path| !path.is_file())
        .collect()
}

/// Reads the first request head and serves it, or hands the connection on
/// to the WebSocket handshake.
pub(super) async fn serve_or_upgrade<S>(
    mut stream: S,
    libraries: &Libraries,
    mqtt_path: &str,
) -> Result<Opening<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = Vec::with_capacity(1024);
    let request = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before its HTTP request was complete".into());
        }
        head.extend_from_slice(&chunk[..n]);
        match parse(&head) {
            Ok(Some(request)) => break request,
            Ok(None) if head.len() < MAX_HEAD => continue,
            Ok(None) => {
                respond(
                    &mut stream,
                    Reply::text(431, "Request Header Fields Too Large", ""),
                    false,
                )
                .await;
                return Err(format!("HTTP request head over {MAX_HEAD} bytes"));
            }
            Err(why) => {
                respond(&mut stream, Reply::text(400, "Bad Request", ""), false).await;
                return Err(why);
            }
        }
    };
    if request.upgrade {
        return Ok(Opening::Upgrade(Rewound {
            prefix: Bytes::from(head),
            inner: stream,
        }));
    }
    let with_body = request.method != "HEAD";
    let reply = match request.method.as_str() {
        "GET" | "HEAD" => page(&request.path, libraries, mqtt_path).await,
        _ => Reply::text(405, "Method Not Allowed", "only GET and HEAD\n"),
    };
    tracing::debug!(path = %request.path, status = reply.status, "web page request");
    respond(&mut stream, reply, with_body).await;
    Ok(Opening::Served)
}

/// The parts of a request head this module needs.
struct Request {
    method: String,
    /// The path without its query.
    path: String,
    /// Whether it asks for a WebSocket (`Upgrade: websocket`).
    upgrade: bool,
}

/// `Ok(None)` while the head is incomplete.
fn parse(head: &[u8]) -> Result<Option<Request>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            let path = request.path.unwrap_or("/");
            let path = path.split(['?', '#']).next().unwrap_or("/").to_string();
            let upgrade = request.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("upgrade")
                    && String::from_utf8_lossy(h.value)
                        .to_ascii_lowercase()
                        .contains("websocket")
            });
            Ok(Some(Request {
                method: request.method.unwrap_or_default().to_string(),
                path,
                upgrade,
            }))
        }
        Err(e) => Err(format!("malformed HTTP request: {e}")),
    }
}

/// An HTTP answer.
struct Reply {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: Bytes,
}

impl Reply {
    fn text(status: u16, reason: &'static str, body: &str) -> Reply {
        Reply {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    fn ok(content_type: &'static str, body: Bytes) -> Reply {
        Reply {
            status: 200,
            reason: "OK",
            content_type,
            body,
        }
    }
}

/// The answer to a GET of `path`.
async fn page(path: &str, libraries: &Libraries, mqtt_path: &str) -> Reply {
    const HTML: &str = "text/html; charset=utf-8";
    const JS: &str = "text/javascript; charset=utf-8";
    match path {
        "/" | "/index.html" => Reply::ok(HTML, Bytes::from_static(INDEX_HTML.as_bytes())),
        "/app.js" => Reply::ok(JS, Bytes::from_static(APP_JS.as_bytes())),
        "/view.js" => Reply::ok(JS, Bytes::from_static(VIEW_JS.as_bytes())),
        "/actions.js" => Reply::ok(JS, Bytes::from_static(ACTIONS_JS.as_bytes())),
        "/e2ee.js" => Reply::ok(JS, Bytes::from_static(E2EE_JS.as_bytes())),
        "/style.css" => Reply::ok(
            "text/css; charset=utf-8",
            Bytes::from_static(STYLE_CSS.as_bytes()),
        ),
        // Where the page opens its MQTT connection: the listener's path.
        "/config.json" => {
            let config = serde_json::json!({ "mqtt_path": mqtt_path });
            Reply::ok("application/json", Bytes::from(config.to_string()))
        }
        _ => match libraries.get(path).await {
            Some(Ok(body)) => Reply::ok(JS, body),
            Some(Err((file, e))) => {
                // Warned about once at start-up; per request only at
                // debug, so requests cannot flood the log. The path is
                // for the log, not for whoever asked.
                tracing::debug!(file = %file.display(), error = %e, "browser chat library missing");
                Reply::text(
                    503,
                    "Service Unavailable",
                    "the browser chat's libraries are not installed on this server: run \
                     `npm ci --prefix web` in roomq's folder (./scripts/test does), or set `web_root`\n",
                )
            }
            None => Reply::text(404, "Not Found", "not found\n"),
        },
    }
}

/// Writes `reply` and closes the connection; a client gone meanwhile is
/// not an error worth more than the debug line of its caller.
async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, reply: Reply, with_body: bool) {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\n\
         Content-Security-Policy: {CSP}\r\nX-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: no-referrer\r\nConnection: close\r\n\r\n",
        reply.status,
        reply.reason,
        reply.content_type,
        reply.body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    if with_body {
        let _ = stream.write_all(&reply.body).await;
    }
    let _ = stream.shutdown().await;
}

/// A stream whose first bytes were already read: they are read again
/// first, then the stream goes on.
pub(super) struct Rewound<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_is_read_whole_and_an_upgrade_is_recognised() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let page = parse(b"GET /app.js?v=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (page.method.as_str(), page.path.as_str(), page.upgrade),
            ("GET", "/app.js", false)
        );
        let ws = parse(b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(ws.upgrade);
        assert!(parse(b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn only_the_listed_files_are_served() {
        let root = &Libraries::new(PathBuf::from("/nonexistent-roomq-web"));
        assert_eq!(page("/", root, "/mqtt").await.status, 200);
        assert_eq!(page("/../Cargo.toml", root, "/mqtt").await.status, 404);
        assert_eq!(
            page("/node_modules/mqtt/package.json", root, "/mqtt")
                .await
                .status,
            404
        );
        // A library not installed: 503 with the command that installs it.
        let missing = page("/vendor/mqtt.min.js", root, "/mqtt").await;
        assert_eq!(missing.status, 503);
        assert!(String::from_utf8_lossy(&missing.body).contains("npm ci --prefix web"));
        let config = page("/config.json", root, "/chat").await;
        assert_eq!(&config.body[..], br#"{"mqtt_path":"/chat"}"#);
    }
}
