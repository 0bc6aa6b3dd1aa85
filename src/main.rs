//! The `geolb` command: run, check, demo, explain.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod demo;

#[derive(Parser)]
#[command(name = "geolb", version, about = "Geo-aware edge HTTP load balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Configuration file (for the default `run`).
    #[arg(long, default_value = "conf/routes.toml", global = true)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run geolb (the default).
    Run {
        /// Do not watch the configuration file for changes.
        #[arg(long)]
        no_watch: bool,
    },
    /// Validate a configuration file; print every error, exit 1 when invalid.
    Check {
        file: PathBuf,
        /// Print what would change against the running instance's configuration file.
        #[arg(long)]
        diff: Option<PathBuf>,
    },
    /// Start demo origins for two regions and geolb on conf/demo.toml.
    Demo,
    /// Explain where a client would be routed, offline.
    Explain {
        #[arg(long)]
        ip: IpAddr,
        #[arg(long, default_value = "localhost")]
        host: String,
        #[arg(long, default_value = "/")]
        path: String,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Check { file, diff }) => std::process::exit(check(&file, diff.as_deref())),
        Some(Cmd::Explain { ip, host, path }) => explain(&cli.config, ip, &host, &path),
        Some(Cmd::Demo) => {
            init_tracing();
            runtime()?.block_on(demo::run())
        }
        Some(Cmd::Run { no_watch }) => {
            init_tracing();
            runtime()?.block_on(run(cli.config, !no_watch))
        }
        None => {
            init_tracing();
            runtime()?.block_on(run(cli.config, true))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Run until SIGTERM/SIGINT; SIGHUP reloads.
pub async fn run(config: PathBuf, watch: bool) -> Result<()> {
    let running = geolb::App::start(geolb::Options {
        config: config.clone(),
        watch,
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, addr) in [
        ("https", running.https),
        ("http", running.http),
        ("admin", running.admin),
    ] {
        if let Some(a) = addr {
            tracing::info!("{name} listener on {a}");
        }
    }
    wait_for_signals(&running).await?;
    tracing::info!("shutting down: draining in-flight requests");
    running.shutdown().await;
    Ok(())
}

/// Returns on SIGTERM/SIGINT; reloads on SIGHUP.
pub async fn wait_for_signals(running: &geolb::Running) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading configuration");
                let _ = running.shared.reload().await;
            }
        }
    }
}

fn compile_offline(
    file: &std::path::Path,
) -> Result<geolb::config::Compiled, geolb::config::ConfigErrors> {
    let health = geolb::health::HealthRegistry::default();
    let pool = geolb::upstream::UpstreamPool::default();
    let ctx = geolb::config::CompileCtx {
        health: &health,
        pool: &pool,
    };
    geolb::config::load(file, &ctx)
}

fn check(file: &std::path::Path, diff: Option<&std::path::Path>) -> i32 {
    let new = match compile_offline(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{}: {} error(s)", file.display(), e.0.len());
            return 1;
        }
    };
    println!("{}: ok: {}", file.display(), new.summary);
    if let Some(running) = diff {
        match compile_offline(running) {
            Ok(old) => {
                for line in geolb::config::diff::diff(&old, &new) {
                    println!("{line}");
                }
            }
            Err(e) => {
                eprintln!(
                    "cannot read the running configuration {}:\n{e}",
                    running.display()
                );
                return 1;
            }
        }
    }
    0
}

fn explain(config: &std::path::Path, ip: IpAddr, host: &str, path: &str) -> Result<()> {
    let c = compile_offline(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let geo = match c.geo.clone() {
        Some(g) => g,
        None => std::sync::Arc::new(geolb::geo::GeoDb::embedded()?),
    };
    let snap = geolb::app::Snapshot {
        table: c.table,
        settings: c.settings,
        geo,
        tls: None,
        generation: 0,
        summary: c.summary,
    };
    let v = geolb::explain::explain(&snap, ip, host, path);
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
