//! geolb patch: per-thread pools of the buffers an HTTP/1 connection needs only while a
//! message is moving. A connection waiting for its next message returns them here (see
//! `Buffered::release_idle_buffers`), so an idle keep-alive connection holds no buffer memory
//! and a busy one takes a warm buffer instead of calling the allocator.
//!
//! Each pool is bounded (`MAX_POOLED` items) and shrinks after a burst. It counts its takes
//! and gives in epochs of `EPOCH_OPS` and tracks its low-water mark, the fewest items it held
//! at any moment of the epoch. That many items sat unused through the whole epoch, so when the
//! epoch ends they are freed (the oldest ones), along with the spare capacity of the pool's own
//! `Vec`. A steady load keeps the buffers it cycles through; the leftovers of a burst are freed
//! within about two epochs of further traffic on the thread. The bookkeeping is a counter and
//! a comparison per operation: no clock, no lock (the pools are thread-local). A thread whose
//! pools see no operation at all keeps what it holds (at most `MAX_POOLED` per kind) until
//! they see traffic again or the thread exits.

use std::cell::RefCell;

use bytes::BytesMut;
use http::HeaderMap;

/// Buffers kept per thread, per kind; beyond this they are freed.
const MAX_POOLED: usize = 256;
/// Takes and gives per pool after which the pool frees what it did not need.
const EPOCH_OPS: u32 = 256;
/// A trimmed pool's `Vec` keeps room for this many items (or its length, if larger).
const SPINE_KEEP: usize = 16;
/// Read buffers outside this capacity range are not kept (too small to be worth it, or
/// grown for one unusually large head).
const READ_MIN: usize = 4 * 1024;
const READ_MAX: usize = 64 * 1024;
/// Head (write) buffers above this capacity are not kept.
const HEAD_MAX: usize = 16 * 1024;
/// Header maps with room for more entries than this are not kept.
const MAP_MAX: usize = 128;

/// A bounded stack of spare items that frees its low-water mark at the end of each epoch.
struct Pool<T> {
    items: Vec<T>,
    /// Fewest items held at any moment of the current epoch.
    low: usize,
    /// Takes and gives so far in the current epoch.
    ops: u32,
}

impl<T> Pool<T> {
    const fn new() -> Self {
        Pool {
            items: Vec::new(),
            low: 0,
            ops: 0,
        }
    }

    fn take(&mut self) -> Option<T> {
        let item = self.items.pop();
        self.low = self.low.min(self.items.len());
        self.tick();
        item
    }

    /// Keeps `item` unless the pool is full; returns it if not kept, so that the caller drops
    /// it outside the pool's borrow.
    fn give(&mut self, item: T) -> Option<T> {
        let rejected = if self.items.len() < MAX_POOLED {
            self.items.push(item);
            None
        } else {
            Some(item)
        };
        self.tick();
        rejected
    }

    fn tick(&mut self) {
        self.ops += 1;
        if self.ops >= EPOCH_OPS {
            self.end_epoch();
        }
    }

    fn end_epoch(&mut self) {
        // The bottom `low` items were not taken at any point of this epoch: free them. The
        // most recently returned (warmest) ones stay on top.
        self.items.drain(..self.low);
        let keep = self.items.len().max(SPINE_KEEP);
        if self.items.capacity() > 2 * keep {
            self.items.shrink_to(keep);
        }
        self.low = self.items.len();
        self.ops = 0;
    }
}

thread_local! {
    static READ: RefCell<Pool<BytesMut>> = const { RefCell::new(Pool::new()) };
    static HEAD: RefCell<Pool<Vec<u8>>> = const { RefCell::new(Pool::new()) };
    static MAPS: RefCell<Pool<HeaderMap>> = const { RefCell::new(Pool::new()) };
}

type Key<T> = std::thread::LocalKey<RefCell<Pool<T>>>;

fn take<T>(pool: &'static Key<T>) -> Option<T> {
    pool.try_with(|p| p.borrow_mut().take()).ok().flatten()
}

fn give<T>(pool: &'static Key<T>, v: T) {
    // Whatever the pool does not keep (full, or the thread is exiting) is dropped here.
    let _rejected = pool.try_with(move |p| p.borrow_mut().give(v));
}

pub(crate) fn take_read() -> Option<BytesMut> {
    take(&READ)
}

/// `buf` must be empty; its spare capacity is what gets reused.
pub(crate) fn give_read(buf: BytesMut) {
    debug_assert!(buf.is_empty());
    if (READ_MIN..=READ_MAX).contains(&buf.capacity()) {
        give(&READ, buf);
    }
}

pub(crate) fn take_head() -> Option<Vec<u8>> {
    take(&HEAD)
}

pub(crate) fn give_head(mut buf: Vec<u8>) {
    if buf.capacity() != 0 && buf.capacity() <= HEAD_MAX {
        buf.clear();
        give(&HEAD, buf);
    }
}

