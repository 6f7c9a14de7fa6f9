//! The `servicebus-emulator` binary: config file in, connection string out.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

const BIN: &str = env!("CARGO_BIN_EXE_servicebus-emulator");

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("sbemu-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn serves_the_config_and_prints_a_redacted_connection_string() {
    let cfg = temp_config(
        "ok.toml",
        "key = \"CANARY-BIN-KEY-77\"\n[queues.orders]\nrequires_session = true\n",
    );
    let mut child = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    let conn = lines.next().unwrap().unwrap();
    let addr = listening
        .rsplit(' ')
        .next()
        .unwrap()
        .parse::<std::net::SocketAddr>()
        .unwrap();
    let reachable = std::net::TcpStream::connect(addr).is_ok();
    child.kill().unwrap();
    let _ = child.wait();
    let _ = std::fs::remove_file(&cfg);
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{listening}");
    assert!(reachable, "nothing listens on {addr}");
    assert_eq!(
        conn,
        format!(
            "Endpoint=sb://{addr};SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=<redacted>;UseDevelopmentEmulator=true"
        )
    );
}

#[test]
fn show_key_prints_the_key() {
    let cfg = temp_config("show.json", r#"{"key":"k-123","queues":{"q":{}}}"#);
    let mut child = Command::new(BIN)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--port",
            "0",
            "--show-key",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _ = lines.next();
    let conn = lines.next().unwrap().unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    let _ = std::fs::remove_file(&cfg);
    assert!(conn.contains("SharedAccessKey=k-123;"), "{conn}");
}

#[test]
fn bad_config_exits_with_a_message() {
    let cfg = temp_config("bad.toml", "[queues.q]\nlock_duration_secs = \"soon\"\n");
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "--port", "0"])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&cfg);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid emulator configuration"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config is required"));
}
