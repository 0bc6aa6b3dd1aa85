//! The DNS listeners: a lean UDP loop and a TCP loop on tokio (no hickory-server stack: the
//! answer is one synchronous function over a published view, so a receive → answer → send
//! loop per worker with its own reused buffers is all a server needs).
//!
//! UDP: one task per runtime worker on the shared socket, each with a receive buffer and a
//! [`Scratch`]; the view is loaded per packet (a reload takes effect on the next query); the
//! rate limit runs before the answer. TCP (RFC 7766): length-prefixed messages, several per
//! connection, an idle timeout, a cap on open connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dns::DnsView;
use crate::dns::rrl::Verdict;
use crate::dns::wire::{self, Scratch, Transport};
use crate::time::now_ms;

/// Largest UDP query accepted; a larger datagram is dropped unanswered (no DNS query is
/// that large: it is junk or an attack).
const UDP_MAX_QUERY: usize = 4096;
/// Open TCP connections at most; more are closed at once.
const MAX_TCP_CONNECTIONS: usize = 512;
/// A TCP connection idle (between or inside messages) this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Queries answered on one TCP connection at most.
const TCP_MAX_QUERIES: usize = 1000;

/// The published view the loops answer from (`None` while DNS is not configured).
pub(crate) type Views = Arc<ArcSwapOption<DnsView>>;

/// Serve DNS over UDP on `sock` until `stop`: one worker task per runtime thread.
pub(crate) fn spawn_udp(
    sock: UdpSocket,
    views: Views,
    stop: CancellationToken,
    tasks: &TaskTracker,
) {
    let sock = Arc::new(sock);
    let workers = tokio::runtime::Handle::current()
        .metrics()
        .num_workers()
        .max(1);
    for _ in 0..workers {
        #[cfg(target_os = "linux")]
        tasks.spawn(batch::udp_worker(sock.clone(), views.clone(), stop.clone()));
        #[cfg(not(target_os = "linux"))]
        tasks.spawn(udp_worker(sock.clone(), views.clone(), stop.clone()));
    }
}

/// One datagram at a time (`recv_from`, `send_to`): the portable loop.
#[cfg(not(target_os = "linux"))]
async fn udp_worker(sock: Arc<UdpSocket>, views: Views, stop: CancellationToken) {
    // One byte more than the largest query: a datagram that fills it was cut by the kernel.
    let mut buf = vec![0u8; UDP_MAX_QUERY + 1];
    let mut s = Scratch::default();
    loop {
        let (n, peer) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                // ICMP errors from earlier sends surface here on Linux: not fatal.
                Err(_) => continue,
            },
            _ = stop.cancelled() => return,
        };
        if n > UDP_MAX_QUERY {
            if let Some(v) = views.load().as_deref() {
                v.config.metrics.oversized.increment(1);
            }
            continue;
        }
        if answer_udp(&views, &buf[..n], peer, &mut s) {
            let _ = sock.send_to(&s.out, peer).await;
        }
    }
}

/// Batched UDP on Linux: up to [`batch::BATCH`] datagrams per `recvmmsg`, their answers in one
/// `sendmmsg` — two system calls per batch instead of two per query (as gdnsd does).
#[cfg(target_os = "linux")]
mod batch {
    use std::io::{self, IoSlice, IoSliceMut};
    use std::net::SocketAddr;
    use std::os::fd::{AsRawFd, RawFd};
    use std::sync::Arc;

    use nix::sys::socket::{
        ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
    };
    use tokio::io::Interest;
    use tokio::net::UdpSocket;
    use tokio_util::sync::CancellationToken;

    use super::{UDP_MAX_QUERY, Views, answer_udp};
    use crate::dns::wire::Scratch;

    /// Datagrams per system call.
    pub(super) const BATCH: usize = 32;

    /// What one worker reuses for every batch.
    struct Buffers {
        /// Receive buffers, one byte longer than the largest query accepted.
        queries: Vec<Vec<u8>>,
        /// Bytes received into each.
        lens: [usize; BATCH],
        /// Who sent each.
        from: [Option<SockaddrStorage>; BATCH],
        /// Answers, swapped in from the scratch buffer (no copy).
        answers: Vec<Vec<u8>>,
        /// Who each answer goes to.
        to: [Option<SockaddrStorage>; BATCH],
    }

