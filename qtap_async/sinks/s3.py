"""Object store on S3 or an S3-compatible service (MinIO, GCS in interoperability mode), with aiobotocore.

Objects are content-addressed: the key is rendered from the sha256 of the bytes, so retrying an upload
rewrites the same key with the same bytes and never makes a second object.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from typing import Annotated, Any, Literal

import msgspec

from qtap_async.errors import SinkError, SinkTransientError
from qtap_async.events.objects import ObjectRef
from qtap_async.settings import SecretOrText
from qtap_async.sinks.base import ObjectStoreSettings, PositiveInt, StoredObject
from qtap_async.sinks.retention import Duration
from qtap_async.sinks.templates import KEY_FIELDS, URL_FIELDS, Template

# Codes that mean "this object will never be accepted as it is": dropping beats retrying forever.
_PERMANENT_CODES = frozenset({"EntityTooLarge", "InvalidArgument", "InvalidRequest", "InvalidDigest",
                              "KeyTooLongError", "MalformedXML", "InvalidObjectName", "XAmzContentSHA256Mismatch"})
# Codes that come with a 4xx status but say nothing against the object: the request timed out or was cut
# short on the way (a busy or restarting store), or the store asks to slow down. Retried, never dropped (as
# botocore's own retry rules do); any other 4xx is the object's or the request's fault.
_TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
                              "IncompleteBody", "ClientDisconnected", "SlowDown", "SlowDownWrite", "SlowDownRead",
                              "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
                              "RequestLimitExceeded", "BandwidthLimitExceeded", "XMinioServerNotInitialized"})
# Keys known to be stored already, least recently put first: skips re-uploads of identical content (the same
# body again and again). Most captured objects are unique (a transaction's own headers and timestamps), so a
# big table mostly holds keys never put again: at 65536 it grew the agent ~1.3 MiB/min for its first ~10
# minutes under the soak's 6,800 objects/min. 4096 keeps the repeats that matter (recent ones) in ~1 MiB.
_KNOWN_DIGESTS = 4096


class S3ObjectStore(ObjectStoreSettings, frozen=True, tag="s3"):
    """``type: s3`` object store: S3 or an S3-compatible service (docs/config.md)."""

    bucket: str
    retention: Duration | None = None  # a lifecycle rule expires objects after this long (whole days, rounded up)
    retention_prefix: str = ""  # only objects under this prefix ("" = the whole bucket)
    endpoint: str | None = None  # None = AWS S3 for the region
    region: str = "us-east-1"
    access_key: SecretOrText | None = None  # None = the default AWS credential chain
    secret_key: SecretOrText | None = None
    session_token: SecretOrText | None = None
    insecure: bool = False  # plain http to the endpoint is allowed; also skips TLS certificate checks
    addressing_style: Literal["auto", "path", "virtual"] = "path"
    sse: Literal["none", "AES256", "aws:kms"] = "none"
    sse_kms_key_id: str | None = None
    key: str = "{{DIGEST}}"  # key template, see templates.py
    access_url: str = "s3://{{BUCKET}}/{{KEY}}"  # template of the link stored in the reference event
    # Newer botocore adds CRC checksum headers/trailers to every upload; many S3-compatible stores (GCS among
    # them) reject those, so only send checksums where the API requires them.
    checksums: Literal["when_required", "when_supported"] = "when_required"
    concurrency: PositiveInt = 8  # uploads in flight at once
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0


class S3ObjectSink:
    def __init__(
        self,
        bucket: str,
        *,
        endpoint: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        insecure: bool = False,
        addressing_style: str = "path",
        sse: str = "none",
        sse_kms_key_id: str | None = None,
        key: str = "{{DIGEST}}",
        access_url: str = "s3://{{BUCKET}}/{{KEY}}",
        checksums: str = "when_required",
        concurrency: int = 8,
        timeout: float = 30.0,
        name: str = "s3",
        retention: str | None = None,
        retention_prefix: str = "",
    ) -> None:
        self.name = name
        self.retention = retention
        self.retention_prefix = retention_prefix
        self.retention_state = ""  # "present" | "applied" once the lifecycle rule was checked
        self.bucket = bucket
        self.endpoint = endpoint
        self.region = region
        self._creds = (access_key, secret_key, session_token)
        self.insecure = insecure
        self.addressing_style = addressing_style
        self._extra: dict[str, str] = {}
        if sse != "none":
            self._extra["ServerSideEncryption"] = sse
            if sse == "aws:kms" and sse_kms_key_id:
                self._extra["SSEKMSKeyId"] = sse_kms_key_id
        self._key = Template(key, KEY_FIELDS, f"object store {name}: key")
        self._url = Template(access_url, URL_FIELDS, f"object store {name}: access_url")
        self.checksums = checksums
        self.concurrency = concurrency
        self.timeout = timeout
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._known: OrderedDict[str, None] = OrderedDict()
        self.known_evicted = 0  # keys pushed out of _known (a later identical put uploads again; nothing is lost)
        self._where = f"object store {name} (bucket {bucket!r} at {endpoint or 'AWS S3 ' + region})"

    # ------------------------------------------------------------------------------------------ client
    async def start(self) -> None:
        if self._client is not None:
            return
        from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
        from aiobotocore.session import get_session  # type: ignore[import-untyped]

        access_key, secret_key, token = self._creds
        config = AioConfig(
            region_name=self.region,
            signature_version="s3v4",
            s3={"addressing_style": self.addressing_style},
            retries={"total_max_attempts": 1},  # the runner retries, with backoff and the spool behind it
            connect_timeout=min(5.0, self.timeout),
            read_timeout=self.timeout,
            max_pool_connections=max(10, self.concurrency * 2),
            request_checksum_calculation=self.checksums,
            response_checksum_validation=self.checksums,
        )
        stack = contextlib.AsyncExitStack()
        self._client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                region_name=self.region,
                endpoint_url=self.endpoint,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                aws_session_token=token,
                verify=not self.insecure,
                config=config,
            )
        )
        self._stack = stack
        if self.retention is not None and not self.retention_state:
            from qtap_async.sinks.retention import apply_s3_retention, days_ceil

            days = days_ceil(self.retention)
            try:
                self.retention_state = await apply_s3_retention(self._client, self.bucket, self.retention_prefix,
                                                                days, self._where)
            except SinkError:
                await self.close()
                raise
            except Exception as exc:  # endpoint down: like check(), a SinkError naming the store
                await self.close()
                raise SinkError(f"{self._where}: {_unreachable(exc)}") from exc

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = None
        self._client = None

    # ------------------------------------------------------------------------------------------- check
    async def check(self) -> None:
        """Raise SinkError when the bucket is missing, the credentials are wrong or the endpoint is down."""
        from botocore.exceptions import ClientError  # type: ignore[import-untyped]

        await self.start()
        try:
            async with asyncio.timeout(self.timeout):
                await self._client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
            return
        except ClientError as exc:
            code, message, _status = _error_of(exc)
            if code == "AccessDenied":
                # Write-only credentials may not list; the bucket still answers HEAD when they are valid.
                with contextlib.suppress(ClientError):
                    async with asyncio.timeout(self.timeout):
                        await self._client.head_bucket(Bucket=self.bucket)
                    return
            await self.close()
            raise SinkError(f"{self._where}: {_explain(code, message)}") from exc
        except Exception as exc:
            await self.close()
            raise SinkError(f"{self._where}: {_unreachable(exc)}") from exc

    # --------------------------------------------------------------------------------------------- put
    async def put(self, obj: StoredObject) -> ObjectRef:
        from botocore.exceptions import ClientError

        fields = {"DIGEST": obj.digest, "SHARD": obj.digest[:2], "CONNECTION_ID": str(obj.conn_id),
                  "TRANSACTION_ID": obj.transaction_id}
        key = self._key.render(fields)
        if key in self._known:
            self._known.move_to_end(key)  # put again: keep it
        else:
            try:
                await self.start()
                async with asyncio.timeout(self.timeout):
                    await self._client.put_object(Bucket=self.bucket, Key=key, Body=obj.data,
                                                  ContentType=obj.content_type, **self._extra)
            except ClientError as exc:
                code, message, status = _error_of(exc)
                msg = f"{self._where}: put {key}: {_explain(code, message)}"
                if code in _PERMANENT_CODES or (400 <= status < 500 and code not in _TRANSIENT_CODES
                                                and status not in (401, 403, 404, 408, 429)):
                    raise SinkError(msg) from exc
                raise SinkTransientError(msg) from exc
            except SinkError:
                raise
            except Exception as exc:  # connection refused/reset, timeouts, DNS: the endpoint is (briefly) gone
                raise SinkTransientError(f"{self._where}: put {key}: {_unreachable(exc)}") from exc
            self._known[key] = None
            if len(self._known) > _KNOWN_DIGESTS:
                self._known.popitem(last=False)
                self.known_evicted += 1
        url = self._url.render({**fields, "KEY": key, "BUCKET": self.bucket, "ENDPOINT": self.endpoint or "",
                                "REGION": self.region, "PATH": f"/{self.bucket}/{key}"})
        return ObjectRef.of(obj, url, self.name)


def _error_of(exc: Any) -> tuple[str, str, int]:
    err = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return str(err.get("Code", status)), str(err.get("Message", "")), status


def _explain(code: str, message: str) -> str:
    reasons = {
        "NoSuchBucket": "the bucket does not exist",
        "404": "the bucket does not exist",
        "NotFound": "the bucket does not exist",
        "InvalidAccessKeyId": "wrong credentials: the access key is not known to the store",
        "SignatureDoesNotMatch": "wrong credentials: the secret key does not match the access key",
        "AccessDenied": "access denied: wrong credentials or no permission on the bucket",
        "403": "access denied: wrong credentials or no permission on the bucket",
        "InvalidToken": "wrong credentials: the session token is not valid",
        "ExpiredToken": "wrong credentials: the session token has expired",
        "RequestTimeTooSkewed": "this machine's clock is too far from the store's",
        "AuthorizationHeaderMalformed": "the region does not match the bucket's region",
        "PermanentRedirect": "the bucket is in another region or needs another endpoint",
    }
    reason = reasons.get(code, code)
    return f"{reason} ({code}: {message})" if message and reason != code else f"{reason}: {message}".rstrip(": ")


def _unreachable(exc: BaseException) -> str:
    from botocore.exceptions import NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return "no credentials: set access_key/secret_key or configure the AWS credential chain"
    if isinstance(exc, TimeoutError):
        return "the endpoint did not answer in time"
    return f"cannot reach the endpoint: {type(exc).__name__}: {exc}"
