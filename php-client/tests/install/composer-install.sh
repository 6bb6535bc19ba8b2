#!/usr/bin/env bash
# Installs pier/worker with Composer from a path repository into a fresh project, offline (no
# Packagist), and runs a worker from it through real pipes; given the pier binary, also end to end
# through `pier serve`. Usage: composer-install.sh REPO_ROOT [PIER_BINARY]
set -euo pipefail
root=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The package as a dist archive would hold it: composer.json and what its autoload names. Copied rather
# than symlinked, so the worker's classes are provably the installed ones under vendor/.
mkdir -p "$tmp/pkg/php-client"
cp "$root/composer.json" "$tmp/pkg/"
cp -R "$root/php-client/src" "$root/php-client/README.md" "$tmp/pkg/php-client/"

mkdir -p "$tmp/app"
cat >"$tmp/app/composer.json" <<JSON
{
    "name": "pier-test/echo-app",
    "require": {"pier/worker": "*"},
    "repositories": [
        {"type": "path", "url": "$tmp/pkg", "options": {"symlink": false, "versions": {"pier/worker": "0.1.0"}}},
        {"packagist.org": false}
    ]
}
JSON
cp "$here/echo-worker.php" "$tmp/app/worker.php"
(cd "$tmp/app" && COMPOSER_HOME="$tmp/composer-home" COMPOSER_DISABLE_NETWORK=1 \
  composer install --no-interaction --no-progress --quiet)
[ -f "$tmp/app/vendor/pier/worker/php-client/src/Worker.php" ] || { echo "composer did not install pier/worker" >&2; exit 1; }

php "$here/pipe-driver.php" "$tmp/app/vendor/pier/worker/php-client/src/" -- php "$tmp/app/worker.php"

if [ -n "${2:-}" ]; then
  php "$here/serve-driver.php" "$2" "$tmp/app" "$tmp/app/vendor/pier/worker/php-client/src/"
fi
