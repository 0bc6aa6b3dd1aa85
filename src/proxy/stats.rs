//! Counters for the request pipeline's rare paths (retries, spills, upstream errors), with
//! labels taken from the compiled table.

use metrics::{Counter, SharedString, counter};

use crate::proxy::error::ProxyError;
use crate::route::{Backend, Region, Route, Service, SrIdx};

/// Count a retry for a service (retry path only).
pub(crate) fn retries(svc: &Service) -> Counter {
    counter!(crate::observe::metrics::RETRIES_TOTAL, "service" => SharedString::from_shared(svc.name.clone()))
}

/// Count a request served outside the nearest region (spill path only).
pub(crate) fn spillover(
    route: &Route,
    regions: &[Region],
    svc: &Service,
    from_sr: SrIdx,
    to_sr: SrIdx,
) {
    let from = SharedString::from_shared(regions[svc.regions[from_sr].region].name.clone());
    let to = SharedString::from_shared(regions[svc.regions[to_sr].region].name.clone());
    counter!(crate::observe::metrics::SPILLOVER_TOTAL, "route" => SharedString::from_shared(route.name.clone()), "from" => from, "to" => to)
        .increment(1);
}

/// Count a failed upstream attempt (error path only).
pub(crate) fn upstream_error(svc: &Service, backend: &Backend, kind: ProxyError) {
    counter!(
        crate::observe::metrics::UPSTREAM_ERRORS_TOTAL,
        "service" => SharedString::from_shared(svc.name.clone()),
        "backend" => SharedString::from_shared(backend.name.clone()),
        "kind" => kind.code()
    )
    .increment(1);
}
