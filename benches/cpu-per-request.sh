#!/usr/bin/env bash
# User vs system CPU per request of geolb, nginx and HAProxy on the same HTTP/1.1 keep-alive load
# (wrk -c64, 5 s, proxy pinned to CPU 0, load and origins on CPU 1), read from /proc/<pid>/stat.
# Run benches/compare.sh once first: this reuses the configs it rendered under $BENCH_OUT/run.
#
#   benches/cpu-per-request.sh [geolb] [nginx] [haproxy]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-${TMPDIR:-/tmp}/geolb-bench}
RUN=$OUT/run
[ -f "$RUN/backend-a.conf" ] && [ -f "$OUT/bench-lb.toml" ] || {
  echo "no harness configs under $OUT: run benches/compare.sh first" >&2; exit 1; }
HDR='X-Bench-Client-Ip: 81.2.69.142'
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

taskset -c 1 nginx -c "$RUN/backend-a.conf" -p "$RUN" >/dev/null 2>&1 & PIDS+=($!)
taskset -c 1 nginx -c "$RUN/backend-b.conf" -p "$RUN" >/dev/null 2>&1 & PIDS+=($!)
sleep 0.5

ticks() { for p in "$@"; do awk '{print $14, $15}' "/proc/$p/stat"; done | awk '{u+=$1; s+=$2} END {print u+0, s+0}'; }

one() {
  local name=$1 port pid tree
  case $name in
    geolb) taskset -c 0 target/release/geolb run --no-watch --config "$OUT/bench-lb.toml" >/dev/null 2>&1 &
           pid=$!; port=19750 ;;
    nginx) taskset -c 0 nginx -c "$RUN/nginx.conf" -p "$RUN" >/dev/null 2>&1 &
           pid=$!; port=19710 ;;
    haproxy) taskset -c 0 haproxy -f "$RUN/haproxy.cfg" >/dev/null 2>&1 &
           pid=$!; port=19720 ;;
    *) echo "unknown candidate $name" >&2; return 1 ;;
  esac
  sleep 0.8
  tree=("$pid" $(pgrep -P "$pid" || true))
  local url="http://127.0.0.1:$port/"
  taskset -c 1 wrk -t1 -c64 -d1s -H "$HDR" "$url" >/dev/null
  read -r u0 s0 < <(ticks "${tree[@]}")
  n=$(taskset -c 1 wrk -t1 -c64 -d5s -H "$HDR" "$url" | awk '/requests in/ {print $1}')
  read -r u1 s1 < <(ticks "${tree[@]}")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c "
n=$n; hz=$(getconf CLK_TCK); u=($u1-$u0)/hz; s=($s1-$s0)/hz
print(f'{\"$name\":8} {n:>8} req  user {u/n*1e6:5.2f} us/req  system {s/n*1e6:5.2f} us/req  {n/(u+s):>8.0f} req per CPU-s')"
}

cargo build --release --locked -q
for c in "${@:-geolb nginx haproxy}"; do for x in $c; do one "$x"; done; done
