//! Services: backends, regions, balancing, health checks, passive detection, spillover,
//! retries and the upstream pool, validated with field paths (part of `compile`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Method, Uri};

use super::compile::Compiler;
use super::file::{
    BackendFile, HashKeyFile, HealthFile, HealthKindFile, InitialHealthFile, PanicFile,
    PassiveFile, RetryFile, RetryOnFile, RoutesFile, ServiceFile, SpilloverFile,
};
use crate::health::{BackendHealth, BackendKey, PassivePolicy};
use crate::route::budget::RetryBudget;
use crate::route::*;
use crate::upstream::PoolKey;

/// The compiled services of a file, and what compiling them recorded.
pub(super) struct Services<'f> {
    pub(super) by_name: BTreeMap<&'f str, Arc<Service>>,
    pub(super) pool_keys: Vec<PoolKey>,
    /// Backends over all services.
    pub(super) backends: usize,
    /// Health of the backends of services without active checks (see `Compiled::force_up`).
    pub(super) force_up: Vec<Arc<BackendHealth>>,
}

/// A service's backends while they are compiled.
#[derive(Default)]
struct BackendSet {
    backends: Vec<Backend>,
    /// (index into the table's regions, indices into `backends`), in first-seen order.
    regions: Vec<(usize, Vec<usize>)>,
    any_http: bool,
    any_https: bool,
}

/// Largest `retry.min_retries_per_sec`.
const MAX_MIN_RETRIES_PER_SEC: u32 = 100_000;

/// `retry.on` when omitted.
const DEFAULT_RETRY_ON: [RetryOnFile; 4] = [
    RetryOnFile::Connect,
    RetryOnFile::Reset,
    RetryOnFile::Status(502),
    RetryOnFile::Status(503),
];

