# syntax=docker/dockerfile:1

# ---- build ------------------------------------------------------------------
# The Rust version is the one the project is tested with; its LLVM major version (22) must
# match the llvm-profdata that benches/pgo/build installs (Debian's llvm-22).
FROM rust:1.95-bookworm AS builder
# PGO=1 (default): profile-guided build, benches/pgo/build, which trains an instrumented
# sluice under pgbench against a throwaway PostgreSQL 15 (about 30 s) between two release
# builds; about a third less user CPU per transaction (README, "Benchmarks").
# PGO=0: a plain `cargo build --release`. The package lists stay: benches/pgo/build installs
# llvm-22 with apt-get (the builder stage is not shipped).
ARG PGO=1
RUN if [ "$PGO" = 1 ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15 python3; \
    fi
WORKDIR /src
COPY . .
# Cache mounts keep the crates.io registry and compiled dependencies between
# builds; the binary is copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ "$PGO" = 1 ]; then \
        python3 benches/pgo/build --target-dir target/pgo \
        && cp target/pgo/release/sluice /usr/local/bin/sluice; \
    else \
        cargo build --release --locked \
        && cp target/release/sluice /usr/local/bin/sluice; \
    fi

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
