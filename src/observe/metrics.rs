//! Every metric name, the Prometheus recorder, and handles pre-bound at compile time.
//!
//! Labels come from bounded sets only: route, region, backend, service, status class, result.

use std::sync::OnceLock;

use metrics::{
    Counter, Histogram, SharedString, counter, describe_counter, describe_gauge,
    describe_histogram, histogram,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub(crate) const REQUESTS_TOTAL: &str = "geolb_requests_total";
pub(crate) const REQUEST_DURATION: &str = "geolb_request_duration_seconds";
pub(crate) const UPSTREAM_ERRORS_TOTAL: &str = "geolb_upstream_errors_total";
pub(crate) const RETRIES_TOTAL: &str = "geolb_retries_total";
pub(crate) const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "geolb_retry_budget_exhausted_total";
pub(crate) const SPILLOVER_TOTAL: &str = "geolb_spillover_requests_total";
pub(crate) const BACKEND_UP: &str = "geolb_backend_up";
pub(crate) const BACKEND_EJECTED: &str = "geolb_backend_ejected";
pub(crate) const BACKEND_INFLIGHT: &str = "geolb_backend_inflight_requests";
pub(crate) const REGION_HEALTH: &str = "geolb_region_health_ratio";
pub(crate) const GEO_LOOKUPS_TOTAL: &str = "geolb_geo_lookups_total";
pub(crate) const TLS_HANDSHAKES_TOTAL: &str = "geolb_tls_handshakes_total";
pub(crate) const CONNECTIONS_ACTIVE: &str = "geolb_connections_active";
pub(crate) const CONNECTIONS_TOTAL: &str = "geolb_connections_total";
pub(crate) const CLIENT_SEND_TIMEOUTS_TOTAL: &str = "geolb_client_send_timeouts_total";
pub(crate) const CONFIG_GENERATION: &str = "geolb_config_generation";
pub(crate) const CONFIG_RELOADS_TOTAL: &str = "geolb_config_reloads_total";
pub(crate) const CONFIG_LAST_RELOAD_SUCCESS: &str =
    "geolb_config_last_reload_success_timestamp_seconds";
pub(crate) const GEO_DATABASE_REJECTED_TOTAL: &str = "geolb_geo_database_rejected_total";
pub(crate) const ACCESS_LOG_DROPPED_TOTAL: &str = "geolb_access_log_dropped_total";
pub(crate) const REGION_STATE: &str = "geolb_region_state";
pub(crate) const REGION_TRAFFIC_SHARE: &str = "geolb_region_traffic_share";
pub(crate) const GEO_COUNTRY_REQUESTS_TOTAL: &str = "geolb_geo_country_requests_total";
pub(crate) const REQUESTS_ACTIVE: &str = "geolb_requests_active";
pub(crate) const PATHS_NORMALIZED_TOTAL: &str = "geolb_paths_normalized_total";
pub(crate) const PATHS_REJECTED_TOTAL: &str = "geolb_paths_rejected_total";
pub(crate) const LOOPS_DETECTED_TOTAL: &str = "geolb_loops_detected_total";
pub(crate) const CLIENT_BODY_CUT_TOTAL: &str = "geolb_client_body_cut_total";
pub(crate) const WRITE_REQUESTS_TOTAL: &str = "geolb_write_requests_total";
pub(crate) const REGION_REPLICA_LAG: &str = "geolb_region_replica_lag_seconds";
pub(crate) const PRIMARY_REGION: &str = "geolb_primary_region";
pub(crate) const DATA_SPLIT_BRAIN: &str = "geolb_data_split_brain";
pub(crate) const WRITE_HOLD_SECONDS: &str = "geolb_write_hold_seconds";
pub(crate) const READ_YOUR_WRITES_TOTAL: &str = "geolb_read_your_writes_total";
pub(crate) const DB_PROBE_ERRORS_TOTAL: &str = "geolb_db_probe_errors_total";
pub(crate) const DB_PROBE_SECONDS: &str = "geolb_db_probe_seconds";

/// Countries that get their own label in `geolb_geo_country_requests_total`; the rest are
/// counted as `other` (first come, first labelled; bounded cardinality).
pub(crate) const TOP_COUNTRIES: usize = 50;

/// Default latency buckets, seconds: 1 ms … 10 s.
pub(crate) const DEFAULT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The recorder's handle (installing it with the default buckets if needed).
pub(crate) fn handle() -> &'static PrometheusHandle {
    install(DEFAULT_BUCKETS)
}

