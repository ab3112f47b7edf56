-- The two databases of the stack (docker-compose.yml); the passwords are those of its URLs.
CREATE ROLE mlflow LOGIN PASSWORD 'mlflow-change-me';
CREATE DATABASE mlflow OWNER mlflow;
CREATE ROLE prefect LOGIN PASSWORD 'prefect-change-me';
CREATE DATABASE prefect OWNER prefect;
