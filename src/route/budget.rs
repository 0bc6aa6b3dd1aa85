//! The retry budget, with Finagle's `RetryBudget` semantics: every request deposits into a
//! token bucket whose deposits and withdrawals expire after `ttl`, and a retry withdraws.
//!
//! In retries, the balance at any moment is
//! `percent_can_retry × requests + min_retries_per_sec × ttl − retries`, the requests and
//! retries counted over the last `ttl` (a sliding window of ten slices, as Finagle's
//! `WindowedAdder`). Finagle's integer scaling is kept: a request deposits 1000 tokens, a retry
//! costs `1000 / percent_can_retry` (truncated), and the reserve is
//! `min_retries_per_sec × ttl × cost`.
//!
//! Lock-free and allocation-free: each slice is one `AtomicU64` for deposits and one for
//! withdrawals, each holding the slice's number (high 32 bits) and its count (low 32 bits);
//! a slot whose number is stale is reset lazily by the first writer of the new slice.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Slices of the window (Finagle's `WindowedAdder` uses ten).
const SLICES: usize = 10;
/// Tokens one request deposits (Finagle's `ScaleFactor`).
const SCALE: u64 = 1000;
/// Largest cost of one retry (a tiny `percent_can_retry` must not overflow the arithmetic).
const MAX_COST: u64 = 1 << 31;

/// A retry budget: a windowed token bucket shared by every request of one service.
#[derive(Debug)]
pub struct RetryBudget {
    /// Tokens one request deposits: `SCALE`, or 0 when `percent_can_retry` is 0.
    deposit: u64,
    /// Tokens one retry withdraws: `SCALE / percent_can_retry`, or 1 when it is 0.
    cost: u64,
    /// Tokens always present: `min_retries_per_sec × ttl × cost`.
    reserve: u64,
    /// Width of one slice, ms (`ttl / SLICES`).
    slice_ms: u64,
    /// Requests per slice: `slice number << 32 | count`.
    deposits: [AtomicU64; SLICES],
    /// Retries per slice: `slice number << 32 | count`.
    withdrawals: [AtomicU64; SLICES],
}

impl RetryBudget {
    /// A budget letting `percent_can_retry` (0..=1) of the requests of the last `ttl` be
    /// retried, plus `min_retries_per_sec × ttl` retries whatever the traffic.
    pub fn new(percent_can_retry: f64, min_retries_per_sec: u32, ttl: Duration) -> RetryBudget {
        let (deposit, cost) = if percent_can_retry > 0.0 {
            let cost = (SCALE as f64 / percent_can_retry).min(MAX_COST as f64) as u64;
            (SCALE, cost.max(1))
        } else {
            // Only the reserve: requests earn nothing, every retry costs 1.
            (0, 1)
        };
        let ttl_ms = (ttl.as_millis() as u64).max(SLICES as u64);
        RetryBudget {
            deposit,
            cost,
            reserve: u64::from(min_retries_per_sec)
                .saturating_mul(ttl_ms)
                .saturating_mul(cost)
                / 1000,
            slice_ms: ttl_ms / SLICES as u64,
            deposits: Default::default(),
            withdrawals: Default::default(),
        }
    }

    /// A request arrived at `now` (ms from `time::now_ms`): one atomic add, usually.
    pub fn deposit(&self, now: u64) {
        if self.deposit != 0 {
            self.bump(&self.deposits, now);
        }
    }

    /// May a retry be sent at `now`? Withdraws its cost when it may. Never admits more than
    /// the balance: concurrent withdrawals at the very edge may all be refused instead.
    pub fn try_withdraw(&self, now: u64) -> bool {
        if self.deposit == 0 && self.reserve == 0 {
            return false;
        }
        // Withdraw first, then look: the balance seen includes this withdrawal and every
        // other one in progress, so the bucket can never be overdrawn.
        let (slot, slice) = self.bump(&self.withdrawals, now);
        if self.tokens(now) >= 0 {
            return true;
        }
        unbump(&self.withdrawals[slot], slice);
        false
    }

    /// Retries that may be sent now.
    pub fn balance(&self, now: u64) -> u64 {
        (self.tokens(now).max(0) / i128::from(self.cost)) as u64
    }

    /// Tokens in the bucket at `now` (negative only while withdrawals are being checked).
    fn tokens(&self, now: u64) -> i128 {
        let slice = self.slice_of(now);
        let deposited = i128::from(sum(&self.deposits, slice)) * i128::from(self.deposit);
        let withdrawn = i128::from(sum(&self.withdrawals, slice)) * i128::from(self.cost);
        deposited + i128::from(self.reserve) - withdrawn
    }

    fn slice_of(&self, now: u64) -> u64 {
        now / self.slice_ms
    }

    /// Count one in the current slice of `slots`; returns the slot and the slice number.
    fn bump(&self, slots: &[AtomicU64; SLICES], now: u64) -> (usize, u32) {
        let n = self.slice_of(now);
        let (i, slice) = ((n % SLICES as u64) as usize, n as u32);
        let slot = &slots[i];
        let mut cur = slot.load(Relaxed);
        loop {
            // A slot of this slice (or, after a long stall of this thread, a newer one)
            // counts on; an older one starts over at 1.
            if (slice.wrapping_sub(high(cur)) as i32) <= 0 {
                slot.fetch_add(1, Relaxed);
                return (i, slice);
            }
            match slot.compare_exchange_weak(cur, pack(slice, 1), Relaxed, Relaxed) {
                Ok(_) => return (i, slice),
                Err(v) => cur = v,
            }
        }
    }
}

