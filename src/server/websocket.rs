//! MQTT over WebSocket (`ws` and `wss` listeners): the HTTP upgrade on the
//! configured path with sub-protocol `mqtt`, and an adapter that turns the
//! WebSocket's binary frames into a byte stream for the connection task. A
//! packet split across frames and several packets in one frame both work,
//! because the MQTT framing above reads bytes, not frames.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Accepts the upgrade on `path` when the client offers sub-protocol
/// `mqtt` (or `mqttv3.1`), and answers it (MQTT.js and paho require the
/// answer); an upgrade without it gets HTTP 400.
pub async fn accept<S>(
    stream: S,
    path: &str,
    max_frame: usize,
    max_write_buffer: usize,
) -> Result<WsByteStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let expected = path.to_string();
    // The callback's error type is tungstenite's; its size is not ours to pick.
    #[allow(clippy::result_large_err)]
    let check = move |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() != expected {
            let mut refusal =
                ErrorResponse::new(Some(format!("no MQTT endpoint at {}", request.uri().path())));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            return Err(refusal);
        }
        let offered: Vec<String> = request
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_ascii_lowercase())
            .collect();
        // [MQTT-6.0.0-3/4]: the client offers `mqtt` and the server selects
        // it; `mqttv3.1` is what MQTT 3.1 clients offer.
        let selected = ["mqtt", "mqttv3.1"]
            .into_iter()
            .find(|p| offered.iter().any(|o| o == p));
        let Some(selected) = selected else {
            let mut refusal = ErrorResponse::new(Some(
                "MQTT over WebSocket needs the sub-protocol `mqtt` (Sec-WebSocket-Protocol)".into(),
            ));
            *refusal.status_mut() = StatusCode::BAD_REQUEST;
            return Err(refusal);
        };
        response
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(selected));
        Ok(response)
    };
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max_frame);
    config.max_frame_size = Some(max_frame);
    // Unset, tungstenite buffers pongs to a client that sends pings and
    // never reads without limit (measured: 2.3 GB in 8 s). Writes are
    // framed in pieces of at most WRITE_FRAME, so a large MQTT packet fits.
    config.write_buffer_size = WRITE_FRAME;
    config.max_write_buffer_size = max_write_buffer.max(2 * WRITE_FRAME + 1);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    Ok(WsByteStream {
        ws,
        pending: Bytes::new(),
    })
}

/// Most bytes of MQTT data in one outgoing WebSocket frame: a larger
/// packet is split across frames, which MQTT over WebSocket allows.
const WRITE_FRAME: usize = 64 * 1024;

/// A WebSocket seen as a byte stream: reads concatenate binary frames,
/// each write is one binary frame.
pub struct WsByteStream<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last frame.
    pending: Bytes,
}

fn to_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsByteStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                // End of stream: a read of 0 bytes.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(to_io(e))),
                Poll::Ready(Some(Ok(Message::Binary(data)))) => self.pending = data,
                Poll::Ready(Some(Ok(Message::Close(_)))) => return Poll::Ready(Ok(())),
                // Pings are answered by tungstenite; MQTT is binary only
                // ([MQTT-6.0.0-1]): a text frame closes the connection.
                Poll::Ready(Some(Ok(Message::Text(_)))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text frame on an MQTT WebSocket",
                    )))
                }
                Poll::Ready(Some(Ok(_))) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsByteStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.ws).poll_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(to_io(e))),
            Poll::Ready(Ok(())) => {}
        }
        let data = &data[..data.len().min(WRITE_FRAME)];
        let frame = Message::Binary(Bytes::copy_from_slice(data));
        match Pin::new(&mut self.ws).start_send(frame) {
            Ok(()) => Poll::Ready(Ok(data.len())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(to_io)
    }
}
