#!/usr/bin/env bash
# Side-by-side load comparison: geolb (geo routing on) against nginx and HAProxy, using the
# shared harness in ../shared/bench (loopback only, bounded in time, ~8 min for a full run).
#
#   benches/compare.sh                 # ROUNDS=1 for a quick look; other harness knobs pass through
#
# Installs the harness's tools if missing (Debian), builds geolb in release, writes a bench
# routes.toml from the harness's environment (BENCH_BACKENDS, BENCH_CERT, BENCH_KEY, BENCH_MMDB)
# and runs `run.sh nginx haproxy project`. Every request's X-Bench-Client-Ip is looked up in
# the geo database (BENCH_MMDB when set, else geolb's embedded one) and routed by distance.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
HARNESS=${HARNESS:-$ROOT/../shared/bench/run.sh}
[ -x "$HARNESS" ] || [ -f "$HARNESS" ] || { echo "harness not found at $HARNESS" >&2; exit 1; }

need=()
for t in nginx haproxy wrk h2load taskset; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nginx haproxy wrk nghttp2-client libnginx-mod-http-geoip2 curl openssl >/dev/null
fi

cargo build --release --locked
export BENCH_OUT=${BENCH_OUT:-${TMPDIR:-/tmp}/geolb-bench}
mkdir -p "$BENCH_OUT"

# The harness runs PROJECT_CMD with its environment; this wrapper renders the config then execs.
cat > "$BENCH_OUT/geolb-bench.sh" <<WRAP
#!/usr/bin/env bash
set -euo pipefail
IFS=, read -r B1 B2 <<< "\$BENCH_BACKENDS"
CFG="$BENCH_OUT/bench-lb.toml"
{
  echo '[listeners]'
  echo "https = \"127.0.0.1:\${PROJECT_HTTPS:-19751}\""
  echo "http = { address = \"127.0.0.1:\${PROJECT_HTTP:-19750}\", mode = \"serve\" }"
  echo 'admin = "off"'
  echo '[client_ip]'
  echo 'trusted_proxies = ["127.0.0.0/8"]'
  echo 'header = "x-bench-client-ip"'
  echo '[access_log]'
  echo 'enabled = false'
  if [ -n "\${BENCH_MMDB:-}" ]; then echo '[geo]'; echo "database = \"\$BENCH_MMDB\""; fi
  echo '[[tls.certificates]]'
  echo "cert = \"\$BENCH_CERT\""
  echo "key = \"\$BENCH_KEY\""
  echo 'default = true'
  # Two regions, one harness backend each, both in London: the GB client is equidistant, so
  # the two regions form one tier and share its traffic (the harness checks both answer).
  echo '[regions.london-a]'
  echo 'location = [51.51, -0.13]'
  echo '[regions.london-b]'
  echo 'location = [51.51, -0.13]'
  echo '[services.app]'
  echo 'lb = "round_robin"'
  echo 'backends = ['
  echo "  { region = \"london-a\", address = \"\$B1\" },"
  echo "  { region = \"london-b\", address = \"\$B2\" },"
  echo ']'
  echo '[[routes]]'
  echo 'service = "app"'
} > "\$CFG"
exec "$ROOT/target/release/geolb" run --no-watch --config "\$CFG"
WRAP
chmod +x "$BENCH_OUT/geolb-bench.sh"
export PROJECT_CMD="$BENCH_OUT/geolb-bench.sh"
export RUST_LOG=${RUST_LOG:-warn}
exec bash "$HARNESS" nginx haproxy project
