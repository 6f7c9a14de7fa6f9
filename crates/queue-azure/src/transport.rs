//! The byte stream under the AMQP connection: TCP, then TLS started right away (Service
//! Bus's "alternative TLS establishment": no AMQP TLS protocol header is exchanged first, as
//! every Azure SDK does on port 5671), optionally WebSockets on top.
//!
//! TLS is done here with rustls rather than inside fe2o3-amqp, so that the certificate
//! checks, the trust anchors and the error messages are ours, and so that the frame guard
//! (see [`crate::guard`]) sees the decrypted bytes before the AMQP decoder does.

use std::{
    fmt, io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::{
    CertificateError, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use crate::{
    config::{Endpoint, ServiceBusConfig},
    error::Failure,
    guard::FrameGuard,
};

/// Anything the AMQP connection can run over.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The connected stream: plaintext (loopback emulator only), TLS, or WebSockets.
pub(crate) struct Stream(Box<dyn Io>);

impl Stream {
    /// Wraps any byte stream.
    pub(crate) fn new(io: impl Io + 'static) -> Self {
        Self(Box::new(io))
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Stream")
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// The TLS client configuration: the public web PKI roots (as Azure's certificates chain
/// to them), plus any test-only roots, with host-name validation.
pub(crate) fn tls_config(test_roots: &[Vec<u8>]) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in test_roots {
        let der = if cert.starts_with(b"-----BEGIN") {
            CertificateDer::from_pem_slice(cert)
                .map_err(|e| format!("test root certificate is not valid PEM: {e}"))?
        } else {
            CertificateDer::from(cert.clone())
        };
        roots
            .add(der)
            .map_err(|e| format!("test root certificate refused: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens the stream to `cfg`'s endpoint, TLS included, within `timeout`.
/// Every byte read passes the frame guard (see [`crate::guard`]).
pub(crate) async fn connect(cfg: &ServiceBusConfig, timeout: Duration) -> Result<Stream, Failure> {
    let stream = tokio::time::timeout(timeout, connect_inner(&cfg.endpoint, &cfg.tls))
        .await
        .map_err(|_| Failure::Timeout(timeout))??;
    // Received messages carry broker annotations on top of what was sent.
    let max_message = cfg.max_message_size.saturating_add(64 * 1024);
    Ok(Stream::new(FrameGuard::new(stream, max_message)))
}

async fn connect_inner(ep: &Endpoint, tls: &Arc<ClientConfig>) -> Result<Stream, Failure> {
    let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
        .await
        .map_err(|e| {
            Failure::ConnectionLost(format!("tcp connect to {}:{}: {e}", ep.host, ep.port))
        })?;
    let _ = tcp.set_nodelay(true);
    if !ep.tls {
        return crate::ws::wrap(ep, Stream::new(tcp)).await;
    }
    let name = ServerName::try_from(ep.host.clone())
        .map_err(|_| Failure::Tls(format!("`{}` is not a valid TLS server name", ep.host)))?;
    let stream = TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| tls_failure(&ep.host, &e))?;
    crate::ws::wrap(ep, Stream::new(stream)).await
}

/// A clear message for a failed TLS handshake; certificate problems are permanent.
fn tls_failure(host: &str, e: &io::Error) -> Failure {
    let Some(err) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return Failure::ConnectionLost(format!("TLS handshake with {host}: {e}"));
    };
    let why = match err {
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            format!("the certificate presented by {host} is not valid for that host name")
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "the certificate presented by {host} is not signed by a trusted root certificate"
        ),
        rustls::Error::InvalidCertificate(other) => {
            format!("the certificate presented by {host} was refused: {other:?}")
        }
        other => format!("TLS handshake with {host} failed: {other}"),
    };
    Failure::Tls(why)
}
