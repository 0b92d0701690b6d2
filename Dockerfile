# syntax=docker/dockerfile:1

# ---- build ------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the crates.io registry and compiled dependencies between
# builds; the binary is copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && cp target/release/sluice /usr/local/bin/sluice

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sluice
COPY --from=builder /usr/local/bin/sluice /usr/local/bin/sluice
COPY conf/ /etc/sluice/
USER sluice
# 6432: client connections; 9930: /metrics and health checks. The sample
# conf/sluice.toml listens on 127.0.0.1; mount a config with 0.0.0.0 addresses
# over /etc/sluice/ to reach them from outside the container.
EXPOSE 6432 9930
ENTRYPOINT ["sluice"]
CMD ["--config", "/etc/sluice/sluice.toml"]
