//! The `queue` binary: see the `queue_cli` library docs.
#![allow(clippy::print_stderr)]

use std::{io::Read, process::ExitCode};

use clap::Parser;
use queue_cli::{Cli, CliError};
use queue_runtime::{
    ProviderSettings, QueueName, QueueRuntimeConfig, SharedQueueProvider,
    azure::{ServiceBusBuilder, ServiceBusSettings},
    build_provider,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors carry no secrets: configuration and provider errors are redacted.
            eprintln!("queue: {e}");
            match e {
                CliError::NeedsYes { .. } | CliError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(cli: &Cli) -> Result<(), CliError> {
    let config = load(cli)?;
    let queue = QueueName::new(config.queue.as_str())?;
    let provider = provider(cli, &config.provider).await?;
    let stdin = || {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body).map(|_| body)
    };
    let mut out = std::io::stdout().lock();
    queue_cli::run(&cli.command, provider.as_ref(), &queue, stdin, &mut out).await
}

/// The runtime's configuration; `--queue` fills in or replaces `queue`.
fn load(cli: &Cli) -> Result<QueueRuntimeConfig, CliError> {
    let mut env: std::collections::HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("QUEUE_RUNTIME__"))
        .collect();
    if let Some(q) = &cli.queue {
        env.insert("QUEUE_RUNTIME__QUEUE".into(), q.clone());
    }
    Ok(QueueRuntimeConfig::load_from(
        cli.config.as_deref(),
        Some(env),
    )?)
}

/// The provider of the configuration; with `--test-ca-cert`, a Service Bus provider that
/// also trusts that CA.
async fn provider(cli: &Cli, settings: &ProviderSettings) -> Result<SharedQueueProvider, CliError> {
    let Some(path) = &cli.test_ca_cert else {
        return Ok(build_provider(settings).await?);
    };
    if settings.kind() != "service-bus" {
        let reason = "--test-ca-cert applies to provider `service-bus` only";
        return Err(CliError::Usage(reason.into()));
    }
    let pem = std::fs::read(path)
        .map_err(|e| CliError::Usage(format!("cannot read `{}`: {e}", path.display())))?;
    // Validates the settings first, so errors name the configuration's keys.
    build_provider(settings).await?;
    let service_bus = ServiceBusSettings::from_provider_settings(settings)?;
    let trusted = ServiceBusBuilder::from_settings(&service_bus)?
        .dangerous_add_test_root_certificate(&pem)
        .build()?;
    Ok(std::sync::Arc::new(trusted))
}
