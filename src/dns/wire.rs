//! One DNS query in, one answer out: parse with hickory-proto (header, question, the EDNS
//! OPT record of the additional section), answer from the published view, serialise with
//! hickory-proto into a buffer the calling task reuses.
//!
//! Authoritative rules: AA on every answer from a zone; NXDOMAIN and NODATA carry the zone's
//! SOA (negative TTL) in the authority section; REFUSED outside the zones; FORMERR for
//! malformed questions and NOTIMP for other opcodes; ANY is answered minimally with
//! `HINFO "RFC8482" ""` (RFC 8482); a UDP answer larger than the requester's EDNS size (512
//! without EDNS) is sent empty with TC set; EDNS(0) answers advertise `max_udp_payload` and
//! echo the Client Subnet option with the scope the answer was based on (RFC 7871).

use std::net::IpAddr;

use hickory_proto::op::{
    Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode, emit_message_parts,
};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, HINFO, OPT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};

use crate::dns::DnsView;
use crate::dns::answer::{self, Family};
use crate::dns::metrics::{QtypeLabel, RcodeLabel};
use crate::dns::zone::{DnsConfig, DnsName, Lookup, NameKind};

/// How the query arrived (UDP answers are size-limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Datagram: the answer must fit the requester's EDNS size, or 512.
    Udp,
    /// Stream: no size limit.
    Tcp,
}

/// The EDNS Client Subnet of a query, as used for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ecs {
    /// The source prefix's network address.
    pub addr: IpAddr,
    /// SOURCE PREFIX-LENGTH.
    pub source: u8,
    /// SCOPE PREFIX-LENGTH returned: the prefix the answer was based on.
    pub scope: u8,
}

/// Buffers one task reuses for every query it answers.
#[derive(Debug)]
pub struct Scratch {
    /// The serialised answer after [`handle`] returned true.
    pub out: Vec<u8>,
    answers: Vec<Record>,
    /// The OPT record sent with EDNS answers (its options are rewritten per query).
    opt: Record,
    qname: [u8; 256],
}

impl Default for Scratch {
    fn default() -> Self {
        let mut opt =
            Record::from_rdata(Name::root(), 0, RData::OPT(OPT::new(Vec::with_capacity(2))));
        opt.dns_class = DNSClass::for_opt(1232);
        Scratch {
            out: Vec::with_capacity(1232),
            answers: Vec::with_capacity(8),
            opt,
            qname: [0; 256],
        }
    }
}

/// Records of the configuration an answer includes (referenced, not copied).
#[derive(Default, Clone, Copy)]
struct Fixed<'a> {
    /// SOA or NS records at the apex.
    answers: &'a [Record],
    /// The SOA of a negative answer.
    authority: Option<&'a Record>,
}

/// What the query asked, for the answer and the metrics.
struct Asked {
    meta: Metadata,
    query: Option<Query>,
    /// The requester's EDNS payload size, when it sent EDNS.
    edns_size: Option<u16>,
    ecs: Option<Ecs>,
    qtype: QtypeLabel,
    zone: Option<usize>,
}

/// Answer `packet` from `src` into `s.out`. Returns false when nothing is to be sent (not a
/// query, or shorter than a header).
pub fn handle(
    view: &DnsView,
    packet: &[u8],
    src: IpAddr,
    transport: Transport,
    now: u64,
    s: &mut Scratch,
) -> bool {
    let cfg = &*view.config;
    let mut dec = BinDecoder::new(packet);
    let Ok(header) = Header::read(&mut dec) else {
        cfg.metrics.malformed.increment(1);
        return false;
    };
    if header.metadata.message_type != MessageType::Query {
        cfg.metrics.malformed.increment(1);
        return false;
    }
    let mut meta = Metadata::new(
        header.metadata.id,
        MessageType::Response,
        header.metadata.op_code,
    );
    meta.recursion_desired = header.metadata.recursion_desired;
    meta.checking_disabled = header.metadata.checking_disabled;
    let mut asked = Asked {
        meta,
        query: None,
        edns_size: None,
        ecs: None,
        qtype: QtypeLabel::Other,
        zone: None,
    };
    s.answers.clear();
    let mut fixed = Fixed::default();
    let rcode = if header.metadata.op_code != OpCode::Query {
        ResponseCode::NotImp
    } else {
        match parse(cfg, &mut dec, &header, src, &mut asked) {
            Err(rc) => rc,
            Ok(geo_ip) => answer(view, &mut asked, geo_ip, now, s, &mut fixed),
        }
    };
    finish(cfg, &mut asked, rcode, transport, s, fixed)
}

