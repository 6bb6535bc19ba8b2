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

# Writes the ini that loads this checkout's extension. Done by the build and again by every run
# with a target/: a target/ copied from another checkout (a warm cache) holds an ini naming that
# checkout's libpier.so, which a test stage run without a build would otherwise load.
write_ini() {
  mkdir -p "$INI_DIR"
  printf 'extension=%s\n' "$EXT" >"$INI_DIR/pier.ini"
}
if [ -d "$ROOT/target" ] && [ "$(cat "$INI_DIR/pier.ini" 2>/dev/null)" != "extension=$EXT" ]; then
  write_ini
fi

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Debian packages the project needs: one name per entry, append yours (say in a comment what needs it).
# A package counts as present only when dpkg-query reports it installed: never guess from a file or a
# command on the PATH (libclang-cpp14's libclang-cpp.so once passed for libclang-dev).
PACKAGES=(
  gcc libc6-dev make # cargo's linker; phpize's configure and make
  php8.2-cli         # the workers and the PHP suites
  php8.2-dev         # php-config for ext-php-rs; phpize for the extension's standard build
  libclang-dev       # bindgen (ext-php-rs) loads libclang at build time
  phpunit composer   # the PHP suites; composer validate/install
  netcat-openbsd     # nc, the client `./dev.sh demo` suggests
  openssl swaks haproxy python3 # TLS/STARTTLS/PROXY tests' real peers: s_client, swaks, haproxy, smtplib
  libnet-ssleay-perl # swaks --tls/--tlsc (a Recommends, which setup does not install)
  php8.2-sqlite3     # examples/mqtt: the store the broker's workers share (PDO SQLite)
  mosquitto-clients  # e2e: mosquitto_pub/mosquitto_sub drive examples/mqtt
  python3-paho-mqtt  # e2e: Paho, a second MQTT client library against examples/mqtt
  procps             # kill(1): the CLI tests signal pier as a user would
  redis-server nats-server # the cluster tests' buses, started on loopback by the tests
)

is_debian() { command -v dpkg-query >/dev/null && command -v apt-get >/dev/null; }

# Whether dpkg-query reports package $1 installed (not merely known, removed or half-configured).
dpkg_installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }

# The packages of PACKAGES that are not installed, one per line: what setup installs.
missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do dpkg_installed "$p" || printf '%s\n' "$p"; done
}

cmd_setup() {
  command -v cargo >/dev/null || { echo "Rust is required: install it from https://rustup.rs" >&2; exit 1; }
  if ! is_debian; then
    # No package database to ask: name what is needed and stop if a tool is clearly absent.
    local tool absent=()
    for tool in cc make php php-config phpize phpunit composer openssl swaks haproxy python3 redis-server nats-server; do
      command -v "$tool" >/dev/null || absent+=("$tool")
    done
    [ ${#absent[@]} -eq 0 ] && return 0
    echo "Please install: a C toolchain and make, PHP 8.2 CLI and headers (php-config, phpize)," >&2
    echo "libclang (LIBCLANG_PATH=its directory if bindgen cannot find it), PHPUnit 9.6, Composer," >&2
    echo "openssl, swaks, haproxy, python3 (the TLS/PROXY tests' peers), redis-server and" >&2
    echo "nats-server (the cluster tests' buses)." >&2
    echo "Missing here: ${absent[*]}" >&2
    exit 1
  fi
  local missing
  mapfile -t missing < <(missing_packages)
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  say "installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  mapfile -t missing < <(missing_packages)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "error: setup ran apt-get install, but dpkg-query still reports not installed: ${missing[*]}" >&2
    exit 1
  fi
}

# The directory holding the libclang.so of the installed libclang-dev (Debian's default-version
# package depends on libclang-NN-dev, which ships it), from dpkg's file list.
libclang_dir() {
  local dev lib
  dev=$(dpkg-query -W -f='${Depends}' libclang-dev 2>/dev/null | grep -o 'libclang-[0-9.]*-dev' | head -n1)
  [ -n "$dev" ] || return 1
  lib=$(dpkg-query -L "$dev" 2>/dev/null | grep -m1 '/libclang\.so$') || return 1
  [ -e "$lib" ] || return 1 # a dangling symlink is no libclang
  dirname "$lib"
}

# Points bindgen at the package's libclang when it would not find it alone: clang-sys searches
# /usr/lib*/*/* and /usr/local/lib*/*/* by itself (Debian's and Ubuntu's /usr/lib/llvm-NN/lib is among them), so
# LIBCLANG_PATH is set only for a libclang elsewhere, which keeps cargo's build cache valid for a
# plain `cargo build` too.
use_package_libclang() {
  local dir
  [ -z "${LIBCLANG_PATH:-}" ] && is_debian && dir=$(libclang_dir) || return 0
  case "$dir" in
    /usr/lib* | /usr/local/lib*) ;;
    *) export LIBCLANG_PATH="$dir" ;;
  esac
}

