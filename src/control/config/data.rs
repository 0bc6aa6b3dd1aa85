//! Compiling `[services.NAME.data]` (the data layer) and a route's `reads`/`writes` rules.

use std::collections::HashMap;
use std::time::Duration;

use http::{HeaderName, Method};
use serde::Deserialize;

use super::compile::Compiler;
use super::databases::{DatabaseFile, UnreachableFile};
use crate::observe::metrics::DataMetrics;
use crate::route::data::{DataPolicy, PrimarySource, RwRule, Ryw, RywDecision, WriteMode};
use crate::route::{CheckKind, CheckSpec, SrIdx};

/// `[services.NAME.data]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DataFile {
    /// "any" (default: every region takes writes) or "primary".
    #[serde(default)]
    pub writes: WritesFile,
    /// The region holding the primary, or "auto" (learned from health answers).
    pub primary: Option<String>,
    /// Health-answer header with the database role (default `X-Db-Role`).
    pub role_header: Option<String>,
    /// Health-answer header with the replica lag in seconds (default `X-Db-Replica-Lag`).
    pub lag_header: Option<String>,
    /// Reads skip a region whose replicas lag more than this.
    pub max_read_lag: Option<String>,
    /// …until the lag falls to this (default: half of `max_read_lag`).
    pub read_lag_recover: Option<String>,
    /// How long after a write the client's reads must see it (signed cookie).
    pub read_your_writes: Option<String>,
    /// File with the cookie-signing key (at least 32 bytes), shared by every instance.
    pub secret_file: Option<String>,
    /// Environment variable with the key, instead of a file.
    pub secret_env: Option<String>,
    /// Cookie name (default `geolb_rw`).
    pub cookie: Option<String>,
    /// Longest wait for a primary before a write is answered 503 (default 5s).
    pub write_hold: Option<String>,
    /// Databases probed for role and lag, one per region (those regions then ignore their
    /// backends' health answers).
    #[serde(default)]
    pub databases: Vec<DatabaseFile>,
    /// Time between database probes (default 1s).
    pub probe_interval: Option<String>,
    /// Deadline for a probe's connect and each query (default 2s).
    pub probe_timeout: Option<String>,
    /// What an unreachable database makes of its region (default: ineligible for writes).
    #[serde(default)]
    pub unreachable: UnreachableFile,
    // (`write_methods` stays last: unknown-field errors list the fields in this order.)
    /// Methods that are writes (default POST, PUT, PATCH, DELETE).
    pub write_methods: Option<Vec<String>>,
}

/// Where writes may go, as written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WritesFile {
    /// Every region.
    #[default]
    Any,
    /// The primary's region only.
    Primary,
}

/// Smallest accepted cookie-signing key.
const MIN_SECRET: usize = 32;

