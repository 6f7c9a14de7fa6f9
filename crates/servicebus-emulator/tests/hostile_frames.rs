//! Hostile bytes over TCP: huge announced sizes, deep nesting and truncated frames close
//! the offending connection with an AMQP `close` naming the reason (or just end it), never
//! make the emulator allocate what the peer announced, and leave it serving everyone else.

use std::time::Duration;

use fe2o3_amqp::{Connection, Sender, Session};
use fe2o3_amqp_types::{performatives::Performative, primitives::Symbol};
use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const WAIT: Duration = Duration::from_secs(10);
const HEADER: &[u8; 8] = b"AMQP\x00\x01\x00\x00";

async fn start() -> Emulator {
    let cfg = EmulatorConfig::new().with_queue("q", QueueConfig::new());
    Emulator::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Connects and exchanges protocol headers.
async fn amqp(emu: &Emulator) -> TcpStream {
    let mut s = TcpStream::connect(emu.local_addr()).await.unwrap();
    s.write_all(HEADER).await.unwrap();
    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr).await.unwrap();
    assert_eq!(&hdr, HEADER);
    s
}

/// An AMQP frame on channel 0 around `body`, announcing `size` (normally the real one).
fn frame(body: &[u8], size: Option<u32>) -> Vec<u8> {
    let size = size.unwrap_or(8 + body.len() as u32);
    let mut f = size.to_be_bytes().to_vec();
    f.extend_from_slice(&[2, 0, 0, 0]);
    f.extend_from_slice(body);
    f
}

/// Reads until EOF (bounded) and returns the condition of the `close` the emulator sent.
async fn close_condition(mut s: TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    // The emulator may reset the connection after its `close` (the peer's unread bytes):
    // what arrived before the reset is still parsed.
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("the emulator ends the connection in time");
    let mut at = 0;
    while at + 8 <= buf.len() {
        let size = u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        let doff = buf[at + 4] as usize * 4;
        let body = &buf[at + doff..at + size];
        at += size;
        if let Ok(Performative::Close(c)) = serde_amqp::from_slice::<Performative>(body) {
            let e = c.error.expect("close names an error");
            assert!(e.info.is_some(), "close error without info map");
            // The condition as its wire symbol (`amqp:decode-error`, ...).
            let wire = serde_amqp::to_vec(&e.condition).unwrap();
            return Some(serde_amqp::from_slice::<Symbol>(&wire).unwrap().0);
        }
    }
    None
}

async fn still_serves(emu: &Emulator) {
    let url = format!("amqp://{}", emu.local_addr());
    let mut conn = tokio::time::timeout(WAIT, Connection::open("after", &url[..]))
        .await
        .expect("open in time")
        .unwrap();
    let mut session = Session::begin(&mut conn).await.unwrap();
    let mut sender = Sender::attach(&mut session, "s", "q").await.unwrap();
    sender
        .send("still here")
        .await
        .unwrap()
        .accepted_or("no")
        .unwrap();
    sender.close().await.unwrap();
    session.end().await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_frame_announcing_4_gib_is_refused_without_allocating_it() {
    let emu = start().await;
    let mut s = amqp(&emu).await;
    s.write_all(&frame(&[0x00, 0x53, 0x10], Some(u32::MAX)))
        .await
        .unwrap();
    let cond = close_condition(s).await;
    assert_eq!(cond.as_deref(), Some("amqp:frame-size-too-small"));
    still_serves(&emu).await;
}

#[tokio::test]
async fn a_string_announcing_4_gib_in_21_bytes_is_a_decode_error() {
    let emu = start().await;
    let mut s = amqp(&emu).await;
    // open(list32 [str32 of 4 GiB ...]): 21 bytes in all.
    let body = [
        0x00, 0x53, 0x10, 0xd0, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x01, 0xb1,
    ];
    let mut f = frame(&body, None);
    f.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    let n = f.len() as u32;
    f[..4].copy_from_slice(&n.to_be_bytes());
    assert_eq!(f.len(), 25);
    s.write_all(&f).await.unwrap();
    assert_eq!(
        close_condition(s).await.as_deref(),
        Some("amqp:decode-error")
    );
    still_serves(&emu).await;
}

#[tokio::test]
async fn deep_nesting_is_a_decode_error() {
    let emu = start().await;
    let mut s = amqp(&emu).await;
    let mut body = Vec::new();
    for _ in 0..10_000 {
        body.extend_from_slice(&[0x00, 0x53, 0x10]);
    }
    body.push(0x45);
    s.write_all(&frame(&body, None)).await.unwrap();
    assert_eq!(
        close_condition(s).await.as_deref(),
        Some("amqp:decode-error")
    );
    // Nested lists too.
    let mut s = amqp(&emu).await;
    let mut lists = vec![0x45u8];
    for _ in 0..64 {
        let mut outer = vec![0xd0];
        outer.extend_from_slice(&(lists.len() as u32 + 4).to_be_bytes());
        outer.extend_from_slice(&1u32.to_be_bytes());
        outer.extend_from_slice(&lists);
        lists = outer;
    }
    let mut body = vec![0x00, 0x53, 0x10];
    body.extend_from_slice(&lists);
    s.write_all(&frame(&body, None)).await.unwrap();
    assert_eq!(
        close_condition(s).await.as_deref(),
        Some("amqp:decode-error")
    );
    still_serves(&emu).await;
}

#[tokio::test]
async fn truncated_frames_end_the_connection_only() {
    let emu = start().await;
    let mut s = amqp(&emu).await;
    // Announces 100 bytes, sends 20, then closes its side.
    let f = frame(&[0x00, 0x53, 0x10, 0x45], Some(100));
    s.write_all(&f).await.unwrap();
    s.write_all(&[0u8; 12]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("ended in time")
        .unwrap();
    // A frame size below the 8-byte header.
    let mut s = amqp(&emu).await;
    s.write_all(&3u32.to_be_bytes()).await.unwrap();
    assert_eq!(
        close_condition(s).await.as_deref(),
        Some("amqp:connection:framing-error")
    );
    // A valid performative whose own list is cut short.
    let mut s = amqp(&emu).await;
    s.write_all(&frame(&[0x00, 0x53, 0x10, 0xc0, 0x10, 0x02, 0xa1], None))
        .await
        .unwrap();
    assert_eq!(
        close_condition(s).await.as_deref(),
        Some("amqp:decode-error")
    );
    still_serves(&emu).await;
}

#[tokio::test]
async fn hostile_sasl_init_is_refused() {
    let emu = start().await;
    let mut s = TcpStream::connect(emu.local_addr()).await.unwrap();
    s.write_all(b"AMQP\x03\x01\x00\x00").await.unwrap();
    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr).await.unwrap();
    // sasl-init(list32 [sym32 announcing 4 GiB]).
    let body = [
        0x00, 0x53, 0x41, 0xd0, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x01, 0xb3, 0xff, 0xff,
        0xff, 0xff,
    ];
    let mut f = frame(&body, None);
    f[5] = 1; // SASL frame
    s.write_all(&f).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("ended in time");
    still_serves(&emu).await;
}