/// Read the question and the additional section (EDNS, Client Subnet). Returns the address
/// the requester is located by, or the error code to answer.
fn parse(
    cfg: &DnsConfig,
    dec: &mut BinDecoder<'_>,
    header: &Header,
    src: IpAddr,
    asked: &mut Asked,
) -> Result<IpAddr, ResponseCode> {
    let c = header.counts;
    if c.queries != 1 {
        return Err(ResponseCode::FormErr);
    }
    let query = Query::read(dec).map_err(|_| ResponseCode::FormErr)?;
    asked.qtype = qtype_label(query.query_type());
    asked.query = Some(query);
    if c.answers != 0 || c.authorities != 0 {
        return Err(ResponseCode::FormErr);
    }
    let (_, edns, _) = Message::read_records(dec, usize::from(c.additionals), true, OpCode::Query)
        .map_err(|_| ResponseCode::FormErr)?;
    let Some(edns) = edns else {
        return Ok(src);
    };
    asked.edns_size = Some(edns.max_payload().max(512));
    if edns.version() != 0 {
        return Err(ResponseCode::BADVERS);
    }
    let Some(EdnsOption::Subnet(cs)) = edns.option(EdnsCode::Subnet) else {
        return Ok(src);
    };
    cfg.metrics.ecs.increment(1);
    let (max, cap) = match cs.addr() {
        IpAddr::V4(_) => (32, cfg.ecs_max_v4),
        IpAddr::V6(_) => (128, cfg.ecs_max_v6),
    };
    // RFC 7871 §7.1.2: a query's SCOPE must be 0; a SOURCE longer than the address is wrong.
    if cs.scope_prefix() != 0 || cs.source_prefix() > max {
        return Err(ResponseCode::FormErr);
    }
    let source = cs.source_prefix();
    let addr = mask(cs.addr(), source);
    asked.ecs = Some(Ecs {
        addr,
        source,
        scope: source.min(cap),
    });
    // SOURCE 0: the requester opts out; locate by the resolver's own address.
    Ok(if source == 0 { src } else { addr })
}

/// Answer a parsed question (its records go to `s`); returns the response code.
fn answer<'v>(
    view: &'v DnsView,
    asked: &mut Asked,
    geo_ip: IpAddr,
    now: u64,
    s: &mut Scratch,
    fixed: &mut Fixed<'v>,
) -> ResponseCode {
    let cfg = &*view.config;
    let Some(query) = &asked.query else {
        return ResponseCode::FormErr;
    };
    if query.query_class() != DNSClass::IN {
        return ResponseCode::Refused;
    }
    let Some(len) = lower_name(query.name(), &mut s.qname) else {
        return ResponseCode::Refused;
    };
    let lookup = cfg.lookup(&s.qname[..len]);
    let qtype = query.query_type();
    let (zone, name) = match lookup {
        Lookup::Outside => return ResponseCode::Refused,
        Lookup::NxDomain { zone } => {
            asked.zone = Some(zone);
            asked.meta.authoritative = true;
            fixed.authority = Some(&cfg.zones[zone].soa_negative);
            return ResponseCode::NXDomain;
        }
        Lookup::Apex { zone, name } => {
            asked.zone = Some(zone);
            asked.meta.authoritative = true;
            let z = &cfg.zones[zone];
            match qtype {
                RecordType::SOA => {
                    fixed.answers = std::slice::from_ref(&z.soa);
                    return ResponseCode::NoError;
                }
                RecordType::NS => {
                    fixed.answers = &z.ns;
                    return ResponseCode::NoError;
                }
                _ => (zone, name),
            }
        }
        Lookup::Name { zone, name } => {
            asked.zone = Some(zone);
            asked.meta.authoritative = true;
            (zone, Some(name))
        }
    };
    let rcode = match (qtype, name.map(|n| &cfg.names[n])) {
        (RecordType::ANY, _) => {
            // RFC 8482: a minimal answer instead of everything at the name.
            let hinfo = HINFO::new("RFC8482".to_owned(), String::new());
            s.answers.push(Record::from_rdata(
                query.name().clone(),
                cfg.ttl,
                RData::HINFO(hinfo),
            ));
            ResponseCode::NoError
        }
        (RecordType::A, Some(n)) => addresses(view, n, Family::V4, query.name(), geo_ip, now, s),
        (RecordType::AAAA, Some(n)) => addresses(view, n, Family::V6, query.name(), geo_ip, now, s),
        _ => ResponseCode::NoError,
    };
    if rcode == ResponseCode::NoError && s.answers.is_empty() {
        // NODATA: the name exists, not with this type.
        fixed.authority = Some(&cfg.zones[zone].soa_negative);
    }
    if rcode == ResponseCode::ServFail {
        asked.meta.authoritative = false;
    }
    rcode
}

