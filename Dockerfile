# `imcap serve` on the CPU.
#   docker build -t imcap-serve .
#   docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/runs/demo/run:/model:ro" imcap-serve
# then open http://127.0.0.1:8000/. Extra flags replace the default `--model /model`, e.g.
#   docker run ... imcap-serve --model /model --max-batch 32;  -e IMCAP_API_KEY=... requires a Bearer key.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_WAIT_POLICY=PASSIVE

# CPU-only PyTorch wheels: no CUDA libraries in the image. Pass an empty value to take the default wheels.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.14.1 torchvision==0.29.1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install '.[serve]' && useradd --create-home --uid 1000 imcap
USER imcap

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
# Inside the container the server must listen on all interfaces; publish the port to 127.0.0.1 on the host
# (as above) unless IMCAP_API_KEY is set.
ENTRYPOINT ["imcap", "serve", "--host", "0.0.0.0", "--port", "8000", "--device", "cpu"]
CMD ["--model", "/model"]
