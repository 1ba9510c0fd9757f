"""Database and Redis URLs, and the payload key, read from Secrets Manager and SSM, once,
at cold start.

Why not environment variables: a Lambda function's environment is shown to anyone who may
read its configuration and is written into the CloudFormation template, so the template
names only *where* the URLs live (``AJS_DATABASE_URL_SECRET_ARN``,
``AJS_REDIS_URL_PARAMETER``; the key sealing webhook credentials:
``AJS_PAYLOAD_KEY_SECRET_ARN``) and each process reads them with its own role when it
starts.
A rotated secret reaches new containers; warm ones keep their open connections, which is
why RDS Proxy (which follows the rotation itself) is the recommended front for Lambda.

The database secret may be the URL itself or the JSON that RDS writes for a managed master
password (``{"username", "password", "host", "port", "dbname"}``); fields the JSON lacks
come from ``AJS_DATABASE_URL`` (for example the RDS Proxy endpoint without a password).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from shared.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_ssm import SSMClient


class SecretFormatError(ValueError):
    """The secret holds neither a URL nor usable JSON. Messages never quote the secret."""


def resolve_secrets(settings: Settings) -> Settings:
    """``settings`` with the URLs filled in from their secret stores (when named)."""
    updates: dict[str, str] = {}
    if settings.database_url_secret_arn:
        secret = _secrets_client(settings).get_secret_value(
            SecretId=settings.database_url_secret_arn)["SecretString"]
        updates["database_url"] = database_url_from_secret(secret, settings.database_url)
    if settings.redis_url_parameter:
        parameter = _ssm_client(settings).get_parameter(
            Name=settings.redis_url_parameter, WithDecryption=True)["Parameter"]
        updates["redis_url"] = parameter["Value"].strip()
    if settings.payload_key_secret_arn:
        updates["payload_key"] = _secrets_client(settings).get_secret_value(
            SecretId=settings.payload_key_secret_arn)["SecretString"].strip()
    return settings.model_copy(update=updates) if updates else settings


def database_url_from_secret(secret: str, base_url: str = "") -> str:
    """The PostgreSQL URL a secret stands for: the secret itself when it is a URL, else
    RDS's JSON fields laid over ``base_url`` (host, port, database, user, query)."""
    text = secret.strip()
    if not text.startswith("{"):
        if not text.startswith(("postgres://", "postgresql://")):
            raise SecretFormatError("database secret is neither a postgresql:// URL nor JSON")
        return text
    try:
        fields: Any = json.loads(text)
    except ValueError:
        raise SecretFormatError("database secret looks like JSON but does not parse") from None
    if not isinstance(fields, dict):
        raise SecretFormatError("database secret JSON is not an object")
    base = urlsplit(base_url) if base_url else urlsplit("postgresql://")
    host = str(fields.get("host") or base.hostname or "")
    if not host:
        raise SecretFormatError("database secret has no host and AJS_DATABASE_URL gives none")
    user = str(fields.get("username") or base.username or "postgres")
    password = fields.get("password")
    port = fields.get("port") or base.port or 5432
    dbname = str(fields.get("dbname") or base.path.lstrip("/") or "postgres")
    credentials = quote(user, safe="")
    if password:
        credentials += ":" + quote(str(password), safe="")
    netloc = f"{credentials}@{f'[{host}]' if ':' in host else host}:{int(port)}"
    query = f"?{base.query}" if base.query else ""
    return f"postgresql://{netloc}/{quote(dbname, safe='')}{query}"


def _client_options(settings: Settings) -> dict[str, Any]:
    # Same endpoint and region as the job types' clients, so LocalStack serves all of them.
    options: dict[str, Any] = {"region_name": settings.aws_region}
    if settings.aws_endpoint_url:
        options["endpoint_url"] = settings.aws_endpoint_url
    return options


def _secrets_client(settings: Settings) -> SecretsManagerClient:
    import boto3  # only processes that name a secret pay for importing boto3

    return boto3.client("secretsmanager", **_client_options(settings))


def _ssm_client(settings: Settings) -> SSMClient:
    import boto3

    return boto3.client("ssm", **_client_options(settings))
