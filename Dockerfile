# colorproxy: one statically linked binary on an empty image.
#
#   docker build -t colorproxy .
#
# The context is the repository root: colorproxy and myapp are one Cargo workspace with one
# Cargo.lock. The binary is built with profile-guided optimisation by scripts/pgo.sh, which
# trains an instrumented build on loopback traffic through two myapp instances before the final
# build (README, Performance); .ci/run builds and checks the same static binary with the same
# command.

FROM rust:1.95-bookworm AS build
# glibc linked statically (the musl target is not needed): the binary runs on `scratch`.
ENV CARGO_TERM_COLOR=never \
    RUSTFLAGS="-C target-feature=+crt-static"
ARG TARGET=x86_64-unknown-linux-gnu
WORKDIR /src
# llvm-profdata of rustc's own LLVM version, for the profile.
RUN rustup component add llvm-tools

COPY Cargo.toml Cargo.lock ./
COPY src src
COPY myapp myapp
COPY scripts/pgo.sh scripts/need.sh scripts/
RUN scripts/pgo.sh --target "$TARGET" \
 && cp "target/$TARGET/release/colorproxy" /colorproxy \
 && /colorproxy version | grep "^colorproxy " \
 && mkdir -p /rootfs/tmp && chmod 1777 /rootfs/tmp

FROM scratch
COPY --from=build /colorproxy /colorproxy
# /tmp, writable by the user: RESPONSE_SPILL keeps slow clients' responses there.
COPY --from=build /rootfs/ /
USER 65534:65534
# 8080: the proxy (LISTEN). 9901: the admin endpoints (ADMIN_LISTEN); do not publish it.
EXPOSE 8080 9901
# The binary asks its own admin /healthz; a scratch image has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/colorproxy", "healthcheck"]
ENTRYPOINT ["/colorproxy"]
