#!/usr/bin/env bash
# Runs every check the project cares about: formatting, lints, all tests
# (the integration tests start real redis-server processes) and the docs.
#
#   bash scripts/test.sh
#
# Works on a fresh Debian/Ubuntu machine with only Rust installed: installs
# with apt-get what is missing: Redis (redis-server, redis-cli), the openssl
# CLI (the TLS tests make their certificates with it), and libssl-dev and
# pkg-config (`--all-features` builds the `tls-native-tls` feature, which
# links OpenSSL).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() {
    printf '\n==> %s\n' "$*"
}

# Runs a command as root: directly if we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: need root or sudo to run: $*" >&2
        return 1
    fi
}

# Installs the Debian packages given (one apt-get update for all).
apt_install() {
    step "Installing $* (missing)"
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: missing $* and apt-get is unavailable; install them (Redis >= 7 for" >&2
        echo "       redis-server and redis-cli on PATH, the openssl CLI, OpenSSL headers" >&2
        echo "       and pkg-config)." >&2
        exit 1
    fi
    if ! as_root apt-get update ||
        ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"; then
        echo "error: could not install $*; run as root or with sudo:" >&2
        echo "       apt-get update && apt-get install -y $*" >&2
        exit 1
    fi
}

missing=()
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    missing+=(redis-server redis-tools)
fi
if ! command -v openssl >/dev/null 2>&1; then
    missing+=(openssl)
fi
if ! command -v pkg-config >/dev/null 2>&1; then
    missing+=(pkg-config libssl-dev)
elif ! pkg-config --exists openssl; then
    missing+=(libssl-dev)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi
redis-server --version
openssl version

# rustfmt and clippy are separate rustup components; add them if missing.
for component in rustfmt clippy; do
    cargo_cmd=${component/rustfmt/fmt}
    if ! cargo "$cargo_cmd" --version >/dev/null 2>&1; then
        step "Installing rustup component $component"
        rustup component add "$component"
    fi
done

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets --all-features -- -D warnings"
cargo clippy --all-targets --all-features -- -D warnings

# The tests run the compiled demo and hyper example as real processes;
# `cargo test --all-targets` builds examples only as test harnesses.
step "cargo build --examples --all-features"
cargo build --examples --all-features

step "cargo test --all-targets --all-features"
cargo test --all-targets --all-features

# The suites that race requests and logins on real HTTP, again without the
# near cache (on by default) in the stores they make (already built).
step "TRS_TEST_NEAR_CACHE=0 cargo test --all-features (races, protocol, retries)"
TRS_TEST_NEAR_CACHE=0 cargo test --all-features --test layer_concurrency \
    --test layer_login_races --test layer_protocol --test layer_devices \
    --test layer_cookie_deadline --test fault_retry

step "cargo test --doc --all-features"
cargo test --doc --all-features

# --all-features runs TLS through rustls (redis-rs prefers it when both TLS
# features are on): run the TLS tests once with native-tls alone, and once
# without TLS (`rediss://` must fail naming the feature).
step "cargo test --features tls-native-tls --test deploy_tls"
cargo test --features tls-native-tls --test deploy_tls

step "cargo test --test deploy_tls (no TLS feature)"
cargo test --test deploy_tls

step "cargo test --doc (default features)"
cargo test --doc

step 'RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features'
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features

step "All checks passed"
