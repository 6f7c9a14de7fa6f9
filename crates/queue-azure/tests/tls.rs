//! TLS the way Service Bus does it (TLS first on the AMQPS port, certificate and host-name
//! validation) and AMQP over WebSockets, against the emulator's TLS and WebSocket
//! listeners with a test CA.

mod common;

use std::time::Duration;

use queue_azure::{ServiceBusProvider, Transport};
use queue_core::{Message, QueueError, QueueName, QueueProvider, ReceiveOptions, RetryClass};
use servicebus_emulator::{
    Emulator, EmulatorConfig, Listeners, QueueConfig, TlsIdentity, Transport as Listener,
};
use tokio::time::Instant;

fn q(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

fn config() -> EmulatorConfig {
    EmulatorConfig::new()
        .with_key(common::KEY_NAME, common::KEY)
        .with_queue("tls", QueueConfig::new())
}

fn string_for(host: &str, port: u16) -> String {
    format!(
        "Endpoint=sb://{host}:{port}/;SharedAccessKeyName={};SharedAccessKey={}",
        common::KEY_NAME,
        common::KEY
    )
}

async fn round_trip(p: &ServiceBusProvider) {
    let queue = q("tls");
    p.check_access(&queue).await.unwrap();
    p.send(&queue, Message::new("over tls")).await.unwrap();
    let got = p
        .receive(&queue, ReceiveOptions::new(1, Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body().as_ref(), b"over tls");
    p.complete(&got[0].receipt).await.unwrap();
}

/// The refusal: permanent, fast, and saying what is wrong with the certificate.
async fn assert_refused(p: &ServiceBusProvider, expected: &str) {
    let started = Instant::now();
    let e = p.check_access(&q("tls")).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(e.retry_class(), RetryClass::Permanent, "{e:?}");
    let cause = std::error::Error::source(&e)
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(cause.contains(expected), "{e} / {cause}");
    let e = p.send(&q("tls"), Message::new("x")).await.unwrap_err();
    assert!(matches!(e, QueueError::Provider { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_over_tls_to_the_amqps_port_with_the_test_ca() {
    let emu = Emulator::start_tls(config()).await.unwrap();
    let p = ServiceBusProvider::builder()
        .with_connection_string(&emu.tls_connection_string(true).unwrap())
        .dangerous_add_test_root_certificate(emu.ca_pem().unwrap().as_bytes())
        .build()
        .unwrap();
    round_trip(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_clearly() {
    let emu = Emulator::start_tls(config()).await.unwrap();
    let p = ServiceBusProvider::builder()
        .with_connection_string(&emu.tls_connection_string(true).unwrap())
        .build()
        .unwrap();
    assert_refused(&p, "not signed by a trusted root").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_name_is_refused_clearly() {
    // A CA the client trusts, and a server certificate it signed for another name.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["other.example".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let identity =
        TlsIdentity::from_pem(leaf.pem().as_bytes(), leaf_key.serialize_pem().as_bytes()).unwrap();
    let emu = Emulator::start_with(
        config(),
        Listeners::new()
            .tls(identity)
            .listen(Listener::Amqps, "127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let port = emu.addr(Listener::Amqps).unwrap().port();
    let p = ServiceBusProvider::builder()
        .with_connection_string(&string_for("localhost", port))
        .dangerous_add_test_root_certificate(ca.pem().as_bytes())
        .build()
        .unwrap();
    assert_refused(&p, "not valid for that host name").await;
}

#[test]
fn an_unreadable_test_root_fails_the_build() {
    let e = ServiceBusProvider::builder()
        .with_connection_string(&string_for("localhost", 5671))
        .dangerous_add_test_root_certificate(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
        .build()
        .unwrap_err();
    assert!(matches!(e, QueueError::Config { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_tls_round_trip() {
    let emu = Emulator::start_tls(config()).await.unwrap();
    let port = emu.addr(Listener::Wss).unwrap().port();
    let p = ServiceBusProvider::builder()
        .with_connection_string(&string_for("localhost", port))
        .with_transport(Transport::AmqpWebSockets)
        .dangerous_add_test_root_certificate(emu.ca_pem().unwrap().as_bytes())
        .build()
        .unwrap();
    round_trip(&p).await;
    // A dropped WebSocket is noticed and reconnected in the background, before any call.
    emu.drop_connections();
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.connections_opened() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(p.connections_opened(), 2);
    round_trip(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_without_tls_reach_the_development_emulator() {
    let emu = Emulator::start_tls(config()).await.unwrap();
    let addr = emu.addr(Listener::Ws).unwrap();
    let p = ServiceBusProvider::builder()
        .with_connection_string(&format!(
            "Endpoint=sb://{addr};SharedAccessKeyName={};SharedAccessKey={};UseDevelopmentEmulator=true",
            common::KEY_NAME,
            common::KEY
        ))
        .with_transport(Transport::AmqpWebSockets)
        .build()
        .unwrap();
    round_trip(&p).await;
}
