# The modstream consumer and review page. Build from the repository root:
#   docker build -f deploy/docker/consumer.Dockerfile -t ghcr.io/modstream/consumer:0.1.0 .
FROM python:3.11.7-slim-bookworm AS build
# pdqhash (exemplar banks) builds from source.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++=4:12.2.0-3 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY consumer ./consumer
# The service and the review page (`modstream review` runs from this image too, with the
# `review` extra): no broker, Triton, PyTorch or test extras.
RUN pip install --no-cache-dir --prefix=/install "./[review]"

FROM python:3.11.7-slim-bookworm
# MALLOC_MMAP_THRESHOLD_: large decode buffers go back to the system when freed instead of
# staying resident (docs/memory.md), as in the Kubernetes deployment.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_MMAP_THRESHOLD_=131072 \
    MODSTREAM_POLICY__PATH=/etc/modstream/policy/policy.yaml
COPY --from=build /install /usr/local
COPY policies/default.yaml /etc/modstream/policy/policy.yaml
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin modstream
USER 10001:10001
EXPOSE 9400
ENTRYPOINT ["modstream"]
CMD ["run"]
