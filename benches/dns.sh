#!/usr/bin/env bash
# GeoDNS throughput: queries per second per core of geolb's DNS listener next to gdnsd (geoip
# plugin, auto_dc_coords: nearest datacenter by distance) and PowerDNS (geoip backend, by
# continent), each pinned to one core, on the same machine, with the same query mix and the
# same MaxMind database. dnsperf runs on the other core.
#
#   benches/dns.sh                       # ROUNDS=3 DURATION=10 by default (~3 min)
#   ROUNDS=1 DURATION=5 benches/dns.sh   # a quick look
#
# Query mix (one binary query file for all three, dnsperf -B): 80 % A shop.bench.test with an
# EDNS Client Subnet drawn from ~40 networks (those in MaxMind's GeoIP2-City-Test database on
# four continents, and networks it does not know), 10 % AAAA with ECS (NODATA: the regions have
# IPv4 edges only), 5 % A without ECS, 5 % names that do not exist (NXDOMAIN).
# Loopback only; every server and dnsperf run is bounded by `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
OUT=${BENCH_OUT:-${TMPDIR:-/tmp}/geolb-dns-bench}
MMDB=${GEO_MMDB:-$ROOT/../shared/geo/GeoIP2-City-Test.mmdb}
P_GEOLB=15300 P_GDNSD=15301 P_PDNS=15302

