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
