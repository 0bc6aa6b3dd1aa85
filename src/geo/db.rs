//! `GeoDb`: a verified MaxMind-format reader held in memory, with allocation-free lookups.
//!
//! Supported layouts: GeoIP2/GeoLite2 City and Country (`country.iso_code`, `location.latitude`,
//! `continent.code`), and the `@ip-location-db` layouts (`country_code`, top-level
//! `latitude`/`longitude`). A record without coordinates falls back to its country's centroid.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use maxminddb::Reader;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::centroids;

/// The embedded default: iptoasn country data (PDDL-1.0), see `src/geo/embedded/NOTICE.md`.
static EMBEDDED_V4: &[u8] = include_bytes!("embedded/iptoasn-country-ipv4.mmdb");
static EMBEDDED_V6: &[u8] = include_bytes!("embedded/iptoasn-country-ipv6.mmdb");

/// Where a location's coordinates came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocSource {
    /// The record's own coordinates (city-level databases).
    Record,
    /// The record had only a country: its centroid.
    CountryCentroid,
}

impl LocSource {
    /// The precision as a word (`city`, `country`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            LocSource::Record => "city",
            LocSource::CountryCentroid => "country",
        }
    }
}

/// A located client. Coordinates in degrees; codes are uppercase ASCII.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Location {
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// ISO 3166-1 alpha-2 country code.
    pub country: Option<[u8; 2]>,
    /// Two-letter continent code (EU, AS, NA, SA, AF, OC, AN).
    pub continent: Option<[u8; 2]>,
    /// How precise the location is.
    pub source: LocSource,
}

impl Location {
    /// The country code as a `'static` string (from the centroid table), for headers and labels.
    pub fn country_str(&self) -> Option<&'static str> {
        let c = centroids::centroid(&self.country?)?;
        std::str::from_utf8(&c.code).ok()
    }
}

/// Facts about the loaded database, for `/status` and `/explain`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GeoInfo {
    /// File path, or "embedded".
    pub source: String,
    /// The database type string from its metadata (e.g. `GeoLite2-City`).
    pub database_type: String,
    /// Unix seconds.
    pub build_epoch: u64,
    /// Search-tree nodes (a size indicator).
    pub node_count: u32,
}

/// Why a geo database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot read geo database {path}: {source}")]
    /// The file could not be read.
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    #[error("invalid geo database {path}: {reason}")]
    /// The file is not a usable MaxMind database.
    Invalid {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

enum Source {
    Single(Reader<Vec<u8>>),
    Split {
        v4: Reader<&'static [u8]>,
        v6: Reader<&'static [u8]>,
    },
}

/// A loaded, verified database. Immutable; replaced whole on reload.
pub struct GeoDb {
    source: Source,
    info: GeoInfo,
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoDb").field("info", &self.info).finish()
    }
}

impl GeoDb {
    /// The country database compiled into the binary.
    pub fn embedded() -> Result<GeoDb, GeoError> {
        let invalid = |e: maxminddb::MaxMindDbError| GeoError::Invalid {
            path: "embedded".into(),
            reason: e.to_string(),
        };
        let v4 = Reader::from_source(EMBEDDED_V4).map_err(invalid)?;
        let v6 = Reader::from_source(EMBEDDED_V6).map_err(invalid)?;
        let m = &v6.metadata();
        let info = GeoInfo {
            source: "embedded (iptoasn-country, PDDL-1.0)".into(),
            database_type: m.database_type.clone(),
            build_epoch: m.build_epoch,
            node_count: m.node_count + v4.metadata().node_count,
        };
        Ok(GeoDb {
            source: Source::Split { v4, v6 },
            info,
        })
    }

