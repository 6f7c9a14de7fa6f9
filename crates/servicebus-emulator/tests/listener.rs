//! Listener rules that need no Python.

use servicebus_emulator::{Emulator, EmulatorConfig, EmulatorError, QueueConfig};

#[tokio::test]
async fn refuses_non_loopback_addresses() {
    for addr in ["0.0.0.0:0", "192.0.2.1:5672", "[::]:0"] {
        let err = Emulator::start(EmulatorConfig::new(), addr.parse().unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(err, EmulatorError::NonLoopbackBind { .. }),
            "{addr}: {err}"
        );
    }
}

#[tokio::test]
async fn connection_string_redacts_the_key_unless_asked() {
    let cfg = EmulatorConfig::new()
        .with_queue("q", QueueConfig::new())
        .with_key("RootManageSharedAccessKey", "CANARY-KEY-9f2c");
    let emu = Emulator::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = emu.local_addr().port();
    assert_ne!(port, 0);
    let hidden = emu.connection_string(false);
    assert!(!hidden.contains("CANARY-KEY-9f2c"), "{hidden}");
    assert!(hidden.contains(&format!("sb://127.0.0.1:{port};")));
    assert!(hidden.ends_with(";UseDevelopmentEmulator=true"));
    assert!(emu.connection_string(true).contains("CANARY-KEY-9f2c"));
    assert!(!format!("{emu:?}").contains("CANARY-KEY-9f2c"));
}

#[tokio::test]
async fn speaks_amqp_and_rejects_other_protocols() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let emu = Emulator::start(EmulatorConfig::new(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(emu.local_addr())
        .await
        .unwrap();
    s.write_all(b"AMQP\x00\x01\x00\x00").await.unwrap();
    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr).await.unwrap();
    assert_eq!(&hdr, b"AMQP\x00\x01\x00\x00");
    let mut s = tokio::net::TcpStream::connect(emu.local_addr())
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    assert!(buf.is_empty(), "answered a non-AMQP client");
}
