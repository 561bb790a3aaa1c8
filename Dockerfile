# syntax=docker/dockerfile:1
# octopods-worker: one image for the worker, the sandbox and the operator CLI.
#   docker build -t octopods-worker .
#   docker run --rm -v $PWD/worker.toml:/etc/octopods/worker.toml:ro \
#     -e OCTOPODS_KEY_STORE_EU=... octopods-worker run

# Where the binary comes from: `build` compiles it here (the default, what
# users build); `prebuilt` takes prebuilt/octopods-worker from the build
# context instead (CI: no image registry, so no rust image, is reachable
# there; scripts/check-image.sh builds the runtime stage below as shipped).
ARG BINARY_FROM=build

# ---- build ----
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: rebuilt only when Cargo.* change.
COPY Cargo.toml Cargo.lock ./
COPY sandbox/Cargo.toml ./sandbox/
# Patched dependencies ([patch.crates-io]; vendor/README.md).
COPY vendor ./vendor
RUN mkdir -p src benches examples/producers/rust sandbox/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs sandbox/src/lib.rs \
 && echo 'fn main() {}' > benches/throughput.rs \
 && echo 'fn main() {}' > examples/producers/rust/producer.rs \
 && cargo build --release --locked --bin octopods-worker \
 && rm -rf src benches examples sandbox/src
COPY src ./src
COPY sandbox/src ./sandbox/src
COPY benches ./benches
COPY examples/producers/rust ./examples/producers/rust
# Touch so cargo rebuilds the crate itself over the placeholder.
RUN touch src/main.rs src/lib.rs sandbox/src/lib.rs \
 && cargo build --release --locked --bin octopods-worker \
 && strip target/release/octopods-worker

# ---- a binary built outside (BINARY_FROM=prebuilt) ----
FROM scratch AS prebuilt
COPY prebuilt/octopods-worker /src/target/release/octopods-worker

# hadolint ignore=DL3006
FROM ${BINARY_FROM} AS binary

# ---- runtime ----
FROM debian:bookworm-slim
# ca-certificates tracks the distribution's trust store; pinning it would only
# freeze stale roots, so DL3008 is waived for it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin octopods
COPY --from=binary /src/target/release/octopods-worker /usr/local/bin/octopods-worker
USER 10001:10001
# Configuration: mount a file here (or set OCTOPODS_CONFIG); secrets come from
# the environment (api_key_env) or mounted files (api_key_file), never the image.
ENV OCTOPODS_CONFIG=/etc/octopods/worker.toml
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["octopods-worker", "probe", "--url", "http://127.0.0.1:9464/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["octopods-worker"]
CMD ["run"]
