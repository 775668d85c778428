# The tracking server only: MLflow, the PostgreSQL driver and the S3 client.
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow[auth]==3.18.0" "psycopg[binary]>=3.1" "boto3>=1.34"
WORKDIR /app
COPY deploy/mlflow-server.sh /app/deploy/mlflow-server.sh
COPY deploy/refuse-example-secrets.sh /app/deploy/refuse-example-secrets.sh
RUN useradd --create-home mlflow
USER mlflow
EXPOSE 5000
CMD ["/app/deploy/mlflow-server.sh"]