impl Compiler<'_, '_> {
    pub(super) fn services<'f>(
        &mut self,
        f: &'f RoutesFile,
        region_idx: &HashMap<&str, usize>,
        settings: &Settings,
    ) -> Services<'f> {
        let mut out = Services {
            by_name: BTreeMap::new(),
            pool_keys: Vec::new(),
            backends: 0,
            force_up: Vec::new(),
        };
        for (name, s) in &f.services {
            let Some(svc) = self.service(name, s, region_idx, settings, &mut out.pool_keys) else {
                continue;
            };
            out.backends += svc.backends.len();
            if svc.check.is_none() {
                // Nothing will ever re-check these backends: a state left down by checks that
                // were removed in this reload must not keep them out of rotation forever.
                out.force_up
                    .extend(svc.backends.iter().map(|b| b.health.clone()));
            }
            out.by_name.insert(name.as_str(), Arc::new(svc));
        }
        out
    }

    fn service(
        &mut self,
        name: &str,
        s: &ServiceFile,
        region_idx: &HashMap<&str, usize>,
        settings: &Settings,
        pool_keys: &mut Vec<PoolKey>,
    ) -> Option<Service> {
        let p = format!("services.{name}");
        let errors_before = self.errors.len();
        let initial_up = s.health.initial == InitialHealthFile::Healthy;
        let set = self.backends(name, &p, s, region_idx, initial_up);
        let hash_key = match &s.hash_key {
            HashKeyFile::ClientIp => HashKey::ClientIp,
            HashKeyFile::Header(h) => HashKey::Header(h.clone()),
            HashKeyFile::Cookie(c) => HashKey::Cookie(c.as_str().into()),
        };
        let check = self.check(&p, &s.health);
        if check.is_none() && !initial_up {
            self.err(&format!("{p}.health.initial"), "\"unhealthy\" needs active health checks (set `path` or `kind`), or backends never come up");
        }
        let passive = self.passive(&p, &s.passive);
        let spill = self.spill(&p, &s.spillover);
        let retry = self.retry(&p, &s.retry);
        let ewma_decay = self.duration(
            &format!("{p}.ewma_decay"),
            &s.ewma_decay,
            Duration::from_secs(10),
        );
        if ewma_decay < Duration::from_millis(100) || ewma_decay > Duration::from_secs(3600) {
            self.err(&format!("{p}.ewma_decay"), "must be between 100ms and 1h");
        }
        let key = self.pool_key(&p, s, settings, &set);
        let client = match self.ctx.pool.client(&key) {
            Ok(c) => c,
            Err(e) => {
                self.err(&format!("{p}.upstream_tls"), e.to_string());
                return None;
            }
        };
        pool_keys.push(key.clone());
        let table_regions: Vec<usize> = set.regions.iter().map(|(r, _)| *r).collect();
        let names = super::data::region_names(&table_regions, region_idx);
        let data = s
            .data
            .as_ref()
            .and_then(|d| self.data_policy(&p, name, d, &names, check.as_ref()));
        if self.errors.len() != errors_before {
            return None;
        }
        let retry_budget = RetryBudget::new(
            retry.percent_can_retry,
            retry.min_retries_per_sec,
            retry.budget_ttl,
        );
        let regions = set
            .regions
            .into_iter()
            .map(|(region, idx)| build_region(region, idx, &set.backends))
            .collect();
        Some(Service {
            name: name.into(),
            lb: s.lb,
            hash_key,
            backends: set.backends.into(),
            regions,
            client,
            pool_key: key,
            passive,
            spill,
            retry,
            check,
            retry_budget,
            retry_budget_exhausted: crate::observe::metrics::retry_budget_exhausted(name),
            ewma_decay_ms: ewma_decay.as_millis() as u64,
            draws: std::sync::atomic::AtomicU64::new(0),
            data,
        })
    }

    fn backends(
        &mut self,
        name: &str,
        p: &str,
        s: &ServiceFile,
        region_idx: &HashMap<&str, usize>,
        initial_up: bool,
    ) -> BackendSet {
        if s.backends.is_empty() {
            self.err(
                &format!("{p}.backends"),
                "a service needs at least one backend",
            );
        }
        let mut set = BackendSet::default();
        let mut seen = HashSet::new();
        for (i, b) in s.backends.iter().enumerate() {
            let bp = format!("{p}.backends[{i}]");
            let Some(&ridx) = region_idx.get(b.region.as_str()) else {
                let hint = region_idx
                    .keys()
                    .min_by_key(|k| super::diag::edit_distance(&b.region, k))
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                self.err(
                    &format!("{bp}.region"),
                    format!("unknown region `{}`{hint}", b.region),
                );
                continue;
            };
            let Some((scheme, authority, label)) = self.backend_target(&bp, b) else {
                continue;
            };
            if !seen.insert(label.clone()) {
                self.err(&bp, format!("backend `{label}` is listed twice"));
            }
            if b.weight > 10_000 {
                self.err(&format!("{bp}.weight"), "weight must be 0..=10000");
            }
            if scheme == Scheme::HTTPS {
                set.any_https = true
            } else {
                set.any_http = true
            }
            let sr = match set.regions.iter().position(|(r, _)| *r == ridx) {
                Some(x) => x,
                None => {
                    set.regions.push((ridx, Vec::new()));
                    set.regions.len() - 1
                }
            };
            set.regions[sr].1.push(set.backends.len());
            let health = self
                .ctx
                .health
                .get_or_create(&BackendKey::new(name, &label), initial_up);
            let host_header = HeaderValue::from_str(authority.as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
            set.backends.push(Backend {
                name: label.into(),
                scheme,
                host_header,
                authority,
                weight: b.weight,
                region: SrIdx(sr),
                health,
            });
        }
        if set.regions.len() > MAX_REGIONS {
            self.err(
                &format!("{p}.backends"),
                format!("a service may span at most {MAX_REGIONS} regions"),
            );
        }
        set
    }

    /// A backend's scheme, authority and label from exactly one of `address` and `url`.
    fn backend_target(&mut self, bp: &str, b: &BackendFile) -> Option<(Scheme, Authority, String)> {
        match (&b.address, &b.url) {
            (Some(a), None) => match a.parse::<Authority>() {
                Ok(auth) if auth.port_u16().is_some() => Some((Scheme::HTTP, auth, a.clone())),
                _ => {
                    self.err(&format!("{bp}.address"), format!("`{a}` is not host:port"));
                    None
                }
            },
            (None, Some(u)) => match u.parse::<Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.authority().is_some()
                        && uri.path() == "/" =>
                {
                    let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
                    let authority = uri.authority().cloned().expect("checked");
                    Some((scheme, authority, u.clone()))
                }
                _ => {
                    self.err(
                        &format!("{bp}.url"),
                        format!("`{u}` is not an http:// or https:// URL without a path"),
                    );
                    None
                }
            },
            _ => {
                self.err(bp, "set exactly one of `address` and `url`");
                None
            }
        }
    }

    fn check(&mut self, p: &str, h: &HealthFile) -> Option<CheckSpec> {
        let hp = format!("{p}.health");
        let kind = match h.kind {
            Some(HealthKindFile::None) => return None,
            Some(HealthKindFile::Tcp) => CheckKind::Tcp,
            None if h.path.is_none() => return None,
            None | Some(HealthKindFile::Http) => self.http_check(&hp, h),
        };
        let interval = self.duration(
            &format!("{hp}.interval"),
            &h.interval,
            Duration::from_secs(2),
        );
        let spec = CheckSpec {
            kind,
            interval,
            unhealthy_interval: self.duration(
                &format!("{hp}.unhealthy_interval"),
                &h.unhealthy_interval,
                interval.min(Duration::from_secs(1)),
            ),
            timeout: self.duration(&format!("{hp}.timeout"), &h.timeout, Duration::from_secs(1)),
            rise: h.healthy.unwrap_or(2),
            fall: h.unhealthy.unwrap_or(3),
        };
        if spec.rise == 0 || spec.fall == 0 {
            self.err(&hp, "healthy and unhealthy thresholds must be at least 1");
        }
        if spec.interval.is_zero() || spec.timeout.is_zero() || spec.unhealthy_interval.is_zero() {
            self.err(
                &hp,
                "interval, unhealthy_interval and timeout must be greater than zero",
            );
        }
        Some(spec)
    }

    /// The HTTP probe of `health`: method, path and healthy status ranges.
    fn http_check(&mut self, hp: &str, h: &HealthFile) -> CheckKind {
        let method = match h.method.as_deref().unwrap_or("GET").parse::<Method>() {
            Ok(m) => m,
            Err(_) => {
                self.err(&format!("{hp}.method"), "not an HTTP method");
                Method::GET
            }
        };
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') {
            self.err(&format!("{hp}.path"), "must start with `/`");
        }
        let default_expect = ["200-399".to_owned()];
        let mut expect = Vec::new();
        for (i, e) in h
            .expect
            .as_deref()
            .unwrap_or(&default_expect)
            .iter()
            .enumerate()
        {
            let parsed = match e.split_once('-') {
                Some((a, b)) => a.trim().parse().ok().zip(b.trim().parse().ok()),
                None => e.trim().parse().ok().map(|x| (x, x)),
            };
            match parsed {
                Some((a, b)) if (100..=599).contains(&a) && a <= b && b <= 599 => {
                    expect.push((a, b))
                }
                _ => self.err(
                    &format!("{hp}.expect[{i}]"),
                    format!("`{e}` is not a status or range like \"200-399\""),
                ),
            }
        }
        CheckKind::Http {
            method,
            path,
            host: h.host.clone(),
            expect,
        }
    }

    fn passive(&mut self, p: &str, pv: &PassiveFile) -> PassivePolicy {
        if pv.max_ejection_percent.is_some_and(|v| v > 100) {
            self.err(
                &format!("{p}.passive.max_ejection_percent"),
                "must be 0..=100",
            );
        }
        PassivePolicy {
            consecutive_failures: pv.consecutive_failures.unwrap_or(5),
            on_5xx: pv.on_5xx.unwrap_or(false),
            base_ejection_ms: self
                .duration(
                    &format!("{p}.passive.base_ejection"),
                    &pv.base_ejection,
                    Duration::from_secs(30),
                )
                .as_millis() as u64,
            max_ejection_ms: self
                .duration(
                    &format!("{p}.passive.max_ejection"),
                    &pv.max_ejection,
                    Duration::from_secs(300),
                )
                .as_millis() as u64,
            max_ejection_percent: pv.max_ejection_percent.unwrap_or(50),
            latency_factor: self.latency_factor(p, pv),
            latency_window_ms: self
                .duration(
                    &format!("{p}.passive.latency_window"),
                    &pv.latency_window,
                    Duration::from_secs(10),
                )
                .as_millis() as u64,
        }
    }

    /// `passive.latency_factor`: 0 (off, the default) or 2..=1000.
    fn latency_factor(&mut self, p: &str, pv: &PassiveFile) -> f64 {
        let k = pv.latency_factor.unwrap_or(0.0);
        if k != 0.0 && !(2.0..=1000.0).contains(&k) {
            self.err(
                &format!("{p}.passive.latency_factor"),
                "must be 0 (off) or between 2 and 1000 (times the region's median latency)",
            );
        }
        k
    }

    fn spill(&mut self, p: &str, sp: &SpilloverFile) -> SpillPolicy {
        let overprovisioning = sp.overprovisioning.unwrap_or(1.4);
        if !(1.0..=10.0).contains(&overprovisioning) {
            self.err(
                &format!("{p}.spillover.overprovisioning"),
                "must be between 1.0 and 10.0",
            );
        }
        let panic_threshold = sp.panic_threshold.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&panic_threshold) {
            self.err(
                &format!("{p}.spillover.panic_threshold"),
                "must be between 0.0 and 1.0",
            );
        }
        SpillPolicy {
            overprovisioning,
            panic_threshold,
            panic: match sp.panic {
                PanicFile::FailOpen => PanicMode::FailOpen,
                PanicFile::FailClosed => PanicMode::FailClosed,
            },
            failback_delay_ms: self
                .duration(
                    &format!("{p}.spillover.failback_delay"),
                    &sp.failback_delay,
                    Duration::from_secs(30),
                )
                .as_millis() as u64,
            slow_start_ms: self
                .duration(
                    &format!("{p}.spillover.slow_start"),
                    &sp.slow_start,
                    Duration::ZERO,
                )
                .as_millis() as u64,
        }
    }

    fn retry(&mut self, p: &str, r: &RetryFile) -> RetryPolicy {
        let attempts = r.attempts.unwrap_or(3) as usize;
        if !(1..=MAX_ATTEMPTS).contains(&attempts) {
            self.err(
                &format!("{p}.retry.attempts"),
                format!("must be 1..={MAX_ATTEMPTS}"),
            );
        }
        let mut pol = RetryPolicy {
            attempts: attempts.clamp(1, MAX_ATTEMPTS),
            on_connect: false,
            on_reset: false,
            on_timeout: false,
            on_status: Box::new([]),
            percent_can_retry: r.budget.unwrap_or(0.2),
            min_retries_per_sec: self.min_retries_per_sec(p, r),
            budget_ttl: self.duration(
                &format!("{p}.retry.budget_ttl"),
                &r.budget_ttl,
                Duration::from_secs(10),
            ),
            buffer_bytes: r.buffer_bytes.unwrap_or(64 * 1024),
        };
        let mut statuses = Vec::new();
        for on in r.on.as_deref().unwrap_or(&DEFAULT_RETRY_ON) {
            match on {
                RetryOnFile::Connect => pol.on_connect = true,
                RetryOnFile::Reset => pol.on_reset = true,
                RetryOnFile::Timeout => pol.on_timeout = true,
                RetryOnFile::Status(code) => statuses.push(*code),
            }
        }
        pol.on_status = statuses.into();
        if !(0.0..=1.0).contains(&pol.percent_can_retry) {
            self.err(
                &format!("{p}.retry.budget"),
                "must be between 0.0 and 1.0 (the share of requests that may be retried)",
            );
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&pol.budget_ttl) {
            self.err(
                &format!("{p}.retry.budget_ttl"),
                "must be between 1s and 60s",
            );
        }
        pol
    }

    /// `retry.min_retries_per_sec`, or its deprecated alias `min_retries` (read with the new
    /// meaning), default 10 (Finagle's).
    fn min_retries_per_sec(&mut self, p: &str, r: &RetryFile) -> u32 {
        let n = match (r.min_retries_per_sec, r.min_retries) {
            (Some(_), Some(_)) => {
                self.err(
                    &format!("{p}.retry.min_retries"),
                    "set only `min_retries_per_sec` (`min_retries` is its deprecated name)",
                );
                0
            }
            (Some(n), None) => n,
            (None, Some(n)) => {
                tracing::warn!(
                    "{p}.retry.min_retries is deprecated: it is read as min_retries_per_sec = {n} \
                     (retries per second on top of the budget, no longer concurrent retries); \
                     rename it"
                );
                n
            }
            (None, None) => 10,
        };
        if n > MAX_MIN_RETRIES_PER_SEC {
            let key = if r.min_retries_per_sec.is_some() {
                "min_retries_per_sec"
            } else {
                "min_retries"
            };
            self.err(
                &format!("{p}.retry.{key}"),
                format!("must be 0..={MAX_MIN_RETRIES_PER_SEC}"),
            );
        }
        n
    }

    /// The identity of the service's connection pool (`upstream_tls`, HTTP/2, timeouts).
    fn pool_key(
        &mut self,
        p: &str,
        s: &ServiceFile,
        settings: &Settings,
        set: &BackendSet,
    ) -> PoolKey {
        let ut = &s.upstream_tls;
        if ut.client_cert.is_some() != ut.client_key.is_some() {
            self.err(
                &format!("{p}.upstream_tls"),
                "set both client_cert and client_key, or neither",
            );
        }
        let mut backends: Vec<String> = set.backends.iter().map(|b| b.name.to_string()).collect();
        backends.sort();
        let key = PoolKey {
            ca: ut.ca.as_deref().map(|c| self.path(c)),
            server_name: ut.server_name.clone(),
            client_cert: ut
                .client_cert
                .as_deref()
                .zip(ut.client_key.as_deref())
                .map(|(c, k)| (self.path(c), self.path(k))),
            http2_prior_knowledge: s.http2 && set.any_http && !set.any_https,
            http2_alpn: s.http2,
            connect_timeout: settings.timeouts.upstream_connect,
            idle_timeout: settings.timeouts.upstream_idle,
            max_idle: settings.limits.max_idle_upstream_per_host,
            backends,
        };
        if s.http2 && set.any_http && set.any_https {
            self.err(
                &format!("{p}.http2"),
                "http2 needs all backends https (ALPN) or all http (prior knowledge)",
            );
        }
        key
    }
}
fn build_region(region: usize, idx: Vec<usize>, backends: &[Backend]) -> ServiceRegion {
    let total_weight = idx.iter().map(|&b| u64::from(backends[b].weight)).sum();
    // Interleaved weighted schedule (smooth weighted round robin, precomputed).
    let mut rr = Vec::new();
    let weights: Vec<i64> = idx.iter().map(|&b| i64::from(backends[b].weight)).collect();
    let total: i64 = weights.iter().sum();
    if total > 0 {
        let mut current = vec![0i64; idx.len()];
        let len = total.min(4096);
        for _ in 0..len {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += w;
            }
            let best = (0..idx.len())
                .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
                .unwrap_or(0);
            current[best] -= total;
            rr.push(idx[best]);
        }
    } else {
        rr.extend(idx.iter().copied());
    }
    // Consistent-hash ring: 100 points per unit of weight (at least 1 point).
    let mut ring = Vec::new();
    for &b in &idx {
        let points = (backends[b].weight.max(1) as usize * 100).min(10_000);
        let base = crate::route::select::hash_bytes(backends[b].name.as_bytes());
        for k in 0..points {
            ring.push((
                crate::route::select::mix(base ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                b,
            ));
        }
    }
    ring.sort_unstable();
    ServiceRegion {
        region: RegionIdx(region),
        backends: idx.into_iter().map(BackendIdx).collect(),
        total_weight,
        rr_table: rr.into_iter().map(BackendIdx).collect(),
        rr_next: AtomicUsize::new(0),
        ring: ring.into_iter().map(|(p, b)| (p, BackendIdx(b))).collect(),
        served: std::sync::atomic::AtomicU64::new(0),
        eject_lock: std::sync::Mutex::new(()),
    }
}
