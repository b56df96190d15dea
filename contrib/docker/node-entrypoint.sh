#!/bin/sh
# The node's container: waits for the signer's TLS files, then runs lnpd
# against the chain backend and the signer named by the compose file.
set -eu
for i in $(seq 1 60); do
    [ -e /signer-tls/node.key ] && break
    sleep 1
done
# A signer that dials the node (LNPD_SIGNER_LISTEN=ADDR, e.g. 0.0.0.0:9740,
# and LNPD_SIGNER_ALLOW_FROM=its IP), or one the node dials (LNPD_SIGNER).
if [ -n "${LNPD_SIGNER_LISTEN:-}" ]; then
    set -- --signer-listen "$LNPD_SIGNER_LISTEN" ${LNPD_SIGNER_ALLOW_FROM:+--signer-allow-from "$LNPD_SIGNER_ALLOW_FROM"} "$@"
else
    set -- --signer "${LNPD_SIGNER:-signer:9736}" "$@"
fi
exec lnpd --data-dir /data --network "${LNPD_NETWORK:-regtest}" \
    --bitcoind-rpc-url "${LNPD_BITCOIND_RPC_URL:-http://chain:48443/}" \
    --signer-tls-dir /signer-tls --signer-tls-name signer --listen 0.0.0.0:9735 "$@"
