# The budgetq worker image: CPU by default; on a GPU host install a CUDA build of torch instead
# (build with --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126").
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update && apt-get install -y --no-install-recommends wordnet-base \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
RUN pip install ${TORCH_SPEC}
COPY pyproject.toml README.md ./
COPY core ./core
COPY specs ./specs
COPY models ./models
COPY producer ./producer
COPY worker ./worker
COPY alembic ./alembic
COPY alembic.ini ./
RUN pip install -e '.[worker]'

RUN useradd --create-home budgetq && mkdir -p /state && chown budgetq /state
USER budgetq
ENV BUDGETQ_HOME=/state
ENTRYPOINT ["budgetq"]
CMD ["worker"]
