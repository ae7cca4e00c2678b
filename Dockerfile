FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    PIP_NO_CACHE_DIR=1 HOST=0.0.0.0 PORT=8000 DATA_DIR=/data
WORKDIR /srv
# The CPU build of torch, pinned, before the rest (a plain resolve pulls CUDA wheels).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY app app
COPY auth auth
COPY core core
COPY indexing indexing
COPY retrieval retrieval
COPY evals evals
# The `ils-rag bench` commands live here; their results (benchmarks/results/) stay out of the package.
COPY benchmarks benchmarks
COPY samples samples
RUN pip install .
RUN useradd --system --home /data ils && mkdir -p /data && chown ils /data
USER ils
EXPOSE 8000
CMD ["ils-rag", "serve"]
