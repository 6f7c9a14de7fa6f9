//! The listeners a namespace offers: plaintext AMQP (the development-emulator mode), AMQP
//! over TLS with TLS directly on the socket (AMQP 1.0 core 5.2.1, "alternative
//! establishment", as on Service Bus port 5671), and AMQP over WebSockets at
//! `/$servicebus/websocket` with subprotocol `AMQPWSB10`, over TLS (`wss`, as on port
//! 443) or plain (`ws`, for tests).

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::{
    Message as WsMessage,
    handshake::server::{ErrorResponse, Request, Response},
    http::{HeaderValue, StatusCode},
    protocol::WebSocketConfig,
};

use crate::{
    broker::Broker,
    config::{EmulatorConfig, QueueConfig},
    error::EmulatorError,
    server::{HANDSHAKE_TIMEOUT, OUR_MAX_FRAME, Shared, serve},
    tls::TlsIdentity,
};

/// The WebSocket path Service Bus serves AMQP on.
pub const WEBSOCKET_PATH: &str = "/$servicebus/websocket";
/// The WebSocket subprotocol for AMQP 1.0 (OASIS AMQP WebSocket Binding).
pub const WEBSOCKET_PROTOCOL: &str = "AMQPWSB10";

pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// How clients reach a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// AMQP over plain TCP (`UseDevelopmentEmulator=true`).
    Amqp,
    /// AMQP over TLS, TLS first (Service Bus port 5671).
    Amqps,
    /// AMQP over WebSockets without TLS (tests only; Service Bus has no such port).
    Ws,
    /// AMQP over WebSockets over TLS (Service Bus port 443).
    Wss,
}

impl Transport {
    fn uses_tls(self) -> bool {
        matches!(self, Self::Amqps | Self::Wss)
    }
}

/// Which listeners an emulator opens, each on a loopback address (port 0 picks a free port).
#[derive(Clone, Debug, Default)]
pub struct Listeners {
    binds: Vec<(Transport, SocketAddr)>,
    tls: Option<TlsIdentity>,
}

const ANY_LOOPBACK_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

impl Listeners {
    /// No listener yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a listener of `transport` on `addr`.
    pub fn listen(mut self, transport: Transport, addr: SocketAddr) -> Self {
        self.binds.push((transport, addr));
        self
    }
    /// Sets the certificate the TLS listeners present.
    pub fn tls(mut self, identity: TlsIdentity) -> Self {
        self.tls = Some(identity);
        self
    }
    /// Every transport on a free port of 127.0.0.1, with a freshly generated CA and
    /// `localhost` certificate ([`TlsIdentity::generate_localhost`]).
    pub fn all_loopback_with_generated_tls() -> Result<Self, EmulatorError> {
        let mut l = Self::new().tls(TlsIdentity::generate_localhost()?);
        for t in [
            Transport::Amqp,
            Transport::Amqps,
            Transport::Ws,
            Transport::Wss,
        ] {
            l = l.listen(t, ANY_LOOPBACK_PORT);
        }
        Ok(l)
    }
}

/// A running emulator. Dropping it stops accepting connections and closes open ones.
pub struct Emulator {
    addrs: Vec<(Transport, SocketAddr)>,
    broker: Broker,
    key: Option<(String, String)>,
    ca_pem: Option<String>,
    accept: Vec<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    cut: watch::Sender<u64>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("listeners", &self.addrs)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Drop for Emulator {
    /// Stops accepting and closes every open connection.
    fn drop(&mut self) {
        for a in &self.accept {
            a.abort();
        }
        let _ = self.shutdown.send(true);
    }
}

/// What every accept loop needs.
#[derive(Clone)]
struct Acceptor {
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    cut: watch::Receiver<u64>,
    tls: Option<TlsAcceptor>,
}

impl Emulator {
    /// Serves plaintext AMQP on `addr` (loopback only; port 0 picks a free port).
    pub async fn start(config: EmulatorConfig, addr: SocketAddr) -> Result<Self, EmulatorError> {
        Self::start_with(config, Listeners::new().listen(Transport::Amqp, addr)).await
    }

    /// Serves every transport on free loopback ports, TLS ones with a freshly generated
    /// CA: read it with [`Emulator::ca_pem`], connect with
    /// [`Emulator::tls_connection_string`] or [`Emulator::addr`].
    pub async fn start_tls(config: EmulatorConfig) -> Result<Self, EmulatorError> {
        Self::start_with(config, Listeners::all_loopback_with_generated_tls()?).await
    }

