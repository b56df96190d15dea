# lnpd (the node) and lnpd-cli, one process per container. From the
# repository root:
#   docker build -f contrib/docker/lnpd.Dockerfile -t lnpd .
# The node's data is the volume /data; the signer's ca.pem, node.pem and
# node.key are mounted at /signer-tls.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p lnpd-node --bin lnpd --bin lnpd-cli

FROM debian:bookworm-slim AS runtime
# Group lnpd-tls (the same gid in both images) may read the node's TLS key.
RUN groupadd --system --gid 10000 lnpd-tls \
    && useradd --system --uid 10002 --groups lnpd-tls --home-dir /data --shell /usr/sbin/nologin lnpd \
    && mkdir -p /data \
    && chown lnpd:lnpd /data \
    && chmod 0700 /data
COPY --from=build /src/target/release/lnpd /usr/local/bin/lnpd
COPY --from=build /src/target/release/lnpd-cli /usr/local/bin/lnpd-cli
COPY contrib/docker/node-entrypoint.sh /usr/local/bin/node-entrypoint
USER lnpd
VOLUME ["/data"]
# Lightning peers; metrics when --metrics-listen is given. The admin API
# stays on the container's loopback: `docker exec ... lnpd-cli`.
EXPOSE 9735 9738
ENTRYPOINT ["/usr/local/bin/node-entrypoint"]
