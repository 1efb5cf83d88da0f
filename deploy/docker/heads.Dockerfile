# The heads versions of the model repository, for the heads overlay (deploy/overlays/heads):
# its publish Job copies them onto Triton's model-repository volume, so a new version reaches
# a running Triton without a new Triton image. Export the heads into triton_repo first
# (`modstream train heads --export` writes triton_repo/heads/<N> and, the first time,
# triton_repo/moderation), then build from the repository root:
#   docker build -f deploy/docker/heads.Dockerfile -t ghcr.io/modstream/heads:N .
# busybox: the publish Job's copy script needs a shell, cp, diff and mv, nothing more.
FROM busybox:1.36.1
COPY --chown=1000:1000 triton_repo/heads /opt/modstream/models/heads
COPY --chown=1000:1000 triton_repo/moderation /opt/modstream/models/moderation
USER 1000:1000