    /// Opens the given listeners and starts serving.
    pub async fn start_with(
        config: EmulatorConfig,
        listeners: Listeners,
    ) -> Result<Self, EmulatorError> {
        let config = config.validated()?;
        if listeners.binds.is_empty() {
            return Err(EmulatorError::Config {
                reason: "listeners: at least one listener is needed".into(),
            });
        }
        let tls = match &listeners.tls {
            Some(id) => Some(TlsAcceptor::from(id.server_config(&[])?)),
            None if listeners.binds.iter().any(|(t, _)| t.uses_tls()) => {
                return Err(EmulatorError::Tls {
                    reason: "a TLS listener needs a certificate (--tls-cert/--tls-key)".into(),
                });
            }
            None => None,
        };
        let mut bound = Vec::new();
        for (t, addr) in &listeners.binds {
            bound.push((*t, bind(*addr).await?));
        }
        let key = config
            .key
            .clone()
            .map(|k| (config.key_name_or_default().to_owned(), k));
        let broker = Broker::new(config.queues.clone(), crate::clock::Clock::new());
        let (shutdown, stop) = watch::channel(false);
        let (cut, cut_rx) = watch::channel(0u64);
        let acceptor = Acceptor {
            shared: Arc::new(Shared {
                broker: broker.clone(),
                key: key.clone(),
                next_owner: AtomicU64::new(1),
                max_message_size: config.max_message_size(),
            }),
            stop,
            cut: cut_rx,
            tls,
        };
        let mut addrs = Vec::new();
        let mut accept = Vec::new();
        for (t, listener) in bound {
            addrs.push((t, local_addr(&listener)?));
            accept.push(tokio::spawn(accept_loop(listener, t, acceptor.clone())));
        }
        Ok(Self {
            addrs,
            broker,
            key,
            ca_pem: listeners.tls.and_then(|i| i.ca_pem().map(str::to_owned)),
            accept,
            shutdown,
            cut,
        })
    }

    /// Creates a queue while the emulator serves (real Service Bus creates queues through
    /// Azure Resource Manager). Creating an existing queue succeeds and changes nothing.
    pub fn create_queue(&self, name: &str, cfg: QueueConfig) -> Result<(), EmulatorError> {
        self.broker.create_queue(name, cfg)
    }

    /// Deletes a queue (with its dead-letter queue and messages) while the emulator
    /// serves. Links to it are detached with `amqp:not-found`, waking waiting receivers;
    /// later attaches get `amqp:not-found`.
    pub fn delete_queue(&self, name: &str) -> Result<(), EmulatorError> {
        self.broker.delete_queue(name)
    }

    /// Closes every live client connection abruptly: the TCP connection is dropped with no
    /// AMQP `close`, as when a network path fails. Locks (message and session) are kept
    /// until they expire, as on Service Bus. The emulator keeps accepting connections.
    pub fn drop_connections(&self) {
        self.cut.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The address of the plaintext AMQP listener, or of the first listener when there is
    /// no plaintext one.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr(Transport::Amqp)
            .unwrap_or_else(|| self.addrs[0].1)
    }

    /// The address of the first listener of `transport`, if one is open.
    pub fn addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.addrs
            .iter()
            .find(|(t, _)| *t == transport)
            .map(|(_, a)| a)
            .copied()
    }

    /// The PEM of the generated CA the TLS listeners' certificate chains to (clients
    /// trust it: Python `connection_verify=<file>`, Node `NODE_EXTRA_CA_CERTS=<file>`).
    /// `None` without TLS or with a certificate loaded from files.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The semantic core (for inspecting queues from tests).
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    fn key_parts(&self, reveal_key: bool) -> (&str, &str) {
        match &self.key {
            Some((n, k)) => (
                n.as_str(),
                if reveal_key { k.as_str() } else { "<redacted>" },
            ),
            None => ("RootManageSharedAccessKey", "SAS_KEY_VALUE"),
        }
    }

    /// A connection string for the official SDKs over plaintext AMQP
    /// (`UseDevelopmentEmulator=true`). The key is replaced by `<redacted>` unless
    /// `reveal_key` is true. Without a configured key any key is accepted, so the string
    /// carries the placeholder `SAS_KEY_VALUE`.
    pub fn connection_string(&self, reveal_key: bool) -> String {
        let (name, key) = self.key_parts(reveal_key);
        format!(
            "Endpoint=sb://{};SharedAccessKeyName={name};SharedAccessKey={key};UseDevelopmentEmulator=true",
            self.local_addr()
        )
    }

