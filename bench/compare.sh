#!/usr/bin/env bash
# Compares stepwise with Prefect 3 and Dagster on the same no-op workloads.
#
# What: a chain of N steps (each consumes its predecessor's result) and a
# fan-out of N independent steps, in each system; the table shows ms per
# step and steps per second (wall time / N, measured inside each tool) and
# the ratio peer ms/step ÷ stepwise ms/step (above 1: stepwise is faster).
#
# How:
#   1. Installs Prefect 3 and Dagster from PyPI into a throwaway virtualenv
#      ($BENCH_VENV, default target/bench-venv; reused when it already works).
#   2. Runs bench/peers/prefect_bench.py (local temporary API server, SQLite,
#      PREFECT_API_URL unset, so it works offline) and
#      bench/peers/dagster_bench.py (execute_in_process against a SQLite
#      DagsterInstance in a temp dir) on both shapes. Each times only the
#      measured run, after a warm-up run.
#   3. Builds stepwise --release, starts `stepwise serve` on a free port with
#      its own database ($STEPWISE_DATABASE_URL, default database
#      stepwise_bench_compare on the local PostgreSQL) and a temporary data
#      dir, and runs `stepwise bench --json` on the same shapes with Pass
#      steps (no process per step, like the peers' in-process no-ops).
#   4. Prints one table, then stops the server it started.
#
# Usage: bench/compare.sh [--steps N] [--step-type pass|command]
# Needs: cargo, python3.11 (or $PYTHON), a local PostgreSQL, network to PyPI.
set -euo pipefail

steps=100
step_type=pass
while [[ $# -gt 0 ]]; do
  case "$1" in
    --steps) steps="$2"; shift 2 ;;
    --step-type) step_type="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3.11}"
venv="${BENCH_VENV:-$root/target/bench-venv}"
work="$(mktemp -d -t stepwise-compare.XXXXXX)"
server_pid=""

cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

say() { echo "compare: $*" >&2; }

# --- 1. peers' virtualenv ---------------------------------------------------
if ! "$venv/bin/python" -c 'import prefect, dagster' 2>/dev/null; then
  say "installing Prefect 3 and Dagster into $venv (takes a few minutes)"
  "$python" -m venv "$venv"
  if ! "$venv/bin/pip" install --quiet 'prefect>=3,<4' 'dagster' >"$work/pip.log" 2>&1; then
    tail -20 "$work/pip.log" >&2
    say "ERROR: could not install prefect and dagster from PyPI (is the package index reachable?)"
    exit 3
  fi
fi
versions="$("$venv/bin/python" -c 'import prefect, dagster; print(f"prefect {prefect.__version__}, dagster {dagster.__version__}")')"
say "peers: $versions"

# --- 2. peers ---------------------------------------------------------------
peer_results="$work/peers.jsonl"
: >"$peer_results"
for shape in chain fanout; do
  say "prefect $shape $steps"
  env -u PREFECT_API_URL PREFECT_HOME="$work/prefect-home" PREFECT_LOGGING_LEVEL=WARNING \
    "$venv/bin/python" bench/peers/prefect_bench.py --shape "$shape" --steps "$steps" \
    2>"$work/prefect-$shape.log" | tail -1 >>"$peer_results" \
    || { tail -20 "$work/prefect-$shape.log" >&2; say "ERROR: prefect $shape failed"; exit 1; }
  say "dagster $shape $steps"
  DAGSTER_HOME="$work/dagster-home" \
    "$venv/bin/python" bench/peers/dagster_bench.py --shape "$shape" --steps "$steps" \
    2>"$work/dagster-$shape.log" | tail -1 >>"$peer_results" \
    || { tail -20 "$work/dagster-$shape.log" >&2; say "ERROR: dagster $shape failed"; exit 1; }
done

# --- 3. stepwise ------------------------------------------------------------
say "building stepwise (release)"
cargo build --release --quiet
bin="$root/target/release/stepwise"
port="$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
export STEPWISE_DATABASE_URL="${STEPWISE_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/stepwise_bench_compare}"
say "starting stepwise on $url"
# The server's admin token, which the bench sends (STEPWISE_TOKEN).
STEPWISE_TOKEN="$("$bin" token generate)"
export STEPWISE_TOKEN
STEPWISE_AUTH__ADMIN_TOKEN="$STEPWISE_TOKEN" RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/stepwise-data" \
  >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 120); do
  curl -fsS "$url/healthz" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { tail -20 "$work/server.log" >&2; say "ERROR: stepwise exited"; exit 1; }
  sleep 0.5
done
curl -fsS "$url/healthz" >/dev/null || { say "ERROR: stepwise did not become healthy"; exit 1; }

# Warm-up, as the peers get: first connections, first plans, first pages.
"$bin" bench --url "$url" --shape chain --steps 10 --step-type "$step_type" >/dev/null
for shape in chain fanout; do
  say "stepwise $shape $steps"
  "$bin" bench --url "$url" --shape "$shape" --steps "$steps" --step-type "$step_type" \
    --server-pid "$server_pid" --json >"$work/stepwise-$shape.json"
done

# --- 4. table ---------------------------------------------------------------
"$python" - "$peer_results" "$work" "$steps" "$step_type" <<'PY'
import json, sys
peers_file, work, steps, step_type = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
peers = [json.loads(l) for l in open(peers_file) if l.strip()]
sw = {s: json.load(open(f"{work}/stepwise-{s}.json")) for s in ("chain", "fanout")}
fmt = lambda ms, sps: f"{ms:8.2f} ms  {sps:8.1f}/s"
print(f"{'workload':<14} {'peer':<8} {'peer (ms/step, steps/s)':<24} {'stepwise ' + step_type:<24} {'ratio':>7}")
for p in sorted(peers, key=lambda p: (p["shape"], p["peer"])):
    s = sw[p["shape"]]
    print(f"{p['shape'] + '-' + str(steps):<14} {p['peer']:<8} {fmt(p['ms_per_step'], p['steps_per_second']):<24} "
          f"{fmt(s['ms_per_step'], s['steps_per_second']):<24} {p['ms_per_step'] / s['ms_per_step']:>6.2f}x")
print()
print("ratio = peer ms/step / stepwise ms/step (above 1: stepwise is faster).")
for shape, s in sw.items():
    l, d = s["step_start_latency"], s["describe_latency"]
    rss = s.get("server_rss") or {}
    print(f"stepwise {shape}: step start latency p50 {l['p50_ms']:.2f} ms p99 {l['p99_ms']:.2f} ms; "
          f"describe p50 {d['p50_ms']:.2f} ms p99 {d['p99_ms']:.2f} ms; "
          f"server peak RSS {rss.get('peak_rss_mib', float('nan')):.1f} MiB")
PY
