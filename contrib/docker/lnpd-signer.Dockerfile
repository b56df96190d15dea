# lnpd-signer, one process per container. From the repository root:
#   docker build -f contrib/docker/lnpd-signer.Dockerfile -t lnpd-signer .
# The data directory (seed, state, TLS material) is the volume /data; the
# passphrase comes as the secret /run/secrets/signer-passphrase.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p lnpd-signer --bin lnpd-signer

FROM debian:bookworm-slim AS runtime
# Group lnpd-tls (the same gid in both images) may read the node's TLS key.
RUN groupadd --system --gid 10000 lnpd-tls \
    && useradd --system --uid 10001 --groups lnpd-tls --home-dir /data --shell /usr/sbin/nologin lnpd-signer \
    && mkdir -p /data /signer-tls \
    && chown lnpd-signer:lnpd-signer /data /signer-tls \
    && chmod 0700 /data
COPY --from=build /src/target/release/lnpd-signer /usr/local/bin/lnpd-signer
COPY contrib/docker/signer-entrypoint.sh /usr/local/bin/signer-entrypoint
USER lnpd-signer
VOLUME ["/data"]
# gRPC for the node; metrics when --metrics-listen is given.
EXPOSE 9736 9739
ENTRYPOINT ["/usr/local/bin/signer-entrypoint"]
