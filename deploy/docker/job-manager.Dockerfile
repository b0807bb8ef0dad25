# syntax=docker/dockerfile:1
# The job-manager image: one statically linked binary FROM scratch. No shell, no libc, no
# package manager; runs as 1001:1001 and needs nothing writable in its root filesystem.
# Build from the repository root:
#   docker build -f deploy/docker/job-manager.Dockerfile -t job-manager:dev \
#     --build-arg REVISION=$(git rev-parse HEAD) --build-arg SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) \
#     --build-arg CREATED=$(date -u -d @$(git log -1 --format=%ct) +%Y-%m-%dT%H:%M:%SZ) .
# (BuildKit clamps image timestamps to SOURCE_DATE_EPOCH; `docker buildx build --sbom=true`
# attaches an SBOM, read from the crate list `cargo auditable` embeds in the binary.)
# Without a Docker engine, deploy/scripts/images.sh builds the same image with buildah.

ARG RUST_VERSION=1.95
ARG TARGET=x86_64-unknown-linux-gnu

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
ARG TARGET
ARG REVISION=unknown
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo install --locked cargo-auditable --version 0.7.7
WORKDIR /src
COPY . .
# glibc with crt-static gives a fully static binary (DNS via the built-in resolver);
# TLS is rustls everywhere, so there is no OpenSSL to link. `cargo auditable` embeds the
# crate list (.dep-v0) that scanners read; BUILD_COMMIT reaches `--version`; the paths
# are remapped as deploy/scripts/images.sh does, so the binary does not name the builder.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    BUILD_COMMIT="${REVISION}" \
    RUSTFLAGS='-C target-feature=+crt-static --remap-path-prefix=/src=/build --remap-path-prefix=/usr/local/cargo=/cargo' \
    cargo auditable build --release --locked --target "${TARGET}" --bin job-manager \
 && cp "target/${TARGET}/release/job-manager" /job-manager \
 && ! ldd /job-manager 2>/dev/null | grep -q '=>'

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="job-manager" \
      org.opencontainers.image.description="Polls the compute broker and runs each job in a Kubernetes runtime workload beside the sidecar egress proxy." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/newrelic/helm-charts"
# Trust roots for operators who rely on system certificates (rustls-native-certs).
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder --chmod=0555 /job-manager /job-manager
USER 1001:1001
ENTRYPOINT ["/job-manager"]
