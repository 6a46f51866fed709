# scaleprobe beside an inference server: probes the node's GPUs and serves :9478/metrics.
#
# The base is PyTorch's CUDA runtime image, so the probe worker runs the same CUDA/cuDNN stack an
# inference server on the node would. Models are built from their config with random weights:
# nothing is downloaded at build or run time (HF_HUB_OFFLINE=1).
#
#   docker build -t scaleprobe:0.1.0 .
#   docker run --gpus all -p 9478:9478 -v scaleprobe-state:/var/lib/scaleprobe scaleprobe:0.1.0
FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime

LABEL org.opencontainers.image.title="scaleprobe" \
      org.opencontainers.image.description="Probe the accelerator beside an inference server; export measured and predicted capacity to Prometheus." \
      org.opencontainers.image.licenses="Apache-2.0"

# Caches go to /tmp, so the container runs with a read-only root filesystem plus a writable /tmp
# (the Kubernetes manifests mount an emptyDir there, the compose stack a tmpfs).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    XDG_STATE_HOME=/var/lib/scaleprobe \
    XDG_CACHE_HOME=/tmp/scaleprobe-cache \
    CUDA_CACHE_PATH=/tmp/scaleprobe-cache/nv \
    HOME=/home/scaleprobe

# A fixed, non-root uid/gid so that Kubernetes' runAsNonRoot can verify it and hostPath state
# directories can be chowned ahead of time.
RUN groupadd --system --gid 10001 scaleprobe \
    && useradd --system --uid 10001 --gid scaleprobe --create-home --home-dir /home/scaleprobe \
       --shell /usr/sbin/nologin scaleprobe \
    && mkdir -p /var/lib/scaleprobe \
    && chown scaleprobe:scaleprobe /var/lib/scaleprobe

WORKDIR /opt/scaleprobe
COPY pyproject.toml README.md ./
COPY models ./models
COPY probes ./probes
COPY exporter ./exporter
# torch comes from the base image (it satisfies the project's torch requirement, so pip keeps it).
RUN pip install --no-cache-dir . \
    && python -c "import scaleprobe.exporter.cli, scaleprobe.probes"

USER 10001:10001
# The state file ($XDG_STATE_HOME/scaleprobe/state.json): a restarted daemon serves its last
# calibration at once.
VOLUME ["/var/lib/scaleprobe"]
EXPOSE 9478

# /healthz answers while the process is alive; no curl in the image, so Python does the request.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9478/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["scaleprobe", "run"]
CMD ["--web.listen-address=:9478"]
