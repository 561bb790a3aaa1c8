//! The command line (CONTRACT §6, §7): argument definitions and what each
//! command does, in terms of the library's stages.

use std::{io::Read, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

pub mod channel;
pub mod definitions;

pub mod enqueue;
pub mod events;
pub mod loadtest;

use crate::dlq::{self, Filter, Op, Source};
use crate::{
    broker::{self, topology},
    config::Config,
    telemetry::{self, LogFormat},
    worker::Worker,
};
use octopods_sandbox::{self as sandbox, SandboxConfig};

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

/// Runs a command. `shutdown` is cancelled on SIGTERM/SIGINT.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    // The worker sets up logging once its config says whether traces go out.
    if !matches!(cli.command, Command::Run(_)) {
        telemetry::init(cli.log_format, None);
    }
    match cli.command {
        Command::Run(a) => run_worker(&a, cli.log_format, shutdown).await?,
        Command::CheckConfig(a) => {
            let config = Config::load(&a.config)?;
            config.api_keys()?;
            println!(
                "{}: ok ({} channels: {})",
                a.config.display(),
                config.channels.len(),
                config
                    .channels
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Command::Topology(a) => {
            let config = Config::load(&a.config)?;
            let conn = broker::connect(&config.broker, "topology").await?;
            let ch = conn.create_channel().await?;
            topology::declare(&ch, &config)
                .await
                .context("cannot declare the topology")?;
            crate::broker::close(&conn, 200, "OK").await;
            println!("topology declared with prefix {:?}", config.broker.prefix);
        }
        Command::Definitions(a) => {
            let config = Config::load(&a.config.config)?;
            let users = a.users.then_some(definitions::Users {
                worker: a.worker_user,
                worker_password: definitions::Secret {
                    file: a.worker_password_file,
                    env: "OCTOPODS_RABBITMQ_WORKER_PASSWORD",
                },
                admin: a.admin_user,
                admin_password: definitions::Secret {
                    file: a.admin_password_file,
                    env: "OCTOPODS_RABBITMQ_ADMIN_PASSWORD",
                },
            });
            definitions::run(&config, a.vhost, users, a.out.as_deref())?;
        }
        Command::Sandbox(a) if a.constant => {
            sandbox::constant(a.listen, shutdown)
                .await
                .with_context(|| format!("sandbox: cannot listen on {}", a.listen))?;
        }
        Command::Sandbox(a) => {
            let config = SandboxConfig {
                listen: a.listen,
                latency: a.latency,
                api_keys: a.api_keys,
                rate_limit: a.rate_limit,
                templates: a.templates,
                delivered_after: a.delivered_after,
                read_after: a.read_after,
            };
            sandbox::run(config, shutdown)
                .await
                .with_context(|| format!("sandbox: cannot listen on {}", a.listen))?;
        }
        Command::Enqueue(a) => {
            let config = Config::load(&a.config.config)?;
            let mut input = String::new();
            if a.file.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_string(&mut input)
                    .context("cannot read stdin")?;
            } else {
                input = std::fs::read_to_string(&a.file)
                    .with_context(|| format!("cannot read {}", a.file.display()))?;
            }
            let jobs = enqueue::read_jobs(&input, a.channel.as_deref(), &config)?;
            let n = enqueue::publish(&config, &jobs).await?;
            eprintln!(
                "published {n} job(s) to {}.jobs (confirmed by the broker)",
                config.broker.prefix
            );
        }
        Command::Events(a) => {
            let config = Config::load(&a.config.config)?;
            let mut out = std::io::stdout().lock();
            let n = events::tail(&config, a.count, a.timeout, &mut out).await?;
            eprintln!("{n} event(s)");
            if a.count.is_some_and(|c| n < c) {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Loadtest(a) => {
            let config = Config::load(&a.config.config)?;
            let opts = loadtest::Options {
                jobs: a.jobs,
                channels: a.channels,
                idle_timeout: a.idle_timeout,
            };
            let report = loadtest::run(&config, &opts).await?;
            print!("{}", report.render());
            if report.missing > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Probe { url } => {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()?;
            let ok = client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !ok {
                eprintln!("{url}: not healthy");
                return Ok(ExitCode::from(1));
            }
        }
        Command::Dlq(d) => return run_dlq(d).await,
        Command::Channel(c) => channel::run(c, &mut std::io::stdout().lock()).await?,
        Command::Console(ConsoleArgs {
            action: Some(ConsoleAction::HashPassword),
            ..
        }) => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the password from stdin")?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                anyhow::bail!("an empty password");
            }
            println!("{}", crate::console::hash_password(password)?);
        }
        Command::Console(a) => {
            let config = Config::load(&a.config.config)?;
            let console = crate::console::Console::build(config).await?;
            eprintln!("console listening on http://{}", console.addr());
            console.run(shutdown).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `run`: the worker, with its traces exported while it runs (when
/// configured) and flushed, for at most 5 s, after it stopped.
async fn run_worker(
    args: &ConfigArg,
    log_format: LogFormat,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let (traces, tracer) = crate::trace::Traces::start(&config.telemetry)?.unzip();
    telemetry::init(log_format, tracer);
    if traces.is_some() {
        tracing::info!("traces: exporting over OTLP/HTTP");
    }
    let worker = Worker::build(config).await?;
    tracing::info!(http = %worker.http_addr(), "metrics and health endpoints listening");
    let ran = worker.run(shutdown).await;
    if let Some(traces) = traces {
        traces.shutdown(std::time::Duration::from_secs(5)).await;
    }
    ran
}

async fn run_dlq(command: DlqCommand) -> anyhow::Result<ExitCode> {
    let mut only_exported = None;
    let (args, op) = match command {
        DlqCommand::Stats { args, json } => (args, Op::Stats { json }),
        DlqCommand::List { args, json } => (args, Op::List { json }),
        DlqCommand::Export { args } => (args, Op::Export),
        DlqCommand::Replay {
            args,
            limit,
            dry_run,
        } => (args, Op::Replay { limit, dry_run }),
        DlqCommand::Purge {
            args,
            limit,
            dry_run,
            yes,
            only_exported: file,
        } => {
            if !yes && !dry_run {
                eprintln!(
                    "error: dlq purge deletes messages for good: add --yes (or --dry-run to see what would go)"
                );
                return Ok(ExitCode::from(2));
            }
            only_exported = file;
            (args, Op::Purge { limit, dry_run })
        }
    };
    let config = Config::load(&args.config.config)?;
    let request = dlq::Request {
        source: args.from,
        filter: &args.filter,
        op,
        wait: args.wait,
        only_exported: only_exported.as_deref(),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let progress = |s: &dlq::Summary, took: Duration| {
        eprintln!(
            "… {}: seen {}, matched {}, done {} ({:.0}/s)",
            s.queue,
            s.scanned,
            s.matched,
            s.acted,
            f64::from(s.scanned) / took.as_secs_f64().max(1e-3)
        );
    };
    let summary = dlq::run(&config, &request, &mut out, Some(&progress)).await?;
    eprintln!("{}", summary.describe(op, config.dlq.max_replays));
    Ok(ExitCode::SUCCESS)
}
