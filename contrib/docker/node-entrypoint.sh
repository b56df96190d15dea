#!/bin/sh
# The node's container: waits for the signer's TLS files, then runs lnpd
# against the chain backend and the signer named by the compose file.
set -eu
for i in $(seq 1 60); do
    [ -e /signer-tls/node.key ] && break
    sleep 1
done
exec lnpd --data-dir /data --network "${LNPD_NETWORK:-regtest}" \
    --bitcoind-rpc-url "${LNPD_BITCOIND_RPC_URL:-http://chain:48443/}" \
    --signer "${LNPD_SIGNER:-signer:9736}" --signer-tls-dir /signer-tls \
    --signer-tls-name signer --listen 0.0.0.0:9735 "$@"
