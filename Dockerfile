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
# tini: PID 1 that forwards signals and reaps zombies (step processes that
# outlive their parents). libcap2-bin: setcap, for the step supervisor.
# python3: for steps, and the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini libcap2-bin python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --shell /usr/sbin/nologin stepwise \
    && useradd --system --create-home --shell /usr/sbin/nologin stepwise-step \
    && install -d -o stepwise -g stepwise -m 0755 /var/lib/stepwise
COPY --from=build /src/target/release/stepwise /usr/local/bin/stepwise
# The service runs as `stepwise`; command steps run as `stepwise-step`
# (worker.run_as_user), so they cannot read the service's files nor
# /proc/<pid>/environ. Switching users takes CAP_SETUID and CAP_SETGID: only
# this copy of the binary, used as the step supervisor
# (worker.supervisor_program), holds them, as file capabilities; a step
# loses them when it is executed. Only the stepwise group may run it.
RUN install -d -m 0755 /usr/local/lib/stepwise \
    && install -m 0750 -o root -g stepwise /usr/local/bin/stepwise /usr/local/lib/stepwise/stepwise-supervise \
    && setcap cap_setuid,cap_setgid+ep /usr/local/lib/stepwise/stepwise-supervise
USER stepwise
WORKDIR /home/stepwise
ENV STEPWISE_LISTEN=0.0.0.0:8080 \
    STEPWISE_DATA_DIR=/var/lib/stepwise \
    STEPWISE_WORKER__RUN_AS_USER=stepwise-step \
    STEPWISE_WORKER__SUPERVISOR_PROGRAM=/usr/local/lib/stepwise/stepwise-supervise
# The data directory, owned by stepwise; a volume mounted here starts with
# this ownership.
VOLUME /var/lib/stepwise
EXPOSE 8080
# /healthz answers once the API accepts requests (`stepwise worker` has no
# API: compose disables the check for it).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; port = os.environ.get('STEPWISE_LISTEN', ':8080').rsplit(':', 1)[1]; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % port, timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--", "stepwise"]
CMD ["serve"]
