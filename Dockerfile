# Placeholder: the multi-stage, non-root, hash-locked image is built and smoke-tested under the Kubernetes issue.
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir .
USER 10001
STOPSIGNAL SIGTERM
ENTRYPOINT ["usage-consumer"]
CMD ["run", "--config", "/etc/usage-consumer/config.yaml"]
