#!/usr/bin/env bash
# Pier's one entry point for people and CI. `./dev.sh help` lists the commands.
#
# Every command installs what it needs first (`setup`), so each works on a fresh Debian/Ubuntu
# machine that has only Rust.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)

# The built extension, and an ini directory that loads it: PHP_INI_SCAN_DIR=":$INI_DIR" keeps the
# distribution's ini files and adds ours, and it is inherited by every PHP child a test starts.
EXT="$ROOT/target/release/libpier.so"
INI_DIR="$ROOT/target/php-ini"
export PIER_EXT="$EXT" PIER_INI_DIR="$INI_DIR"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Debian packages the project needs, and a command that tells each is there.
PACKAGES=(php8.2-cli php8.2-dev libclang-dev phpunit composer)
have_package() {
  case "$1" in
    php8.2-cli) command -v php8.2 >/dev/null || command -v php >/dev/null ;;
    php8.2-dev) command -v php-config >/dev/null && command -v phpize >/dev/null ;;
    libclang-dev) compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null || compgen -G '/usr/lib/*/libclang*.so*' >/dev/null ;;
    phpunit) command -v phpunit >/dev/null ;;
    composer) command -v composer >/dev/null ;;
  esac
}

cmd_setup() {
  local missing=()
  for p in "${PACKAGES[@]}"; do have_package "$p" || missing+=("$p"); done
  command -v cargo >/dev/null || { echo "Rust is required: install it from https://rustup.rs" >&2; exit 1; }
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null || ! grep -qiE 'debian|ubuntu' /etc/os-release 2>/dev/null; then
    echo "Please install: PHP 8.2 CLI and headers (php-config, phpize), libclang, PHPUnit 9.6, Composer." >&2
    echo "Missing here: ${missing[*]}" >&2
    exit 1
  fi
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  say "installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

cmd_build() {
  cmd_setup
  say "cargo build --release"
  cargo build --release --quiet
  mkdir -p "$INI_DIR"
  printf 'extension=%s\n' "$EXT" >"$INI_DIR/pier.ini"
}

# Runs PHP with the extension loaded (child processes inherit it).
with_ext() { PHP_INI_SCAN_DIR=":$INI_DIR" "$@"; }

cmd_lint() {
  say "cargo fmt --check"
  cargo fmt --all -- --check
  say "cargo clippy"
  cargo clippy --all-targets --quiet -- -D warnings
}

test_rust() {
  say "cargo test"
  cargo test --quiet
}

# The extension's own PHPUnit suite (php-ext/tests), with libpier.so loaded (and inherited by the
# worker processes the tests start). The 1M-cycle memory check is php-ext/tests/memory.php (by hand).
test_ext() {
  say "extension: PHPUnit (php-ext/tests) with libpier.so"
  (cd php-ext && with_ext phpunit -c phpunit.xml)
}

# The pure-PHP package: unit tests, the conformance suite against both implementations, and a
# composer install from a path repository.
test_php() {
  local phpunit=(phpunit -c php-client/phpunit.xml.dist)
  say "php: composer validate --strict"
  composer validate --strict --no-interaction
  say "php: unit tests (in-memory relay)"
  "${phpunit[@]}" --testsuite unit
  say "php: conformance suite, pure-PHP package"
  PIER_IMPLEMENTATION=package "${phpunit[@]}" --testsuite conformance
  say "php: conformance suite, pier extension (libpier.so)"
  PIER_IMPLEMENTATION=extension with_ext "${phpunit[@]}" --testsuite conformance
  say "php: composer install from a path repository (offline); its worker through pipes and pier serve"
  php-client/tests/install/composer-install.sh "$ROOT" "$ROOT/target/release/pier"
}

# End-to-end: the real `pier` binary with the example configs and both worker implementations
# (tests/, crate pier-e2e; not in the workspace's default members because it needs the release build).
test_e2e() {
  say "end-to-end suite (pier-e2e): clippy"
  cargo clippy -p pier-e2e --all-targets --quiet -- -D warnings
  say "end-to-end suite (pier-e2e): examples through target/release/pier, extension and package"
  cargo test -p pier-e2e --quiet
}

cmd_test() {
  cmd_build
  cmd_lint
  test_rust
  test_ext
  test_php
  test_e2e
  say "all tests passed"
}

# The echo example in the foreground (examples/echo): Ctrl-C stops it.
cmd_demo() {
  cmd_build
  say "demo: the echo example (examples/echo/.rr.yaml); Ctrl-C stops it. In another terminal:"
  cat >&2 <<'DEMO'
    nc 127.0.0.1 7777       # echo: type lines, each comes back; "quit" closes (nc: netcat-openbsd)
    nc -C 127.0.0.1 7778    # upper: CRLF-delimited lines come back in upper case
DEMO
  exec ./target/release/pier serve -c examples/echo/.rr.yaml
}

# The comparison (bench/): raw tokio echo vs pier + extension vs pier + pure PHP, same run.
# `--quick` is a ≤ 60 s smoke run written to target/bench/; the full run writes bench/results/<date>.md.
cmd_bench() {
  cmd_build
  # 10k idle connections need 10k descriptors in the server and in the load generator.
  local hard
  hard=$(ulimit -Hn)
  if [ "$hard" = unlimited ] || [ "$hard" -ge 65536 ]; then ulimit -n 65536; else ulimit -n "$hard"; fi
  [ "$(ulimit -n)" -ge 10100 ] || say "warning: ulimit -n is $(ulimit -n); the 10k idle row will fall short"
  say "pier-bench run $*"
  ./target/release/pier-bench run "$@"
}

cmd_help() {
  cat <<'HELP'
usage: ./dev.sh COMMAND
  setup   install what is missing (Debian/Ubuntu: apt-get; elsewhere: says what to install)
  build   setup, then cargo build --release (target/release/pier and libpier.so)
  test    build, fmt + clippy, cargo test, the PHP suites and the end-to-end suite
  demo    build, then run the echo example on 127.0.0.1:7777
  lint    cargo fmt --check and clippy -D warnings
  bench   build, then compare raw / pier+ext / pier+php (--quick: 60 s smoke run; full: ~10 min,
          writes bench/results/<date>.md)
HELP
}

case "${1:-help}" in
  setup | build | test | demo | lint | help) "cmd_$1" ;;
  bench) shift; cmd_bench "$@" ;;
  *) cmd_help >&2; exit 2 ;;
esac
