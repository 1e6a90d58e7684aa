# Multi-stage build: compile in the Rust image, run from a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY config config
COPY openapi.yaml openapi.yaml
RUN cargo build --release --locked --bin stepwise

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home stepwise
COPY --from=build /src/target/release/stepwise /usr/local/bin/stepwise
USER stepwise
WORKDIR /home/stepwise
ENV STEPWISE_LISTEN=0.0.0.0:8080 STEPWISE_DATA_DIR=/var/lib/stepwise
EXPOSE 8080
ENTRYPOINT ["stepwise"]
CMD ["serve"]
