# colorproxy: one statically linked binary on an empty image.
#
#   docker build -t colorproxy .
#
# The context is the repository root: colorproxy and myapp are one Cargo workspace with one
# Cargo.lock. .ci/run builds and checks the same static binary with the same cargo command.

FROM rust:1.95-bookworm AS build
# glibc linked statically (the musl target is not needed): the binary runs on `scratch`.
ENV CARGO_TERM_COLOR=never \
    RUSTFLAGS="-C target-feature=+crt-static"
ARG TARGET=x86_64-unknown-linux-gnu
WORKDIR /src

# Dependencies first, built against stub sources: this layer is reused until a manifest or
# Cargo.lock changes. myapp keeps its stub (the workspace needs the member, not its code).
COPY Cargo.toml Cargo.lock ./
COPY myapp/Cargo.toml myapp/
RUN mkdir -p src myapp/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > myapp/src/main.rs && touch myapp/src/lib.rs \
 && cargo build --release --locked --target "$TARGET" -p colorproxy \
 && rm -rf src

# The real sources. The touch matters: the stub's build outputs are newer than the copied
# files, and cargo would otherwise keep the stub binary.
COPY src src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --target "$TARGET" -p colorproxy \
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
