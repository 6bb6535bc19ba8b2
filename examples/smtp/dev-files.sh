#!/usr/bin/env bash
# Makes the SMTP example's development files under examples/smtp/var/ (git-ignored), once:
#   var/tls/cert.pem, var/tls/key.pem  a self-signed ECDSA P-256 certificate for localhost (30 days),
#                                      made here so no private key is ever committed
#   var/users                          the user alice with the password "secret" (password_hash)
# Never use these outside development. Run from anywhere; existing files are kept.
set -euo pipefail
dir="$(cd "$(dirname "$0")" && pwd)/var"
mkdir -p "$dir/tls"
if [ ! -s "$dir/tls/cert.pem" ] || [ ! -s "$dir/tls/key.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$dir/tls/key.pem" -out "$dir/tls/cert.pem" 2>/dev/null
  chmod 600 "$dir/tls/key.pem"
  echo "made $dir/tls/cert.pem and key.pem (self-signed, localhost, 30 days)"
fi
if [ ! -s "$dir/users" ]; then
  php -r 'echo "alice:", password_hash("secret", PASSWORD_DEFAULT), "\n";' >"$dir/users"
  echo "made $dir/users (alice / secret)"
fi
