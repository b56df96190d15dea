# The regtest chain backend of the compose example: bcoin, pinned by the
# same package-lock.json the tests use. From the repository root:
#   docker build -f contrib/docker/bcoin.Dockerfile -t lnpd-bcoin .
FROM node:20-bookworm-slim AS runtime
WORKDIR /bcoin
COPY regtest/package.json regtest/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
USER node
EXPOSE 48443
ENTRYPOINT ["node", "/bcoin/node_modules/bcoin/bin/node", "--network=regtest", "--workers=false", "--no-wallet=true", "--http-host=0.0.0.0"]
