//! `queue`, the operator's tool for queue-runtime.
//!
//! It reads the same configuration as the runtime (`--config FILE` and `QUEUE_RUNTIME__...`
//! variables, see `docs/configuration.md`) and works on any provider compiled in (memory,
//! SQS, Service Bus). Secrets from the configuration are never printed: output names the
//! provider and the queue only.
//!
//! ```text
//! queue [--config FILE] [--queue NAME] [--test-ca-cert PEM] check
//! queue peek [-n N] --yes             # receives under lock and releases: counts as a delivery
//! queue send [--file F] [--session S] [--id ID] [--attr k=v]...   # body from F or stdin
//! queue stats
//! queue dlq list [-n N]
//! queue dlq show MESSAGE_ID
//! queue dlq redrive [--limit N] --yes
//! queue dlq purge [--limit N] --yes
//! ```
//!
//! The commands are plain functions over a provider ([`run`]), so tests and other tools can
//! drive them in-process:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), queue_cli::CliError> {
//! use clap::Parser;
//! use queue_runtime::{QueueName, QueueProvider, memory::InMemoryProvider};
//!
//! let provider = InMemoryProvider::new();
//! let queue = QueueName::new("events")?;
//! provider.create_queue(&queue, &Default::default()).await?;
//! let cli = queue_cli::Cli::try_parse_from(["queue", "send", "--id", "evt-1"]).unwrap();
//! let mut out = Vec::new();
//! queue_cli::run(&cli.command, &provider, &queue, || Ok(b"{}".to_vec()), &mut out).await?;
//! assert_eq!(String::from_utf8_lossy(&out), "sent evt-1 to `events`\n");
//! # Ok(())
//! # }
//! ```

use std::{io::Write, time::Duration};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use comfy_table::Table;
use indicatif::{ProgressBar, ProgressStyle};
use queue_runtime::{
    DynQueueProvider, Message, MessageId, QueueError, QueueName, QueueProviderExt, ReceiveOptions,
    ReceivedMessage, SessionId, SessionSelector, SessionSupport, redrive::RedriveOptions,
};

/// Command line of `queue`.
#[derive(Debug, Parser)]
#[command(
    name = "queue",
    version,
    about = "Operate queue-runtime queues: check, peek, send, dead letters."
)]
pub struct Cli {
    /// Configuration file (TOML, JSON or YAML), as used by the runtime.
    #[arg(long, short, global = true, env = "QUEUE_RUNTIME_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// The queue, instead of the configuration's `queue`.
    #[arg(long, short, global = true)]
    pub queue: Option<String>,
    /// Service Bus only: also trust this CA certificate (PEM) for TLS, as for a test broker
    /// such as `servicebus-emulator --tls`. Never needed for Azure; deliberately not a
    /// configuration setting, so a deployment cannot turn it on by accident.
    #[arg(long, global = true, value_name = "PEM_FILE")]
    pub test_ca_cert: Option<std::path::PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A `queue` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Checks credentials, that the queue exists and the permissions; lists capabilities.
    Check,
    /// Shows messages without removing them. They are received under a lock and released,
    /// which counts as a delivery (hence `--yes`).
    Peek {
        /// Most messages to show.
        #[arg(short = 'n', long, default_value_t = 10)]
        max: usize,
        /// Confirms that each shown message's delivery count goes up by one.
        #[arg(long)]
        yes: bool,
    },
    /// Sends one message; the body comes from `--file` or standard input.
    Send(SendArgs),
    /// Provider, queue, capabilities and the dead-letter queue's depth.
    Stats,
    /// The dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

/// Options of `queue send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// File holding the body (default: standard input).
    #[arg(long, short)]
    pub file: Option<std::path::PathBuf>,
    /// Session (ordering key).
    #[arg(long, short)]
    pub session: Option<String>,
    /// Message id (a redelivery with the same id is a duplicate).
    #[arg(long)]
    pub id: Option<String>,
    /// Attribute `name=value` (repeatable).
    #[arg(long = "attr", value_parser = parse_attribute)]
    pub attributes: Vec<(String, String)>,
    /// Content type.
    #[arg(long)]
    pub content_type: Option<String>,
}