need=()
for t in dnsperf gdnsd pdns_server dig taskset python3; do command -v "$t" >/dev/null || need+=("$t"); done
[ -e /usr/lib/x86_64-linux-gnu/pdns/libgeoipbackend.so ] || ls /usr/lib/*/pdns/libgeoipbackend.so >/dev/null 2>&1 || need+=(pdns-backend-geoip)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing dnsperf gdnsd pdns-server pdns-backend-geoip dnsutils (missing: ${need[*]})"
  export DEBIAN_FRONTEND=noninteractive
  # The packages must not start system-wide servers on port 53.
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; }
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends dnsperf gdnsd pdns-server pdns-backend-geoip dnsutils util-linux python3 >/dev/null
fi

GEO=1
if [ ! -f "$MMDB" ]; then
  echo "!! $MMDB not found (set GEO_MMDB): gdnsd and PowerDNS run without geo, geolb on its embedded database"
  GEO=0
fi

echo "== building geolb (release)"
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet   # NO_BUILD=1: use target/release as it is
rm -rf "$OUT" && mkdir -p "$OUT"/{geolb,gdnsd/zones,gdnsd/run,gdnsd/state,pdns}

# --- the query file (2-byte length + message, as dnsperf -B reads it) ---------------------------
python3 - "$OUT/queries.bin" <<'PY'
import random, struct, sys, ipaddress
random.seed(7)
nets = ["81.2.69.0/24", "89.160.20.0/24", "2.125.160.0/24", "216.160.83.0/24", "175.16.199.0/24",
        "214.0.0.0/24", "214.0.1.0/24", "214.78.120.0/24", "67.43.156.0/24", "149.101.100.0/24",
        "2001:218::/48", "2a02:d180::/48", "2001:480:10::/48"]
nets += [f"202.196.{224 + i}.0/24" for i in range(16)]          # Philippines (a /20)
nets += [f"198.18.{i}.0/24" for i in range(10)]                 # unknown to the database
def name(n):
    return b"".join(bytes([len(l)]) + l.encode() for l in n.split(".")) + b"\0"
def query(qid, qname, qtype, ecs):
    q = struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 1) + name(qname) + struct.pack(">HH", qtype, 1)
    opt = b""
    if ecs:
        net = ipaddress.ip_network(ecs)
        fam = 1 if net.version == 4 else 2
        nbytes = (net.prefixlen + 7) // 8
        data = struct.pack(">HBB", fam, net.prefixlen, 0) + net.network_address.packed[:nbytes]
        opt = struct.pack(">HH", 8, len(data)) + data
    return q + b"\0" + struct.pack(">HHIH", 41, 1232, 0, len(opt)) + opt
out = bytearray()
for i in range(20000):
    r = random.random()
    if r < 0.80:   m = query(i & 0xFFFF, "shop.bench.test", 1, random.choice(nets))
    elif r < 0.90: m = query(i & 0xFFFF, "shop.bench.test", 28, random.choice(nets))
    elif r < 0.95: m = query(i & 0xFFFF, "shop.bench.test", 1, None)
    else:          m = query(i & 0xFFFF, f"nope{random.randrange(1000)}.bench.test", 1, None)
    out += struct.pack(">H", len(m)) + m
open(sys.argv[1], "wb").write(out)
PY

# --- geolb -----------------------------------------------------------------------------------
GEO_TOML=""; [ "$GEO" = 1 ] && GEO_TOML="[geo]
database = \"$MMDB\""
cat > "$OUT/geolb/routes.toml" <<EOF
[listeners]
http = { address = "127.0.0.1:15399", mode = "serve" }
admin = "off"
[access_log]
enabled = false
$GEO_TOML
[regions.eu]
location = [50.11, 8.68]
edge = ["127.0.1.1"]
[regions.ap]
location = [35.68, 139.75]
edge = ["127.0.1.2"]
[regions.sa]
location = [-23.55, -46.63]
edge = ["127.0.1.3"]
[services.shop]
backends = [{ region = "eu", address = "127.0.0.1:9" }, { region = "ap", address = "127.0.0.1:10" }, { region = "sa", address = "127.0.0.1:11" }]
[[routes]]
hosts = ["shop.bench.test"]
service = "shop"
[dns]
udp = "127.0.0.1:$P_GEOLB"
tcp = "127.0.0.1:$P_GEOLB"
nameservers = ["ns1.bench.test"]
[[dns.zones]]
name = "bench.test"
[[dns.names]]
name = "shop.bench.test"
route = "shop.bench.test"
[[dns.names]]
name = "ns1.bench.test"
addresses = ["127.0.0.53"]
EOF

# --- gdnsd -------------------------------------------------------------------------------------
if [ "$GEO" = 1 ]; then
  GDNSD_PLUGIN="plugins => { geoip => {
    maps => { m => { geoip2_db => $MMDB, datacenters => [eu, ap, sa],
      auto_dc_coords => { eu => [50.11, 8.68], ap => [35.68, 139.75], sa => [-23.55, -46.63] } } }
    resources => { shop => { map => m, dcmap => { eu => 127.0.1.1, ap => 127.0.1.2, sa => 127.0.1.3 } } }
  } }"
  SHOP="shop 30 DYNA geoip!shop"
else
  GDNSD_PLUGIN=""
  SHOP="shop 30 A 127.0.1.1"
fi
cat > "$OUT/gdnsd/config" <<EOF
options => {
  listen => [ 127.0.0.1:$P_GDNSD ]
  udp_threads => 1
  tcp_threads => 1
  run_dir => $OUT/gdnsd/run
  state_dir => $OUT/gdnsd/state
  edns_client_subnet => true
}
$GDNSD_PLUGIN
EOF
cat > "$OUT/gdnsd/zones/bench.test" <<EOF
\$TTL 3600
@ SOA ns1 hostmaster 1 3600 600 604800 60
@ NS ns1
ns1 A 127.0.0.53
$SHOP
EOF

# --- PowerDNS ----------------------------------------------------------------------------------
if [ "$GEO" = 1 ]; then
  PDNS_DB="geoip-database-files=mmdb:$MMDB"
  SERVICES="  services:
    shop.bench.test: [ '%cn.shop.bench.test', 'unknown.shop.bench.test' ]"
else
  PDNS_DB="geoip-database-files="
  SERVICES="  services:
    shop.bench.test: 'unknown.shop.bench.test'"
fi
cat > "$OUT/pdns/zones.yaml" <<EOF
domains:
- domain: bench.test
  ttl: 30
  records:
    bench.test:
      - soa: ns1.bench.test hostmaster.bench.test 1 3600 600 604800 60
      - ns: ns1.bench.test
    ns1.bench.test:
      - a: 127.0.0.53
    eu.shop.bench.test:
      - a: 127.0.1.1
    af.shop.bench.test:
      - a: 127.0.1.1
    as.shop.bench.test:
      - a: 127.0.1.2
    oc.shop.bench.test:
      - a: 127.0.1.2
    na.shop.bench.test:
      - a: 127.0.1.2
    sa.shop.bench.test:
      - a: 127.0.1.3
    unknown.shop.bench.test:
      - a: 127.0.1.1
$SERVICES
EOF
cat > "$OUT/pdns/pdns.conf" <<EOF
launch=geoip
$PDNS_DB
geoip-zones-file=$OUT/pdns/zones.yaml
local-address=127.0.0.1
local-port=$P_PDNS
socket-dir=$OUT/pdns
edns-subnet-processing=yes
daemon=no
guardian=no
disable-syslog=yes
loglevel=3
receiver-threads=1
distributor-threads=1
EOF

# --- running -----------------------------------------------------------------------------------
PID=""
start() {
  local cap=$((ROUNDS * (DURATION + 20) + 60))
  case $1 in
    geolb) GEOLB_WORKERS=1 RUST_LOG=warn timeout "$cap" taskset -c "$SERVER_CPU" \
             "$ROOT/target/release/geolb" --config "$OUT/geolb/routes.toml" run --no-watch >"$OUT/geolb.log" 2>&1 & PID=$!; PORT=$P_GEOLB ;;
    gdnsd) timeout "$cap" taskset -c "$SERVER_CPU" gdnsd -c "$OUT/gdnsd" start >"$OUT/gdnsd.log" 2>&1 & PID=$!; PORT=$P_GDNSD ;;
    pdns)  timeout "$cap" taskset -c "$SERVER_CPU" pdns_server --config-dir="$OUT/pdns" >"$OUT/pdns.log" 2>&1 & PID=$!; PORT=$P_PDNS ;;
  esac
  for _ in $(seq 100); do
    dig @127.0.0.1 -p "$PORT" +short +time=1 +tries=1 ns1.bench.test A 2>/dev/null | grep -q 127.0.0.53 && return 0
    sleep 0.1
  done
  echo "!! $1 did not start; see $OUT/$1.log" >&2; tail -20 "$OUT/$1.log" >&2; return 1
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
check_answers() {
  printf '   %-6s London→%s Changchun→%s Manila→%s Singapore→%s unknown→%s\n' "$1" \
    "$(dig @127.0.0.1 -p "$PORT" +short shop.bench.test +subnet=81.2.69.0/24)" \
    "$(dig @127.0.0.1 -p "$PORT" +short shop.bench.test +subnet=175.16.199.0/24)" \
    "$(dig @127.0.0.1 -p "$PORT" +short shop.bench.test +subnet=202.196.224.0/24)" \
    "$(dig @127.0.0.1 -p "$PORT" +short shop.bench.test +subnet=214.0.0.0/24)" \
    "$(dig @127.0.0.1 -p "$PORT" +short shop.bench.test +subnet=198.18.0.0/24)"
}
measure() {
  timeout $((DURATION + 30)) taskset -c "$CLIENT_CPU" dnsperf -B -d "$OUT/queries.bin" -s 127.0.0.1 -p "$PORT" \
    -l "$DURATION" -c 16 -q 400 -t 2 >"$OUT/$1.dnsperf.$2" 2>&1 || true
  local qps lost
  qps=$(awk '/Queries per second:/ {print $4}' "$OUT/$1.dnsperf.$2")
  lost=$(awk '/Queries lost:/ {print $3}' "$OUT/$1.dnsperf.$2")
  echo "   $1 round $2: ${qps:-?} qps (lost ${lost:-?})" >&2
  echo "${qps:-0}"
}

declare -A RESULTS
echo "== answers (ECS subnet → edge), each server"
for s in geolb gdnsd pdns; do start "$s"; check_answers "$s"; stop; done
echo "== $ROUNDS interleaved rounds of ${DURATION}s; server on CPU $SERVER_CPU, dnsperf on CPU $CLIENT_CPU"
for r in $(seq "$ROUNDS"); do
  for s in geolb gdnsd pdns; do
    start "$s"
    RESULTS[$s]="${RESULTS[$s]:-} $(measure "$s" "$r")"
    stop
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
G=$(echo "${RESULTS[geolb]}" | median)
D=$(echo "${RESULTS[gdnsd]}" | median)
P=$(echo "${RESULTS[pdns]}" | median)
echo
echo "== queries per second on one core (median of $ROUNDS × ${DURATION}s)"
printf '%-22s %12s %14s\n' server qps "geolb / it"
printf '%-22s %12.0f %14s\n' "geolb" "$G" "1.00"
printf '%-22s %12.0f %14.2f\n' "gdnsd 3 (geoip)" "$D" "$(awk -v a="$G" -v b="$D" 'BEGIN { print (b > 0) ? a / b : 0 }')"
printf '%-22s %12.0f %14.2f\n' "PowerDNS 4 (geoip)" "$P" "$(awk -v a="$G" -v b="$P" 'BEGIN { print (b > 0) ? a / b : 0 }')"
[ "$GEO" = 1 ] || echo "(without a MaxMind database: gdnsd and PowerDNS answered without geo)"
echo "raw: $OUT/*.dnsperf.*"
