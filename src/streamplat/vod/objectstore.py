"""Recordings in S3-compatible object storage (AWS S3, MinIO, ...), through boto3.

boto3 rather than aiobotocore or obstore: its transfer manager (s3transfer) already does
multipart uploads with parallel parts, per-part checksums the store verifies, and aborts
unfinished uploads on failure; presigned URLs are computed locally. Its calls block, so every
network call here runs on a worker thread (`asyncio.to_thread`), never on the event loop; only
presigning (a few HMACs, no I/O) runs inline.

Integrity: while a file uploads, a second thread computes the ETag the store must report for it
(the MD5 of a single PUT, or the MD5 of the parts' MD5s plus "-<parts>" for a multipart upload,
with the part size s3transfer uses). The upload counts only once a HEAD of the object reports the
local size and that ETag.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamplat.config import ObjectStorageSettings
from streamplat.hls.disk import INDEX_NAME, INIT_RE, SEGMENT_RE, fsync_dir

log = logging.getLogger(__name__)

_HASH_BLOCK = 1 << 20
_DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys
# A presigned URL is reused only while this much of its life is left (a redirect may be cached
# for 60 s by the client), and at most this many are kept.
PRESIGN_REUSE_MIN_LEFT_SECONDS = 60
PRESIGN_CACHE_SIZE = 10_000


class ObjectStorageError(Exception):
    """A call to the object store failed; `reason` is short and names the endpoint or bucket."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class StoredObject:
    """An object confirmed by a HEAD after its upload."""

    key: str
    size: int
    etag: str


