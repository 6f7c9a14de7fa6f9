//! A broken or hostile broker cannot make the client allocate without bound: a fake broker
//! (a plain TCP listener) answers the protocol header with frames whose sizes, lengths,
//! counts or nesting lie. Each gives a clean, transient connection error; none aborts.

use std::{net::SocketAddr, time::Duration};

use queue_azure::ServiceBusProvider;
use queue_core::{QueueError, QueueName, QueueProvider};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    time::Instant,
};

/// A frame of type SASL (1) with `body`.
fn sasl_frame(body: &[u8]) -> Vec<u8> {
    let size = u32::try_from(8 + body.len()).unwrap();
    let mut f = size.to_be_bytes().to_vec();
    f.extend_from_slice(&[2, 1, 0, 0]);
    f.extend_from_slice(body);
    f
}

/// Serves `reply` after the client's protocol header, to every connection.
async fn fake_broker(reply: Vec<u8>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut header = [0u8; 8];
                if s.read_exact(&mut header).await.is_ok() {
                    let mut out = b"AMQP\x03\x01\x00\x00".to_vec();
                    out.extend_from_slice(&reply);
                    let _ = s.write_all(&out).await;
                    let mut sink = [0u8; 1024];
                    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    (addr, task)
}

async fn refused_cleanly(reply: Vec<u8>) -> String {
    let (addr, task) = fake_broker(reply).await;
    let p = ServiceBusProvider::builder()
        .with_connection_string(&format!(
            "Endpoint=sb://{addr};SharedAccessKeyName=a;SharedAccessKey=b;UseDevelopmentEmulator=true"
        ))
        .with_operation_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    let e = p
        .check_access(&QueueName::new("q").unwrap())
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(e, QueueError::Connection { .. }), "{e:?}");
    task.abort();
    std::error::Error::source(&e)
        .map(ToString::to_string)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_gib_string_in_a_13_byte_frame_is_refused() {
    // sasl-mechanisms: described(0x40) list[ str32 of 4 GiB with one byte present ]
    let body = [
        0x00, 0x53, 0x40, 0xc0, 0x07, 0x01, 0xb1, 0xff, 0xff, 0xff, 0xff, b'x',
    ];
    let cause = refused_cleanly(sasl_frame(&body)).await;
    assert!(cause.contains("refused frame"), "{cause}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_size_limit_is_refused_from_its_header() {
    let mut reply = 0xffff_fff0u32.to_be_bytes().to_vec();
    reply.extend_from_slice(&[2, 1, 0, 0]);
    let cause = refused_cleanly(reply).await;
    assert!(cause.contains("refused frame"), "{cause}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_announcing_billions_of_elements_is_refused() {
    let body = [
        0x00, 0x53, 0x40, 0xd0, 0x00, 0x00, 0x00, 0x04, 0xff, 0xff, 0xff, 0xff,
    ];
    let cause = refused_cleanly(sasl_frame(&body)).await;
    assert!(cause.contains("refused frame"), "{cause}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_array_of_billions_of_nulls_is_refused() {
    let body = [
        0x00, 0x53, 0x40, 0xc0, 0x0e, 0x01, 0xf0, 0x00, 0x00, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff,
        0x40,
    ];
    let cause = refused_cleanly(sasl_frame(&body)).await;
    assert!(cause.contains("refused frame"), "{cause}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_is_refused() {
    let mut value = vec![0x40];
    for _ in 0..200 {
        let mut l = vec![0xd0];
        l.extend_from_slice(&u32::try_from(value.len() + 4).unwrap().to_be_bytes());
        l.extend_from_slice(&1u32.to_be_bytes());
        l.extend_from_slice(&value);
        value = l;
    }
    let mut body = vec![0x00, 0x53, 0x40];
    body.extend_from_slice(&value);
    let cause = refused_cleanly(sasl_frame(&body)).await;
    assert!(cause.contains("refused frame"), "{cause}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_split_over_many_frames_still_pass_the_guard() {
    use queue_core::{Message, ReceiveOptions};
    use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};
    let cfg = EmulatorConfig::new()
        .premium(1024)
        .with_queue("big", QueueConfig::new());
    let emu = Emulator::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let p = ServiceBusProvider::builder()
        .with_connection_string(&emu.connection_string(true))
        .with_max_message_size(1024 * 1024)
        .build()
        .unwrap();
    let queue = QueueName::new("big").unwrap();
    let body: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    p.send(&queue, Message::new(body.clone())).await.unwrap();
    let got = p
        .receive(&queue, ReceiveOptions::new(1, Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body().as_ref(), body.as_slice());
    p.complete(&got[0].receipt).await.unwrap();
}
