# Image Learner: the container the Galaxy tools run in, and the `image-learner` command for any box.
#   docker build -t ghcr.io/image-learner/image-learner:0.1.0 .      (tag = the tool version, macros.xml)
#   docker run --rm --gpus all -v "$PWD:/data" -w /data IMAGE image-learner --csv-file ... (or no --gpus: CPU)
# PyPI's torch wheel carries its CUDA libraries, so one image serves CPU and GPU nodes (about 7 GB).
# Behind a TLS-intercepting proxy, hand pip the CA bundle as a build secret (never baked into the image):
#   podman build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt ...
FROM docker.io/library/debian:trixie-slim AS base

LABEL org.opencontainers.image.title="Image Learner" \
      org.opencontainers.image.source="https://github.com/image-learner/image-learner" \
      org.opencontainers.image.licenses="MIT"

# Debian's Python: trixie has only 3.13 (pyproject.toml [tool.image-learner] python-image; the build checks
# it), while scripts/ensure_env.sh's environment runs 3.12 (python-env) where the full test suite runs; no
# registry with a python:3.12 base image is reachable from the build machines, only Debian's mirror and
# PyPI. tests/test_container_image.py trains in this image. The packages go into a venv because Debian's
# Python is externally managed. ca-certificates: backbones download their weights over HTTPS at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/image-learner
ENV PATH=/opt/image-learner/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The dependencies exactly as pyproject.toml pins them (the one list). A stage of its own extracts them,
# so the 7 GB install layer below is rebuilt only when the list changes, not for any other pyproject edit.
FROM base AS requirements
COPY pyproject.toml /tmp/build/pyproject.toml
RUN python -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
        /tmp/build/pyproject.toml > /tmp/build/requirements.txt
# The `distributed` extra (Accelerate, for --distributed ddp) from the same file, in a layer of its own; and
# the Python version pyproject.toml declares for the image ([tool.image-learner] python-image): a Debian
# that ships another one fails the build here instead of giving an image nobody declared.
RUN python -c 'import sys, tomllib; pyproject = tomllib.load(open(sys.argv[1], "rb")); \
declared, running = pyproject["tool"]["image-learner"]["python-image"], "{}.{}".format(*sys.version_info[:2]); \
running == declared or sys.exit(f"Debian gives Python {running}; pyproject.toml python-image says {declared}"); \
print("\n".join(pyproject["project"]["optional-dependencies"]["distributed"]))' \
        /tmp/build/pyproject.toml > /tmp/build/distributed.txt

FROM base
COPY --from=requirements /tmp/build/requirements.txt /tmp/build/requirements.txt
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install -r /tmp/build/requirements.txt
# the extra, held to the pins above (-c: nothing already installed may move)
COPY --from=requirements /tmp/build/distributed.txt /tmp/build/distributed.txt
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install -r /tmp/build/distributed.txt -c /tmp/build/requirements.txt

# The project itself, with its `image-learner` command (Galaxy runs the tool directory's copy instead).
COPY . /tmp/build/src
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --no-deps /tmp/build/src \
    && rm -rf /tmp/build \
    && image-learner --help > /dev/null

CMD ["image-learner", "--help"]
