#!/usr/bin/env bash
# Regenerate the DEVELOPMENT-ONLY certificates in this folder (never use them in production):
#   ca.pem / ca.key          a throwaway "geolb dev CA" (10 years)
#   localhost.pem / .key     leaf for localhost, 127.0.0.1, ::1, geolb.test and *.geolb.test
# Usage: certs-dev/gen.sh   (needs openssl)
set -euo pipefail
cd "$(dirname "$0")"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=geolb dev CA (DO NOT TRUST)" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
openssl ecparam -name prime256v1 -genkey -noout -out localhost.key.sec1
openssl pkcs8 -topk8 -nocrypt -in localhost.key.sec1 -out localhost.key && rm localhost.key.sec1
openssl req -new -key localhost.key -subj "/CN=localhost" -out localhost.csr
cat > leaf.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:geolb.test,DNS:*.geolb.test,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in localhost.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
  -extfile leaf.ext -out localhost.pem
cat ca.pem >> localhost.pem   # serve the chain
rm -f localhost.csr leaf.ext ca.srl
echo "wrote $(pwd)/{ca.pem,ca.key,localhost.pem,localhost.key}"
