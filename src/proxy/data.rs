//! Phase 2b (services with a data layer): a write goes to the region holding the primary
//! database — held while there is none, never spilled to a replica region; a read skips
//! regions that lag too far or are older than the client's last write (signed cookie), and
//! a successful write sets that cookie.

use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response};

use crate::health::db;
use crate::proxy::ConnInfo;
use crate::proxy::body::RespBody;
use crate::proxy::error::ProxyError;
use crate::proxy::locate::{Client, cookie};
use crate::route::data::{self, DataPolicy, Primary, RywDecision, WriteMode};
use crate::route::{Route, Service, SrIdx};
use crate::time::{now_ms, unix_ms};

/// What the data layer decided for a request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DataPlan {
    /// A write held to this service region (the primary's).
    pub(crate) write_region: Option<SrIdx>,
    /// A write whose success sets the read-your-writes cookie.
    pub(crate) set_cookie: bool,
}

/// Classify the request and narrow the client's region order accordingly. Writes to a
/// primary wait up to `write_hold` for one (then 503).
pub(crate) async fn plan<B>(
    req: &Request<B>,
    route: &Route,
    client: &mut Client,
) -> Result<DataPlan, ProxyError> {
    let svc = &*route.service;
    let Some(policy) = &svc.data else {
        return Ok(DataPlan::default());
    };
    if data::is_write(policy, route, req.method(), req.uri().path()) {
        let set_cookie = policy.ryw.is_some();
        if policy.writes == WriteMode::Any {
            return Ok(DataPlan {
                write_region: None,
                set_cookie,
            });
        }
        let sr = hold_for_primary(svc, policy).await?;
        client.order.retain(|x| x == sr);
        return Ok(DataPlan {
            write_region: Some(sr),
            set_cookie,
        });
    }
    let write_ms = policy.ryw.as_ref().and_then(|ryw| {
        let value = cookie(req.headers(), &ryw.cookie)?;
        match data::verify_cookie(ryw, &svc.name, value, unix_ms()) {
            Ok(ms) => Some(ms),
            Err(_) => {
                count_ryw(policy, RywDecision::Invalid);
                None
            }
        }
    });
    let (dropped, none_left) =
        data::filter_reads(svc, policy, &mut client.order, write_ms, now_ms());
    if write_ms.is_some() {
        count_ryw(
            policy,
            match (none_left, dropped) {
                (true, _) => RywDecision::Fallback,
                (false, true) => RywDecision::Redirected,
                (false, false) => RywDecision::Nearest,
            },
        );
    }
    Ok(DataPlan::default())
}

fn count_ryw(policy: &DataPolicy, d: RywDecision) {
    let i = RywDecision::ALL.iter().position(|&x| x == d).unwrap_or(0);
    policy.metrics.ryw[i].increment(1);
}

/// Longest wait between looks at the primary while a write is held.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// Wait until one region is primary and has an available backend; `write_hold` at most.
async fn hold_for_primary(svc: &Service, policy: &DataPolicy) -> Result<SrIdx, ProxyError> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + policy.write_hold);
    let mut logged = false;
    loop {
        let changed = db::changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let now = now_ms();
        let p = data::primary(svc, policy, now);
        match p {
            Primary::One(sr) if has_available(svc, sr, now) => {
                if logged {
                    policy.metrics.hold.record(start.elapsed().as_secs_f64());
                }
                return Ok(sr);
            }
            Primary::SplitBrain if !logged => {
                tracing::warn!(service = %svc.name, "more than one region reports a primary database; holding writes");
            }
            _ => {}
        }
        logged = true;
        if tokio::time::Instant::now() >= deadline {
            policy.metrics.hold.record(start.elapsed().as_secs_f64());
            let none = policy.metrics.writes.len() - 1;
            policy.metrics.writes[none][2].increment(1);
            return Err(ProxyError::WriteHeld);
        }
        // Role and health changes are signalled; a passive ejection ending is not (it is a
        // deadline, not an event), so look again at least every 250 ms.
        let recheck = (tokio::time::Instant::now() + RECHECK).min(deadline);
        let _ = tokio::time::timeout_at(recheck, changed).await;
    }
}

fn has_available(svc: &Service, sr: SrIdx, now: u64) -> bool {
    svc.regions[sr]
        .backends
        .iter()
        .any(|&b| svc.backends[b].health.is_available(now))
}

/// After the attempts: count the write and, when it succeeded, set the cookie.
pub(crate) fn finish(
    plan: DataPlan,
    route: &Route,
    conn: &ConnInfo,
    served: Option<(&mut Response<RespBody>, SrIdx)>,
) {
    let svc = &*route.service;
    let Some(policy) = &svc.data else { return };
    if let Some(sr) = plan.write_region {
        let (region, outcome) = match &served {
            Some((_, sr)) => (*sr, 0),
            None => (sr, 1),
        };
        policy.metrics.writes[region.0][outcome].increment(1);
    }
    let (true, Some(ryw), Some((resp, _))) = (plan.set_cookie, &policy.ryw, served) else {
        return;
    };
    if resp.status().as_u16() >= 400 {
        return;
    }
    let mut mac = [0u8; 96];
    let value = data::sign_cookie(ryw, &svc.name, unix_ms(), &mut mac);
    let mut buf = [0u8; 256];
    let mut n = 0;
    let ttl = itoa(ryw.ttl_ms.div_ceil(1000));
    let secure: &[u8] = if conn.tls.is_some() { b"; Secure" } else { b"" };
    for part in [
        ryw.cookie.as_bytes(),
        b"=",
        value,
        b"; Max-Age=",
        ttl.as_bytes(),
        b"; Path=/; HttpOnly; SameSite=Lax",
        secure,
    ] {
        let Some(dst) = buf.get_mut(n..n + part.len()) else {
            return;
        };
        dst.copy_from_slice(part);
        n += part.len();
    }
    if let Ok(v) = HeaderValue::from_bytes(&buf[..n]) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn itoa(v: u64) -> String {
    // Once per successful write only.
    v.to_string()
}
