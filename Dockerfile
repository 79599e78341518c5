# The image every wqsim service in compose.yaml shares: the package, its notebook
# extra (JupyterLab) and the notebooks, run as a non-root user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 1000 wqsim
WORKDIR /app

COPY pyproject.toml README.md LICENSE ./
COPY wqsim ./wqsim
RUN pip install ".[notebook]"
COPY --chown=wqsim:wqsim notebooks ./notebooks

USER wqsim
CMD ["wqsim", "run"]
