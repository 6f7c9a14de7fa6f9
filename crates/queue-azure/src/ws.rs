//! AMQP over WebSockets, as Service Bus offers it on port 443: a WebSocket at
//! `/$servicebus/websocket` with the `AMQPWSB10` sub-protocol, each AMQP byte chunk sent
//! as one binary message.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use futures::{Sink, Stream as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::{
    WebSocketStream, client_async_with_config,
    tungstenite::{
        Message as WsMessage, client::IntoClientRequest, http::HeaderValue,
        protocol::WebSocketConfig,
    },
};

use crate::{
    config::{Endpoint, Transport},
    error::Failure,
    guard::MAX_FRAME_SIZE,
    transport::Stream,
};

/// The WebSocket sub-protocol for AMQP 1.0 (OASIS AMQP WebSocket binding).
const SUBPROTOCOL: &str = "AMQPWSB10";

/// Runs the WebSocket handshake over `stream` when the endpoint asks for WebSockets.
pub(crate) async fn wrap(ep: &Endpoint, stream: Stream) -> Result<Stream, Failure> {
    if ep.transport != Transport::AmqpWebSockets {
        return Ok(stream);
    }
    let scheme = if ep.tls { "wss" } else { "ws" };
    let url = format!("{scheme}://{}:{}/$servicebus/websocket", ep.host, ep.port);
    let mut request = url
        .into_client_request()
        .map_err(|e| Failure::ConnectionLost(format!("websocket request: {e}")))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    // A WebSocket message never needs to be larger than one AMQP frame.
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_SIZE))
        .max_frame_size(Some(MAX_FRAME_SIZE));
    let (ws, response) = client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| {
            Failure::ConnectionLost(format!("websocket handshake with {}: {e}", ep.host))
        })?;
    let agreed = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(SUBPROTOCOL.as_bytes()));
    if !agreed {
        return Err(Failure::ConnectionLost(format!(
            "websocket handshake with {}: the server did not agree to {SUBPROTOCOL}",
            ep.host
        )));
    }
    Ok(Stream::new(WsIo {
        ws,
        pending: Bytes::new(),
    }))
}

/// A WebSocket seen as a byte stream.
struct WsIo {
    ws: WebSocketStream<Stream>,
    /// The unread rest of the last binary message.
    pending: Bytes,
}

fn ws_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(format!("websocket: {e}"))
}

impl AsyncRead for WsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(WsMessage::Binary(b))) => self.pending = b,
                // Pings are answered by the WebSocket layer itself; text has no meaning here.
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Text(_))) => {}
                Some(Ok(WsMessage::Frame(_))) => {}
                Some(Ok(WsMessage::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(ws_io(e))),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_io)?;
        Pin::new(&mut self.ws)
            .start_send(WsMessage::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(ws_io)
    }
}
