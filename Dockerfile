# export-service: an AIR project's artifacts as a JSON manifest or one streamed ZIP.
# Build:  docker build -t export-service .
# Run:    docker compose up   (see docker-compose.yml and docs/how-to/compose.md)

FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EXPORT_SERVICE_CONFIG=/etc/export-service/config.toml

WORKDIR /app

# Dependencies in a layer of their own: it is rebuilt only when pyproject.toml
# changes, not on every change of the code. The placeholder package's build
# output goes too: setuptools would otherwise keep its empty __init__.py,
# newer than the real one, in the install below.
COPY pyproject.toml README.md ./
RUN mkdir export_service \
    && touch export_service/__init__.py \
    && pip install . \
    && pip uninstall --yes export-service \
    && rm -r export_service build export_service.egg-info

COPY export_service ./export_service
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin exporter

USER 10001
EXPOSE 8080

# /healthz answers as long as the process and its event loop are alive; the
# command asks the port the config (file plus environment) resolves to.
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["export-service", "healthcheck", "--live"]

# SIGTERM: stop accepting, let downloads finish (server.shutdown_grace_seconds),
# cut the rest, exit 0 within the grace plus 2 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["export-service"]
CMD ["serve"]
