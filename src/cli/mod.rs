//! The command line (docs/contract.md §6, §7): what each command does, in terms of
//! the library's stages. The arguments themselves are in `args.rs`.

use std::{io::Read, process::ExitCode, time::Duration};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

mod args;
pub mod channel;
pub mod definitions;
pub mod enqueue;
pub mod events;
pub mod loadtest;

pub use args::{
    Cli, Command, ConfigArg, ConsoleAction, ConsoleArgs, DefinitionsArgs, DlqArgs, DlqCommand,
    EnqueueArgs, EventsArgs, LoadtestArgs, SandboxArgs,
};

use crate::ops::dlq::{self, Op};
use crate::{
    broker::{self, topology},
    config::Config,
    observe::logging::{self, LogFormat},
    worker::Worker,
};
use octopods_sandbox::{self as sandbox, SandboxConfig};

/// Runs a command. `shutdown` is cancelled on SIGTERM/SIGINT.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    // The worker sets up logging once its config says whether traces go out.
    if !matches!(cli.command, Command::Run(_)) {
        logging::init(cli.log_format, None);
    }
    let done = match cli.command {
        Command::Run(a) => run_worker(&a, cli.log_format, shutdown).await,
        Command::CheckConfig(a) => check_config(&a),
        Command::Topology(a) => declare_topology(&a).await,
        Command::Definitions(a) => print_definitions(a),
        Command::Sandbox(a) => run_sandbox(a, shutdown).await,
        Command::Enqueue(a) => return enqueue_jobs(&a).await,
        Command::Events(a) => return tail_events(&a).await,
        Command::Loadtest(a) => return load_test(&a).await,
        Command::Probe { url } => return probe(&url).await,
        Command::Dlq(d) => return run_dlq(d).await,
        Command::Channel(c) => channel::run(c, &mut std::io::stdout().lock()).await,
        Command::Console(ConsoleArgs {
            action: Some(ConsoleAction::HashPassword),
            ..
        }) => print_password_hash(),
        Command::Console(a) => run_console(&a, shutdown).await,
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// `check-config`: the file and every API key, or what is wrong.
fn check_config(a: &ConfigArg) -> anyhow::Result<()> {
    let config = Config::load(&a.config)?;
    config.api_keys()?;
    let names: Vec<&str> = config.channels.iter().map(|c| c.name.as_str()).collect();
    println!(
        "{}: ok ({} channels: {})",
        a.config.display(),
        names.len(),
        names.join(", ")
    );
    Ok(())
}

/// `topology`: declares everything the config needs, consuming nothing.
async fn declare_topology(a: &ConfigArg) -> anyhow::Result<()> {
    let config = Config::load(&a.config)?;
    let conn = broker::connect(&config.broker, "topology").await?;
    topology::declare(&conn, &config)
        .await
        .context("cannot declare the topology")?;
    crate::broker::close(&conn, 200, "OK").await;
    println!("topology declared with prefix {:?}", config.broker.prefix);
    Ok(())
}

/// `definitions`: RabbitMQ definitions for the topology (and users).
fn print_definitions(a: DefinitionsArgs) -> anyhow::Result<()> {
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
    definitions::run(&config, a.vhost, users, a.out.as_deref())
}

/// `sandbox`: the stand-in Octopods, or the constant-answer peer.
async fn run_sandbox(a: SandboxArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listen = a.listen;
    let ran = if a.constant {
        sandbox::constant(listen, shutdown).await
    } else {
        let config = SandboxConfig {
            listen,
            latency: a.latency,
            api_keys: a.api_keys,
            rate_limit: a.rate_limit,
            templates: a.templates,
            delivered_after: a.delivered_after,
            read_after: a.read_after,
        };
        match a.intercom_listen {
            None => sandbox::run(config, shutdown).await,
            Some(at) => {
                let env = |name: &str| {
                    std::env::var(name)
                        .with_context(|| format!("sandbox: environment variable {name} is not set"))
                };
                let intercom = sandbox::inbox::IntercomConfig {
                    app_id: a.intercom_app_id,
                    client_secret: env(&a.intercom_secret_env)?,
                    token: env(&a.intercom_token_env)?,
                    webhook_url: a.intercom_webhook,
                };
                let octopods = sandbox::Sandbox::start(config).await;
                let intercom = sandbox::inbox::Intercom::start_on(at, intercom)
                    .await
                    .with_context(|| format!("sandbox: cannot listen on {at} (Intercom)"))?;
                match octopods {
                    Ok(octopods) => {
                        octopods.open_conversations_in(&intercom);
                        tracing::info!(url = %octopods.url(), intercom = %intercom.url(), "sandbox listening, with an Intercom stand-in");
                        shutdown.cancelled().await;
                        intercom.stop();
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        }
    };
    ran.with_context(|| format!("sandbox: cannot listen on {listen}"))
}

/// `enqueue`: jobs from a file (or stdin), published with confirms.
async fn enqueue_jobs(a: &EnqueueArgs) -> anyhow::Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
}

/// `events`: result events as they come; exit 1 when fewer than asked came.
async fn tail_events(a: &EventsArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&a.config.config)?;
    let mut out = std::io::stdout().lock();
    let n = events::tail(&config, a.count, a.timeout, &mut out).await?;
    eprintln!("{n} event(s)");
    Ok(if a.count.is_some_and(|c| n < c) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `loadtest`: jobs through the running workers; exit 1 when some never settled.
async fn load_test(a: &LoadtestArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&a.config.config)?;
    let opts = loadtest::Options {
        jobs: a.jobs,
        channels: a.channels.clone(),
        idle_timeout: a.idle_timeout,
    };
    let report = loadtest::run(&config, &opts).await?;
    print!("{}", report.render());
    Ok(if report.missing > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `probe URL`: exit 0 when it answers 2xx within 3 s (the image's HEALTHCHECK).
async fn probe(url: &str) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    let ok = client
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    if ok {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("{url}: not healthy");
    Ok(ExitCode::from(1))
}

/// `console hash-password`: a password from stdin, hashed for the config.
fn print_password_hash() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!("an empty password");
    }
    println!("{}", crate::ops::console::hash_password(password)?);
    Ok(())
}

/// `console`: the operators' console until shutdown.
async fn run_console(a: &ConsoleArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = Config::load(&a.config.config)?;
    let console = crate::ops::console::Console::build(config).await?;
    eprintln!("console listening on http://{}", console.addr());
    console.run(shutdown).await
}

/// `run`: the worker, with its traces exported while it runs (when
/// configured) and flushed, for at most 5 s, after it stopped.
async fn run_worker(
    args: &ConfigArg,
    log_format: LogFormat,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let (traces, tracer) = crate::observe::trace::Traces::start(&config.telemetry)?.unzip();
    logging::init(log_format, tracer);
    if traces.is_some() {
        tracing::info!("traces: exporting over OTLP/HTTP");
    }
    let worker = Worker::build(config).await?;
    tracing::info!(http = %worker.http_addr(), "metrics and health endpoints listening");
    if let Some(hooks) = worker.replies_addr() {
        tracing::info!(hooks = %hooks, "receiving reply webhooks: POST /hooks/intercom, /hooks/hubspot");
    }
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
    let mut config = Config::load(&args.config.config)?;
    if matches!(op, Op::Replay { .. }) {
        // Channels added at run time are channels to replay to.
        config = crate::ops::control::served(&config).await?.0;
    }
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
