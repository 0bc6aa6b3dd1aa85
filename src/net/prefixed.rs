//! The client side of a connection as hyper sees it: HTTP/2 prior-knowledge detection
//! (RFC 9113 §3.3) for connections that did not negotiate a protocol by ALPN (read up to the
//! 24 bytes of the connection preface, then replay whatever was read ahead of the socket's own
//! bytes), and a record of how long writes to the client have been blocked (a client that
//! stopped reading; see `timeouts.client_send`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use crate::time::now_ms;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Since when (`now_ms()`) writes to the client have been blocked; 0 while they are not.
#[derive(Debug, Default)]
pub(crate) struct WriteStall(AtomicU64);

impl WriteStall {
    fn record<T>(&self, r: &Poll<T>) {
        if r.is_pending() {
            if self.0.load(Relaxed) == 0 {
                self.0.store(now_ms().max(1), Relaxed);
            }
        } else if self.0.load(Relaxed) != 0 {
            self.0.store(0, Relaxed);
        }
    }

    /// How long the current blocked write has waited, in milliseconds (0: none is blocked).
    pub(crate) fn blocked_ms(&self) -> u64 {
        match self.0.load(Relaxed) {
            0 => 0,
            since => now_ms().saturating_sub(since),
        }
    }
}

/// A stream with some already-read bytes in front of it, and a [`WriteStall`] record.
pub(crate) struct Prefixed<I> {
    prefix: Option<Box<[u8]>>,
    pos: usize,
    io: I,
    stall: Arc<WriteStall>,
}

impl<I: AsyncRead + Unpin> Prefixed<I> {
    /// Nothing read ahead yet.
    pub(crate) fn new(io: I, stall: Arc<WriteStall>) -> Self {
        Prefixed {
            prefix: None,
            pos: 0,
            io,
            stall,
        }
    }

    /// Read until the bytes stop matching the h2 preface (true: it is all there). Reads stop
    /// at the first byte that differs, so an HTTP/1 request costs one extra read at most.
    pub(crate) async fn sniff_h2_preface(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 24];
        let mut n = 0;
        while n < buf.len() {
            let m = self.io.read(&mut buf[n..]).await?;
            if m == 0 {
                break;
            }
            n += m;
            if buf[..n] != PREFACE[..n] {
                break;
            }
        }
        if n > 0 {
            self.prefix = Some(buf[..n].into());
            self.pos = 0;
        }
        Ok(&buf[..n] == PREFACE)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(p) = &this.prefix {
            let n = (p.len() - this.pos).min(buf.remaining());
            buf.put_slice(&p[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == p.len() {
                this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.stall.record(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.stall.record(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.stall.record(&r);
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn sniff(chunks: &[&[u8]]) -> (bool, Vec<u8>) {
        let (mut a, b) = tokio::io::duplex(1024);
        for c in chunks {
            a.write_all(c).await.unwrap();
        }
        drop(a);
        let mut p = Prefixed::new(b, Arc::default());
        let h2 = p.sniff_h2_preface().await.unwrap();
        let mut all = Vec::new();
        p.read_to_end(&mut all).await.unwrap();
        (h2, all)
    }

    #[tokio::test]
    async fn http1_requests_are_replayed_whole() {
        let req: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(sniff(&[req]).await, (false, req.to_vec()));
        // A prefix of the preface that then differs ("P" of POST, "PR" of nothing real).
        let post: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(sniff(&[b"P", &post[1..]]).await, (false, post.to_vec()));
        assert_eq!(sniff(&[b"PR", b"X"]).await, (false, b"PRX".to_vec()));
        assert_eq!(sniff(&[]).await, (false, Vec::new()));
    }

    #[tokio::test]
    async fn the_preface_is_recognised_even_in_pieces() {
        let mut rest = PREFACE.to_vec();
        rest.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
        let (h2, all) = sniff(&[&rest[..3], &rest[3..10], &rest[10..]]).await;
        assert!(h2);
        assert_eq!(all, rest);
    }
}