/// A/AAAA records of a name for a requester located at `geo_ip`.
fn addresses(
    view: &DnsView,
    n: &DnsName,
    family: Family,
    owner: &Name,
    geo_ip: IpAddr,
    now: u64,
    s: &mut Scratch,
) -> ResponseCode {
    let cfg = &*view.config;
    let ttl = cfg.ttl;
    let mut push = |ip: IpAddr| {
        let data = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        s.answers.push(Record::from_rdata(owner.clone(), ttl, data));
    };
    match &n.kind {
        NameKind::Static { addrs } => {
            addrs
                .iter()
                .filter(|ip| family.has(**ip))
                .for_each(|ip| push(*ip));
            ResponseCode::NoError
        }
        NameKind::EmptyNonTerminal => ResponseCode::NoError,
        NameKind::Route { .. } | NameKind::Targets { .. } => {
            let step = n.draws.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let draw = (step as f64 * 0.618_033_988_749_894_9).fract();
            let Some(d) = answer::decide(cfg, &view.snap, n, family, geo_ip, now, draw) else {
                return ResponseCode::NoError;
            };
            if d.servfail {
                return ResponseCode::ServFail;
            }
            for &p in d.chosen() {
                let region = answer::region_of(&view.snap, n, d.order.idx[p]);
                if let Some(c) = cfg.metrics.answer_region.get(region.0) {
                    c.increment(1);
                }
                if let Some(r) = cfg.regions.get(region.0) {
                    r.answered
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                answer::for_each_address(cfg, &view.snap, n, &d, p, family, &mut push);
            }
            ResponseCode::NoError
        }
    }
}

/// Serialise the answer (truncated when it does not fit a UDP requester) and count it.
fn finish(
    cfg: &DnsConfig,
    asked: &mut Asked,
    rcode: ResponseCode,
    transport: Transport,
    s: &mut Scratch,
    mut fixed: Fixed<'_>,
) -> bool {
    asked.meta.response_code = rcode;
    cfg.metrics
        .query(asked.zone, asked.qtype, rcode_label(rcode));
    if asked.edns_size.is_some() {
        s.opt.dns_class = DNSClass::for_opt(cfg.max_udp_payload);
        s.opt.ttl = u32::from(rcode.high()) << 24;
        if let RData::OPT(opt) = &mut s.opt.data {
            opt.options.clear();
            if let Some(e) = asked.ecs.filter(|_| rcode != ResponseCode::FormErr) {
                let cs = ClientSubnet::new(e.addr, e.source, e.scope);
                opt.options.push((EdnsCode::Subnet, EdnsOption::Subnet(cs)));
            }
        }
    }
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => usize::from(
            asked
                .edns_size
                .unwrap_or(512)
                .min(cfg.max_udp_payload)
                .max(512),
        ),
    };
    if emit(asked, s, fixed).is_err() {
        return false;
    }
    if s.out.len() > limit {
        asked.meta.truncation = true;
        s.answers.clear();
        fixed = Fixed::default();
        if emit(asked, s, fixed).is_err() {
            return false;
        }
    }
    true
}