pub(crate) fn take_map() -> Option<HeaderMap> {
    take(&MAPS)
}

pub(crate) fn give_map(mut map: HeaderMap) {
    if map.capacity() != 0 && map.capacity() <= MAP_MAX {
        map.clear();
        give(&MAPS, map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items currently in this thread's read-buffer pool (each test runs on its own thread).
    fn pooled_reads() -> usize {
        READ.with(|p| p.borrow().items.len())
    }

    /// `n` requests in a row, each taking an item (or making one) and giving it back.
    fn steady(pool: &mut Pool<Vec<u8>>, n: usize) {
        for _ in 0..n {
            let item = pool.take().unwrap_or_else(|| vec![0; 64]);
            assert!(pool.give(item).is_none());
        }
    }

    #[test]
    fn pool_is_bounded() {
        let mut pool = Pool::new();
        let mut rejected = 0;
        for i in 0..4 * MAX_POOLED {
            if pool.give(vec![0u8; 64]).is_some() {
                rejected += 1;
            }
            assert!(pool.items.len() <= MAX_POOLED, "after {} gives", i + 1);
        }
        // Gives beyond the bound are dropped (some fewer than 3 * MAX_POOLED: the epochs
        // without takes also freed what sat unused in the pool).
        assert!(rejected >= MAX_POOLED, "{rejected} rejected");
        assert!(pool.items.capacity() <= 2 * MAX_POOLED);
    }

    #[test]
    fn pool_shrinks_after_a_burst() {
        let mut pool = Pool::new();
        // A burst: 200 connections busy at once, then all idle again.
        let burst: Vec<_> = (0..200)
            .map(|_| pool.take().unwrap_or_else(|| vec![0u8; 64]))
            .collect();
        for item in burst {
            assert!(pool.give(item).is_none());
        }
        assert_eq!(pool.items.len(), 200);
        // Then one request at a time: within two epochs, only what that uses is kept.
        steady(&mut pool, EPOCH_OPS as usize);
        assert!(
            pool.items.len() <= 1,
            "{} items left after the burst",
            pool.items.len()
        );
        assert!(pool.items.capacity() <= 2 * SPINE_KEEP);
        // The one kept is reused, not reallocated.
        let kept = pool.items[0].as_ptr();
        assert_eq!(pool.take().map(|v| v.as_ptr()), Some(kept));
    }

    #[test]
    fn pool_keeps_what_a_steady_load_cycles_through() {
        let mut pool = Pool::new();
        let mut made = 0;
        for _ in 0..10 * EPOCH_OPS as usize / 64 {
            // 32 concurrent requests, then all idle: 64 operations.
            let busy: Vec<_> = (0..32)
                .map(|_| {
                    pool.take().unwrap_or_else(|| {
                        made += 1;
                        vec![0u8; 64]
                    })
                })
                .collect();
            for item in busy {
                assert!(pool.give(item).is_none());
            }
        }
        assert_eq!(made, 32, "trimmed buffers the load still needed");
        assert_eq!(pool.items.len(), 32);
    }

    #[test]
    fn read_buffers_are_pooled_bounded_and_trimmed() {
        // Too small and too large buffers are not kept.
        give_read(BytesMut::with_capacity(READ_MIN / 2));
        give_read(BytesMut::with_capacity(READ_MAX * 2));
        assert_eq!(pooled_reads(), 0);

        // A burst returns more buffers than the pool keeps.
        for _ in 0..MAX_POOLED + 44 {
            give_read(BytesMut::with_capacity(16 * 1024));
        }
        assert_eq!(pooled_reads(), MAX_POOLED);

        // Later traffic, one connection at a time, frees the rest.
        for _ in 0..EPOCH_OPS {
            let buf = take_read().expect("a pooled buffer");
            assert!(buf.capacity() >= 16 * 1024);
            give_read(buf);
        }
        assert_eq!(pooled_reads(), 1);
    }

    #[test]
    fn head_buffers_and_maps_are_cleared_and_filtered() {
        let mut head = Vec::with_capacity(1024);
        head.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        give_head(head);
        give_head(Vec::with_capacity(HEAD_MAX * 2));
        let head = take_head().expect("pooled head buffer");
        assert!(head.is_empty());
        assert_eq!(head.capacity(), 1024);
        assert!(take_head().is_none());

        let mut map = HeaderMap::with_capacity(16);
        map.insert(http::header::HOST, "example.com".parse().unwrap());
        give_map(map);
        give_map(HeaderMap::with_capacity(MAP_MAX * 2));
        let map = take_map().expect("pooled header map");
        assert!(map.is_empty());
        assert!(map.capacity() >= 16 && map.capacity() <= MAP_MAX);
        assert!(take_map().is_none());
    }
}
