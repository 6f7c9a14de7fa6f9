//! `servicebus-emulator --config <file> [--port N] [--show-key]`: serves the configured
//! queues on 127.0.0.1 and prints a connection string for the official SDKs.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use servicebus_emulator::{Emulator, EmulatorConfig};

const USAGE: &str =
    "usage: servicebus-emulator --config <file.toml|file.json> [--port N] [--show-key]";

struct Args {
    config: PathBuf,
    port: u16,
    show_key: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut config, mut port, mut show_key) = (None, 5672u16, false);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => config = Some(PathBuf::from(it.next().ok_or("--config needs a file")?)),
            "--port" => {
                port = it
                    .next()
                    .ok_or("--port needs a number")?
                    .parse()
                    .map_err(|_| "--port needs a number from 0 to 65535")?
            }
            "--show-key" => show_key = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(Args {
        config: config.ok_or_else(|| format!("--config is required\n{USAGE}"))?,
        port,
        show_key,
    })
}

#[tokio::main]
#[allow(clippy::print_stdout, clippy::print_stderr)]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match EmulatorConfig::from_file(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let emu = match Emulator::start(cfg, addr).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!("servicebus-emulator listening on {}", emu.local_addr());
    println!("{}", emu.connection_string(args.show_key));
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
        assert_eq!(args(&["--config", "q.toml"]).unwrap().port, 5672);
        assert!(args(&[]).is_err());
        assert!(args(&["--config", "q.toml", "--port", "x"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }
}