/// Install the process-wide recorder once with `buckets` (seconds) for every histogram;
/// later calls return the same handle and ignore their buckets.
pub(crate) fn install(buckets: &[f64]) -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let buckets = if buckets.is_empty() {
            DEFAULT_BUCKETS
        } else {
            buckets
        };
        let recorder = PrometheusBuilder::new()
            .set_buckets(buckets)
            .unwrap_or_else(|_| {
                PrometheusBuilder::new()
                    .set_buckets(DEFAULT_BUCKETS)
                    .expect("static buckets are valid")
            })
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        describe_all();
        handle
    })
}

fn describe_all() {
    describe_counter!(
        CLIENT_SEND_TIMEOUTS_TOTAL,
        "Connections closed because the client stopped reading (timeouts.client_send)."
    );
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by route, serving region and status class."
    );
    describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time to response headers, by route and region."
    );
    describe_counter!(
        UPSTREAM_ERRORS_TOTAL,
        "Upstream attempt failures, by service, backend and kind."
    );
    describe_counter!(RETRIES_TOTAL, "Retried attempts, by service.");
    describe_counter!(
        RETRY_BUDGET_EXHAUSTED_TOTAL,
        "Retries refused because the service's retry budget was spent, by service."
    );
    describe_counter!(
        SPILLOVER_TOTAL,
        "Requests served outside the client's nearest region, by route, from and to region."
    );
    describe_gauge!(
        BACKEND_UP,
        "1 when the backend may receive traffic (healthy and not ejected)."
    );
    describe_gauge!(
        BACKEND_EJECTED,
        "1 while passive detection has ejected the backend."
    );
    describe_gauge!(BACKEND_INFLIGHT, "Requests in flight to the backend.");
    describe_gauge!(
        REGION_HEALTH,
        "Healthy share of a service's weight in a region (0..1)."
    );
    describe_counter!(
        GEO_LOOKUPS_TOTAL,
        "Client location lookups, by result (city, country, unknown)."
    );
    describe_counter!(
        TLS_HANDSHAKES_TOTAL,
        "TLS handshakes, by result and protocol version."
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Open client connections, by listener.");
    describe_counter!(
        CONNECTIONS_TOTAL,
        "Accepted client connections, by listener."
    );
    describe_gauge!(
        CONFIG_GENERATION,
        "Generation of the configuration being served."
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        "Configuration reload attempts, by result."
    );
    describe_counter!(
        GEO_DATABASE_REJECTED_TOTAL,
        "Geo databases refused on reload (unreadable, or a corrupt search tree or record); the running database kept serving."
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS,
        "Unix time of the last successful configuration load."
    );
    describe_counter!(
        ACCESS_LOG_DROPPED_TOTAL,
        "Access log lines dropped because the writer fell behind."
    );
    describe_gauge!(
        REGION_STATE,
        "1 for the region's current state (healthy, spilling, recovering, down), else 0."
    );
    describe_gauge!(
        REGION_TRAFFIC_SHARE,
        "Share (0..1) of a service's answered requests served by the region since the last reload."
    );
    describe_counter!(
        GEO_COUNTRY_REQUESTS_TOTAL,
        "Requests by client country (the first 50 countries seen, then other; unknown)."
    );
    describe_gauge!(REQUESTS_ACTIVE, "Requests being served, by listener.");
    describe_data();
    describe_hygiene();
}

/// The data layer's families.
fn describe_hygiene() {
    describe_counter!(
        PATHS_NORMALIZED_TOTAL,
        "Requests whose path was normalised (dot segments, escapes, slashes) before routing."
    );
    describe_counter!(
        PATHS_REJECTED_TOTAL,
        "Requests refused with 400 for their path, by reason (above_root, bad_escape, backslash)."
    );
    describe_counter!(
        LOOPS_DETECTED_TOTAL,
        "Requests refused with 508 because they already passed this instance (Via)."
    );
    describe_counter!(
        CLIENT_BODY_CUT_TOTAL,
        "Request bodies cut with 408, by reason (idle, rate, total)."
    );
}

