# NVIDIA's Triton (24.10 = Triton 2.51, the version the tests run) with modstream's model
# repository. Generate the repository first (./scripts/setup.sh runs the export), then build
# from the repository root:
#   docker build -f deploy/docker/triton.Dockerfile -t ghcr.io/modstream/triton:0.1.0 .
FROM nvcr.io/nvidia/tritonserver:24.10-py3
COPY --chown=1000:1000 triton_repo/nsfw_mobilenet_v2 /opt/modstream/models/nsfw_mobilenet_v2
COPY --chown=1000:1000 triton_repo/nsfw_mobilenet_v2_mid /opt/modstream/models/nsfw_mobilenet_v2_mid
COPY --chown=1000:1000 triton_repo/nsfw_inception_v3 /opt/modstream/models/nsfw_inception_v3
USER 1000:1000
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver"]
CMD ["--model-repository=/opt/modstream/models", "--disable-auto-complete-config"]