    /// Load and check a database file: structure (`verify`), metadata and a sample lookup.
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| GeoError::Io {
            path: p.clone(),
            source,
        })?;
        Self::from_bytes(bytes, &p)
    }

    /// As [`GeoDb::open`], from bytes already in memory; `name` is used in messages.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<GeoDb, GeoError> {
        let invalid = |reason: String| GeoError::Invalid {
            path: name.to_owned(),
            reason,
        };
        let reader = Reader::from_source(bytes).map_err(|e| invalid(e.to_string()))?;
        let m = &reader.metadata();
        match reader.verify() {
            Ok(()) => {}
            // Real-world databases (the @ip-location-db family) ship an empty description map,
            // which `verify` rejects before anything else; `verify_records` below walks the
            // whole tree and decodes every record all the same.
            Err(e) if e.to_string().contains("description") && m.description.is_empty() => {
                tracing::debug!(
                    database = name,
                    "database has no description; verified record by record"
                );
            }
            Err(e) => return Err(invalid(format!("verification failed: {e}"))),
        }
        verify_records(&reader).map_err(|e| invalid(e.to_string()))?;
        if ![24, 28, 32].contains(&m.record_size) || ![4, 6].contains(&m.ip_version) {
            return Err(invalid(format!(
                "unsupported record size {} / IP version {}",
                m.record_size, m.ip_version
            )));
        }
        if m.binary_format_major_version != 2 {
            return Err(invalid(format!(
                "unsupported binary format {}",
                m.binary_format_major_version
            )));
        }
        if m.node_count == 0 {
            return Err(invalid("database has no networks".into()));
        }
        let samples: &[&str] = if m.ip_version == 6 {
            &[
                "8.8.8.8",
                "81.2.69.142",
                "1.0.0.1",
                "2001:4860:4860::8888",
                "2a00:1450::1",
                "2001:db8::1",
            ]
        } else {
            &["8.8.8.8", "81.2.69.142", "1.0.0.1", "192.0.2.1"]
        };
        for s in samples {
            let ip: IpAddr = s.parse().expect("literal");
            let res = reader
                .lookup(ip)
                .map_err(|e| invalid(format!("sample lookup of {s}: {e}")))?;
            res.decode::<Record<'_>>()
                .map_err(|e| invalid(format!("sample decode of {s}: {e}")))?;
        }
        let info = GeoInfo {
            source: name.to_owned(),
            database_type: m.database_type.clone(),
            build_epoch: m.build_epoch,
            node_count: m.node_count,
        };
        Ok(GeoDb {
            source: Source::Single(reader),
            info,
        })
    }

    /// What this database is.
    pub fn info(&self) -> &GeoInfo {
        &self.info
    }

    /// Locate an address; `None` when the database knows nothing usable about it.
    /// Does not allocate.
    pub fn locate(&self, ip: IpAddr) -> Option<Location> {
        let ip = ip.to_canonical();
        let rec = match &self.source {
            Source::Single(r) => decode(r, ip),
            Source::Split { v4, v6 } => match ip {
                IpAddr::V4(_) => decode(v4, ip),
                IpAddr::V6(_) => decode(v6, ip),
            },
        }?;
        rec.into_location()
    }
}

/// What [`verify_records`] walked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Walked {
    /// Leaves of the search tree (networks, with or without data).
    pub(crate) networks: usize,
    /// Distinct data records decoded.
    pub(crate) records: usize,
}

/// Why [`verify_records`] refused a database.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WalkError {
    /// The search tree is broken (pointer outside the data section, cycle, …).
    #[error("search tree: {0}")]
    Tree(maxminddb::MaxMindDbError),
    /// More leaves than a tree of `node_count` nodes can have: a corrupt tree that loops back
    /// on itself.
    #[error("search tree: more than {0} networks for its node count (corrupt pointers)")]
    TooManyNetworks(usize),
    /// A record the tree points at does not decode as a location record.
    #[error(
        "corrupt record at file offset {file_offset} (data section offset {data_offset}, \
         first used by {network}): {error}"
    )]
    Record {
        /// Offset of the record from the start of the file.
        file_offset: usize,
        /// Offset inside the data section (what the tree stores).
        data_offset: usize,
        /// The first network (in tree order) whose lookups would have hit it.
        network: String,
        /// The decoder's complaint.
        error: maxminddb::MaxMindDbError,
    },
}

/// Walk the whole search tree once and decode every distinct record a leaf points at, as
/// lookups will. Catches a data section that is corrupt under an intact tree, which would
/// otherwise answer "not found" for every address whose record is damaged. Refuses at the
/// first bad record (in tree order). Blocking: O(nodes + records); see README for timings.
pub(crate) fn verify_records<S: AsRef<[u8]>>(reader: &Reader<S>) -> Result<Walked, WalkError> {
    let m = reader.metadata();
    let nodes = m.node_count as usize;
    let pointer_base = nodes * usize::from(m.record_size) / 4 + 16;
    // A binary tree of N nodes has N + 1 leaves; IPv4 aliases are skipped. Anything far past
    // that is a tree whose pointers loop back (each path is bounded by the address length,
    // but their number is not).
    let max_networks = nodes.saturating_mul(3).saturating_add(2);
    let opts = maxminddb::WithinOptions::default().include_networks_without_data();
    let mut seen = std::collections::HashSet::new();
    let mut walked = Walked::default();
    for leaf in reader.networks(opts).map_err(WalkError::Tree)? {
        let leaf = leaf.map_err(WalkError::Tree)?;
        walked.networks += 1;
        if walked.networks > max_networks {
            return Err(WalkError::TooManyNetworks(max_networks));
        }
        let Some(offset) = leaf.offset() else {
            continue;
        };
        if !seen.insert(offset) {
            continue;
        }
        walked.records += 1;
        if let Err(error) = leaf.decode::<Record<'_>>() {
            return Err(WalkError::Record {
                file_offset: pointer_base + offset,
                data_offset: offset,
                network: leaf
                    .network()
                    .map_or_else(|_| "?".to_owned(), |n| n.to_string()),
                error,
            });
        }
    }
    Ok(walked)
}

