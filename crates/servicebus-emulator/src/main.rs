//! `servicebus-emulator --config <file> [--port N] [TLS options] [--show-key]`: serves the
//! configured queues on 127.0.0.1 and prints a connection string for the official SDKs.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
};

use servicebus_emulator::{Emulator, EmulatorConfig, Listeners, TlsIdentity, Transport};

const USAGE: &str = "usage: servicebus-emulator --config <file.toml|file.json> [--port N] [--show-key]
       [--tls-cert <cert.pem> --tls-key <key.pem> | --tls-generate <write-ca-to.pem>]
       [--tls-port N] [--wss-port N] [--ws-port N]
  --port N          plaintext AMQP port (default 5672)
  --tls-cert/--tls-key  serve TLS with this PEM certificate chain and key
  --tls-generate F  serve TLS with a fresh self-signed CA + localhost certificate; write the CA PEM to F
  --tls-port N      AMQP over TLS port (default 5671 when TLS is on)
  --wss-port N      AMQP over WebSockets over TLS (path /$servicebus/websocket)
  --ws-port N       AMQP over plain WebSockets (tests only)";

#[derive(Debug, Default)]
struct Args {
    config: PathBuf,
    port: u16,
    show_key: bool,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_generate: Option<PathBuf>,
    tls_port: Option<u16>,
    wss_port: Option<u16>,
    ws_port: Option<u16>,
}

fn port(v: Option<String>, flag: &str) -> Result<u16, String> {
    v.ok_or_else(|| format!("{flag} needs a number"))?
        .parse()
        .map_err(|_| format!("{flag} needs a number from 0 to 65535"))
}

fn path(v: Option<String>, flag: &str) -> Result<PathBuf, String> {
    v.map(PathBuf::from)
        .ok_or_else(|| format!("{flag} needs a file"))
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        port: 5672,
        ..Args::default()
    };
    let mut config = None;
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--config" => config = Some(path(it.next(), "--config")?),
            "--port" => a.port = port(it.next(), "--port")?,
            "--show-key" => a.show_key = true,
            "--tls-cert" => a.tls_cert = Some(path(it.next(), "--tls-cert")?),
            "--tls-key" => a.tls_key = Some(path(it.next(), "--tls-key")?),
            "--tls-generate" => a.tls_generate = Some(path(it.next(), "--tls-generate")?),
            "--tls-port" => a.tls_port = Some(port(it.next(), "--tls-port")?),
            "--wss-port" => a.wss_port = Some(port(it.next(), "--wss-port")?),
            "--ws-port" => a.ws_port = Some(port(it.next(), "--ws-port")?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    a.config = config.ok_or_else(|| format!("--config is required\n{USAGE}"))?;
    match (&a.tls_cert, &a.tls_key, &a.tls_generate) {
        (Some(_), Some(_), None) | (None, None, _) => {}
        (Some(_), Some(_), Some(_)) => {
            return Err("--tls-generate cannot be combined with --tls-cert/--tls-key".into());
        }
        _ => return Err("--tls-cert and --tls-key go together".into()),
    }
    let tls = a.tls_cert.is_some() || a.tls_generate.is_some();
    if !tls && (a.tls_port.is_some() || a.wss_port.is_some()) {
        return Err("--tls-port/--wss-port need --tls-cert/--tls-key or --tls-generate".into());
    }
    if tls && a.tls_port.is_none() {
        a.tls_port = Some(5671);
    }
    Ok(a)
}

fn listeners(a: &Args) -> Result<Listeners, String> {
    let at = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let mut l = Listeners::new().listen(Transport::Amqp, at(a.port));
    let identity = match (&a.tls_cert, &a.tls_key, &a.tls_generate) {
        (Some(c), Some(k), _) => {
            Some(TlsIdentity::from_pem_files(c, k).map_err(|e| e.to_string())?)
        }
        (_, _, Some(out)) => {
            let id = TlsIdentity::generate_localhost().map_err(|e| e.to_string())?;
            let pem = id.ca_pem().unwrap_or_default();
            std::fs::write(out, pem)
                .map_err(|e| format!("cannot write the CA to {}: {e}", out.display()))?;
            Some(id)
        }
        _ => None,
    };
    if let Some(id) = identity {
        l = l.tls(id);
    }
    for (t, p) in [
        (Transport::Amqps, a.tls_port),
        (Transport::Wss, a.wss_port),
        (Transport::Ws, a.ws_port),
    ] {
        if let Some(p) = p {
            l = l.listen(t, at(p));
        }
    }
    Ok(l)
}

#[tokio::main]
#[allow(clippy::print_stdout, clippy::print_stderr)]
async fn main() -> ExitCode {
    let setup = parse_args(std::env::args().skip(1)).and_then(|a| {
        let cfg = EmulatorConfig::from_file(&a.config).map_err(|e| e.to_string())?;
        Ok((listeners(&a)?, cfg, a.show_key))
    });
    let (listeners, cfg, show_key) = match setup {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let emu = match Emulator::start_with(cfg, listeners).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!("servicebus-emulator listening on {}", emu.local_addr());
    println!("{}", emu.connection_string(show_key));
    for (t, name) in [
        (Transport::Amqps, "amqps"),
        (Transport::Wss, "wss"),
        (Transport::Ws, "ws"),
    ] {
        if let Some(addr) = emu.addr(t) {
            println!("{name} listening on {addr}");
        }
    }
    if let Some(c) = emu.tls_connection_string(show_key) {
        println!("{c}");
    }
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, String> {
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_flags_and_rejects_bad_ones() {
        let a = args(&["--config", "q.toml", "--port", "0", "--show-key"]).unwrap();
        assert_eq!(a.config, PathBuf::from("q.toml"));
        assert_eq!(a.port, 0);
        assert!(a.show_key);
        assert_eq!(a.tls_port, None);
        assert_eq!(args(&["--config", "q.toml"]).unwrap().port, 5672);
        assert!(args(&[]).is_err());
        assert!(args(&["--config", "q.toml", "--port", "x"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }

    #[test]
    fn tls_flags_go_together() {
        let a = args(&["--config", "q", "--tls-cert", "c", "--tls-key", "k"]).unwrap();
        assert_eq!(a.tls_port, Some(5671));
        let a = args(&[
            "--config",
            "q",
            "--tls-generate",
            "ca.pem",
            "--wss-port",
            "0",
        ])
        .unwrap();
        assert_eq!(a.wss_port, Some(0));
        assert!(args(&["--config", "q", "--tls-cert", "c"]).is_err());
        assert!(args(&["--config", "q", "--tls-port", "1"]).is_err());
        assert!(
            args(&[
                "--config",
                "q",
                "--tls-generate",
                "x",
                "--tls-cert",
                "c",
                "--tls-key",
                "k"
            ])
            .is_err()
        );
    }
}
