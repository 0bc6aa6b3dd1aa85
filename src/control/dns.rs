//! The DNS side of a running geolb: the published [`DnsView`] (swapped on every publish, next
//! to the route snapshot), the UDP/TCP listeners (rebound when their addresses change) and the
//! probes of edges and targets (reconciled like backend checks).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dns::check::Probes;
use crate::dns::rrl::RateLimiter;
use crate::dns::server::{self, Views};
use crate::dns::{DnsConfig, DnsView};
use crate::observe::events::EventLog;
use crate::route::Snapshot;

/// Socket receive buffer asked for on the UDP listener (bursts wait in the kernel).
const UDP_RCVBUF: usize = 4 << 20;

/// DNS listeners, view and probes of one process.
pub(crate) struct DnsRuntime {
    /// What the listeners answer from.
    pub(crate) views: Views,
    listening: Mutex<Listening>,
    probes: Mutex<Probes>,
}

/// The running listeners: configured and bound addresses, and their stop token.
#[derive(Default)]
struct Listening {
    udp: Option<(SocketAddr, SocketAddr)>,
    tcp: Option<(SocketAddr, SocketAddr)>,
    stop: Option<CancellationToken>,
}

/// Sockets bound for a configuration whose listener addresses changed.
pub(crate) struct Bound {
    udp: Option<(SocketAddr, UdpSocket)>,
    tcp: Option<(SocketAddr, TcpListener)>,
}

impl DnsRuntime {
    pub(crate) fn new(events: Arc<EventLog>) -> DnsRuntime {
        DnsRuntime {
            views: Arc::new(ArcSwapOption::empty()),
            listening: Mutex::new(Listening::default()),
            probes: Mutex::new(Probes::new(events)),
        }
    }

    /// Bind the listeners of `cfg` when their addresses differ from the running ones
    /// (before anything is published: a failure changes nothing). `None`: keep them.
    pub(crate) fn bind(&self, cfg: Option<&DnsConfig>) -> Result<Option<Bound>, String> {
        let l = self.listening.lock().unwrap_or_else(|e| e.into_inner());
        let want = (cfg.and_then(|c| c.udp), cfg.and_then(|c| c.tcp));
        if (l.udp.map(|u| u.0), l.tcp.map(|t| t.0)) == want {
            return Ok(None);
        }
        let udp = match want.0 {
            Some(a) => Some((
                a,
                bind_udp(a).map_err(|e| format!("cannot listen on udp {a}: {e}"))?,
            )),
            None => None,
        };
        // "Any port" for both on one address: TCP takes UDP's port (truncated answers are
        // retried over TCP on the same port).
        let same_port = match (&udp, want.1) {
            (Some((u, sock)), Some(t)) if *u == t && t.port() == 0 => {
                sock.local_addr().ok().and_then(|a| bind_tcp(a).ok())
            }
            _ => None,
        };
        let tcp = match (want.1, same_port) {
            (Some(a), Some(l)) => Some((a, l)),
            (Some(a), None) => Some((
                a,
                bind_tcp(a).map_err(|e| format!("cannot listen on tcp {a}: {e}"))?,
            )),
            (None, _) => None,
        };
        Ok(Some(Bound { udp, tcp }))
    }

    /// Publish `cfg` with the snapshot it was compiled with, start newly bound listeners
    /// (stopping the ones they replace) and reconcile the probes.
    pub(crate) fn publish(
        &self,
        cfg: Option<Arc<DnsConfig>>,
        snap: Arc<Snapshot>,
        bound: Option<Bound>,
        tasks: &TaskTracker,
        drain: &CancellationToken,
        hard: &CancellationToken,
    ) {
        let old_rrl = self.views.load().as_ref().and_then(|v| v.rrl.clone());
        let view = cfg.clone().map(|config| {
            let rrl = config.rrl.map(|p| match old_rrl {
                Some(r) if r.policy() == p => r,
                _ => Arc::new(RateLimiter::new(p)),
            });
            Arc::new(DnsView { config, snap, rrl })
        });
        self.views.store(view);
        if let Some(b) = bound {
            self.start(b, tasks, drain);
        }
        let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        probes.reconcile(cfg.as_deref(), tasks, hard);
    }

    fn start(&self, b: Bound, tasks: &TaskTracker, drain: &CancellationToken) {
        let mut l = self.listening.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = l.stop.take() {
            old.cancel();
            tracing::info!("dns listeners stopped (address changed)");
        }
        let stop = drain.child_token();
        *l = Listening::default();
        if let Some((configured, sock)) = b.udp {
            let bound = sock.local_addr().unwrap_or(configured);
            tracing::info!(address = %bound, "dns listening (udp)");
            server::spawn_udp(sock, self.views.clone(), stop.clone(), tasks);
            l.udp = Some((configured, bound));
        }
        if let Some((configured, listener)) = b.tcp {
            let bound = listener.local_addr().unwrap_or(configured);
            tracing::info!(address = %bound, "dns listening (tcp)");
            tasks.spawn(server::tcp_loop(
                listener,
                self.views.clone(),
                stop.clone(),
                tasks.clone(),
            ));
            l.tcp = Some((configured, bound));
        }
        l.stop = Some(stop);
    }

    /// The bound UDP and TCP addresses.
    pub(crate) fn bound(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let l = self.listening.lock().unwrap_or_else(|e| e.into_inner());
        (l.udp.map(|u| u.1), l.tcp.map(|t| t.1))
    }
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    let _ = s.set_recv_buffer_size(UDP_RCVBUF);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}
