"""Object storage on the ``minio`` SDK: one client per role of the access policy.

The same code talks to the embedded SeaweedFS (credentials generated under the data directory) and to
Amazon S3 on EKS (``KFRELEASE_S3_ENDPOINT=s3.amazonaws.com``; credentials from the environment or IRSA
web identity). Every S3 failure becomes a ``StorageError`` that names the role, bucket and key.

Writes that must not race use S3 conditional requests: ``If-None-Match: *`` (create only if absent) and
``If-Match: <etag>`` (replace only if unchanged). SeaweedFS enforces both (checked in the tests), and
so does Amazon S3 (conditional writes, 2024).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import urllib3
from minio import Minio
from minio.credentials import ChainedProvider, EnvAWSProvider, IamAwsProvider
from minio.error import S3Error

from kfrelease.access.credentials import ADMIN, load_credentials
from kfrelease.access.policy import packaged_roles
from kfrelease.config import Settings
from kfrelease.errors import AccessDenied, Conflict, NotFound, StorageError, StoreUnavailable

log = logging.getLogger(__name__)

BUCKETS = ("raw", "curated", "models", "pipeline-root", "inference-logs", "feedback", "releases")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int


def _http_client() -> urllib3.PoolManager:
    # Fail fast when the store is down (the SDK's default retries for minutes); retry transient 5xx.
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=3.0, read=60.0),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        maxsize=16,
    )


#: Conditional writes go through presigned URLs (see ``ObjectStore._conditional_put``), valid this long.
PRESIGN_TTL = dt.timedelta(minutes=5)
_HTTP = _http_client()


class ObjectStore:
    """A role's view of the object store. Bucket names are the logical ones of ``BUCKETS``."""

    def __init__(self, client: Minio, role: str, settings: Settings):
        self.client = client
        self.role = role
        self.settings = settings

    # naming --------------------------------------------------------------------------------------
    def bucket(self, name: str) -> str:
        return f"{self.settings.bucket_prefix}{name}"

    def uri(self, bucket: str, key: str) -> str:
        return f"s3://{self.bucket(bucket)}/{key}"

    # error translation ---------------------------------------------------------------------------
    def _fail(self, exc: Exception, action: str, bucket: str, key: str = "") -> StorageError:
        where = self.uri(bucket, key) if key else f"s3://{self.bucket(bucket)}"
        if isinstance(exc, S3Error):
            code = exc.code
            if code == "AccessDenied":
                return AccessDenied(
                    f"role {self.role!r} may not {action} {where} (AccessDenied); the access policy "
                    f"(kfrelease/access/policy.yaml) decides who may {action} the {bucket!r} bucket"
                )
            if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId"):
                return AccessDenied(
                    f"the object store refused the credentials of role {self.role!r} ({code}) for {where}; "
                    f"check {self.settings.credentials_dir}/{self.role}.json or your AWS credentials"
                )
            if code in ("NoSuchKey", "NoSuchObject"):
                return NotFound(f"{where} does not exist")
            if code == "NoSuchBucket":
                return NotFound(f"bucket {self.bucket(bucket)!r} does not exist; `kfrelease up` creates the buckets")
            if code == "PreconditionFailed":
                return Conflict(f"{where} was written by someone else meanwhile (precondition failed)")
            return StorageError(f"object store error on {action} {where}: {code}: {exc.message}")
        if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
            return StoreUnavailable(
                f"object store at {self.settings.s3_address} is not reachable ({type(exc).__name__}) while trying "
                f"to {action} {where}; start the embedded stack with `kfrelease up` or check KFRELEASE_S3_ENDPOINT"
            )
        return StorageError(f"{action} {where} failed: {exc}")

    # objects ---------------------------------------------------------------------------------------
    def put_bytes(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Write an object; returns its ETag. ``if_none_match`` creates only; ``if_match`` replaces only
        the version with that ETag. A lost race raises ``Conflict``."""
        headers = {"Content-Type": content_type}
        if if_none_match:
            headers["If-None-Match"] = "*"
        if if_match:
            headers["If-Match"] = if_match if if_match.startswith('"') else f'"{if_match}"'
        try:
            if if_none_match or if_match:
                return self._conditional_put(bucket, key, data, headers)
            result = self.client.put_object(
                self.bucket(bucket), key, io.BytesIO(data), len(data), content_type=content_type
            )
            return result.etag
        except StorageError:
            raise
        except Exception as exc:
            raise self._fail(exc, "write", bucket, key) from exc

    def _conditional_put(self, bucket: str, key: str, data: bytes, headers: dict[str, str]) -> str:
        """PUT with conditional headers through a presigned URL (``Minio.presigned_put_object``).

        ``put_object`` of minio 7.2 turns every header it does not know into user metadata
        (``minio/helpers.py`` ``normalize_headers``: ``If-None-Match`` would be sent as
        ``x-amz-meta-if-none-match``); a presigned URL signs only the host, so the request carries the
        conditional headers exactly as given and the store evaluates them."""
        url = self.client.presigned_put_object(self.bucket(bucket), key, expires=PRESIGN_TTL)
        response = _HTTP.request("PUT", url, body=data, headers=headers, preload_content=True)
        if response.status >= 300:
            if response.status == 412:
                raise Conflict(f"{self.uri(bucket, key)} was written by someone else meanwhile (precondition failed)")
            raise (
                S3Error.fromxml(response)
                if response.data
                else StorageError(f"object store answered HTTP {response.status} to a write of {self.uri(bucket, key)}")
            )
        return response.headers.get("ETag", "").strip('"')

    def put_json(self, bucket: str, key: str, doc, **kwargs) -> str:
        data = json.dumps(doc, indent=2, sort_keys=True, default=str).encode()
        return self.put_bytes(bucket, key, data, content_type="application/json", **kwargs)

    def put_file(self, bucket: str, key: str, path: str, content_type: str = "application/octet-stream") -> str:
        try:
            return self.client.fput_object(self.bucket(bucket), key, path, content_type=content_type).etag
        except Exception as exc:
            raise self._fail(exc, "write", bucket, key) from exc

    def get_bytes(self, bucket: str, key: str) -> bytes:
        resp = None
        try:
            resp = self.client.get_object(self.bucket(bucket), key)
            return resp.read()
        except Exception as exc:
            raise self._fail(exc, "read", bucket, key) from exc
        finally:
            if resp is not None:
                resp.close()
                resp.release_conn()

    def get_json(self, bucket: str, key: str):
        data = self.get_bytes(bucket, key)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StorageError(f"{self.uri(bucket, key)} is not valid JSON: {exc}") from None

    def get_file(self, bucket: str, key: str, path: str) -> None:
        try:
            self.client.fget_object(self.bucket(bucket), key, path)
        except Exception as exc:
            raise self._fail(exc, "read", bucket, key) from exc

    def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        """The object's ETag and size, or None if it does not exist."""
        try:
            st = self.client.stat_object(self.bucket(bucket), key)
            return ObjectInfo(key, st.etag, st.size)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return None
            raise self._fail(exc, "read", bucket, key) from exc
        except Exception as exc:
            raise self._fail(exc, "read", bucket, key) from exc

    def exists(self, bucket: str, key: str) -> bool:
        return self.stat(bucket, key) is not None

    def list(self, bucket: str, prefix: str = "", recursive: bool = True) -> list[ObjectInfo]:
        return list(self.iter(bucket, prefix, recursive))

    def iter(self, bucket: str, prefix: str = "", recursive: bool = True) -> Iterator[ObjectInfo]:
        try:
            for obj in self.client.list_objects(self.bucket(bucket), prefix=prefix, recursive=recursive):
                yield ObjectInfo(obj.object_name, (obj.etag or "").strip('"'), obj.size or 0)
        except Exception as exc:
            raise self._fail(exc, "list", bucket, prefix) from exc

    def delete(self, bucket: str, key: str) -> None:
        try:
            self.client.remove_object(self.bucket(bucket), key)
        except Exception as exc:
            raise self._fail(exc, "write", bucket, key) from exc


def _client(settings: Settings, role: str) -> Minio:
    if settings.embedded:
        creds = load_credentials(settings, role)
        return Minio(
            settings.s3_address,
            access_key=creds.access_key,
            secret_key=creds.secret_key,
            secure=False,
            region=settings.s3_region,
            http_client=_http_client(),
        )
    # External S3 (EKS): static keys from the environment, else IRSA web identity / instance role.
    return Minio(
        settings.s3_address,
        credentials=ChainedProvider([EnvAWSProvider(), IamAwsProvider()]),
        secure=settings.s3_secure,
        region=settings.s3_region,
        http_client=_http_client(),
    )


def store_for(role: str, settings: Settings | None = None) -> ObjectStore:
    """The object store as seen by a role of the access policy (``data-engineer``, ``pipeline``, ...)."""
    settings = settings or Settings.from_env()
    if role != ADMIN and role not in packaged_roles():
        raise StorageError(f"unknown role {role!r}; roles are {', '.join(packaged_roles())}")
    return ObjectStore(_client(settings, role), role, settings)


def ensure_buckets(settings: Settings) -> list[str]:
    """Create the buckets of ``BUCKETS`` that are missing (embedded stack, admin identity)."""
    store = store_for(ADMIN, settings)
    created = []
    for name in BUCKETS:
        physical = store.bucket(name)
        try:
            if not store.client.bucket_exists(physical):
                store.client.make_bucket(physical)
                created.append(physical)
        except Exception as exc:
            raise store._fail(exc, "create", name) from exc
    return created
