# The Shelfsight API, storefront and ingest job for docker-compose. CPU torch by default.
# Stage 1 builds the wheel from the source tree; stage 2 installs that wheel, so the image runs
# exactly what `pip install shelfsight-*.whl` gives a user (tests/e2e/test_wheel.py checks the same
# wheel outside the checkout) and never a copied folder the wheel might lack.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# torch first, pinned to the CPU build: an open range would pull a multi-GB CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/shelfsight-*.whl)[server]" && rm -rf /wheels
# Models live under one root that compose mounts: a collection records its model as a hub name or
# a directory relative to this root, so the container finds the model the host ingested with.
ENV SHELFSIGHT_MODELS=/models \
    HF_HOME=/models/hf
WORKDIR /work
EXPOSE 8000 8501
CMD ["shelfsight", "serve", "--host", "0.0.0.0", "--port", "8000"]
