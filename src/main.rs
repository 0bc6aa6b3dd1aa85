//! The `geolb` command: run, check, demo, explain.
#![warn(clippy::too_many_lines)]

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
        /// Also print what would change against the running instance (asks its admin listener).
        #[arg(long)]
        diff: bool,
        /// Admin address of the running instance; defaults to FILE's `listeners.admin`.
        #[arg(long)]
        admin: Option<String>,
        /// Bearer token for the admin listener.
        #[arg(long, env = "GEOLB_ADMIN_TOKEN")]
        token: Option<String>,
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
        /// Request method: with a data layer, writes and reads route differently.
        #[arg(long, default_value = "GET")]
        method: String,
        /// Explain a read by a client that wrote this many seconds ago (read-your-writes).
        #[arg(long)]
        wrote_secs_ago: Option<f64>,
        /// Explain a DNS answer instead ([dns]): for --name, asked by the resolver at --ip.
        #[arg(long)]
        dns: bool,
        /// With --dns: the name asked for (default: --host).
        #[arg(long)]
        name: Option<String>,
        /// With --dns: the query's EDNS Client Subnet, e.g. 81.2.69.0/24.
        #[arg(long)]
        subnet: Option<String>,
        /// With --dns: ask for AAAA instead of A.
        #[arg(long)]
        aaaa: bool,
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

fn main() {
    // Errors are for operators: the message chain, no backtrace.
    if let Err(e) = real_main() {
        eprintln!("geolb: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Check {
            file,
            diff,
            admin,
            token,
        }) => std::process::exit(check(&file, diff, admin, token.as_deref())),
        Some(Cmd::Explain {
            ip,
            name,
            subnet,
            aaaa,
            dns: true,
            host,
            ..
        }) => {
            let subnet = match subnet {
                Some(s) => Some(
                    geolb::dns::explain::parse_subnet(&s)
                        .context("--subnet: expected ADDRESS/PREFIX, e.g. 81.2.69.0/24")?,
                ),
                None => None,
            };
            let q = geolb::dns::explain::DnsQuery {
                name: name.as_deref().unwrap_or(&host),
                ip,
                subnet,
                aaaa,
            };
            explain_dns(&cli.config, &q)
        }
        Some(Cmd::Explain {
            ip,
            host,
            path,
            method,
            wrote_secs_ago,
            ..
        }) => {
            let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .context("--method")?;
            let q = geolb::explain::Query {
                ip,
                host: &host,
                path: &path,
                method,
                wrote_secs_ago,
            };
            explain(&cli.config, &q)
        }
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

/// One worker per available core (`GEOLB_WORKERS` overrides). With one core the
/// single-threaded scheduler is used: no work-stealing or cross-thread wake-ups to pay for.
fn runtime() -> Result<tokio::runtime::Runtime> {
    let workers = std::env::var("GEOLB_WORKERS")
        .ok()
        .and_then(|w| w.parse::<usize>().ok())
        .filter(|&w| w > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    b.enable_all().build().context("starting the runtime")
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
    running.wait_for_signals().await?;
    tracing::info!("shutting down: draining in-flight requests");
    running.shutdown().await;
    Ok(())
}

fn compile_offline(
    file: &std::path::Path,
) -> Result<geolb::config::Compiled, geolb::config::ConfigErrors> {
    let health = geolb::health::HealthRegistry::default();
    let pool = geolb::UpstreamPool::default();
    let ctx = geolb::config::CompileCtx {
        health: &health,
        pool: &pool,
    };
    geolb::config::load(file, &ctx)
}

fn check(file: &std::path::Path, diff: bool, admin: Option<String>, token: Option<&str>) -> i32 {
    let new = match compile_offline(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{}: {} error(s)", file.display(), e.0.len());
            return 1;
        }
    };
    println!("{}: ok: {}", file.display(), new.summary);
    if !diff {
        return 0;
    }
    let Some(admin) = admin.or_else(|| new.settings.admin.map(|a| a.to_string())) else {
        eprintln!("--diff needs the running instance's admin address (--admin HOST:PORT)");
        return 1;
    };
    let running = match fetch_running_view(&admin, token) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("cannot read the running configuration from http://{admin}/config: {e}");
            return 1;
        }
    };
    let changes =
        geolb::config::diff::diff(&running, &geolb::config::diff::ConfigView::of(&new.table));
    if changes.is_empty() {
        println!("no changes to routes, services or backends against the running instance");
    }
    for line in changes {
        println!("{line}");
    }
    0
}

fn fetch_running_view(admin: &str, token: Option<&str>) -> Result<geolb::config::diff::ConfigView> {
    use http_body_util::BodyExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let mut req = http::Request::get(format!("http://{admin}/config"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.request(req.body(http_body_util::Empty::new())?),
        )
        .await
        .context("timed out")??;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(
            status.is_success(),
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(serde_json::from_slice(&body)?)
    })
}

/// `geolb explain --dns`: what the DNS listener of `config` would answer.
fn explain_dns(config: &std::path::Path, q: &geolb::dns::explain::DnsQuery<'_>) -> Result<()> {
    let mut c = compile_offline(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dns = c
        .dns
        .take()
        .context("the configuration has no [dns] section")?;
    let snap = offline_snapshot(c)?;
    let v = geolb::dns::explain::explain(&dns, &snap, q);
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn explain(config: &std::path::Path, q: &geolb::explain::Query<'_>) -> Result<()> {
    let c = compile_offline(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let snap = offline_snapshot(c)?;
    let v = geolb::explain::explain_query(&snap, q);
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// The snapshot a compiled configuration would publish (geo database loaded, no TLS).
fn offline_snapshot(c: geolb::config::Compiled) -> Result<geolb::route::Snapshot> {
    let geo = match c.geo.clone() {
        Some(g) => g,
        None => std::sync::Arc::new(geolb::geo::GeoDb::embedded()?),
    };
    let snap = geolb::route::Snapshot {
        table: c.table,
        settings: c.settings,
        geo,
        tls: None,
        generation: 0,
        summary: c.summary,
        pool_keys: c.pool_keys,
    };
    Ok(snap)
}
