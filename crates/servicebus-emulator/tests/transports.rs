//! TLS (TLS first on the socket, as on port 5671) and WebSocket (`AMQPWSB10` at
//! `/$servicebus/websocket`) listeners, checked at the byte level with rustls and
//! tungstenite clients. The official SDKs drive the same listeners in `python_sdk.rs`.

use std::{sync::Arc, time::Duration};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use servicebus_emulator::{Emulator, EmulatorConfig, Transport};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

const AMQP_HEADER: &[u8; 8] = b"AMQP\x00\x01\x00\x00";
const WAIT: Duration = Duration::from_secs(10);

fn client_config(ca_pem: Option<&str>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(c.expect("CA PEM")).expect("CA accepted");
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

async fn tls_connect(
    emu: &Emulator,
    ca: Option<&str>,
    transport: Transport,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(emu.addr(transport).expect("listener")).await?;
    let connector = tokio_rustls::TlsConnector::from(client_config(ca));
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake is bounded")
}

#[tokio::test]
async fn amqps_starts_with_tls_and_the_generated_ca_is_trusted() {
    let emu = Emulator::start_tls(EmulatorConfig::new()).await.unwrap();
    let ca = emu.ca_pem().expect("generated CA").to_owned();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    let mut tls = tls_connect(&emu, Some(&ca), Transport::Amqps)
        .await
        .expect("TLS with the generated CA");
    tls.write_all(AMQP_HEADER).await.unwrap();
    let mut hdr = [0u8; 8];
    tokio::time::timeout(WAIT, tls.read_exact(&mut hdr))
        .await
        .expect("answer in time")
        .unwrap();
    assert_eq!(&hdr, AMQP_HEADER);
    let conn = emu.tls_connection_string(false).expect("TLS string");
    let port = emu.addr(Transport::Amqps).unwrap().port();
    assert!(
        conn.starts_with(&format!("Endpoint=sb://localhost:{port}/;")),
        "{conn}"
    );
    assert!(!conn.contains("UseDevelopmentEmulator"), "{conn}");
}

#[tokio::test]
async fn amqps_refuses_untrusting_clients_and_plain_amqp() {
    let emu = Emulator::start_tls(EmulatorConfig::new()).await.unwrap();
    let err = tls_connect(&emu, None, Transport::Amqps).await.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    // A plaintext AMQP header on the TLS port gets no AMQP answer.
    let mut s = TcpStream::connect(emu.addr(Transport::Amqps).unwrap())
        .await
        .unwrap();
    s.write_all(AMQP_HEADER).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        !buf.starts_with(b"AMQP"),
        "answered plaintext AMQP on the TLS port"
    );
    // Plaintext stays available next to TLS.
    let mut p = TcpStream::connect(emu.local_addr()).await.unwrap();
    p.write_all(AMQP_HEADER).await.unwrap();
    let mut hdr = [0u8; 8];
    p.read_exact(&mut hdr).await.unwrap();
    assert_eq!(&hdr, AMQP_HEADER);
}

fn ws_request(
    url: &str,
    protocol: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    req
}

async fn ws_exchange<S>(stream: S, url: &str) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::{SinkExt, StreamExt};
    let (mut ws, resp) =
        tokio_tungstenite::client_async(ws_request(url, Some("AMQPWSB10")), stream)
            .await
            .expect("upgrade");
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "AMQPWSB10"
    );
    ws.send(Message::Binary(AMQP_HEADER.to_vec().into()))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 8 {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

#[tokio::test]
async fn websockets_carry_amqp_over_tls_and_plain() {
    let emu = Emulator::start_tls(EmulatorConfig::new()).await.unwrap();
    let ca = emu.ca_pem().unwrap().to_owned();
    let wss = emu.addr(Transport::Wss).unwrap();
    let tls = tls_connect(&emu, Some(&ca), Transport::Wss).await.unwrap();
    let url = format!("wss://localhost:{}/$servicebus/websocket", wss.port());
    assert_eq!(ws_exchange(tls, &url).await, AMQP_HEADER);
    let ws = emu.addr(Transport::Ws).unwrap();
    let tcp = TcpStream::connect(ws).await.unwrap();
    let url = format!("ws://127.0.0.1:{}/$servicebus/websocket", ws.port());
    assert_eq!(ws_exchange(tcp, &url).await, AMQP_HEADER);
}

#[tokio::test]
async fn websocket_upgrade_needs_the_path_and_the_subprotocol() {
    let emu = Emulator::start_tls(EmulatorConfig::new()).await.unwrap();
    let ws = emu.addr(Transport::Ws).unwrap();
    for (path, proto) in [
        ("/other", Some("AMQPWSB10")),
        ("/$servicebus/websocket", None),
        ("/$servicebus/websocket", Some("mqtt")),
    ] {
        let tcp = TcpStream::connect(ws).await.unwrap();
        let url = format!("ws://127.0.0.1:{}{path}", ws.port());
        let res = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(ws_request(&url, proto), tcp),
        )
        .await
        .expect("answer in time");
        assert!(res.is_err(), "{path} {proto:?} was upgraded");
    }
}

#[tokio::test]
async fn tls_listeners_need_a_certificate() {
    let l = servicebus_emulator::Listeners::new()
        .listen(Transport::Amqps, "127.0.0.1:0".parse().unwrap());
    let err = Emulator::start_with(EmulatorConfig::new(), l)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    let err = servicebus_emulator::TlsIdentity::from_pem(b"nope", b"nope").unwrap_err();
    assert!(err.to_string().starts_with("TLS: certificate PEM"), "{err}");
}
