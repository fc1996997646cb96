#!/usr/bin/env bash
# Runs every Nexmark query on one peer and prints a markdown table.
#   benches/peers/run_all.sh bytewax FILE [--workers N]
#   benches/peers/run_all.sh flink FILE [--parallelism N] [--no-mini-batch]
# Env: QUERIES="q0 q1 ..." to choose queries; TIMEOUT=seconds per run (default 900);
#      REPEAT=n runs each query n times and reports the run with the median seconds;
#      WAIT_IDLE=1 to wait before each run until the rest of the machine is idle
#      (< 20% of one core busy over 2 s; at most WAIT_IDLE_MAX s, default 900),
#      as other work skews the figures. The `others_cpu` column says how much CPU
#      other processes used during the run (% of one core; 0 = the run had the machine).
# A run's stderr is kept in /tmp/nexmark-peer-PEER-QUERY.err.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="${TRIBUTARY_PEERS_DIR:-${TRIBUTARY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tributary}/peers}"
peer="${1:?usage: run_all.sh bytewax|flink FILE [args]}"; file="${2:?events file}"; shift 2
case "$peer" in
  bytewax) py="$root/bytewax-venv/bin/python"; script="$here/bytewax_nexmark.py"
           queries="${QUERIES:-q0 q1 q2 q3 q4 q5 q6 q7 q8}" ;;
  flink)   py="$root/flink-venv/bin/python"; script="$here/flink_nexmark.py"
           queries="${QUERIES:-q0 q1 q2 q3 q4 q5 q6 q6_topn q7 q8}"
           export JAVA_HOME="${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}" ;;
  *) echo "unknown peer $peer" >&2; exit 2 ;;
esac
[ -x "$py" ] || { echo "no venv at $py: run $here/setup.sh first" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }

cpu_ticks() {  # "busy total" jiffies of the whole machine
  local _c u n s i w q sq st
  read -r _c u n s i w q sq st _ < /proc/stat
  echo "$((u+n+s+q+sq+st)) $((u+n+s+q+sq+st+i+w))"
}
busy_pct() {  # CPU busy over 2 s, in % of one core
  local b1 t1 b2 t2
  read -r b1 t1 < <(cpu_ticks); sleep 2; read -r b2 t2 < <(cpu_ticks)
  echo $(( t2 > t1 ? (b2 - b1) * 100 * $(nproc) / (t2 - t1) : 0 ))
}
hz=$(getconf CLK_TCK)

# One run of query $1: prints "seconds<TAB>table row", or "inf<TAB>failure row".
run_one() {
  local q="$1" err="/tmp/nexmark-peer-$peer-$1.err" cpu="/tmp/nexmark-peer-$peer-$1.cpu"
  local b1 t1 b2 t2 line rc others
  if [ "${WAIT_IDLE:-0}" = 1 ]; then
    local waited=0
    until [ "$(busy_pct)" -lt 20 ] || [ $waited -ge "${WAIT_IDLE_MAX:-900}" ]; do sleep 8; waited=$((waited + 10)); done
  fi
  read -r b1 t1 < <(cpu_ticks)
  line="$(/usr/bin/time -f 'peer_cpu_seconds=%U+%S' -o "$cpu" \
          timeout "${TIMEOUT:-900}" "$py" "$script" --query "$q" --input "$file" "${args[@]}" 2>"$err" | tail -1)"
  rc=$?
  read -r b2 t2 < <(cpu_ticks)
  # CPU that others used meanwhile, in % of one core over the run.
  others=$(python3 - "$b1" "$t1" "$b2" "$t2" "$hz" "$(nproc)" "$cpu" "$err" <<'PY'
import re, sys
b1, t1, b2, t2, hz, n = map(int, sys.argv[1:7])
m = re.search(r"peer_cpu_seconds=([\d.]+)\+([\d.]+)", open(sys.argv[7]).read())
own = float(m.group(1)) + float(m.group(2)) if m else 0.0
m = re.search(r"jvm_cpu_seconds=([\d.]+)", open(sys.argv[8]).read())  # Flink's JVM is not waited for
own += float(m.group(1)) if m else 0.0
print(max(0, round(((b2 - b1) / hz - own) * 100 * n * hz / max(1, t2 - t1))))
PY
)
  if [ -z "$line" ] || { [ $rc -ne 0 ] && [ $rc -ne 3 ]; }; then
    printf 'inf\t| %s | failed (exit %s, see %s) | | | | |\n' "$q" "$rc" "$err"; return
  fi
  local eps ev res sec other
  eps=$(sed -n 's/.*events\/s=\([^ ]*\).*/\1/p' <<<"$line")
  ev=$(sed -n 's/.* events=\([^ ]*\).*/\1/p' <<<"$line")
  res=$(sed -n 's/.* results=\([^ ]*\).*/\1/p' <<<"$line")
  sec=$(sed -n 's/.* seconds=\([^ ]*\).*/\1/p' <<<"$line")
  other=$(grep -o 'startup_seconds=[^ ]*\|job_seconds=[^ ]*\|unsupported=1' <<<"$line" | tr '\n' ' ')
  other="$other$(grep -o 'late=[0-9]*' "$err" | head -1) others_cpu=${others}%"
  printf '%s\t| %s | %s | %s | %s | %s | %s |\n' "$sec" "$q" "$eps" "$ev" "$res" "$sec" "$other"
}

args=("$@")
echo "| query | events/s | events | results | seconds | other |"
echo "|---|---|---|---|---|---|"
for q in $queries; do
  runs=()
  for _ in $(seq "${REPEAT:-1}"); do runs+=("$(run_one "$q")"); done
  printf '%s\n' "${runs[@]}" | sort -g -k1,1 | sed -n "$(( (${#runs[@]} + 1) / 2 ))p" | cut -f2-
done