/// Request-hygiene counters, bound once at start.
#[derive(Debug, Clone)]
pub(crate) struct PathMetrics {
    /// Paths normalised.
    pub(crate) normalized: Counter,
    /// Paths refused, by reason (above_root, bad_escape, backslash).
    pub(crate) rejected: [Counter; 3],
    /// Requests refused as loops.
    pub(crate) loops: Counter,
    /// Request bodies cut, by reason (idle, rate, total).
    pub(crate) body_cut: [Counter; 3],
}

impl PathMetrics {
    /// Every handle, at zero.
    pub(crate) fn new() -> PathMetrics {
        PathMetrics {
            normalized: counter!(PATHS_NORMALIZED_TOTAL),
            rejected: ["above_root", "bad_escape", "backslash"]
                .map(|r| counter!(PATHS_REJECTED_TOTAL, "reason" => r)),
            loops: counter!(LOOPS_DETECTED_TOTAL),
            body_cut: ["idle", "rate", "total"]
                .map(|r| counter!(CLIENT_BODY_CUT_TOTAL, "reason" => r)),
        }
    }
}

fn describe_data() {
    describe_counter!(
        WRITE_REQUESTS_TOTAL,
        "Write requests of services with a primary, by service, region (none when held out) and outcome (served, failed, held_out)."
    );
    describe_gauge!(
        REGION_REPLICA_LAG,
        "Replica lag of a region's database as last reported, seconds (NaN when unknown, +Inf when replication is stopped or broken)."
    );
    describe_gauge!(
        PRIMARY_REGION,
        "1 for the region that takes a service's writes now, else 0."
    );
    describe_gauge!(
        DATA_SPLIT_BRAIN,
        "1 while more than one region of a service reports a primary database (writes are held)."
    );
    describe_histogram!(
        WRITE_HOLD_SECONDS,
        metrics::Unit::Seconds,
        "Time writes waited for a primary region, by service."
    );
    describe_counter!(
        READ_YOUR_WRITES_TOTAL,
        "Reads carrying a read-your-writes cookie, by service and decision (nearest, redirected, fallback, invalid)."
    );
    describe_counter!(
        DB_PROBE_ERRORS_TOTAL,
        "Failed database probes, by service, region and reason (connect, auth, timeout, protocol, query, not_database)."
    );
    describe_histogram!(
        DB_PROBE_SECONDS,
        metrics::Unit::Seconds,
        "Time one database probe took (connect when needed, then the role and lag queries), by service and region."
    );
}

/// The budget-refusal counter of service `service`, created at 0 so the family exists from
/// the start.
pub(crate) fn retry_budget_exhausted(service: &str) -> Counter {
    let c =
        counter!(RETRY_BUDGET_EXHAUSTED_TOTAL, "service" => SharedString::from(service.to_owned()));
    c.increment(0);
    c
}

/// Status classes in label order.
pub(crate) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index of a status in `CLASSES`.
pub(crate) fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// Handles for one route and one serving region ("none" when no backend answered).
#[derive(Debug, Clone)]
pub struct RouteRegionMetrics {
    pub requests: [Counter; 5],
    pub duration: Histogram,
}

impl RouteRegionMetrics {
    pub fn new(route: &SharedString, region: &SharedString) -> Self {
        let requests = CLASSES.map(|c| {
            counter!(REQUESTS_TOTAL, "route" => route.clone(), "region" => region.clone(), "class" => c)
        });
        let duration =
            histogram!(REQUEST_DURATION, "route" => route.clone(), "region" => region.clone());
        RouteRegionMetrics { requests, duration }
    }
}

/// Geo lookup counters by result.
#[derive(Debug, Clone)]
pub struct GeoMetrics {
    pub city: Counter,
    pub country: Counter,
    pub unknown: Counter,
}

impl GeoMetrics {
    pub fn new() -> Self {
        GeoMetrics {
            city: counter!(GEO_LOOKUPS_TOTAL, "result" => "city"),
            country: counter!(GEO_LOOKUPS_TOTAL, "result" => "country"),
            unknown: counter!(GEO_LOOKUPS_TOTAL, "result" => "unknown"),
        }
    }
}