    /// A connection string for the TLS listener, as for a real namespace but with the
    /// emulator's port: `Endpoint=sb://localhost:<port>/;...` (no development-emulator
    /// flag, so the SDKs use TLS). `None` without an `amqps` listener.
    pub fn tls_connection_string(&self, reveal_key: bool) -> Option<String> {
        let port = self.addr(Transport::Amqps)?.port();
        let (name, key) = self.key_parts(reveal_key);
        Some(format!(
            "Endpoint=sb://localhost:{port}/;SharedAccessKeyName={name};SharedAccessKey={key}"
        ))
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, EmulatorError> {
    if !addr.ip().is_loopback() {
        return Err(EmulatorError::NonLoopbackBind { addr });
    }
    TcpListener::bind(addr)
        .await
        .map_err(|e| EmulatorError::Io {
            reason: format!("bind {addr}: {e}"),
        })
}

fn local_addr(l: &TcpListener) -> Result<SocketAddr, EmulatorError> {
    l.local_addr().map_err(|e| EmulatorError::Io {
        reason: e.to_string(),
    })
}

async fn accept_loop(listener: TcpListener, transport: Transport, a: Acceptor) {
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            // Out of file descriptors and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let a = a.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, transport, a).await {
                tracing::debug!(error = %e, ?transport, "connection ended");
            }
        });
    }
}

/// Establishes the transport (TLS, WebSocket), then serves AMQP on it.
async fn connection(
    stream: TcpStream,
    transport: Transport,
    a: Acceptor,
) -> Result<(), crate::server::ConnError> {
    let mut cut = a.cut.clone();
    cut.mark_unchanged();
    let established = async {
        match transport {
            Transport::Amqp => Ok(halves(stream)),
            Transport::Amqps => Ok(halves(tls_accept(&a, stream).await?)),
            Transport::Ws => websocket(stream).await,
            Transport::Wss => websocket(tls_accept(&a, stream).await?).await,
        }
    };
    let (r, w) = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, established) => r.map_err(|_| {
            crate::server::ConnError::Protocol("transport handshake timed out".into())
        })??,
        _ = cut.changed() => return Ok(()),
    };
    serve(r, w, a.shared, a.stop, a.cut).await
}

fn halves<S: AsyncRead + AsyncWrite + Send + 'static>(s: S) -> (BoxRead, BoxWrite) {
    let (r, w) = tokio::io::split(s);
    (Box::new(r), Box::new(w))
}

async fn tls_accept(
    a: &Acceptor,
    stream: TcpStream,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, crate::server::ConnError> {
    let Some(acceptor) = &a.tls else {
        return Err(crate::server::ConnError::Protocol("no TLS identity".into()));
    };
    Ok(acceptor.accept(stream).await?)
}

/// Largest WebSocket message (and frame) accepted: a few AMQP frames' worth.
const WS_MAX_MESSAGE: usize = 4 * OUR_MAX_FRAME as usize;

/// Accepts the WebSocket upgrade (path and subprotocol checked) and bridges its binary
/// messages to a byte stream the AMQP connection reads and writes.
async fn websocket<S>(stream: S) -> Result<(BoxRead, BoxWrite), crate::server::ConnError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(WS_MAX_MESSAGE);
    config.max_frame_size = Some(WS_MAX_MESSAGE);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, check_upgrade, Some(config))
        .await
        .map_err(|e| crate::server::ConnError::Protocol(format!("websocket upgrade: {e}")))?;
    let (ours, theirs) = tokio::io::duplex(WS_MAX_MESSAGE);
    tokio::spawn(bridge(ws, theirs));
    Ok(halves(ours))
}

#[allow(clippy::result_large_err)]
fn check_upgrade(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: &str| {
        let mut e = ErrorResponse::new(Some(why.to_owned()));
        *e.status_mut() = status;
        e
    };
    if req.uri().path() != WEBSOCKET_PATH {
        return Err(refuse(StatusCode::NOT_FOUND, "no such path"));
    }
    let offered = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == WEBSOCKET_PROTOCOL);
    if !offered {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "subprotocol AMQPWSB10 required",
        ));
    }
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(WEBSOCKET_PROTOCOL),
    );
    Ok(resp)
}

/// Copies binary WebSocket messages into `io` and bytes from `io` into binary messages,
/// until either side closes.
async fn bridge<S>(ws: tokio_tungstenite::WebSocketStream<S>, io: tokio::io::DuplexStream)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(io);
    let inbound = async {
        while let Some(Ok(msg)) = stream.next().await {
            let WsMessage::Binary(b) = msg else {
                // Pings are answered by tungstenite; close and text frames end AMQP.
                if matches!(msg, WsMessage::Close(_) | WsMessage::Text(_)) {
                    break;
                }
                continue;
            };
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = WsMessage::Binary(buf[..n].to_vec().into());
                    if sink.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(WsMessage::Close(None)).await;
    };
    // Either direction ending ends the connection.
    tokio::select! {
        _ = inbound => {}
        _ = outbound => {}
    }
}