fn emit(asked: &Asked, s: &mut Scratch, fixed: Fixed<'_>) -> Result<(), hickory_proto::ProtoError> {
    s.out.clear();
    let mut enc = BinEncoder::new(&mut s.out);
    let with_opt = usize::from(asked.edns_size.is_some());
    emit_message_parts(
        &asked.meta,
        &mut asked.query.iter(),
        &mut fixed.answers.iter().chain(s.answers.iter()),
        &mut fixed.authority.into_iter(),
        &mut std::iter::once(&s.opt).take(with_opt),
        None,
        None,
        &mut enc,
    )?;
    Ok(())
}

/// An empty truncated answer to `packet` (the rate limit's slip): header and question only.
pub fn slip(packet: &[u8], s: &mut Scratch) -> bool {
    let mut dec = BinDecoder::new(packet);
    let Ok(header) = Header::read(&mut dec) else {
        return false;
    };
    if header.metadata.message_type != MessageType::Query {
        return false;
    }
    let mut meta = Metadata::new(
        header.metadata.id,
        MessageType::Response,
        header.metadata.op_code,
    );
    meta.truncation = true;
    let query = if header.counts.queries == 1 {
        Query::read(&mut dec).ok()
    } else {
        None
    };
    let asked = Asked {
        meta,
        query,
        edns_size: None,
        ecs: None,
        qtype: QtypeLabel::Other,
        zone: None,
    };
    s.answers.clear();
    emit(&asked, s, Fixed::default()).is_ok()
}

/// `name` in lowercase without the trailing dot into `buf`; `None` when a label holds a dot
/// (it could never match a configured name).
fn lower_name(name: &Name, buf: &mut [u8; 256]) -> Option<usize> {
    let mut n = 0;
    for (i, label) in name.iter().enumerate() {
        if label.contains(&b'.') || n + label.len() + 1 > buf.len() {
            return None;
        }
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        for &b in label {
            buf[n] = b.to_ascii_lowercase();
            n += 1;
        }
    }
    Some(n)
}

/// `ip` with everything after the first `prefix` bits cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

fn qtype_label(t: RecordType) -> QtypeLabel {
    match t {
        RecordType::A => QtypeLabel::A,
        RecordType::AAAA => QtypeLabel::Aaaa,
        RecordType::SOA => QtypeLabel::Soa,
        RecordType::NS => QtypeLabel::Ns,
        RecordType::ANY => QtypeLabel::Any,
        _ => QtypeLabel::Other,
    }
}

fn rcode_label(r: ResponseCode) -> RcodeLabel {
    match r {
        ResponseCode::NoError => RcodeLabel::NoError,
        ResponseCode::NXDomain => RcodeLabel::NxDomain,
        ResponseCode::Refused => RcodeLabel::Refused,
        ResponseCode::ServFail => RcodeLabel::ServFail,
        ResponseCode::NotImp => RcodeLabel::NotImp,
        _ => RcodeLabel::FormErr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_only_the_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(mask(ip("81.2.69.142"), 24), ip("81.2.69.0"));
        assert_eq!(mask(ip("81.2.69.142"), 0), ip("0.0.0.0"));
        assert_eq!(mask(ip("81.2.69.142"), 32), ip("81.2.69.142"));
        assert_eq!(mask(ip("2001:db8:1:2:3::1"), 56), ip("2001:db8:1::"));
    }

    #[test]
    fn names_are_lowered_without_the_root() {
        let mut b = [0u8; 256];
        let n = Name::from_ascii("Shop.Example.COM.").unwrap();
        let len = lower_name(&n, &mut b).unwrap();
        assert_eq!(&b[..len], b"shop.example.com");
        assert_eq!(lower_name(&Name::root(), &mut b), Some(0));
    }
}