/// Take back one count from `slot` if it still holds `slice`.
fn unbump(slot: &AtomicU64, slice: u32) {
    let mut cur = slot.load(Relaxed);
    while high(cur) == slice && cur as u32 > 0 {
        match slot.compare_exchange_weak(cur, cur - 1, Relaxed, Relaxed) {
            Ok(_) => return,
            Err(v) => cur = v,
        }
    }
}

/// Counts of the slots that belong to the window ending in slice `now_slice`.
fn sum(slots: &[AtomicU64; SLICES], now_slice: u64) -> u64 {
    let now_slice = now_slice as u32;
    slots
        .iter()
        .map(|s| s.load(Relaxed))
        .filter(|&v| (now_slice.wrapping_sub(high(v)) as usize) < SLICES)
        .map(|v| u64::from(v as u32))
        .sum()
}

fn high(v: u64) -> u32 {
    (v >> 32) as u32
}

fn pack(slice: u32, count: u32) -> u64 {
    u64::from(slice) << 32 | u64::from(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 3_600_000;

    fn drain(b: &RetryBudget, now: u64) -> u64 {
        let mut n = 0;
        while b.try_withdraw(now) {
            n += 1;
            assert!(n < 1_000_000, "the budget never ran out");
        }
        n
    }

    #[test]
    fn the_reserve_is_min_retries_per_sec_times_ttl() {
        let b = RetryBudget::new(0.2, 3, Duration::from_secs(10));
        assert_eq!(b.balance(T0), 30);
        assert_eq!(drain(&b, T0), 30);
        assert_eq!(b.balance(T0), 0);
        // Nothing comes back within the window…
        assert!(!b.try_withdraw(T0 + 8_999));
        // …and everything once the withdrawals have expired.
        assert_eq!(drain(&b, T0 + 10_000), 30);
    }

    #[test]
    fn requests_earn_percent_can_retry() {
        let b = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        assert!(!b.try_withdraw(T0), "no requests, no reserve: no retry");
        for _ in 0..100 {
            b.deposit(T0);
        }
        assert_eq!(b.balance(T0), 20);
        assert_eq!(drain(&b, T0 + 500), 20);
        // Deposits and withdrawals of one slice expire together: 50 new requests earn 10.
        for _ in 0..50 {
            b.deposit(T0 + 5_000);
        }
        assert_eq!(drain(&b, T0 + 5_000), 10);
        assert_eq!(
            drain(&b, T0 + 10_000),
            0,
            "the first slice left; the second stays"
        );
        assert_eq!(b.balance(T0 + 15_000), 0);
        for _ in 0..10 {
            b.deposit(T0 + 15_000);
        }
        assert_eq!(b.balance(T0 + 15_000), 2);
    }

    #[test]
    fn the_window_slides_by_slices() {
        let b = RetryBudget::new(0.5, 0, Duration::from_secs(1));
        for t in 0..10 {
            b.deposit(T0 + t * 100);
            b.deposit(T0 + t * 100);
        }
        assert_eq!(b.balance(T0 + 999), 10);
        // Each 100 ms another slice of two deposits (one retry) leaves the window.
        assert_eq!(b.balance(T0 + 1_000), 9);
        assert_eq!(b.balance(T0 + 1_500), 4);
        assert_eq!(b.balance(T0 + 1_900), 0);
    }

    #[test]
    fn a_sustained_storm_is_capped() {
        // 1 s window, 20 %, 5/s: over 10 s of 100 requests/s that all want a retry, retries
        // stay within 20 % of the requests plus the reserve of each window.
        let b = RetryBudget::new(0.2, 5, Duration::from_secs(1));
        let mut retries = 0u64;
        for ms in (0..10_000).step_by(10) {
            b.deposit(T0 + ms);
            retries += u64::from(b.try_withdraw(T0 + ms));
        }
        assert!(retries <= 200 + 5 * 11, "{retries}");
        assert!(retries >= 200, "{retries}");
    }

    #[test]
    fn zero_percent_and_zero_floor_never_retries() {
        let b = RetryBudget::new(0.0, 0, Duration::from_secs(10));
        b.deposit(T0);
        assert!(!b.try_withdraw(T0));
        // 0 % with a floor: only the floor.
        let b = RetryBudget::new(0.0, 2, Duration::from_secs(10));
        for _ in 0..1000 {
            b.deposit(T0);
        }
        assert_eq!(drain(&b, T0), 20);
    }

    #[test]
    fn concurrent_withdrawals_never_overdraw() {
        let b = std::sync::Arc::new(RetryBudget::new(0.2, 10, Duration::from_secs(10)));
        let granted: u64 = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.try_withdraw(T0)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap() as u64)
            .sum();
        assert!((90..=100).contains(&granted), "{granted}");
    }
}
