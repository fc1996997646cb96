#!/usr/bin/env bash
# Creates the peer venvs for the Nexmark comparison (idempotent).
#   ~/.cache/tributary/peers/bytewax-venv  <- requirements-bytewax.txt
#   ~/.cache/tributary/peers/flink-venv    <- requirements-flink.txt
# Re-running skips a venv that already has its pinned requirements installed.
# Usage: benches/peers/setup.sh [bytewax|flink ...]   (default: both)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="${TRIBUTARY_PEERS_DIR:-${TRIBUTARY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tributary}/peers}"
python="${PYTHON:-python3}"

die() { echo "setup.sh: $*" >&2; exit 1; }

command -v "$python" >/dev/null 2>&1 || die "$python not found (install Python 3.9-3.12, e.g. apt-get install python3)"
"$python" -c 'import sys; sys.exit(0 if (3, 9) <= sys.version_info[:2] <= (3, 12) else 1)' \
  || die "$("$python" --version 2>&1) is not supported: bytewax 0.21 / apache-flink 2.x need Python 3.9-3.12 (set PYTHON=...)"
"$python" -c 'import venv, ensurepip' 2>/dev/null \
  || die "$python has no working venv/ensurepip module (Debian: apt-get install python3-venv)"

make_venv() {
  local name="$1" req="$here/requirements-$1.txt" dir="$root/$1-venv"
  [ -f "$req" ] || die "missing $req"
  if [ -x "$dir/bin/python" ] && [ -f "$dir/.installed" ] && cmp -s "$req" "$dir/.installed"; then
    echo "setup.sh: $name venv present at $dir (skipped)"
    return
  fi
  echo "setup.sh: creating $name venv at $dir"
  mkdir -p "$root"
  [ -x "$dir/bin/python" ] || "$python" -m venv "$dir" || die "python3 -m venv $dir failed (Debian: apt-get install python3-venv)"
  "$dir/bin/python" -m pip install --quiet --upgrade pip || die "pip upgrade failed in $dir"
  "$dir/bin/python" -m pip install --quiet -r "$req" || die "pip install -r $req failed (is PyPI reachable?)"
  cp "$req" "$dir/.installed"
  echo "setup.sh: $name venv ready"
}

check_java() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then return; fi
  command -v java >/dev/null 2>&1 && return
  for j in /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-11-openjdk-amd64 /usr/lib/jvm/default-java; do
    [ -x "$j/bin/java" ] && return
  done
  die "no Java found: PyFlink needs Java 11 or 17 (Debian: apt-get install openjdk-17-jre-headless, or set JAVA_HOME)"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(bytewax flink)
for t in "${targets[@]}"; do
  case "$t" in
    bytewax) make_venv bytewax ;;
    flink) check_java; make_venv flink ;;
    *) die "unknown peer '$t' (bytewax|flink)" ;;
  esac
done