# The CI guard, run by `test` before it builds: setup's view of every package must be dpkg-query's
# (each asked again here, independently of missing_packages) and every package must be installed;
# bindgen must find libclang. Catches a setup that guesses, and a package list that lost an install.
cmd_check_setup() {
  is_debian || { say "check-setup: not Debian/Ubuntu, no package database to check"; return 0; }
  local p status setup_says bad=0 missing
  mapfile -t missing < <(missing_packages)
  for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) || status="unknown package"
    [ -n "$status" ] || status="not installed"
    setup_says=installed
    [[ " ${missing[*]} " == *" $p "* ]] && setup_says=missing
    if [ "$status" = installed ]; then
      continue
    elif [ "$setup_says" = installed ]; then
      echo "error: setup believes $p is installed, dpkg-query reports: $status" >&2
    else
      echo "error: package $p is needed, dpkg-query reports: $status (./dev.sh setup installs it)" >&2
    fi
    bad=1
  done
  local dir
  if ! dir=$(libclang_dir); then
    echo "error: libclang-dev is installed but dpkg lists no libclang.so for it: bindgen would fail" >&2
    bad=1
  else
    use_package_libclang
    if [ -n "${LIBCLANG_PATH:-}" ] && ! compgen -G "$LIBCLANG_PATH/libclang*.so*" >/dev/null; then
      echo "error: LIBCLANG_PATH=$LIBCLANG_PATH holds no libclang; the package's is in $dir" >&2
      bad=1
    fi
  fi
  [ "$bad" -eq 0 ] || exit 1
  say "check-setup: ${#PACKAGES[@]} packages installed (dpkg-query), libclang in ${LIBCLANG_PATH:-$dir}"
}

