# NVIDIA's Triton (24.10 = Triton 2.51, the version the tests run) with modstream's model
# repository. Generate the repository first (./scripts/setup.sh runs the export and
# training.bytes_models), then build from the repository root:
#   docker build -f deploy/docker/triton.Dockerfile -t ghcr.io/modstream/triton:0.1.0 .
FROM nvcr.io/nvidia/tritonserver:24.10-py3
# The preprocess step (decoding in Triton) runs the consumer's own decode code, which needs
# Python 3.11; the image's Python backend stub is built for 3.10. A stub placed in a model's
# folder is used for that model: the 3.11 stub comes from the same nvidia-pytriton wheel
# (Triton 2.51) the tests run.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11=3.11.0~rc1-1~22.04 python3.11-venv=3.11.0~rc1-1~22.04 libpython3.11=3.11.0~rc1-1~22.04 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/modstream/src
COPY pyproject.toml README.md ./
COPY consumer ./consumer
RUN python3.11 -m venv /opt/modstream/venv \
    && /opt/modstream/venv/bin/pip install --no-cache-dir . nvidia-pytriton==0.7.0
ENV PATH=/opt/modstream/venv/bin:$PATH
COPY --chown=1000:1000 triton_repo/nsfw_mobilenet_v2 /opt/modstream/models/nsfw_mobilenet_v2
COPY --chown=1000:1000 triton_repo/nsfw_mobilenet_v2_mid /opt/modstream/models/nsfw_mobilenet_v2_mid
COPY --chown=1000:1000 triton_repo/nsfw_inception_v3 /opt/modstream/models/nsfw_inception_v3
COPY --chown=1000:1000 triton_repo/preprocess /opt/modstream/models/preprocess
COPY --chown=1000:1000 triton_repo/nsfw_mobilenet_v2_bytes /opt/modstream/models/nsfw_mobilenet_v2_bytes
COPY --chown=1000:1000 triton_repo/nsfw_mobilenet_v2_mid_bytes /opt/modstream/models/nsfw_mobilenet_v2_mid_bytes
RUN cp /opt/modstream/venv/lib/python3.11/site-packages/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub \
        /opt/modstream/models/preprocess/ \
    && chown 1000:1000 /opt/modstream/models/preprocess/triton_python_backend_stub
USER 1000:1000
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver"]
CMD ["--model-repository=/opt/modstream/models", "--disable-auto-complete-config"]
