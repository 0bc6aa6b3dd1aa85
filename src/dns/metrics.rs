//! DNS metric names and handles pre-bound at compile time, so every series exists (at 0) from
//! the start and a query costs an index and an atomic add. Labels come from bounded sets: zone
//! names from the configuration (plus `none`), six query types, six response codes, regions.

use metrics::{Counter, SharedString, counter, describe_counter};

/// `geolb_dns_queries_total{zone,qtype,rcode}`.
pub const QUERIES_TOTAL: &str = "geolb_dns_queries_total";
/// `geolb_dns_answer_region_total{region}`.
pub const ANSWER_REGION_TOTAL: &str = "geolb_dns_answer_region_total";
/// `geolb_dns_ecs_queries_total`.
pub const ECS_QUERIES_TOTAL: &str = "geolb_dns_ecs_queries_total";
/// `geolb_dns_rate_limited_total{action}`.
pub const RATE_LIMITED_TOTAL: &str = "geolb_dns_rate_limited_total";
/// `geolb_dns_dropped_total{reason}`.
pub const DROPPED_TOTAL: &str = "geolb_dns_dropped_total";

/// Query types with their own label value; every other type is `other`.
pub const QTYPES: [&str; 6] = ["A", "AAAA", "SOA", "NS", "ANY", "other"];
/// Response codes with their own label value.
pub const RCODES: [&str; 6] = [
    "NOERROR", "NXDOMAIN", "REFUSED", "SERVFAIL", "FORMERR", "NOTIMP",
];

/// Index into [`QTYPES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QtypeLabel {
    /// A.
    A = 0,
    /// AAAA.
    Aaaa = 1,
    /// SOA.
    Soa = 2,
    /// NS.
    Ns = 3,
    /// ANY.
    Any = 4,
    /// Anything else.
    Other = 5,
}

/// Index into [`RCODES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcodeLabel {
    /// NOERROR (answers and NODATA).
    NoError = 0,
    /// NXDOMAIN.
    NxDomain = 1,
    /// REFUSED.
    Refused = 2,
    /// SERVFAIL.
    ServFail = 3,
    /// FORMERR (and BADVERS).
    FormErr = 4,
    /// NOTIMP.
    NotImp = 5,
}

/// Pre-bound handles for one configuration.
#[derive(Debug)]
pub struct DnsMetrics {
    /// `(zone index or the last for "none") × qtype × rcode`.
    queries: Box<[Counter]>,
    /// Per region (indexed like `RoutingTable::regions`).
    pub answer_region: Box<[Counter]>,
    /// Queries that carried an EDNS Client Subnet option.
    pub ecs: Counter,
    /// Answers sent truncated by the rate limit.
    pub rrl_slip: Counter,
    /// Answers dropped by the rate limit.
    pub rrl_drop: Counter,
    /// Packets dropped unanswered: not a query, or too short for a header.
    pub malformed: Counter,
    /// UDP datagrams dropped unanswered for being larger than any query.
    pub oversized: Counter,
    zones: usize,
}

impl DnsMetrics {
    /// Handles for `zones` (apex names) and `regions` (region names).
    pub fn new(zones: &[&str], regions: &[SharedString]) -> DnsMetrics {
        describe();
        let mut queries = Vec::with_capacity((zones.len() + 1) * 36);
        for zone in zones.iter().copied().chain(["none"]) {
            let zone = SharedString::from(zone.to_owned());
            for q in QTYPES {
                for r in RCODES {
                    queries.push(
                        counter!(QUERIES_TOTAL, "zone" => zone.clone(), "qtype" => q, "rcode" => r),
                    );
                }
            }
        }
        DnsMetrics {
            queries: queries.into(),
            answer_region: regions
                .iter()
                .map(|r| counter!(ANSWER_REGION_TOTAL, "region" => r.clone()))
                .collect(),
            ecs: counter!(ECS_QUERIES_TOTAL),
            rrl_slip: counter!(RATE_LIMITED_TOTAL, "action" => "slip"),
            rrl_drop: counter!(RATE_LIMITED_TOTAL, "action" => "drop"),
            malformed: counter!(DROPPED_TOTAL, "reason" => "malformed"),
            oversized: counter!(DROPPED_TOTAL, "reason" => "oversized"),
            zones: zones.len(),
        }
    }

    /// Count one answered query (`zone = None`: outside every zone).
    pub fn query(&self, zone: Option<usize>, qtype: QtypeLabel, rcode: RcodeLabel) {
        let z = zone.unwrap_or(self.zones).min(self.zones);
        let i = (z * QTYPES.len() + qtype as usize) * RCODES.len() + rcode as usize;
        if let Some(c) = self.queries.get(i) {
            c.increment(1);
        }
    }
}

fn describe() {
    describe_counter!(
        QUERIES_TOTAL,
        "DNS queries answered, by zone (`none`: outside every zone), query type and response code."
    );
    describe_counter!(
        ANSWER_REGION_TOTAL,
        "DNS answers that named a region's addresses, by region."
    );
    describe_counter!(
        ECS_QUERIES_TOTAL,
        "DNS queries that carried an EDNS Client Subnet option (RFC 7871)."
    );
    describe_counter!(
        RATE_LIMITED_TOTAL,
        "DNS answers over the response rate limit, by action (slip: sent truncated, drop)."
    );
    describe_counter!(
        DROPPED_TOTAL,
        "DNS packets dropped unanswered, by reason (malformed: a response or shorter than a header; oversized)."
    );
}
