//! The command line's arguments (docs/contract.md §6, §7): every command and flag,
//! its default and its help text, as clap reads them. What each command
//! does is in `cli/mod.rs` and the modules beside it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use super::channel;
use crate::observe::logging::LogFormat;
use crate::ops::dlq::{Filter, Source};
use octopods_sandbox as sandbox;

#[derive(Debug, Parser)]
#[command(
    name = "octopods-worker",
    version,
    about = "Sends WhatsApp interactive messages through Octopods from RabbitMQ jobs"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file.
    #[arg(long, short, env = "OCTOPODS_CONFIG", default_value = "worker.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume and send jobs until SIGTERM/SIGINT.
    Run(ConfigArg),
    /// Check the configuration (API keys included) and exit.
    CheckConfig(ConfigArg),
    /// Declare the broker topology and exit.
    Topology(ConfigArg),
    /// Print RabbitMQ definitions (load_definitions / import_definitions):
    /// the topology, and with --users the worker's and an admin user.
    Definitions(DefinitionsArgs),
    /// Run a stand-in Octopods server for tests and demos.
    Sandbox(SandboxArgs),
    /// Publish jobs (a JSON object or JSON lines) with confirms.
    Enqueue(EnqueueArgs),
    /// Print result events from <prefix>.results as JSON lines (consumes them).
    Events(EventsArgs),
    /// Publish N jobs to a running worker + sandbox and report throughput,
    /// latency and each channel's achieved rate against its budget.
    Loadtest(LoadtestArgs),
    /// Exit 0 if the URL answers 2xx (a container HEALTHCHECK without curl).
    Probe {
        /// What to check.
        #[arg(long, default_value = "http://127.0.0.1:9464/healthz")]
        url: String,
    },
    /// Inspect, replay, export and purge dead-lettered jobs.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Pause, resume or re-rate a channel on every replica, or show them all.
    #[command(subcommand)]
    Channel(channel::ChannelCommand),
    /// The operators' browser console (default 127.0.0.1:9465): channels,
    /// dead letters by cause, replay and export-then-purge, behind a login.
    Console(ConsoleArgs),
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(subcommand)]
    pub action: Option<ConsoleAction>,
}

#[derive(Debug, Subcommand)]
pub enum ConsoleAction {
    /// Read a password on stdin (one line) and print its argon2 hash for
    /// `[[console.users]] password_hash`.
    HashPassword,
}

#[derive(Debug, Args)]
pub struct DefinitionsArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The vhost; default: the one in the broker URL.
    #[arg(long)]
    pub vhost: Option<String>,
    /// Also write the users: the worker's (configure/write/read only on the
    /// prefix's names) and an administrator for operators. Passwords come
    /// from the files given, else from OCTOPODS_RABBITMQ_WORKER_PASSWORD and
    /// OCTOPODS_RABBITMQ_ADMIN_PASSWORD; only salted hashes are written.
    #[arg(long)]
    pub users: bool,
    #[arg(long, default_value = "octopods-worker")]
    pub worker_user: String,
    #[arg(long)]
    pub worker_password_file: Option<PathBuf>,
    #[arg(long, default_value = "octopods-admin")]
    pub admin_user: String,
    #[arg(long)]
    pub admin_password_file: Option<PathBuf>,
    /// Write here (atomically) instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LoadtestArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// How many jobs to publish.
    #[arg(long, default_value_t = 1000)]
    pub jobs: usize,
    /// Channel to use (repeatable); default: every configured channel.
    #[arg(long = "channel")]
    pub channels: Vec<String>,
    /// Stop waiting after this long without a result event.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Which queue: the dead-letter queue, or jobs for unknown channels.
    #[arg(long, value_enum, default_value_t = Source::Dead)]
    pub from: Source,
    #[command(flatten)]
    pub filter: Filter,
    /// If another dlq command is working on the queue, wait this long for
    /// it before giving up (e.g. `2m`). Default: do not wait.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Counts by reason and channel, with oldest and newest failure.
    Stats {
        #[command(flatten)]
        args: DlqArgs,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Look without removing.
    List {
        #[command(flatten)]
        args: DlqArgs,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Copy out as JSON lines with body and headers (for backup, `jq`).
    Export {
        #[command(flatten)]
        args: DlqArgs,
    },
    /// Move back to <prefix>.jobs, to the job's channel.
    Replay {
        #[command(flatten)]
        args: DlqArgs,
        /// Replay at most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// Say what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete, explicitly.
    Purge {
        #[command(flatten)]
        args: DlqArgs,
        /// Purge at most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// Say what would be purged; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
        /// Delete only the dead letters this `dlq export` file holds (and
        /// match the filters): a purge bound to its backup.
        #[arg(long, value_name = "FILE")]
        only_exported: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Delay before every answer, e.g. `200ms`.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// An accepted API key (repeatable); without any, every non-empty key is accepted.
    #[arg(long = "api-key")]
    pub api_keys: Vec<String>,
    /// Answer 429 (Retry-After: 1) past this many requests per second per key.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// An accepted template (repeatable): `ID` (body placeholders only) or
    /// `ID:header,body,footer,buttons` (the sections with placeholders).
    /// Default catalog: `539` and `540:header,body,buttons`.
    #[arg(long = "template", value_parser = sandbox::TemplateSpec::parse)]
    pub templates: Vec<sandbox::TemplateSpec>,
    /// A sent message's status turns DELIVERED this long after the send.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub delivered_after: Duration,
    /// ... and READ this long after the send.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub read_after: Duration,
    /// Answer every request with one fixed success body, nothing else (for
    /// benchmarks: the stand-in costs next to nothing).
    #[arg(long)]
    pub constant: bool,
    /// Also run an Intercom stand-in here (its API, and `POST /_sandbox/tap`
    /// `{"phone", "text"}` for a customer's tap); each message sent opens a
    /// conversation in it, as Octopods does for a connected workspace.
    #[arg(long)]
    pub intercom_listen: Option<SocketAddr>,
    /// The Intercom stand-in's workspace (`app_id`).
    #[arg(long, default_value = "demo-workspace")]
    pub intercom_app_id: String,
    /// Environment variable holding the secret its webhooks are signed with.
    #[arg(long, default_value = "OCTOPODS_INTERCOM_SECRET")]
    pub intercom_secret_env: String,
    /// Environment variable holding the token its API takes.
    #[arg(long, default_value = "OCTOPODS_INTERCOM_TOKEN")]
    pub intercom_token_env: String,
    /// Where its webhooks go (the worker's `/hooks/intercom`).
    #[arg(long, default_value = "http://127.0.0.1:9466/hooks/intercom")]
    pub intercom_webhook: String,
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Channel for every job; else each job's own `channel` field.
    #[arg(long)]
    pub channel: Option<String>,
    /// File of jobs, or `-` for stdin.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<usize>,
    /// Stop after this long without an event.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}
