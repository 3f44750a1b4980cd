# scWorkbench: the app on port 8501. CPU by default; see README ("GPU") for a CUDA build.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    SCWB_HOME=/data/scworkbench
WORKDIR /app

# TORCH_INDEX picks the torch build: the CPU wheels by default, or e.g.
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 for CUDA.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY requirements.txt .
RUN pip install --index-url ${TORCH_INDEX} torch==2.13.0 \
 && pip install -r requirements.txt

COPY engine ./engine
COPY ui ./ui
COPY pages ./pages
COPY assets ./assets
COPY .streamlit ./.streamlit
COPY app.py serve.py ./

RUN useradd --create-home scwb && mkdir -p /data/scworkbench && chown -R scwb /data
USER scwb
VOLUME ["/data/scworkbench"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).status == 200 else 1)"
CMD ["python", "-m", "streamlit", "run", "serve.py", "--server.address", "0.0.0.0", "--server.port", "8501"]