fn decode<'a, S: AsRef<[u8]>>(reader: &'a Reader<S>, ip: IpAddr) -> Option<Record<'a>> {
    reader.lookup(ip).ok()?.decode::<Record<'a>>().ok()?
}

#[derive(Deserialize, Default)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<CodeRec<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<CodeRec<'a>>,
    #[serde(borrow, default)]
    continent: Option<ContinentRec<'a>>,
    #[serde(default)]
    location: Option<LocRec>,
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
    #[serde(default)]
    latitude: Option<Flex>,
    #[serde(default)]
    longitude: Option<Flex>,
}

#[derive(Deserialize)]
struct CodeRec<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct ContinentRec<'a> {
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct LocRec {
    #[serde(default)]
    latitude: Option<Flex>,
    #[serde(default)]
    longitude: Option<Flex>,
}

/// A number stored as double, float or integer.
#[derive(Clone, Copy)]
struct Flex(f64);

impl<'de> Deserialize<'de> for Flex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Flex, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Flex;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Flex, E> {
                Ok(Flex(v))
            }
            fn visit_f32<E: de::Error>(self, v: f32) -> Result<Flex, E> {
                Ok(Flex(f64::from(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Flex, E> {
                Ok(Flex(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Flex, E> {
                Ok(Flex(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}

fn code2(s: Option<&str>) -> Option<[u8; 2]> {
    match s?.as_bytes() {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

impl Record<'_> {
    fn into_location(self) -> Option<Location> {
        let country = code2(self.country.and_then(|c| c.iso_code))
            .or_else(|| code2(self.country_code))
            .or_else(|| code2(self.registered_country.and_then(|c| c.iso_code)));
        let centroid = country.and_then(|c| centroids::centroid(&c));
        let continent =
            code2(self.continent.and_then(|c| c.code)).or_else(|| centroid.map(|c| c.continent));
        let coords = match self.location {
            Some(LocRec {
                latitude: Some(la),
                longitude: Some(lo),
            }) => Some((la.0, lo.0)),
            _ => match (self.latitude, self.longitude) {
                (Some(la), Some(lo)) => Some((la.0, lo.0)),
                _ => None,
            },
        }
        .filter(|(la, lo)| {
            la.is_finite() && lo.is_finite() && la.abs() <= 90.0 && lo.abs() <= 180.0
        });
        match (coords, centroid) {
            (Some((lat, lon)), _) => Some(Location {
                lat,
                lon,
                country,
                continent,
                source: LocSource::Record,
            }),
            (None, Some(c)) => Some(Location {
                lat: c.lat,
                lon: c.lon,
                country,
                continent,
                source: LocSource::CountryCentroid,
            }),
            (None, None) => None,
        }
    }
}

/// Great-circle distance in kilometres (haversine, mean Earth radius 6371.0088 km).
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0088 * a.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_known_distances() {
        // Frankfurt – Singapore ≈ 10,260 km.
        let d = distance_km(50.11, 8.68, 1.29, 103.85);
        assert!((10_200.0..10_320.0).contains(&d), "{d}");
        assert!(distance_km(1.0, 2.0, 1.0, 2.0).abs() < 1e-9);
        // Antipodes: half the circumference.
        let d = distance_km(0.0, 0.0, 0.0, 180.0);
        assert!((d - 20_015.1).abs() < 1.0, "{d}");
    }

    #[test]
    fn embedded_database_locates_real_addresses() {
        let db = GeoDb::embedded().unwrap();
        let loc = db.locate("81.2.69.142".parse().unwrap()).unwrap();
        assert_eq!(loc.country, Some(*b"GB"));
        assert_eq!(loc.continent, Some(*b"EU"));
        assert_eq!(loc.source, LocSource::CountryCentroid);
        let loc = db.locate("2001:200::1".parse().unwrap()).unwrap();
        assert_eq!(loc.country_str(), Some("JP"));
        // IPv4-mapped addresses are canonicalised first.
        let loc = db.locate("::ffff:133.1.1.1".parse().unwrap()).unwrap();
        assert_eq!(loc.country_str(), Some("JP"));
        assert!(db.locate("127.0.0.1".parse().unwrap()).is_none());
        assert!(db.locate("10.0.0.1".parse().unwrap()).is_none());
    }

    #[test]
    fn accepts_a_database_without_description() {
        // Same structure as the @ip-location-db files: `{country_code}` records, no description.
        let mut w = mmdb_writer::Writer::builder("country ipvAll")
            .build_epoch(std::time::UNIX_EPOCH)
            .build();
        #[derive(serde::Serialize)]
        struct Cc {
            country_code: &'static str,
        }
        w.insert(
            "81.2.69.0/24".parse::<mmdb_writer::ipnet::IpNet>().unwrap(),
            &Cc { country_code: "GB" },
        )
        .unwrap();
        let db = GeoDb::from_bytes(w.to_bytes().unwrap(), "nodesc.mmdb").unwrap();
        let loc = db.locate("81.2.69.142".parse().unwrap()).unwrap();
        assert_eq!(loc.country_str(), Some("GB"));
        assert_eq!(loc.source, LocSource::CountryCentroid);
    }

    #[derive(serde::Serialize)]
    struct Loc {
        latitude: f64,
        longitude: f64,
    }

    #[derive(serde::Serialize)]
    struct Cc {
        iso_code: &'static str,
    }

    #[derive(serde::Serialize)]
    struct City {
        country: Cc,
        location: Loc,
    }

    /// A small city database; `described` adds the description map `verify` insists on.
    fn city_db(described: bool) -> Vec<u8> {
        let b = mmdb_writer::Writer::builder("GeoIP2-City").build_epoch(std::time::UNIX_EPOCH);
        let mut w = if described {
            b.description(&[("en", "fixture")]).build()
        } else {
            b.build()
        };
        for (net, iso_code, latitude, longitude) in [
            ("192.0.2.0/24", "DE", 50.11, 8.68),
            ("198.51.100.0/24", "SG", 1.29, 103.85),
            ("2001:db8:1::/48", "JP", 35.68, 139.75),
        ] {
            let net = net.parse::<mmdb_writer::ipnet::IpNet>().unwrap();
            let rec = City {
                country: Cc { iso_code },
                location: Loc {
                    latitude,
                    longitude,
                },
            };
            w.insert(net, &rec).unwrap();
        }
        w.to_bytes().unwrap()
    }

    /// The file offset of the record `ip` resolves to.
    fn record_offset(bytes: &[u8], ip: &str) -> usize {
        let r = Reader::from_source(bytes).unwrap();
        let m = r.metadata();
        let base = m.node_count as usize * usize::from(m.record_size) / 4 + 16;
        base + r.lookup(ip.parse().unwrap()).unwrap().offset().unwrap()
    }

    /// Turn the latitude `lat` (a double: control byte 0x68 + 8 bytes) into 8 raw bytes
    /// (0x88): every structure stays valid, so `Reader::verify` still passes, but the record
    /// no longer decodes as a location and its lookups would answer "not found".
    fn retype_latitude(bytes: &mut [u8], lat: f64) -> usize {
        let mut pat = vec![0x68];
        pat.extend_from_slice(&lat.to_be_bytes());
        let at = bytes.windows(9).position(|w| w == pat).unwrap();
        bytes[at] = 0x88;
        at
    }

    #[test]
    fn a_record_that_no_longer_decodes_is_refused_with_its_offset() {
        let mut bytes = city_db(true);
        let record = record_offset(&bytes, "198.51.100.7");
        retype_latitude(&mut bytes, 1.29);
        // The crate's structural check is satisfied …
        Reader::from_source(&bytes[..]).unwrap().verify().unwrap();
        // … ours is not, and says where.
        let err = GeoDb::from_bytes(bytes, "bad.mmdb")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.mmdb"), "{err}");
        assert!(
            err.contains(&format!("corrupt record at file offset {record} ")),
            "{err}"
        );
        assert!(err.contains("198.51.100.0/24"), "{err}");
    }

    #[test]
    fn garbage_records_are_refused_without_a_description_too() {
        // The ip-location-db family skips `Reader::verify` (no description): the record walk
        // is the only check between a damaged download and silent "not found" answers.
        let mut bytes = city_db(false);
        GeoDb::from_bytes(bytes.clone(), "ok.mmdb").unwrap();
        let record = record_offset(&bytes, "2001:db8:1::1");
        bytes[record..record + 4].fill(0xff);
        let err = GeoDb::from_bytes(bytes, "bad.mmdb")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.mmdb"), "{err}");
        assert!(err.contains("corrupt record at file offset"), "{err}");
    }

    #[test]
    fn every_record_of_the_embedded_database_decodes() {
        for bytes in [EMBEDDED_V4, EMBEDDED_V6] {
            let r = Reader::from_source(bytes).unwrap();
            let t = std::time::Instant::now();
            let w = verify_records(&r).unwrap();
            eprintln!("embedded: {w:?} in {:?} (debug build)", t.elapsed());
            assert!(w.networks > 50_000 && w.records > 100, "{w:?}");
        }
    }

    #[test]
    fn rejects_garbage() {
        let err = GeoDb::from_bytes(b"not a database".to_vec(), "x.mmdb").unwrap_err();
        assert!(err.to_string().contains("x.mmdb"), "{err}");
    }
}