class ObjectStore:
    """One bucket (and key prefix) of an S3-compatible store; `open()` checks it is reachable."""

    def __init__(self, settings: ObjectStorageSettings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self._environ = os.environ if environ is None else environ
        self._client: Any = None
        self._presigner: Any = None
        self._transfer: Any = None
        self._urls: dict[tuple[str, str], tuple[str, float]] = {}  # (operation, key) -> (url, reuse until)

    @property
    def endpoint(self) -> str:
        """The endpoint as log lines and error messages name it."""
        return self.settings.endpoint_url or f"AWS S3 ({self.settings.region})"

    @property
    def where(self) -> str:
        """Bucket and endpoint, for messages."""
        return f"bucket {self.settings.bucket!r} at {self.endpoint}"

    def key(self, stream_id: str, name: str) -> str:
        """The object key of one file of a recording."""
        return f"{self.settings.key_prefix}{stream_id}/{name}"

    def live_key(self, stream_id: str, name: str) -> str:
        """The object key of one file of a live stream (init, segment or index, as on disk)."""
        return f"{self.live_prefix(stream_id)}{name}"

    def live_prefix(self, stream_id: str) -> str:
        """The key prefix of every live object of a stream (ends with /)."""
        return f"{self.settings.live_prefix}{stream_id}/"

    # --- start --------------------------------------------------------------------------------

    async def open(self) -> None:
        """Build the clients and check the bucket (HeadBucket); create it if configured to.

        Raises ObjectStorageError naming the endpoint when the store cannot be used.
        """
        await asyncio.to_thread(self._open_sync)

    def _credentials(self) -> dict[str, str]:
        s = self.settings
        key_id = self._environ.get(s.access_key_id_env, "")
        secret = self._environ.get(s.secret_access_key_env, "")
        if bool(key_id) != bool(secret):
            missing = s.secret_access_key_env if key_id else s.access_key_id_env
            raise ObjectStorageError(f"object storage credentials incomplete: {missing} is not set")
        if not key_id:
            return {}  # boto3's own chain: ~/.aws, AWS_PROFILE, instance roles
        creds = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
        token = self._environ.get("AWS_SESSION_TOKEN")
        if token:
            creds["aws_session_token"] = token
        return creds

    def _open_sync(self) -> None:
        import boto3  # type: ignore[import-untyped]
        from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        s = self.settings
        config = Config(
            region_name=s.region,
            s3={"addressing_style": s.addressing_style},
            signature_version="s3v4",
            connect_timeout=s.connect_timeout_seconds,
            read_timeout=s.read_timeout_seconds,
            # Our own retries (with backoff, visible in the recording's status) handle outages;
            # botocore only smooths over a single dropped connection.
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=max(10, s.max_concurrency * 2),
        )
        session = boto3.session.Session(**self._credentials())
        self._client = session.client("s3", endpoint_url=s.endpoint_url or None, config=config)
        self._presigner = (
            session.client("s3", endpoint_url=s.public_endpoint_url, config=config)
            if s.public_endpoint_url
            else self._client
        )
        self._transfer = TransferConfig(
            multipart_threshold=s.multipart_threshold_bytes,
            multipart_chunksize=s.multipart_chunk_bytes,
            max_concurrency=s.max_concurrency,
            use_threads=True,
        )
        try:
            self._client.head_bucket(Bucket=s.bucket)
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchBucket", "NotFound") and s.create_bucket:
                self._create_bucket()
                return
            raise ObjectStorageError(self._reason(exc)) from None

    def _create_bucket(self) -> None:
        s = self.settings
        args: dict[str, Any] = {"Bucket": s.bucket}
        if s.region != "us-east-1":  # S3 rejects a location constraint naming its default region
            args["CreateBucketConfiguration"] = {"LocationConstraint": s.region}
        try:
            self._client.create_bucket(**args)
        except Exception as exc:
            raise ObjectStorageError(f"cannot create {self.where}: {self._reason(exc)}") from None
        log.info("object storage: created %s", self.where)

    def close(self) -> None:
        """Close the clients' connection pools."""
        for client in {id(c): c for c in (self._client, self._presigner) if c is not None}.values():
            with contextlib.suppress(Exception):
                client.close()

    # --- objects ------------------------------------------------------------------------------

    async def upload(self, path: Path, key: str, content_type: str) -> StoredObject:
        """Upload a file and confirm it (size and ETag by HEAD); ObjectStorageError on any failure.

        Cancelling the caller waits for the transfer threads to finish (they cannot be
        interrupted), so no upload lands after this returns.
        """
        size = (await asyncio.to_thread(path.stat)).st_size
        expected: asyncio.Future[str | None] = asyncio.ensure_future(
            asyncio.to_thread(self._expected_etag, path, size) if self.settings.verify_etag else _none()
        )
        sent = asyncio.ensure_future(asyncio.to_thread(self._put_sync, path, key, content_type))
        both = asyncio.gather(expected, sent, return_exceptions=True)
        try:
            await asyncio.shield(both)
        except asyncio.CancelledError:
            await asyncio.wait({both})
            raise
        failure = sent.exception()
        if failure is not None:
            raise ObjectStorageError(f"upload of {key} failed: {self._reason(failure)}")
        etag_exc = expected.exception()
        if etag_exc is not None:
            raise etag_exc  # the local file could not be read: not the store's fault
        return await asyncio.to_thread(self._confirm_sync, key, size, expected.result())

    def _put_sync(self, path: Path, key: str, content_type: str) -> None:
        self._client.upload_file(
            str(path),
            self.settings.bucket,
            key,
            ExtraArgs={"ContentType": content_type},
            Config=self._transfer,
        )

    def _confirm_sync(self, key: str, size: int, expected_etag: str | None) -> StoredObject:
        try:
            head = self._client.head_object(Bucket=self.settings.bucket, Key=key)
        except Exception as exc:
            raise ObjectStorageError(f"cannot confirm {key}: {self._reason(exc)}") from None
        stored_size = int(head["ContentLength"])
        etag = str(head.get("ETag", "")).strip('"')
        if stored_size != size:
            raise ObjectStorageError(f"{key} stored with {stored_size} bytes instead of {size}")
        if expected_etag is not None and etag != expected_etag:
            raise ObjectStorageError(f"{key} stored with ETag {etag}, expected {expected_etag} (corrupted?)")
        return StoredObject(key, stored_size, etag)

    def _expected_etag(self, path: Path, size: int) -> str:
        """The ETag S3 reports for this file uploaded with our transfer settings."""
        from s3transfer.utils import ChunksizeAdjuster  # type: ignore[import-untyped]

        s = self.settings
        if size < s.multipart_threshold_bytes:
            digest = hashlib.md5(usedforsecurity=False)
            with path.open("rb") as f:
                while block := f.read(_HASH_BLOCK):
                    digest.update(block)
            return digest.hexdigest()
        part_size = ChunksizeAdjuster().adjust_chunksize(s.multipart_chunk_bytes, size)
        parts = []
        with path.open("rb") as f:
            while True:
                part = hashlib.md5(usedforsecurity=False)
                left = part_size
                while left:
                    block = f.read(min(_HASH_BLOCK, left))
                    if not block:
                        break
                    part.update(block)
                    left -= len(block)
                if left == part_size:
                    break
                parts.append(part.digest())
                if left:
                    break
        return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"

    # --- small objects (live media), blocking: run them on a worker thread ---------------------

    def put_file_sync(self, path: Path, key: str, content_type: str) -> int:
        """Upload a small file in one PUT and confirm it; returns its size.

        The body's MD5 travels as Content-MD5, so the store refuses a body damaged on the way,
        and the ETag it answers must be that MD5 (unless verify_etag is off): confirmed in the
        PUT's own round trip, without the HEAD a multipart upload needs. OSError if the file
        cannot be read (FileNotFoundError: it is gone), ObjectStorageError if the store fails.
        """
        data = path.read_bytes()
        digest = hashlib.md5(data, usedforsecurity=False)
        try:
            reply = self._client.put_object(
                Bucket=self.settings.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                ContentMD5=base64.b64encode(digest.digest()).decode(),
            )
        except Exception as exc:
            raise ObjectStorageError(f"upload of {key} failed: {self._reason(exc)}") from None
        etag = str(reply.get("ETag", "")).strip('"')
        if self.settings.verify_etag and etag != digest.hexdigest():
            raise ObjectStorageError(
                f"{key} stored with ETag {etag}, expected {digest.hexdigest()} (corrupted?)"
            )
        return len(data)

    def list_sync(self, prefix: str) -> dict[str, StoredObject]:
        """Every object under `prefix`, by key (all pages)."""
        found: dict[str, StoredObject] = {}
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.settings.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    key = str(item["Key"])
                    found[key] = StoredObject(key, int(item["Size"]), str(item.get("ETag", "")).strip('"'))
        except Exception as exc:
            raise ObjectStorageError(f"cannot list {prefix} in {self.where}: {self._reason(exc)}") from None
        return found

    def download_sync(self, stored: StoredObject, dest: Path) -> None:
        """Write an object to `dest` durably, or not at all (ObjectStorageError; no file left).

        The body is written to a temporary file next to `dest` and checked before its rename:
        its size, and its MD5 against the ETag when the ETag is one (a single-PUT object).
        """
        tmp = dest.with_name(f".{dest.name}.download.tmp")
        try:
            try:
                body = self._client.get_object(Bucket=self.settings.bucket, Key=stored.key)["Body"]
                digest = hashlib.md5(usedforsecurity=False)
                size = 0
                with tmp.open("wb") as f:
                    while block := body.read(_HASH_BLOCK):
                        f.write(block)
                        digest.update(block)
                        size += len(block)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError:
                raise  # the local disk, not the store
            except Exception as exc:
                raise ObjectStorageError(f"download of {stored.key} failed: {self._reason(exc)}") from None
            if size != stored.size:
                raise ObjectStorageError(
                    f"download of {stored.key} gave {size} bytes instead of {stored.size}"
                )
            single_put = len(stored.etag) == 32 and "-" not in stored.etag
            if self.settings.verify_etag and single_put and digest.hexdigest() != stored.etag:
                raise ObjectStorageError(f"download of {stored.key} does not match its ETag (corrupted?)")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; how many there were. ObjectStorageError on failure."""
        found = await asyncio.to_thread(self.list_sync, prefix)
        keys = sorted(found)
        for start in range(0, len(keys), _DELETE_BATCH):
            await self.delete(keys[start : start + _DELETE_BATCH])
        return len(keys)

    async def delete(self, keys: list[str]) -> None:
        """Delete objects (missing ones are fine); ObjectStorageError if the store refuses."""
        for key in keys:
            self.forget(key)
        await asyncio.to_thread(self._delete_sync, keys)

    def _delete_sync(self, keys: list[str]) -> None:
        try:
            reply = self._client.delete_objects(
                Bucket=self.settings.bucket,
                Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
            )
        except Exception as exc:
            raise ObjectStorageError(f"cannot delete from {self.where}: {self._reason(exc)}") from None
        errors = reply.get("Errors") or []
        if errors:
            first = errors[0]
            problem = f"{first.get('Code')} {first.get('Message')}"
            raise ObjectStorageError(f"cannot delete {first.get('Key')} from {self.where}: {problem}")

    async def presigned_url(self, key: str, *, head: bool = False) -> str:
        """A URL that serves the object (GET, or HEAD: the signature covers the method) for a while.

        Signing costs ~1.7 ms of CPU in botocore (measured here), too much for the event loop on
        every play: a URL is reused while at least half its lifetime is left (more than the 60 s
        a client may cache the redirect), and new ones are signed on a worker thread.
        """
        operation = "head_object" if head else "get_object"
        now = time.monotonic()
        cached = self._urls.get((operation, key))
        if cached is not None and now < cached[1]:
            return cached[0]
        url = await asyncio.to_thread(self.presign_now, key, head=head)
        lifetime = self.settings.presign_seconds
        if lifetime >= 2 * PRESIGN_REUSE_MIN_LEFT_SECONDS:
            if len(self._urls) >= PRESIGN_CACHE_SIZE:
                self._urls.clear()  # rare (that many distinct recordings played in half a lifetime)
            self._urls[(operation, key)] = (url, now + lifetime / 2)
        return url

    def presign_now(self, key: str, *, head: bool = False) -> str:
        """Sign a fresh URL (blocking CPU work: call it on a thread)."""
        url: str = self._presigner.generate_presigned_url(
            "head_object" if head else "get_object",
            Params={"Bucket": self.settings.bucket, "Key": key},
            ExpiresIn=self.settings.presign_seconds,
        )
        return url

    def forget(self, key: str) -> None:
        """Drop the cached URLs of a deleted object."""
        for operation in ("get_object", "head_object"):
            self._urls.pop((operation, key), None)

    # --- errors -------------------------------------------------------------------------------

    def _reason(self, exc: BaseException) -> str:
        from botocore.exceptions import (  # type: ignore[import-untyped]
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        if isinstance(exc, ObjectStorageError):
            return exc.reason
        if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
            return f"object storage unreachable at {self.endpoint}"
        if isinstance(exc, ReadTimeoutError):
            return f"object storage at {self.endpoint} did not answer in time"
        if isinstance(exc, NoCredentialsError):
            return (
                f"no object storage credentials: set {self.settings.access_key_id_env} and "
                f"{self.settings.secret_access_key_env}"
            )
        code = _error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            return f"{self.where} does not exist (create it, or set object_storage.create_bucket)"
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return f"access to {self.where} denied ({code}): check the credentials"
        if code:
            return f"{self.where} answered {code}"
        # boto3 wraps a failed upload's ClientError in S3UploadFailedError: name the real cause.
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, BotoCoreError | ClientError):
            return self._reason(cause)
        return f"{type(exc).__name__} talking to {self.endpoint}: {exc}"


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """The wait after failed attempt number `attempt` (1, 2, ...): `base`, doubling, at most `cap`."""
    return min(cap, base * 2.0 ** (attempt - 1))


def live_file(name: str) -> bool:
    """Whether `name` is one of a live stream's files that are uploaded and restored."""
    return name == INDEX_NAME or bool(INIT_RE.fullmatch(name) or SEGMENT_RE.fullmatch(name))


async def restore_live_media(store: ObjectStore, stream_id: str, dest: Path) -> int:
    """Download the live files of a stream that `dest` lacks (or holds at another size); how many.

    For a recording whose node died: its media dir here is missing or has fewer segments than
    the store. Each file lands whole (temporary name, size and MD5 checked, fsync, rename) or
    not at all: one that fails is logged and left out, and packaging then skips a run or a
    segment as it skips damaged ones. ObjectStorageError if the store cannot be listed.
    """
    prefix = store.live_prefix(stream_id)
    listed = await asyncio.to_thread(store.list_sync, prefix)
    wanted = {key[len(prefix) :]: obj for key, obj in listed.items() if live_file(key[len(prefix) :])}
    if not wanted:
        return 0

    def missing() -> list[str]:
        dest.mkdir(parents=True, exist_ok=True)
        have = {e.name: e.stat().st_size for e in os.scandir(dest) if e.is_file()}
        return sorted(n for n, obj in wanted.items() if have.get(n) != obj.size)

    restored = 0
    for name in await asyncio.to_thread(missing):
        try:
            await asyncio.to_thread(store.download_sync, wanted[name], dest / name)
        except (ObjectStorageError, OSError) as exc:
            log.warning(
                "stream=%s cannot restore %s from %s: %s",
                stream_id,
                name,
                store.where,
                exc,
                extra={"stream_id": stream_id},
            )
            continue
        restored += 1
    if restored:
        await asyncio.to_thread(fsync_dir, dest)
    log.info(
        "stream=%s restored %d of %d live files from %s into %s",
        stream_id,
        restored,
        len(wanted),
        store.where,
        dest,
        extra={"stream_id": stream_id},
    )
    return restored


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


async def _none() -> None:
    return None
