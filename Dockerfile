# HOMEPOT application image: the web (gunicorn), worker and beat processes of docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOMEPOT_ENV_FILE=""

WORKDIR /app

# Dependencies first, so a code change does not reinstall them. Every package ships a wheel
# (psycopg[binary] brings its own libpq), so no compiler or system library is needed.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .

# Static files (the admin's CSS, Swagger UI) are collected into the image; WhiteNoise serves
# them from gunicorn. The key is only for this build step: settings refuse to load without one.
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --no-input -v 0 \
    && useradd --system --uid 10001 --no-create-home --home-dir /app homepot \
    && mkdir -p /app/var/metrics \
    && chown -R homepot /app/var

# Run as an unprivileged user; it may write only var/ (celery beat's schedule file).
USER homepot

EXPOSE 8000
# --preload and no control socket: see the web service in docker-compose.yml.
CMD ["gunicorn", "homepot.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-", "--no-control-socket", "--preload"]