cmd_build() {
  cmd_setup
  use_package_libclang
  say "cargo build --release"
  cargo build --release --quiet
  write_ini
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
  say "php: examples/mqtt broker unit tests (no server)"
  phpunit -c examples/mqtt/phpunit.xml
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

# The standard PHP build (php-ext/config.m4): phpize, configure, make, then make install into a
# temporary INSTALL_ROOT, and PHP loads the installed pier.so. `PIER_CARGO_PACKAGES=` makes cargo
# build what `build` built (a lone `-p pier` unifies features differently and would rebuild).
test_phpize() {
  say "extension: phpize && ./configure && make && make install (temporary INSTALL_ROOT), then php -d extension="
  local root log so want got
  root=$(mktemp -d)
  log=$root/build.log
  if ! (cd php-ext && phpize && ./configure && make PIER_CARGO_PACKAGES= &&
    make install INSTALL_ROOT="$root" PIER_CARGO_PACKAGES=) >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "error: the phpize route failed (log above)" >&2
    exit 1
  fi
  so=$root$(php-config --extension-dir)/pier.so
  [ -f "$so" ] || { echo "error: make install put no pier.so in $(dirname "$so")" >&2; exit 1; }
  want="pier $(cargo pkgid -p pier | sed 's/.*[#@]//') $(php -n -d extension="$EXT" -r 'echo implode(",", Pier\features());')"
  got=$(php -n -d extension="$so" -r 'echo "pier ", phpversion("pier"), " ", implode(",", Pier\features());')
  [ "$got" = "$want" ] || { echo "error: the installed pier.so says '$got', expected '$want'" >&2; exit 1; }
  say "extension: $so loads: $got"
  # What PIE reads: php-ext/composer.json (Composer 2.5 does not know the php-ext section yet, so
  # only publish-strictness is skipped), naming the module this build installs.
  composer validate --no-check-publish --no-interaction --quiet -d php-ext
  local name
  name=$(php -r '$c = json_decode(file_get_contents("php-ext/composer.json"), true, 512, JSON_THROW_ON_ERROR);
    echo $c["type"] === "php-ext" ? $c["php-ext"]["extension-name"] : "(type is not php-ext)";')
  [ "$name" = pier ] && [ -f "$(dirname "$so")/$name.so" ] ||
    { echo "error: php-ext/composer.json names extension '$name', make install built pier.so" >&2; exit 1; }
  rm -rf "$root"
}

# `install`/`uninstall` into a temporary prefix, extension dir and ini dir (PHP_INI_SCAN_DIR, so
# this machine's PHP is untouched): installed twice (harmless), `pier --version` from / shows the
# extension PHP loads, `php -m` lists pier, and uninstall leaves nothing behind.
test_install() {
  say "install: ./dev.sh install twice into a temporary prefix and ini dir, pier --version, php -m, uninstall"
  local tmp
  tmp=$(mktemp -d)
  mkdir "$tmp/ini"
  (
    export PHP_INI_SCAN_DIR="$tmp/ini" PIER_EXTENSION_DIR="$tmp/ext"
    install_files "$tmp/prefix" 2>/dev/null
    install_files "$tmp/prefix"
    local version out left
    version=$(cargo pkgid -p pier-server | sed 's/.*[#@]//')
    out=$(cd / && PATH="$tmp/prefix/bin:$PATH" pier --version)
    printf '%s\n' "$out" | sed 's/^/    /' >&2
    if ! printf '%s\n' "$out" | grep -q "^extension in php .*: pier $version, features: " ||
      printf '%s\n' "$out" | grep -q MISMATCH; then
      echo "error: the installed pier --version does not show the installed extension $version" >&2
      exit 1
    fi
    php -m | grep -x pier >/dev/null || { echo "error: php -m does not list pier after install" >&2; exit 1; }
    cmd_uninstall "$tmp/prefix"
    left=$(cd "$tmp" && find . -mindepth 1 ! -path ./ini)
    [ -z "$left" ] || { echo "error: uninstall left: $left" >&2; exit 1; }
  )
  rm -rf "$tmp"
}

cmd_test() {
  cmd_setup
  cmd_check_setup
  cmd_build
  cmd_lint
  test_rust
  test_ext
  test_phpize
  test_install
  test_php
  test_e2e
  say "all tests passed"
}

# The echo example in the foreground (examples/echo): Ctrl-C stops it. Arguments go to `pier serve`
# (e.g. `-o tcp.servers.echo.addr=127.0.0.1:0` when 7777 is taken).
cmd_demo() {
  cmd_build
  say "demo: the echo example (examples/echo/.rr.yaml); Ctrl-C stops it. In another terminal:"
  cat >&2 <<'DEMO'
    nc 127.0.0.1 7777       # echo: type lines, each comes back; "quit" closes (nc: netcat-openbsd)
    nc -C 127.0.0.1 7778    # upper: CRLF-delimited lines come back in upper case
DEMO
  exec ./target/release/pier serve -c examples/echo/.rr.yaml "$@"
}

# `install [PREFIX]`: pier into PREFIX/bin (default /usr/local), the extension into PHP's extension
# dir (PIER_EXTENSION_DIR overrides it), and an ini that loads it: with PHP_INI_SCAN_DIR set, into
# that directory; on Debian/Ubuntu, /etc/php/X.Y/mods-available + phpenmod; elsewhere, the scan dir
# `php --ini` names. Everything it creates is listed in PREFIX/share/pier/install-manifest, which
# `uninstall [PREFIX]` reads to remove exactly that. Re-running install is harmless.
manifest_of() { printf '%s/share/pier/install-manifest' "$1"; }

install_files() {
  local prefix=$1 manifest php_bin ext_dir ini_line ini_dir ini phpver=""
  manifest=$(manifest_of "$prefix")
  local entries=()
  # mkdir -p, remembering each directory it creates (uninstall removes them if empty).
  make_dirs() {
    local d=$1 missing=()
    while [ ! -d "$d" ]; do missing=("$d" "${missing[@]}"); d=$(dirname "$d"); done
    for d in "${missing[@]}"; do mkdir "$d" && entries+=("dir $d"); done
  }
  put() { # put MODE SOURCE DEST
    make_dirs "$(dirname "$3")"
    install -m "$1" "$2" "$3.pier-new" && mv -f "$3.pier-new" "$3"
    entries+=("file $3")
  }
  put 0755 target/release/pier "$prefix/bin/pier"

  php_bin=$(php-config --php-binary)
  if [ -n "${PIER_EXTENSION_DIR:-}" ]; then
    ext_dir=$PIER_EXTENSION_DIR
    ini_line="extension=$ext_dir/pier.so"
  else
    ext_dir=$(php-config --extension-dir)
    ini_line="extension=pier"
  fi
  put 0644 "$EXT" "$ext_dir/pier.so"

  local tmp_ini
  tmp_ini=$(mktemp)
  printf '; the Pier extension (installed by pier'"'"'s ./dev.sh install)\n; priority=20\n%s\n' "$ini_line" >"$tmp_ini"
  phpver=$("$php_bin" -r 'echo PHP_MAJOR_VERSION, ".", PHP_MINOR_VERSION;')
  if [ -z "${PHP_INI_SCAN_DIR:-}" ] && command -v phpenmod >/dev/null && [ -d "/etc/php/$phpver/mods-available" ]; then
    put 0644 "$tmp_ini" "/etc/php/$phpver/mods-available/pier.ini"
    phpenmod -v "$phpver" pier
    entries+=("phpenmod $phpver")
  else
    ini_dir=$("$php_bin" --ini | sed -n 's/^Scan for additional .ini files in: *//p')
    case "$ini_dir" in
      "" | "(none)")
        rm -f "$tmp_ini"
        echo "error: $php_bin has no ini scan dir: add '$ini_line' to its php.ini ($("$php_bin" --ini | sed -n 's/^Loaded Configuration File: *//p'))" >&2
        exit 1 ;;
    esac
    ini_dir=${ini_dir%%:*} # several dirs: the first
    put 0644 "$tmp_ini" "$ini_dir/20-pier.ini"
  fi
  rm -f "$tmp_ini"

  make_dirs "$(dirname "$manifest")"
  # Union with an earlier install's entries, so uninstall still finds those.
  { [ -f "$manifest" ] && cat "$manifest"; printf '%s\n' "${entries[@]}"; } | awk '!seen[$0]++' >"$manifest.new"
  mv -f "$manifest.new" "$manifest"
  say "installed: $prefix/bin/pier, $ext_dir/pier.so, ini loading it (manifest: $manifest)"
}

cmd_install() {
  local prefix=${1:-/usr/local}
  cmd_build
  install_files "$prefix"
  (cd / && "$prefix/bin/pier" --version)
  php -m | grep -x pier >/dev/null || { echo "error: php -m does not list pier after install" >&2; exit 1; }
}

cmd_uninstall() {
  local prefix=${1:-/usr/local} manifest kind path dirs=()
  manifest=$(manifest_of "$prefix")
  [ -f "$manifest" ] || { echo "nothing to uninstall: no $manifest" >&2; exit 1; }
  # phpdismod (-p: forget its state too) before the ini goes; files; then the directories install
  # created, deepest first, if nothing else was put in them since.
  while read -r kind path; do
    [ "$kind" = phpenmod ] && phpdismod -p -v "$path" pier
  done <"$manifest"
  while read -r kind path; do
    case "$kind" in
      file) rm -f "$path" ;;
      dir) dirs+=("$path") ;;
    esac
  done <"$manifest"
  rm -f "$manifest"
  [ ${#dirs[@]} -eq 0 ] || printf '%s\n' "${dirs[@]}" | sort -r | while read -r path; do rmdir "$path" 2>/dev/null || true; done
  say "uninstalled what $manifest listed"
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
  check-setup  every needed package installed per dpkg-query, and bindgen finds libclang (test runs it)
  build   setup, then cargo build --release (target/release/pier and libpier.so)
  test    build, fmt + clippy, cargo test, the PHP suites and the end-to-end suite
  demo    build, then run the echo example on 127.0.0.1:7777 (arguments go to `pier serve`)
  lint    cargo fmt --check and clippy -D warnings
  install [PREFIX]    build, then install pier into PREFIX/bin (default /usr/local), the extension
          into PHP's extension dir and an ini that loads it (Debian: mods-available + phpenmod)
  uninstall [PREFIX]  remove exactly what install installed (its manifest in PREFIX/share/pier)
  bench   build, then compare raw / pier+ext / pier+php (--quick: 60 s smoke run; full: ~10 min,
          writes bench/results/<date>.md)
HELP
}

case "${1:-help}" in
  setup | build | test | lint | help) "cmd_$1" ;;
  install | uninstall) cmd="cmd_$1"; shift; "$cmd" "$@" ;;
  demo) shift; cmd_demo "$@" ;;
  check-setup) cmd_check_setup ;;
  bench) shift; cmd_bench "$@" ;;
  *) cmd_help >&2; exit 2 ;;
esac
