# One process per container: `serve` (API, writers optional), `worker` or `migrate`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 AUDIT_HOST=0.0.0.0
WORKDIR /srv/audit-ingest

# Pinned versions with their hashes (requirements.lock, `make lock`): the image installs exactly
# what was reviewed, and a changed or substituted package fails the build.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml ./
COPY app ./app
RUN pip install --no-cache-dir --no-deps . \
 && useradd --system --uid 10001 --home-dir /srv/audit-ingest audit \
 && install -d -o audit -m 0700 /var/lib/audit/checkpoints /var/lib/witness
COPY alembic.ini ./
COPY alembic ./alembic

USER audit
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
ENTRYPOINT ["python", "-m", "app"]
CMD ["serve"]