impl Default for GeoMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Pre-bound data-layer handles for one service.
#[derive(Debug, Clone)]
pub(crate) struct DataMetrics {
    /// Per service region (same index), then one for "none": served, failed, held_out.
    pub(crate) writes: Box<[[Counter; 3]]>,
    /// Time writes waited for a primary.
    pub(crate) hold: Histogram,
    /// Read-your-writes decisions: nearest, redirected, fallback, invalid.
    pub(crate) ryw: [Counter; 4],
}

/// Write outcomes in label order.
pub(crate) const WRITE_OUTCOMES: [&str; 3] = ["served", "failed", "held_out"];

impl DataMetrics {
    /// Handles for `service` over `regions` (names in service-region order).
    pub(crate) fn new(
        service: &SharedString,
        regions: &[SharedString],
        ryw: [&'static str; 4],
    ) -> Self {
        let none = SharedString::const_str("none");
        let writes = regions
            .iter()
            .chain(std::iter::once(&none))
            .map(|r| {
                WRITE_OUTCOMES.map(|o| {
                    counter!(WRITE_REQUESTS_TOTAL, "service" => service.clone(), "region" => r.clone(), "outcome" => o)
                })
            })
            .collect();
        DataMetrics {
            writes,
            hold: histogram!(WRITE_HOLD_SECONDS, "service" => service.clone()),
            ryw: ryw.map(
                |d| counter!(READ_YOUR_WRITES_TOTAL, "service" => service.clone(), "decision" => d),
            ),
        }
    }
}

/// Pre-bound handles for one database probe (service × region).
#[derive(Debug, Clone)]
pub(crate) struct DbProbeMetrics {
    /// Failures by reason, in the order of the labels given to `new`.
    pub(crate) errors: [Counter; 6],
    /// Probe duration.
    pub(crate) seconds: Histogram,
}

impl DbProbeMetrics {
    /// Handles for `service` and `region`, every error counter created at 0 (so the families
    /// exist from the start).
    pub(crate) fn new(service: &str, region: &str, reasons: [&'static str; 6]) -> Self {
        let (s, r) = (
            SharedString::from(service.to_owned()),
            SharedString::from(region.to_owned()),
        );
        let errors = reasons.map(|why| {
            let c = counter!(DB_PROBE_ERRORS_TOTAL, "service" => s.clone(), "region" => r.clone(), "reason" => why);
            c.increment(0);
            c
        });
        DbProbeMetrics {
            errors,
            seconds: histogram!(DB_PROBE_SECONDS, "service" => s, "region" => r),
        }
    }
}

/// Per-country request counters with bounded cardinality.
pub struct CountryCounters {
    slots: Vec<OnceLock<Option<Counter>>>,
    labelled: std::sync::atomic::AtomicUsize,
    other: Counter,
    unknown: Counter,
}

impl CountryCounters {
    pub fn new() -> Self {
        CountryCounters {
            slots: (0..crate::geo::centroids::CENTROIDS.len())
                .map(|_| OnceLock::new())
                .collect(),
            labelled: std::sync::atomic::AtomicUsize::new(0),
            other: counter!(GEO_COUNTRY_REQUESTS_TOTAL, "country" => "other"),
            unknown: counter!(GEO_COUNTRY_REQUESTS_TOTAL, "country" => "unknown"),
        }
    }

    /// Count one request from `country` (a code from the centroid table) or unknown.
    pub fn record(&self, country: Option<&'static str>) {
        let Some(code) = country else {
            return self.unknown.increment(1);
        };
        let Some(i) = crate::geo::centroids::index_of(code.as_bytes()) else {
            return self.other.increment(1);
        };
        let c = self.slots[i].get_or_init(|| {
            let n = self
                .labelled
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (n < TOP_COUNTRIES).then(|| counter!(GEO_COUNTRY_REQUESTS_TOTAL, "country" => code))
        });
        match c {
            Some(c) => c.increment(1),
            None => self.other.increment(1),
        }
    }
}

impl Default for CountryCounters {
    fn default() -> Self {
        Self::new()
    }
}
