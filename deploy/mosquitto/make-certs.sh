#!/usr/bin/env bash
# A local certificate authority and certificates for the broker's TLS listener.
#
#   make-certs.sh [--days N] DIR [NAME ...]     CA (if missing) + server certificate
#   make-certs.sh [--days N] DIR --client USER  a client certificate signed by the CA
#
# The server certificate is valid for this host's name (and <name>.local), localhost,
# 127.0.0.1 and every extra NAME given (host names or IP addresses the sensors use).
# Existing files are kept: delete server.* (or the whole DIR) to re-issue.
# Files: ca.crt (give it to every client), ca.key (keep it offline after use),
#        server.crt/server.key (the broker's), clients/USER.crt/.key.
set -euo pipefail

days=825
if [[ "${1:-}" == "--days" ]]; then days="$2"; shift 2; fi
[[ $# -ge 1 ]] || { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }
dir="$1"; shift
command -v openssl >/dev/null || { echo "make-certs: openssl is not installed" >&2; exit 1; }

mkdir -p "$dir"
umask 077

# EC P-256: small and fast on a Pi, supported by every MQTT client library.
new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [[ ! -f "$dir/ca.crt" ]]; then
  new_key "$dir/ca.key"
  openssl req -x509 -new -key "$dir/ca.key" -sha256 -days "$days" \
    -subj "/O=Factory edge gateway/CN=Factory MQTT CA $(hostname)" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$dir/ca.crt"
  chmod 0644 "$dir/ca.crt"
  echo "make-certs: new CA $dir/ca.crt"
fi
[[ -f "$dir/ca.key" ]] || { echo "make-certs: $dir/ca.key is missing (kept offline?)" >&2; exit 1; }

sign() { # sign NAME SUBJECT EXTFILE
  openssl req -new -key "$dir/$1.key" -subj "$2" -out "$dir/$1.csr"
  openssl x509 -req -in "$dir/$1.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -days "$days" -sha256 -extfile "$3" -out "$dir/$1.crt" 2>/dev/null
  rm -f "$dir/$1.csr"
  chmod 0644 "$dir/$1.crt"
}

ext=$(mktemp); trap 'rm -f "$ext"' EXIT

if [[ "${1:-}" == "--client" ]]; then
  user="${2:?--client needs a user name}"
  mkdir -p "$dir/clients"
  name="clients/${user//\//_}"
  if [[ -f "$dir/$name.crt" ]]; then echo "make-certs: $dir/$name.crt exists"; exit 0; fi
  new_key "$dir/$name.key"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' > "$ext"
  sign "$name" "/O=Factory edge gateway/CN=${user//\//\\/}" "$ext"
  echo "make-certs: client certificate $dir/$name.crt"
  exit 0
fi

if [[ -f "$dir/server.crt" ]]; then echo "make-certs: $dir/server.crt exists"; exit 0; fi
host=$(hostname)
san="DNS:$host,DNS:$host.local,DNS:localhost,IP:127.0.0.1,IP:::1"
for extra in "$@"; do
  [[ -n "$extra" ]] || continue
  if [[ "$extra" =~ ^[0-9.]+$ || "$extra" == *:* ]]; then san+=",IP:$extra"; else san+=",DNS:$extra"; fi
done
new_key "$dir/server.key"
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$san" > "$ext"
sign server "/O=Factory edge gateway/CN=$host" "$ext"
echo "make-certs: server certificate $dir/server.crt for $san"
