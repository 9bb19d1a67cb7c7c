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

# Debian's Python (3.13 in trixie); the packages go into a venv because Debian's Python is externally
# managed. ca-certificates: backbones download their weights over HTTPS at run time.
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

FROM base
COPY --from=requirements /tmp/build/requirements.txt /tmp/build/requirements.txt
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install -r /tmp/build/requirements.txt

# The project itself, with its `image-learner` command (Galaxy runs the tool directory's copy instead).
COPY . /tmp/build/src
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --no-deps /tmp/build/src \
    && rm -rf /tmp/build \
    && image-learner --help > /dev/null

CMD ["image-learner", "--help"]
