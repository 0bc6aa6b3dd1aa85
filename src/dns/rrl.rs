//! Response rate limiting (RRL) for the UDP listener: a token bucket per requester network
//! (/24 for IPv4, /56 for IPv6), so a flood from one source — or a reflection attack spoofing
//! it — gets at most `rate` answers per second (plus a burst). Of the answers over the limit,
//! every `slip`-th is sent as an empty truncated answer (TC=1: a real client retries over
//! TCP), the others are dropped.
//!
//! Lock-free: a fixed table of packed atomic buckets indexed by a hash of the network;
//! networks that collide share a bucket (as in BIND's RRL, a bounded approximation).

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use crate::route::select::hash_bytes;

/// Buckets in the table (a power of two).
const SLOTS: usize = 4096;
/// Tokens are counted in thousandths, so `rate` per second refills `rate` per millisecond.
const MILLI: u64 = 1000;

/// `[dns] rate_limit` as compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RrlPolicy {
    /// Answers per second per network.
    pub rate: u32,
    /// Bucket size (answers allowed at once).
    pub burst: u32,
    /// Every `slip`-th limited answer is sent truncated (0 = drop them all).
    pub slip: u32,
}

/// What to do with one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit.
    Answer,
    /// Over the limit: send an empty truncated answer.
    Slip,
    /// Over the limit: send nothing.
    Drop,
}

/// The bucket table.
#[derive(Debug)]
pub struct RateLimiter {
    policy: RrlPolicy,
    /// Per bucket: time of the last refill (ms, low 32 bits) << 32 | milli-tokens.
    slots: Box<[AtomicU64]>,
    /// Limited answers so far (drives the slip).
    limited: AtomicU64,
}

impl RateLimiter {
    /// An empty table (every network starts with a full bucket).
    pub fn new(policy: RrlPolicy) -> RateLimiter {
        RateLimiter {
            policy,
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            limited: AtomicU64::new(0),
        }
    }

    /// The policy it enforces.
    pub fn policy(&self) -> RrlPolicy {
        self.policy
    }

    /// Take one answer's token for `ip` at `now` (ms, `time::now_ms`).
    pub fn check(&self, ip: IpAddr, now: u64) -> Verdict {
        let slot = &self.slots[(network_hash(ip) as usize) & (SLOTS - 1)];
        let cap = u64::from(self.policy.burst.max(1)) * MILLI;
        let now32 = now & 0xFFFF_FFFF;
        let mut cur = slot.load(Relaxed);
        loop {
            let tokens = if cur == 0 {
                cap
            } else {
                let last = cur >> 32;
                // A clock read racing another thread's counts as no time passing.
                let elapsed = match (now32 as u32).wrapping_sub(last as u32) as i32 {
                    e if e > 0 => e as u64,
                    _ => 0,
                };
                let refill = elapsed.saturating_mul(u64::from(self.policy.rate));
                ((cur & 0xFFFF_FFFF) + refill).min(cap)
            };
            let (next_tokens, ok) = if tokens >= MILLI {
                (tokens - MILLI, true)
            } else {
                (tokens, false)
            };
            // Never store 0 as a whole word: it means "new bucket".
            let next = (now32 << 32 | next_tokens).max(1);
            match slot.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
                Ok(_) if ok => return Verdict::Answer,
                Ok(_) => break,
                Err(v) => cur = v,
            }
        }
        let n = self.limited.fetch_add(1, Relaxed);
        if self.policy.slip > 0 && n % u64::from(self.policy.slip) == 0 {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

/// Hash of the requester's network: the /24 of an IPv4 address, the /56 of an IPv6 one.
fn network_hash(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            hash_bytes(&[4, o[0], o[1], o[2]])
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            hash_bytes(&[6, o[0], o[1], o[2], o[3], o[4], o[5], o[6]])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_gets_its_burst_then_its_rate_and_slips_every_nth() {
        let l = RateLimiter::new(RrlPolicy {
            rate: 10,
            burst: 5,
            slip: 2,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let same_net: IpAddr = "192.0.2.200".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        let t = 1_000_000;
        for _ in 0..5 {
            assert_eq!(l.check(a, t), Verdict::Answer);
        }
        // The /24 shares the bucket; limited answers alternate slip / drop.
        assert_eq!(l.check(same_net, t), Verdict::Slip);
        assert_eq!(l.check(a, t), Verdict::Drop);
        assert_eq!(l.check(a, t), Verdict::Slip);
        // Another network is not affected.
        assert_eq!(l.check(other, t), Verdict::Answer);
        // 100 ms refill one token at 10/s.
        assert_eq!(l.check(a, t + 100), Verdict::Answer);
        assert_ne!(l.check(a, t + 100), Verdict::Answer);
        // A long pause refills up to the burst only.
        for _ in 0..5 {
            assert_eq!(l.check(a, t + 60_000), Verdict::Answer);
        }
        assert_ne!(l.check(a, t + 60_000), Verdict::Answer);
    }

    #[test]
    fn ipv6_networks_are_slash_56() {
        let l = RateLimiter::new(RrlPolicy {
            rate: 1,
            burst: 1,
            slip: 0,
        });
        let a: IpAddr = "2001:db8:0:100::1".parse().unwrap();
        let same: IpAddr = "2001:db8:0:1ff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:0:200::1".parse().unwrap();
        assert_eq!(l.check(a, 5_000), Verdict::Answer);
        assert_eq!(l.check(same, 5_000), Verdict::Drop);
        assert_eq!(l.check(other, 5_000), Verdict::Answer);
    }
}
