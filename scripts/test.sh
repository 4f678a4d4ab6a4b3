#!/usr/bin/env bash
# Runs every check the project cares about: formatting, lints, all tests
# (the integration tests start real redis-server processes) and the docs.
#
#   bash scripts/test.sh
#
# Works on a fresh Debian/Ubuntu machine with only Rust installed: installs
# Redis (redis-server, redis-cli) with apt-get when missing.
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

install_redis() {
    step "Installing redis-server and redis-tools (not found on PATH)"
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: redis-server/redis-cli not found and apt-get is unavailable;" >&2
        echo "       install Redis >= 7 so that redis-server and redis-cli are on PATH." >&2
        exit 1
    fi
    if ! as_root apt-get update ||
        ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools; then
        echo "error: could not install Redis; run as root or with sudo:" >&2
        echo "       apt-get update && apt-get install -y redis-server redis-tools" >&2
        exit 1
    fi
}

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    install_redis
fi
redis-server --version

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

step "cargo test --doc --all-features"
cargo test --doc --all-features

step 'RUSTDOCFLAGS="-D warnings" cargo doc --no-deps'
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps

step "All checks passed"
