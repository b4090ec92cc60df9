# The Shelfsight API and storefront, for docker-compose. CPU torch by default.
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
# Every folder the package maps into the shelfsight namespace (pyproject's package-dir).
COPY shelfsight shelfsight
COPY search search
COPY ingest ingest
COPY train train
COPY evaluation evaluation
COPY data data
COPY ui ui
RUN pip install --no-cache-dir '.[server]'
EXPOSE 8000 8501
CMD ["shelfsight", "serve", "--host", "0.0.0.0", "--port", "8000"]