    pub(super) async fn udp_worker(sock: Arc<UdpSocket>, views: Views, stop: CancellationToken) {
        let fd = sock.as_raw_fd();
        let mut b = Buffers {
            queries: (0..BATCH).map(|_| vec![0u8; UDP_MAX_QUERY + 1]).collect(),
            lens: [0; BATCH],
            from: [None; BATCH],
            answers: (0..BATCH).map(|_| Vec::with_capacity(1232)).collect(),
            to: [None; BATCH],
        };
        let mut s = Scratch::default();
        loop {
            tokio::select! {
                r = sock.readable() => if r.is_err() { continue },
                _ = stop.cancelled() => return,
            }
            let n = match sock.try_io(Interest::READABLE, || receive(fd, &mut b)) {
                Ok(n) => n,
                // Spurious readiness (WouldBlock clears it), or an ICMP error: wait again.
                Err(_) => continue,
            };
            let mut k = 0;
            for i in 0..n {
                let len = b.lens[i];
                let Some(peer) = b.from[i].as_ref().and_then(socket_addr) else {
                    continue;
                };
                if len > UDP_MAX_QUERY {
                    if let Some(v) = views.load().as_deref() {
                        v.config.metrics.oversized.increment(1);
                    }
                    continue;
                }
                if answer_udp(&views, &b.queries[i][..len], peer, &mut s) {
                    std::mem::swap(&mut s.out, &mut b.answers[k]);
                    b.to[k] = b.from[i];
                    k += 1;
                }
            }
            send_all(&sock, fd, &mut b, k).await;
        }
    }

    /// One non-blocking `recvmmsg`: how many datagrams arrived.
    fn receive(fd: RawFd, b: &mut Buffers) -> io::Result<usize> {
        let mut bufs = b.queries.iter_mut();
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] = std::array::from_fn(|_| {
            [IoSliceMut::new(
                bufs.next().map_or(&mut [][..], |v| &mut v[..]),
            )]
        });
        // (Headers hold raw pointers, so they are not kept across awaits: two small
        // allocations per batch.)
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let got = recvmmsg(
            fd,
            &mut headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        let mut n = 0;
        for m in got {
            b.lens[n] = m.bytes;
            b.from[n] = m.address;
            n += 1;
        }
        Ok(n)
    }

    /// Send the first `k` answers with as few `sendmmsg` calls as the socket allows.
    async fn send_all(sock: &UdpSocket, fd: RawFd, b: &mut Buffers, k: usize) {
        let mut off = 0;
        while off < k {
            let sent = sock.try_io(Interest::WRITABLE, || {
                let iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|i| {
                    let out = b.answers.get(off + i).filter(|_| off + i < k);
                    [IoSlice::new(out.map_or(&[][..], |v| &v[..]))]
                });
                let no_cmsgs: [ControlMessage<'_>; 0] = [];
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
                sendmmsg(
                    fd,
                    &mut headers,
                    iovs[..k - off].iter(),
                    &b.to[off..k],
                    no_cmsgs,
                    MsgFlags::MSG_DONTWAIT,
                )
                .map(Iterator::count)
                .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => off += 1,
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if sock.writable().await.is_err() {
                        return;
                    }
                }
                // The first answer cannot be sent (its address, say): skip it.
                Err(_) => off += 1,
            }
        }
    }

    fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
        if let Some(v4) = a.as_sockaddr_in() {
            return Some(SocketAddr::from(*v4));
        }
        a.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
    }
}

/// Answer one datagram into `s.out` (true when something is to be sent).
fn answer_udp(views: &Views, packet: &[u8], peer: SocketAddr, s: &mut Scratch) -> bool {
    let guard = views.load();
    let Some(view) = guard.as_deref() else {
        return false;
    };
    let now = now_ms();
    let ip = peer.ip().to_canonical();
    if let Some(rrl) = &view.rrl {
        match rrl.check(ip, now) {
            Verdict::Answer => {}
            Verdict::Slip => {
                view.config.metrics.rrl_slip.increment(1);
                return wire::slip(packet, s);
            }
            Verdict::Drop => {
                view.config.metrics.rrl_drop.increment(1);
                return false;
            }
        }
    }
    wire::handle(view, packet, ip, Transport::Udp, now, s)
}

/// Serve DNS over TCP on `listener` until `stop`.
pub(crate) async fn tcp_loop(
    listener: TcpListener,
    views: Views,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!("dns tcp accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // over the cap: closed at once
        };
        let (views, stop) = (views.clone(), stop.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = tcp_conn(stream, peer, &views) => {}
                _ = stop.cancelled() => {}
            }
            drop(permit);
        });
    }
}

async fn tcp_conn(mut stream: TcpStream, peer: SocketAddr, views: &Views) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(512);
    let mut s = Scratch::default();
    let mut framed = Vec::with_capacity(514);
    let ip = peer.ip().to_canonical();
    for _ in 0..TCP_MAX_QUERIES {
        let mut len = [0u8; 2];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        buf.resize(usize::from(u16::from_be_bytes(len)), 0);
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let answered = {
            let guard = views.load();
            let Some(view) = guard.as_deref() else {
                return;
            };
            wire::handle(view, &buf, ip, Transport::Tcp, now_ms(), &mut s)
        };
        if !answered {
            return;
        }
        let Ok(n) = u16::try_from(s.out.len()) else {
            return;
        };
        framed.clear();
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&s.out);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}
