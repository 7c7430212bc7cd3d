# retune: build with the CUDA backend on NVIDIA's devel image, run on the
# matching runtime image as a non-root user with the data directory a volume.
#   docker build -t retune .
#   docker run --gpus all -p 8080:8080 -v retune-data:/data -e RETUNE_API_KEY=sk-... retune
# (without a key the server refuses to listen beyond loopback)
ARG CUDA_VERSION=13.0.0
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential make pkg-config libmicrohttpd-dev libcjson-dev libsqlite3-dev libpq-dev \
        libopenblas-dev libpcre2-dev libutf8proc-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make -j"$(nproc)" CUDA=1 build/retune

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libmicrohttpd12t64 libcjson1 libsqlite3-0 libpq5 libopenblas0-pthread libpcre2-8-0 libutf8proc2 \
        libcublas-13-0 && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data retune \
    && mkdir -p /data && chown retune /data
COPY --from=build /src/build/retune /usr/local/bin/retune
USER retune
VOLUME /data
EXPOSE 8080
ENV RETUNE_DATA_DIR=/data RETUNE_HOST=0.0.0.0 RETUNE_PORT=8080
ENTRYPOINT ["retune", "serve"]
