//! geolb patch: per-thread pools of the buffers an HTTP/1 connection needs only while a
//! message is moving. A connection waiting for its next message returns them here (see
//! `Buffered::release_idle_buffers`), so an idle keep-alive connection holds no buffer memory
//! and a busy one takes a warm buffer instead of calling the allocator.

use std::cell::RefCell;

use bytes::BytesMut;
use http::HeaderMap;

/// Buffers kept per thread, per kind; beyond this they are freed.
const MAX_POOLED: usize = 256;
/// Read buffers outside this capacity range are not kept (too small to be worth it, or
/// grown for one unusually large head).
const READ_MIN: usize = 4 * 1024;
const READ_MAX: usize = 64 * 1024;
/// Head (write) buffers above this capacity are not kept.
const HEAD_MAX: usize = 16 * 1024;
/// Header maps with room for more entries than this are not kept.
const MAP_MAX: usize = 128;

thread_local! {
    static READ: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static HEAD: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

fn take<T>(pool: &'static std::thread::LocalKey<RefCell<Vec<T>>>) -> Option<T> {
    pool.try_with(|p| p.borrow_mut().pop()).ok().flatten()
}

fn give<T>(pool: &'static std::thread::LocalKey<RefCell<Vec<T>>>, v: T) {
    let _ = pool.try_with(move |p| {
        let mut p = p.borrow_mut();
        if p.len() < MAX_POOLED {
            p.push(v);
        }
    });
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
