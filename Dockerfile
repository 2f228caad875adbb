# syntax=docker/dockerfile:1
#
# The image docker-compose.yml runs (README.md, "Deploy"). syncer is installed from
# uv.lock into a virtualenv in a build stage; the final stage is the same slim Python
# with only that virtualenv: no uv, no compilers, no caches. Build: docker compose build

# uv pinned to the release that wrote uv.lock (lock-file revisions need a recent uv).
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# One base for both stages: the virtualenv links to this image's /usr/local/bin/python3.
FROM python:3.11-slim-trixie AS base

FROM base AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/opt/syncer
WORKDIR /src
# Dependencies first, in a layer of their own that only a change to uv.lock rebuilds.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --locked --no-dev --no-install-project --no-editable
COPY pyproject.toml uv.lock README.md ./
COPY syncer ./syncer
COPY migrations ./migrations
# Non-editable: the wheel carries the migrations as syncer/_migrations, so the image
# needs nothing from /src at run time and `syncer migrate` works from any directory.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable

FROM base
# A regular (not --system) account: system uids end at 999, and useradd warns otherwise.
RUN useradd --create-home --no-log-init --uid 10001 --user-group syncer
COPY --from=build /opt/syncer /opt/syncer
ENV PATH=/opt/syncer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/syncer
# /healthz, /readyz and /metrics (SYNCER_HTTP_PORT).
EXPOSE 8080
# Exec form: syncer itself gets SIGTERM (compose adds tini with `init: true`), so a
# running sync finishes before the process exits. `docker compose run syncer files`
# replaces only the command.
ENTRYPOINT ["syncer"]
CMD ["run"]
