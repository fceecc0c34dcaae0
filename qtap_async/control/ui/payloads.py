"""Where the browser fetches a payload object: a presigned GET URL for ``s3://bucket/key`` references
(signed here with credentials from the environment: local computation, no request to the store), or the
reference's own http(s) URL. The control plane only hands out the URL; the bytes go from the store to
the browser."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from qtap_async.control.settings import PayloadAccess
from qtap_async.errors import ControlError


class NotFetchable(ControlError):
    """The reference cannot be fetched by a browser (a local file, or no signing credentials)."""


class PayloadSigner:
    def __init__(self, access: PayloadAccess) -> None:
        self.access = access
        self._client: Any = None

    def origin(self) -> str:
        """The store's origin, for the page's Content-Security-Policy connect-src ("" when unknown)."""
        if self.access.endpoint:
            u = urlsplit(self.access.endpoint)
            return f"{u.scheme}://{u.netloc}"
        return f"https://*.s3.{self.access.region}.amazonaws.com https://s3.{self.access.region}.amazonaws.com"

    def _s3(self) -> Any:
        if self._client is None:
            key, secret = os.environ.get(self.access.access_key_env), os.environ.get(self.access.secret_key_env)
            if not key or not secret:
                raise NotFetchable(f"no signing credentials: set {self.access.access_key_env} and "
                                   f"{self.access.secret_key_env} for the control plane")
            import botocore.session  # type: ignore[import-untyped]
            from botocore.config import Config  # type: ignore[import-untyped]

            session = botocore.session.get_session()
            # Built once: making a botocore client costs tens of milliseconds; signing is then microseconds.
            self._client = session.create_client(
                "s3", region_name=self.access.region, endpoint_url=self.access.endpoint or None,
                aws_access_key_id=key, aws_secret_access_key=secret,
                config=Config(signature_version="s3v4", s3={"addressing_style": self.access.addressing_style}))
        return self._client

    def browser_url(self, ref_url: str) -> str:
        u = urlsplit(ref_url)
        if u.scheme == "s3":
            bucket, key = u.netloc, u.path.lstrip("/")
            if not bucket or not key:
                raise NotFetchable(f"object reference {ref_url!r} names no bucket and key")
            url: str = self._s3().generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                         ExpiresIn=self.access.presign_ttl_s)
            return url
        if u.scheme in ("http", "https"):
            return ref_url
        raise NotFetchable(f"the object is in a {u.scheme or 'local'} store the browser cannot reach ({ref_url})")