impl Compiler<'_, '_> {
    /// Compile a service's data layer. `regions` are the service's region names in
    /// service-region order; `check` its active check (role reports need an HTTP one).
    pub(super) fn data_policy(
        &mut self,
        p: &str,
        service: &str,
        d: &DataFile,
        regions: &[&str],
        check: Option<&CheckSpec>,
    ) -> Option<DataPolicy> {
        let p = format!("{p}.data");
        let primary = self.primary(&p, d, regions, check);
        let header = |c: &mut Self, key: &str, v: &Option<String>, default: &'static str| {
            let s = v.as_deref().unwrap_or(default);
            HeaderName::from_bytes(s.as_bytes()).unwrap_or_else(|_| {
                c.err(&format!("{p}.{key}"), format!("`{s}` is not a header name"));
                HeaderName::from_static("x-invalid")
            })
        };
        let role_header = header(self, "role_header", &d.role_header, "x-db-role");
        let lag_header = header(self, "lag_header", &d.lag_header, "x-db-replica-lag");
        let max_read_lag = d.max_read_lag.as_ref().map(|_| {
            self.duration(
                &format!("{p}.max_read_lag"),
                &d.max_read_lag,
                Duration::ZERO,
            )
        });
        let recover = self.duration(
            &format!("{p}.read_lag_recover"),
            &d.read_lag_recover,
            max_read_lag.unwrap_or_default() / 2,
        );
        if d.read_lag_recover.is_some() && d.max_read_lag.is_none() {
            self.err(
                &format!("{p}.read_lag_recover"),
                "has no effect without max_read_lag",
            );
        }
        // (An invalid max_read_lag is reported once, not again through this comparison.)
        if max_read_lag.is_some_and(|m| !m.is_zero() && recover > m) {
            self.err(
                &format!("{p}.read_lag_recover"),
                "must not be more than max_read_lag (it is the level a skipped region must fall back to)",
            );
        }
        let write_hold = self.duration(
            &format!("{p}.write_hold"),
            &d.write_hold,
            Duration::from_secs(5),
        );
        let ryw = self.ryw(&p, d);
        let write_methods = self.write_methods(&p, d);
        let probes = self.db_probes(&p, d, regions);
        let names: Vec<metrics::SharedString> = regions
            .iter()
            .map(|r| metrics::SharedString::from(r.to_string()))
            .collect();
        let metrics = DataMetrics::new(
            &metrics::SharedString::from(service.to_string()),
            &names,
            RywDecision::ALL.map(RywDecision::as_str),
        );
        let writes = match d.writes {
            WritesFile::Any => WriteMode::Any,
            WritesFile::Primary => WriteMode::Primary,
        };
        let db = self.ctx.health;
        Some(DataPolicy {
            writes,
            primary: primary?,
            role_header,
            lag_header,
            max_read_lag_ms: max_read_lag.map(|m| m.as_millis() as u64),
            read_lag_recover_ms: recover.as_millis() as u64,
            write_hold,
            ryw,
            write_methods,
            regions: regions
                .iter()
                .map(|r| db.region_db(&format!("{service}|{r}")))
                .collect(),
            probes,
            metrics,
        })
    }

    fn primary(
        &mut self,
        p: &str,
        d: &DataFile,
        regions: &[&str],
        check: Option<&CheckSpec>,
    ) -> Option<PrimarySource> {
        let path = format!("{p}.primary");
        match d.primary.as_deref() {
            None if d.writes == WritesFile::Primary => {
                self.err(
                    &path,
                    "writes = \"primary\" needs primary = \"REGION\" or \"auto\"",
                );
                None
            }
            None | Some("auto") => {
                let http = check.is_some_and(|c| matches!(c.kind, CheckKind::Http { .. }));
                if d.writes == WritesFile::Primary && !http && d.databases.is_empty() {
                    self.err(
                        &path,
                        "\"auto\" learns the primary from health answers: the service needs an HTTP health check (`health.path`), or `databases` to probe",
                    );
                }
                Some(PrimarySource::Auto)
            }
            Some(name) => match regions.iter().position(|r| *r == name) {
                Some(i) => Some(PrimarySource::Static(SrIdx(i))),
                None => {
                    self.err(
                        &path,
                        format!(
                            "`{name}` is not a region of this service (its backends are in: {})",
                            regions.join(", ")
                        ),
                    );
                    None
                }
            },
        }
    }

    fn ryw(&mut self, p: &str, d: &DataFile) -> Option<Ryw> {
        let Some(ttl) = d.read_your_writes.as_ref() else {
            for (key, set) in [
                ("cookie", d.cookie.is_some()),
                ("secret_file", d.secret_file.is_some()),
                ("secret_env", d.secret_env.is_some()),
            ] {
                if set {
                    self.err(
                        &format!("{p}.{key}"),
                        "has no effect without read_your_writes",
                    );
                }
            }
            return None;
        };
        let ttl = self.duration(
            &format!("{p}.read_your_writes"),
            &Some(ttl.clone()),
            Duration::ZERO,
        );
        let cookie = d.cookie.as_deref().unwrap_or("geolb_rw");
        let token_ok = !cookie.is_empty()
            && cookie.len() <= 64
            && cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token_ok {
            self.err(
                &format!("{p}.cookie"),
                format!("`{cookie}` is not a cookie name (a token of at most 64 characters)"),
            );
        }
        let secret = self.secret(p, d)?;
        if ttl.is_zero() || !token_ok {
            return None;
        }
        Some(Ryw {
            ttl_ms: ttl.as_millis() as u64,
            cookie: cookie.into(),
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret),
        })
    }

    /// The signing key from `secret_file` or `secret_env`; never echoed in errors.
    fn secret(&mut self, p: &str, d: &DataFile) -> Option<Vec<u8>> {
        let (path, value) = match (&d.secret_file, &d.secret_env) {
            (Some(f), None) => {
                let file = self.path(f);
                match read_small(&file) {
                    Ok(v) => (format!("{p}.secret_file"), v),
                    Err(e) => {
                        self.err(
                            &format!("{p}.secret_file"),
                            format!("cannot read {}: {e}", file.display()),
                        );
                        return None;
                    }
                }
            }
            (None, Some(var)) => match std::env::var_os(var) {
                Some(v) => (format!("{p}.secret_env"), v.into_encoded_bytes()),
                None => {
                    self.err(
                        &format!("{p}.secret_env"),
                        format!("environment variable {var} is not set"),
                    );
                    return None;
                }
            },
            (Some(_), Some(_)) => {
                self.err(
                    &format!("{p}.secret_env"),
                    "set secret_file or secret_env, not both",
                );
                return None;
            }
            (None, None) => {
                self.err(
                    &format!("{p}.read_your_writes"),
                    "needs a signing key shared by every instance: secret_file or secret_env",
                );
                return None;
            }
        };
        let trimmed = value.trim_ascii();
        if trimmed.len() < MIN_SECRET {
            self.err(
                &path,
                format!("the key is {} bytes; at least {MIN_SECRET} are needed (e.g. `openssl rand -hex 32`)", trimmed.len()),
            );
            return None;
        }
        Some(trimmed.to_vec())
    }

    fn write_methods(&mut self, p: &str, d: &DataFile) -> Box<[Method]> {
        let Some(list) = &d.write_methods else {
            return [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].into();
        };
        let mut out = Vec::new();
        for (i, m) in list.iter().enumerate() {
            match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => out.push(m),
                Err(_) => self.err(
                    &format!("{p}.write_methods[{i}]"),
                    format!("`{m}` is not an HTTP method"),
                ),
            }
        }
        out.into()
    }

    /// A route's `reads` and `writes` lists: each entry "/prefix" or "METHOD /prefix".
    pub(super) fn rw_rules(
        &mut self,
        p: &str,
        reads: &[String],
        writes: &[String],
    ) -> Box<[RwRule]> {
        let mut out = Vec::new();
        for (key, list, write) in [("reads", reads, false), ("writes", writes, true)] {
            for (i, e) in list.iter().enumerate() {
                let path = format!("{p}.{key}[{i}]");
                let (method, prefix) = match e.trim().split_once(' ') {
                    Some((m, pre)) => (Some(m), pre.trim()),
                    None => (None, e.trim()),
                };
                let method =
                    match method.map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes())) {
                        Some(Ok(m)) => Some(m),
                        None => None,
                        Some(Err(_)) => {
                            self.err(
                                &path,
                                format!("`{e}`: expected \"/prefix\" or \"METHOD /prefix\""),
                            );
                            continue;
                        }
                    };
                if !prefix.starts_with('/') {
                    self.err(&path, format!("`{e}`: the path prefix must start with `/`"));
                    continue;
                }
                out.push(RwRule {
                    method,
                    prefix: prefix.into(),
                    write,
                });
            }
        }
        out.into()
    }
}

/// Read a key file: a regular file of at most 4 KiB (a FIFO or `/dev/zero` would hang or
/// exhaust memory during a check or reload).
fn read_small(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut v = Vec::new();
    std::fs::File::open(path)?.take(4097).read_to_end(&mut v)?;
    if v.len() > 4096 {
        return Err(std::io::Error::other(
            "larger than 4 KiB; a key is 32–64 bytes",
        ));
    }
    Ok(v)
}

/// Service-region names in service-region order, from the region index of each.
pub(super) fn region_names<'a>(
    service_regions: &[usize],
    region_idx: &'a HashMap<&'a str, usize>,
) -> Vec<&'a str> {
    service_regions
        .iter()
        .map(|&r| {
            region_idx
                .iter()
                .find(|(_, i)| **i == r)
                .map_or("?", |(n, _)| *n)
        })
        .collect()
}
