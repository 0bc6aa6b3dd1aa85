//! Phase 2: where the client is. Its real address (trusted forwarding headers), its
//! location, the route's region order for it, and the hash key for `lb = "hash"`.

use http::Request;
use http::header;

use crate::geo::LocSource;
use crate::observe::access_log::LogRecord;
use crate::proxy::{ConnInfo, Edge};
use crate::route::select::{self, RegionOrder};
use crate::route::{HashKey, Route, Snapshot, client_ip};

/// The client as routing sees it.
#[derive(Debug)]
pub(crate) struct Client {
    /// ISO country code, when known.
    pub(crate) country: Option<&'static str>,
    /// The route's service regions, most preferred first.
    pub(crate) order: RegionOrder,
    /// Hash for consistent-hash balancing.
    pub(crate) hash: u64,
}

/// Locate the client of `req` and order the route's regions for it.
pub(crate) fn locate<B>(
    req: &Request<B>,
    conn: &ConnInfo,
    edge: &Edge,
    snap: &Snapshot,
    route: &Route,
    log: &mut LogRecord,
) -> Client {
    let settings = &snap.settings;
    let ip = client_ip::resolve(
        conn.source,
        req.headers(),
        &settings.trusted,
        &settings.ip_header,
    );
    log.client_ip = ip;
    let loc = snap.geo.locate(ip);
    match &loc {
        Some(l) if l.source == LocSource::Record => edge.geo_metrics.city.increment(1),
        Some(_) => edge.geo_metrics.country.increment(1),
        None => edge.geo_metrics.unknown.increment(1),
    }
    let country = loc.as_ref().and_then(|l| l.country_str());
    edge.countries.record(country);
    log.country = country;
    let order = select::order_regions(route, &snap.table.regions, ip, loc.as_ref());
    let hash = match &route.service.hash_key {
        HashKey::ClientIp => select::hash_ip(ip),
        // Without the key, fall back to the client address rather than one shared hash.
        HashKey::Header(h) => req
            .headers()
            .get(h)
            .map_or_else(|| select::hash_ip(ip), |v| select::hash_bytes(v.as_bytes())),
        HashKey::Cookie(name) => {
            cookie(req.headers(), name).map_or_else(|| select::hash_ip(ip), select::hash_bytes)
        }
    };
    Client {
        country,
        order,
        hash,
    }
}

/// The value of cookie `name`, without allocating.
pub(crate) fn cookie<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    h.get_all(header::COOKIE).iter().find_map(|v| {
        v.to_str().ok()?.split(';').find_map(|kv| {
            let (k, val) = kv.trim().split_once('=')?;
            (k == name).then_some(val.as_bytes())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn cookie_lookup() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sid=xyz; b=2"),
        );
        assert_eq!(cookie(&h, "sid"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&h, "zz"), None);
    }
}
