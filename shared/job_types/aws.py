"""AWS clients (S3, SES), made once per worker process, and the S3 verbs job types share.

boto3 clients are thread-safe but slow to build (endpoint and credential resolution), so
a worker makes one of each on first use and keeps it in ``JobContext.resources``, which
every job of that worker shares. ``aws_endpoint_url`` points them all at LocalStack or
moto; S3 then uses path-style addressing, since those endpoints have no per-bucket DNS
names. boto3 blocks: handlers call these verbs from a thread (``asyncio.to_thread``).

Only job handlers import this module; the API never does (boto3 takes ~0.3 s to import).
"""

from __future__ import annotations

import threading
from typing import IO, TYPE_CHECKING, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from shared.job_types import s3uri
from shared.registry import JobError, PermanentError, RetryableError
from shared.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_ses import SESClient

# Multipart uploads buffer chunk size x concurrency in memory: 2 x 8 MiB keeps an upload
# of any size within ~16 MiB (the default, 10 x 8 MiB, would not).
UPLOAD = TransferConfig(multipart_threshold=8 * 1024 * 1024,
                        multipart_chunksize=8 * 1024 * 1024, max_concurrency=2)

# Error codes that no retry can fix: the object, bucket or permission is simply not there.
_PERMANENT = {"NoSuchKey", "NoSuchBucket", "AccessDenied", "InvalidBucketName", "404", "403",
              "InvalidObjectState", "MessageRejected", "MailFromDomainNotVerified",
              "InvalidParameterValue", "ConfigurationSetDoesNotExist",
              "AccountSendingPausedException", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


class AwsClients:
    """One boto3 session and one client per service, for one worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session = boto3.session.Session(region_name=settings.aws_region)
        self._lock = threading.Lock()
        self._s3: S3Client | None = None
        self._ses: SESClient | None = None

    def _config(self, **extra: Any) -> Config:
        return Config(
            region_name=self.settings.aws_region,
            retries={"mode": "standard", "max_attempts": 3},
            max_pool_connections=max(10, self.settings.worker_concurrency),
            connect_timeout=5,
            read_timeout=60,
            **extra,
        )

    @property
    def endpoint(self) -> str | None:
        return self.settings.aws_endpoint_url or None

    def s3(self) -> S3Client:
        with self._lock:
            if self._s3 is None:
                # SigV4 also for presigned URLs (boto3 may pick legacy SigV2 for them).
                options: dict[str, Any] = {"signature_version": "s3v4"}
                if self.endpoint:
                    options["s3"] = {"addressing_style": "path"}
                self._s3 = self._session.client("s3", endpoint_url=self.endpoint,
                                                config=self._config(**options))
            return self._s3

    def ses(self) -> SESClient:
        with self._lock:
            if self._ses is None:
                self._ses = self._session.client("ses", endpoint_url=self.endpoint,
                                                 config=self._config())
            return self._ses

    # --- S3 verbs ------------------------------------------------------------------------------

    def open(self, uri: str, max_bytes: int | None = None) -> tuple[IO[bytes], int]:
        """A streaming body for ``uri`` and its size; nothing is read yet."""
        bucket, key = s3uri.split(uri)
        try:
            obj = self.s3().get_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise classify(exc, f"reading {uri}") from exc
        size = int(obj.get("ContentLength", 0))
        if max_bytes is not None and size > max_bytes:
            obj["Body"].close()
            raise PermanentError(f"{uri} is {size} bytes, over the limit of {max_bytes}")
        return obj["Body"], size  # type: ignore[return-value]

    def upload(self, fileobj: IO[bytes], uri: str, content_type: str) -> None:
        ensure_writable(uri, self.settings)  # every write passes here, whatever the type
        bucket, key = s3uri.split(uri)
        try:
            self.s3().upload_fileobj(fileobj, bucket, key, Config=UPLOAD,
                                     ExtraArgs={"ContentType": content_type})
        except (ClientError, BotoCoreError) as exc:
            raise classify(exc, f"writing {uri}") from exc

    def presign(self, uri: str, seconds: int) -> str:
        bucket, key = s3uri.split(uri)
        return self.s3().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds)


_making = threading.Lock()


def clients(resources: dict[str, Any], settings: Settings) -> AwsClients:
    """The worker's clients (made on first use): ``resources`` is ``JobContext.resources``.
    Handlers call this from threads, hence the lock: one set of clients per worker."""
    with _making:
        aws = resources.get("aws")
        if not isinstance(aws, AwsClients):
            aws = resources["aws"] = AwsClients(settings)
        return aws


def ensure_writable(uri: str, settings: Settings) -> None:
    """Refuse a destination outside the allowed locations (handlers call it before doing
    the work, and upload() again before writing)."""
    if not s3uri.writable(uri, settings):
        raise PermanentError(s3uri.refusal(uri, settings))


def classify(exc: ClientError | BotoCoreError, what: str) -> JobError:
    """A boto error as the job error it means: missing or refused is permanent, the rest
    (throttling, 5xx, a connection that failed) may pass."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        message = str(exc.response.get("Error", {}).get("Message", "")) or code
        if code in _PERMANENT:
            return PermanentError(f"{what}: {code}: {message}")
        return RetryableError(f"{what}: {code}: {message}")
    if isinstance(exc, EndpointConnectionError):
        return RetryableError(f"{what}: {exc}")
    return RetryableError(f"{what}: {type(exc).__name__}: {exc}")