/// `queue dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Lists dead letters: id, session, reason, deliveries.
    List {
        /// Most messages to list.
        #[arg(short = 'n', long, default_value_t = 50)]
        max: usize,
    },
    /// Shows one dead letter with its attributes and body.
    Show {
        /// Its message id.
        id: String,
        /// Most dead letters to look through.
        #[arg(long, default_value_t = 1000)]
        scan: usize,
    },
    /// Moves dead letters back to the queue, oldest first.
    Redrive {
        /// Most messages to move (default: all).
        #[arg(long)]
        limit: Option<usize>,
        /// Confirms the move.
        #[arg(long)]
        yes: bool,
    },
    /// Deletes dead letters for good.
    Purge {
        /// Most messages to delete (default: all).
        #[arg(long)]
        limit: Option<usize>,
        /// Confirms the deletion.
        #[arg(long)]
        yes: bool,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// A destructive command was run without `--yes`.
    #[error("`{command}` {what}; run it again with --yes to go ahead")]
    NeedsYes {
        /// The command.
        command: &'static str,
        /// What it would do.
        what: &'static str,
    },
    /// Bad input on the command line.
    #[error("{0}")]
    Usage(String),
    /// The provider refused or failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Reading input or writing output failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

fn parse_attribute(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{text}` is not name=value"))
}

/// Runs `command` on `queue` of `provider`, writing its report to `out`. `stdin` is the body
/// of `send` when no file is given.
pub async fn run(
    command: &Command,
    provider: &DynQueueProvider,
    queue: &QueueName,
    stdin: impl FnOnce() -> std::io::Result<Vec<u8>>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        Command::Check => check(provider, queue, out).await,
        Command::Peek { max, yes } => {
            confirm(*yes, "peek", "counts one delivery of each message shown")?;
            peek(provider, queue, *max, out).await
        }
        Command::Send(args) => send(provider, queue, args, stdin, out).await,
        Command::Stats => stats(provider, queue, out).await,
        Command::Dlq(dlq) => run_dlq(dlq, provider, queue, out).await,
    }
}

async fn run_dlq(
    command: &DlqCommand,
    provider: &DynQueueProvider,
    queue: &QueueName,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        DlqCommand::List { max } => {
            let letters = scan_dead_letters(provider, queue, *max).await?;
            writeln!(out, "{}", letter_table(&letters))?;
            writeln!(out, "{} dead letter(s) shown", letters.len())?;
            release(provider, &letters).await;
            Ok(())
        }
        DlqCommand::Show { id, scan } => show(provider, queue, id, *scan, out).await,
        DlqCommand::Redrive { limit, yes } => {
            confirm(*yes, "dlq redrive", "moves dead letters back to the queue")?;
            redrive(provider, queue, *limit, out).await
        }
        DlqCommand::Purge { limit, yes } => {
            confirm(*yes, "dlq purge", "deletes dead letters for good")?;
            purge(provider, queue, *limit, out).await
        }
    }
}

fn confirm(yes: bool, command: &'static str, what: &'static str) -> Result<(), CliError> {
    if yes {
        Ok(())
    } else {
        Err(CliError::NeedsYes { command, what })
    }
}

async fn check(
    provider: &DynQueueProvider,
    queue: &QueueName,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    provider.check_access(queue).await?;
    writeln!(
        out,
        "ok: {} queue `{queue}` is reachable with these credentials",
        provider.name()
    )?;
    writeln!(out, "{}", capability_table(provider))?;
    Ok(())
}

fn capability_table(provider: &DynQueueProvider) -> Table {
    let c = provider.capabilities();
    let mut table = new_table();
    table.set_header(["capability", "value"]);
    let sessions = match c.sessions {
        SessionSupport::Locked => "locked sessions",
        SessionSupport::Grouped => "message groups (FIFO)",
        _ => "none",
    };
    table.add_row(["sessions", sessions]);
    table.add_row(["max message size", &format!("{} bytes", c.max_message_size)]);
    table.add_row(["max batch", &c.max_batch_size.to_string()]);
    table.add_row(["max lock", &format!("{:?}", c.max_lock_duration)]);
    table.add_row(["dead-letter queue", yes_no(c.native_dead_letter)]);
    table.add_row(["duplicate detection", yes_no(c.duplicate_detection)]);
    table.add_row(["scheduled delivery", yes_no(c.scheduled_delivery)]);
    table
}

fn new_table() -> Table {
    let mut table = Table::new();
    table.load_preset(comfy_table::presets::ASCII_BORDERS_ONLY_CONDENSED);
    table
}

fn yes_no(on: bool) -> &'static str {
    if on { "yes" } else { "no" }
}

async fn stats(
    provider: &DynQueueProvider,
    queue: &QueueName,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let letters = scan_dead_letters(provider, queue, 1000).await?;
    release(provider, &letters).await;
    let depth = if letters.len() >= 1000 {
        "1000 or more".to_owned()
    } else {
        letters.len().to_string()
    };
    let mut table = new_table();
    table.add_row(["provider", provider.name()]);
    table.add_row(["queue", queue.as_str()]);
    table.add_row(["dead letters", &depth]);
    writeln!(out, "{table}")?;
    writeln!(out, "{}", capability_table(provider))?;
    Ok(())
}

async fn send(
    provider: &DynQueueProvider,
    queue: &QueueName,
    args: &SendArgs,
    stdin: impl FnOnce() -> std::io::Result<Vec<u8>>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let body = match &args.file {
        Some(path) => std::fs::read(path)
            .map_err(|e| CliError::Usage(format!("cannot read `{}`: {e}", path.display())))?,
        None => stdin()?,
    };
    let mut message = Message::new(Bytes::from(body));
    if let Some(s) = &args.session {
        message = message.with_session_id(SessionId::new(s.as_str())?);
    }
    if let Some(id) = &args.id {
        message = message.with_message_id(MessageId::new(id.as_str())?);
    }
    if let Some(ct) = &args.content_type {
        message = message.with_content_type(ct.as_str());
    }
    for (k, v) in &args.attributes {
        message = message.with_attribute(k.as_str(), v.as_str());
    }
    let id = provider.send(queue, message).await?;
    writeln!(out, "sent {id} to `{queue}`")?;
    Ok(())
}

const SCAN_WAIT: Duration = Duration::from_secs(1);

/// Receives up to `max` dead letters under lock (release them afterwards).
async fn scan_dead_letters(
    provider: &DynQueueProvider,
    queue: &QueueName,
    max: usize,
) -> Result<Vec<ReceivedMessage>, CliError> {
    let batch = provider.capabilities().max_batch_size.max(1);
    let mut letters = Vec::new();
    while letters.len() < max {
        let want = batch.min(max - letters.len());
        let got = provider
            .receive_dead_letters(queue, ReceiveOptions::new(want, SCAN_WAIT))
            .await?;
        if got.is_empty() {
            break;
        }
        letters.extend(got);
    }
    Ok(letters)
}

/// Gives locked messages back; a failure only delays them until their lock expires.
async fn release(provider: &DynQueueProvider, messages: &[ReceivedMessage]) {
    for m in messages {
        let _ = provider.abandon(&m.receipt, None).await;
    }
}

fn letter_table(letters: &[ReceivedMessage]) -> Table {
    let mut table = new_table();
    table.set_header(["message id", "session", "reason", "deliveries", "bytes"]);
    for m in letters {
        let reason = m.dead_letter.as_ref().map_or("-", |r| r.reason.as_str());
        table.add_row([
            m.message_id.as_str(),
            m.session_id().map_or("-", |s| s.as_str()),
            reason,
            &m.delivery_count.to_string(),
            &m.message.body.len().to_string(),
        ]);
    }
    table
}

async fn show(
    provider: &DynQueueProvider,
    queue: &QueueName,
    id: &str,
    scan: usize,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let letters = scan_dead_letters(provider, queue, scan).await?;
    let found = letters.iter().find(|m| m.message_id.as_str() == id);
    let result = match found {
        None => Err(CliError::Usage(format!(
            "no dead letter `{id}` among the {} looked at",
            letters.len()
        ))),
        Some(m) => write_letter(m, out).map_err(CliError::from),
    };
    release(provider, &letters).await;
    result
}

fn write_letter(m: &ReceivedMessage, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "message id:  {}", m.message_id)?;
    writeln!(
        out,
        "session:     {}",
        m.session_id().map_or("-", |s| s.as_str())
    )?;
    writeln!(out, "deliveries:  {}", m.delivery_count)?;
    if let Some(r) = &m.dead_letter {
        writeln!(out, "reason:      {}", r.reason)?;
        writeln!(out, "description: {}", r.description)?;
    }
    let mut names: Vec<_> = m.message.attributes.iter().collect();
    names.sort();
    for (k, v) in names {
        writeln!(out, "attribute:   {k} = {v}")?;
    }
    writeln!(out, "body ({} bytes):", m.message.body.len())?;
    writeln!(out, "{}", String::from_utf8_lossy(&m.message.body))
}

fn progress(len: Option<usize>, verb: &'static str) -> ProgressBar {
    let bar = match len {
        Some(n) => ProgressBar::new(n as u64),
        None => ProgressBar::new_spinner(),
    };
    let style = ProgressStyle::with_template("{spinner} {msg} {pos} {wide_bar}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(verb);
    bar
}

async fn redrive(
    provider: &DynQueueProvider,
    queue: &QueueName,
    limit: Option<usize>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let bar = progress(limit, "redriving");
    let mut options = RedriveOptions::new().with_wait(SCAN_WAIT);
    if let Some(n) = limit {
        options = options.with_max_messages(n);
    }
    let report = provider.redrive(queue, options).await;
    bar.finish_and_clear();
    let report = report.map_err(QueueError::from)?;
    writeln!(
        out,
        "moved {} of {} dead letter(s) back to `{queue}`",
        report.moved, report.received
    )?;
    if report.sent_not_removed > 0 {
        writeln!(
            out,
            "{} were re-sent but are still in the dead-letter queue",
            report.sent_not_removed
        )?;
    }
    Ok(())
}

async fn purge(
    provider: &DynQueueProvider,
    queue: &QueueName,
    limit: Option<usize>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let bar = progress(limit, "purging");
    let max = limit.unwrap_or(usize::MAX);
    let batch = provider.capabilities().max_batch_size.max(1);
    let mut deleted = 0usize;
    while deleted < max {
        let got = provider
            .receive_dead_letters(
                queue,
                ReceiveOptions::new(batch.min(max - deleted), SCAN_WAIT),
            )
            .await?;
        if got.is_empty() {
            break;
        }
        for m in got {
            provider.complete(&m.receipt).await?;
            deleted += 1;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    writeln!(out, "deleted {deleted} dead letter(s) of `{queue}`")?;
    Ok(())
}

/// Peeks: plain receive, and on providers with locked sessions, the next sessions too. A
/// Service Bus queue serves either session receivers or plain ones; the other kind is refused
/// as `Unsupported`, which here only means "nothing to see that way".
async fn peek(
    provider: &DynQueueProvider,
    queue: &QueueName,
    max: usize,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let locked = provider.capabilities().sessions == SessionSupport::Locked;
    let batch = max.min(provider.capabilities().max_batch_size.max(1));
    let mut seen = match provider
        .receive(queue, ReceiveOptions::new(batch, SCAN_WAIT))
        .await
    {
        Err(QueueError::Unsupported { .. }) if locked => Vec::new(),
        other => other?,
    };
    release(provider, &seen).await;
    if locked && seen.len() < max {
        match peek_sessions(provider, queue, max - seen.len()).await {
            Err(QueueError::Unsupported { .. }) => {}
            other => seen.extend(other?),
        }
    }
    writeln!(out, "{}", letter_table(&seen))?;
    writeln!(out, "{} message(s) shown", seen.len())?;
    Ok(())
}

async fn peek_sessions(
    provider: &DynQueueProvider,
    queue: &QueueName,
    max: usize,
) -> Result<Vec<ReceivedMessage>, QueueError> {
    let mut seen = Vec::new();
    let mut held = Vec::new();
    while seen.len() < max {
        let Some(session) = provider
            .accept_session(queue, SessionSelector::Next, SCAN_WAIT)
            .await?
        else {
            break;
        };
        let got = session
            .receive(ReceiveOptions::new(
                max - seen.len(),
                Duration::from_millis(200),
            ))
            .await?;
        for m in &got {
            let _ = session.abandon(&m.receipt).await;
        }
        seen.extend(got);
        held.push(session); // keep it locked so `Next` moves on to another session
    }
    for session in held {
        let _ = session.close().await;
    }
    Ok(seen)
}
