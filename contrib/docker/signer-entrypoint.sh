#!/bin/sh
# The signer's container: on first start on regtest, a new seed (its
# mnemonic goes to the container's log once; on any other network the seed
# must be made by hand first), TLS material naming the host "signer", and
# the node's TLS files copied to /signer-tls for the node's container; then
# `run`.
set -eu
DATA=/data
PASS=/run/secrets/signer-passphrase
NETWORK="${LNPD_NETWORK:-regtest}"
if [ ! -e "$DATA/seed.enc" ]; then
    if [ "$NETWORK" != regtest ]; then
        # Off regtest the mnemonic must not go to a container log: make the
        # seed by hand (`docker compose run --rm --entrypoint lnpd-signer
        # signer init --data-dir /data ...`, on a terminal) and start again.
        echo "no seed in $DATA: run lnpd-signer init (or init --restore) into this volume first" >&2
        exit 1
    fi
    lnpd-signer init --data-dir "$DATA" --network "$NETWORK" \
        --listen 0.0.0.0:9736 --tls-host signer --tls-host localhost \
        --passphrase-file "$PASS"
fi
# The node's container runs as another user of the group lnpd-tls.
install -m 0644 "$DATA/tls/ca.pem" "$DATA/tls/node.pem" /signer-tls/
install -m 0640 -g lnpd-tls "$DATA/tls/node.key" /signer-tls/
exec lnpd-signer run --data-dir "$DATA" --passphrase-file "$PASS" "$@"
