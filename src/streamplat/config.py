"""Settings: defaults -> config.toml -> STREAMPLAT_* environment -> validate.

Config is data: `load()` runs once at start and the resulting `Settings` is passed to
whatever needs it. Every key of config.toml can be overridden by an environment variable
named `STREAMPLAT_<SECTION>__<KEY>` (double underscore between section and key), e.g.
`STREAMPLAT_SERVER__MAIN_PORT=18080`. Environment values are parsed as TOML values when
they parse (numbers, booleans, `["a", "b"]` lists) and taken as plain strings otherwise.
Unknown keys and bad values stop the start with a `ConfigError` naming the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

ENV_PREFIX = "STREAMPLAT_"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and what is wrong."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerSettings(_Section):
    host: str = "localhost"
    auth_port: int = 8082
    main_port: int = 8080
    stream_port: int = 9090
    vod_port: int = 8081
    public_host: str = "localhost"
    cors_origins: list[str] = msgspec.field(default_factory=lambda: ["*"])
    max_body_bytes: int = 1_048_576
    shutdown_timeout_seconds: float = 15.0
    # loop "asyncio" (the default): asyncio's own loop, fairer than uvloop under load (README,
    # "Event loop"); "auto": uvloop when importable (a dependency), else asyncio's.
    # http "auto": httptools when importable (a dependency), else h11.
    loop: Literal["auto", "uvloop", "asyncio"] = "asyncio"
    http: Literal["auto", "httptools", "h11"] = "auto"
    # Request line + headers larger than this get 431; headers not complete this long after a
    # request starts (or a connection opens) get the connection closed (slow-header clients).
    max_header_bytes: int = 65_536
    header_timeout_seconds: float = 10.0
    # How long a stream row read by GET /api/streams/{id} or /stream/{id}/status is reused
    # without a query; changes through the API apply at once whatever this is. 0 = off.
    read_cache_seconds: float = 2.0
    # Proxies (addresses or networks) whose X-Forwarded-For / X-Forwarded-Proto are believed:
    # the client address behind them is what rate limits and viewer counts use.
    trusted_proxies: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1", "::1"])


class StorageSettings(_Section):
    data_dir: str = "./data"
    database_url: str = ""
    min_free_bytes: int = 1 << 30  # below this much free space in data_dir, new streams are refused


class AuthSettings(_Section):
    jwt_secret: str = ""
    access_token_ttl_seconds: int = 3600
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    password_hash_threads: int = 2
    password_hash_queue: int = 32  # hashes waiting for a thread; beyond that login/register get 503
    # argon2id cost; stored hashes made with other values are redone at their next login.
    password_hash_time_cost: int = 2
    password_hash_memory_kib: int = 65536
    password_hash_parallelism: int = 1
    principal_cache_seconds: float = 2.0  # how long a token's user is trusted without a query; 0 = off
    allow_admin_self_registration: bool = False


class RateLimitSettings(_Section):
    login_per_minute: int = 10
    register_per_minute: int = 10


class FFmpegSettings(_Section):
    binary: str = ""


class IngestSettingsSection(_Section):
    port_min: int = 10001
    port_max: int = 10100
    srt_bind_host: str = "0.0.0.0"
    srt_latency_ms: int = 120
    segment_seconds: float = 1.0
    part_seconds: float = 0.2
    first_segment_seconds: float = 0.2
    playlist_size: int = 6
    memory_segments: int = 12
    low_latency: bool = True
    reconnect_window_seconds: float = 300.0
    max_restarts: int = 5
    stop_timeout_seconds: float = 10.0


class VodSettings(_Section):
    workers: int = 2
    job_timeout_seconds: float = 3600.0


class ObjectStorageSettings(_Section):
    """S3-compatible storage for finished recordings; off (local disk) while `bucket` is empty.

    Credentials never live in the config file: they are read from the environment variables
    named here (AWS's usual names by default), else from boto3's own chain (~/.aws, instance
    roles).
    """

    endpoint_url: str = ""  # e.g. http://127.0.0.1:9000 for MinIO; empty = AWS's regional endpoint
    # What viewers' players are redirected to, when it differs from endpoint_url (a MinIO
    # reached as http://minio:9000 inside, https://media.example.com outside). Empty = endpoint_url.
    public_endpoint_url: str = ""
    bucket: str = ""
    region: str = "us-east-1"
    key_prefix: str = "recordings/"
    addressing_style: Literal["path", "virtual", "auto"] = "path"  # path for MinIO
    access_key_id_env: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_env: str = "AWS_SECRET_ACCESS_KEY"
    presign_seconds: int = 3600  # how long a redirect URL to a video or thumbnail stays valid
    create_bucket: bool = False  # create a missing bucket at start instead of refusing to start
    multipart_threshold_bytes: int = 16 * 1_048_576
    multipart_chunk_bytes: int = 16 * 1_048_576
    max_concurrency: int = 8  # parts of one file uploaded at once
    # Upload attempts of one recording before it is marked failed (POST .../retry starts over);
    # the wait between attempts doubles from retry_base_seconds up to retry_max_seconds.
    upload_attempts: int = 8
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 120.0
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 60.0
    # Compare the stored object's ETag with the MD5 computed while uploading. Turn off only for
    # stores whose ETag is not an MD5 (AWS SSE-KMS); the size is checked in any case.
    verify_etag: bool = True
    # Live media: with a bucket set, each live stream's init and complete segments (and its
    # index at the end) are uploaded under <live_prefix><stream_id>/ as soon as they are on disk,
    # so another node can package the recording if this one dies; deleted once it is ready.
    live_upload: bool = True
    live_prefix: str = "live/"
    live_upload_queue: int = 64  # files of one stream waiting to upload; beyond, caught up later

    @property
    def enabled(self) -> bool:
        """Whether recordings go to object storage (a bucket is configured)."""
        return bool(self.bucket)

    @property
    def live_enabled(self) -> bool:
        """Whether live segments are uploaded as they are made (a bucket and live_upload)."""
        return self.enabled and self.live_upload


class WebsocketSettings(_Section):
    queue_size: int = 100
    auth_timeout_seconds: float = 5.0


class RedisSettings(_Section):
    # Empty: one process, nothing shared (the default). "redis://[:password@]host:6379/0",
    # "rediss://..." (TLS) or "unix:///path/redis.sock": /ws events, login/register rate limits
    # and viewer counts are shared by every process configured with the same URL and prefix.
    url: str = ""
    key_prefix: str = "streamplat:"  # every key and channel starts with this
    connect_timeout_seconds: float = 1.0
    command_timeout_seconds: float = 1.0
    viewer_flush_seconds: float = 1.0  # how often HLS fetches are counted into Redis


class ClusterSettings(_Section):
    """Several `streamplat serve` nodes on one PostgreSQL database (streamplat.nodes).

    Single-node needs none of it: the defaults name the node once (a file in the data directory)
    and the registry then has only this node in it.
    """

    # Empty: read from <data_dir>/node_id, written with a fresh id on the first start.
    node_id: str = ""
    # Base URL of this node's Stream App as other nodes (and nginx) reach it. Empty:
    # http://<server.public_host>:<server.stream_port>.
    internal_stream_url: str = ""
    heartbeat_seconds: float = 2.0  # how often this node writes its heartbeat and reads the others'
    node_timeout_seconds: float = 10.0  # a node silent this long is lost: its streams are stopped
    # Refuse to start when this machine's clock and the database's differ by more than this.
    max_clock_skew_seconds: float = 2.0


class MetricsSettings(_Section):
    # Empty: /metrics answers clients on this machine only (loopback). Set: it answers anyone
    # sending `Authorization: Bearer <token>`, and no one else.
    token: str = ""


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    hls_access_log: bool = False


class Settings(_Section):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    rate_limit: RateLimitSettings = msgspec.field(default_factory=RateLimitSettings)
    ffmpeg: FFmpegSettings = msgspec.field(default_factory=FFmpegSettings)
    ingest: IngestSettingsSection = msgspec.field(default_factory=IngestSettingsSection)
    vod: VodSettings = msgspec.field(default_factory=VodSettings)
    object_storage: ObjectStorageSettings = msgspec.field(default_factory=ObjectStorageSettings)
    websocket: WebsocketSettings = msgspec.field(default_factory=WebsocketSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    cluster: ClusterSettings = msgspec.field(default_factory=ClusterSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)

    # --- derived values (not keys) ---------------------------------------------------------

    @property
    def data_path(self) -> Path:
        """The data directory as an absolute path."""
        return Path(self.storage.data_dir).expanduser().resolve()

    @property
    def database_url(self) -> str:
        """The configured database URL, or a SQLite file in the data directory."""
        return self.storage.database_url or f"sqlite+aiosqlite:///{self.data_path / 'streamplat.db'}"

    @property
    def hls_path(self) -> Path:
        """Where live HLS playlists and segments are written."""
        return self.data_path / "hls"

    @property
    def recordings_path(self) -> Path:
        """Where finished recordings live (`<recordings>/vod/<stream_id>/video.mp4`)."""
        return self.data_path / "recordings"

    def ffmpeg_binary(self) -> str:
        """The FFmpeg to run: the configured one, else the one shipped by imageio-ffmpeg."""
        if self.ffmpeg.binary:
            return self.ffmpeg.binary
        import imageio_ffmpeg  # type: ignore[import-untyped]

        return str(imageio_ffmpeg.get_ffmpeg_exe())


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    sections = {f.name for f in msgspec.structs.fields(Settings)}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower()
        if "__" not in path:
            if path in {"config", "data_dir", "admin_password"}:  # CLI conveniences, read by the CLI
                continue
            raise ConfigError(
                f"{name}: expected STREAMPLAT_<SECTION>__<KEY>, e.g. STREAMPLAT_SERVER__MAIN_PORT"
            )
        section, key = path.split("__", 1)
        if section not in sections:
            raise ConfigError(f"{name}: unknown section {section!r} (known: {', '.join(sorted(sections))})")
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{section}: must be a table")
        target[key] = _env_value(raw)


def _convert_error(exc: msgspec.ValidationError) -> ConfigError:
    # msgspec says e.g. "Expected `int`, got `str` - at `$.server.main_port`";
    # turn the path into the key name.
    text = str(exc)
    message, _, where = text.partition(" - at `$")
    key = where.rstrip("`").lstrip(".") if where else ""
    if message.startswith("Object contains unknown field"):
        field = message.split("`")[1]
        full = f"{key}.{field}" if key else field
        return ConfigError(f"{full}: unknown key")
    return ConfigError(f"{key or 'config'}: {message}")


def _validate(settings: Settings) -> None:
    s = settings.server
    ports = {
        "server.auth_port": s.auth_port,
        "server.main_port": s.main_port,
        "server.stream_port": s.stream_port,
        "server.vod_port": s.vod_port,
    }
    for key, port in ports.items():
        if not 0 <= port <= 65535:
            raise ConfigError(f"{key}: {port} is not a TCP port (0-65535)")
    used = [p for p in ports.values() if p != 0]
    if len(used) != len(set(used)):
        raise ConfigError(f"server ports must differ: {ports}")
    if not s.public_host or any(c in s.public_host for c in "/?# "):
        raise ConfigError(f"server.public_host: {s.public_host!r} is not a host name or address")
    if s.max_body_bytes < 1024:
        raise ConfigError("server.max_body_bytes: must be at least 1024")
    if not 1024 <= s.max_header_bytes <= 16 * 1_048_576:
        raise ConfigError("server.max_header_bytes: must be between 1024 and 16777216")
    if not 0 < s.header_timeout_seconds <= 3600:
        raise ConfigError("server.header_timeout_seconds: must be more than 0 and at most 3600")
    if not 0 <= s.read_cache_seconds <= 60:
        raise ConfigError("server.read_cache_seconds: must be between 0 (off) and 60")
    for proxy in s.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                f"server.trusted_proxies: {proxy!r} is not an IP address or network "
                "(e.g. 10.0.0.3, 10.0.0.0/24)"
            ) from None
    if settings.metrics.token and len(settings.metrics.token) < 16:
        raise ConfigError("metrics.token: must be at least 16 characters (or empty: loopback only)")
    if settings.storage.min_free_bytes < 0:
        raise ConfigError("storage.min_free_bytes: must be 0 (no floor) or more")
    a = settings.auth
    if a.access_token_ttl_seconds < 60:
        raise ConfigError("auth.access_token_ttl_seconds: must be at least 60")
    if a.refresh_token_ttl_seconds < a.access_token_ttl_seconds:
        raise ConfigError(
            "auth.refresh_token_ttl_seconds: must not be shorter than the access token lifetime"
        )
    if a.jwt_secret and len(a.jwt_secret) < 32:
        raise ConfigError("auth.jwt_secret: must be at least 32 characters (or empty to generate one)")
    if not 1 <= a.password_hash_threads <= 32:
        raise ConfigError("auth.password_hash_threads: must be between 1 and 32")
    if not 0 <= a.password_hash_queue <= 10_000:
        raise ConfigError("auth.password_hash_queue: must be between 0 and 10000")
    _check_password_hash_cost(a)
    if not 0 <= a.principal_cache_seconds <= 60:
        raise ConfigError("auth.principal_cache_seconds: must be between 0 (off) and 60")
    r = settings.rate_limit
    limits = (("login_per_minute", r.login_per_minute), ("register_per_minute", r.register_per_minute))
    for key, value in limits:
        if value < 0:
            raise ConfigError(f"rate_limit.{key}: must be 0 (unlimited) or more")
    i = settings.ingest
    if not 1 <= i.port_min <= i.port_max <= 65535:
        raise ConfigError(f"ingest.port_min/port_max: {i.port_min}-{i.port_max} is not a valid port range")
    try:
        ipaddress.ip_address(i.srt_bind_host)
    except ValueError:
        raise ConfigError(f"ingest.srt_bind_host: {i.srt_bind_host!r} is not an IP address") from None
    if not 0.5 <= i.segment_seconds <= 30:
        raise ConfigError("ingest.segment_seconds: must be between 0.5 and 30")
    if not 2 <= i.playlist_size <= 100:
        raise ConfigError("ingest.playlist_size: must be between 2 and 100")
    if not 0.1 <= i.part_seconds <= 2 or i.part_seconds > i.segment_seconds:
        raise ConfigError("ingest.part_seconds: must be between 0.1 and 2, and at most segment_seconds")
    if i.first_segment_seconds != 0 and not i.part_seconds <= i.first_segment_seconds <= i.segment_seconds:
        raise ConfigError(
            "ingest.first_segment_seconds: must be 0 (off) or between part_seconds and segment_seconds"
        )
    if not i.playlist_size <= i.memory_segments <= 1000:
        raise ConfigError("ingest.memory_segments: must be between playlist_size and 1000")
    if i.reconnect_window_seconds < 0:
        raise ConfigError("ingest.reconnect_window_seconds: must be 0 or more")
    if i.max_restarts < 0:
        raise ConfigError("ingest.max_restarts: must be 0 or more")
    if i.stop_timeout_seconds <= 0:
        raise ConfigError("ingest.stop_timeout_seconds: must be more than 0")
    if not 1 <= settings.vod.workers <= 16:
        raise ConfigError("vod.workers: must be between 1 and 16")
    if settings.vod.job_timeout_seconds <= 0:
        raise ConfigError("vod.job_timeout_seconds: must be more than 0")
    _validate_object_storage(settings.object_storage)
    w = settings.websocket
    if not 1 <= w.queue_size <= 100_000:
        raise ConfigError("websocket.queue_size: must be between 1 and 100000")
    if not 0 < w.auth_timeout_seconds <= 300:
        raise ConfigError("websocket.auth_timeout_seconds: must be more than 0 and at most 300")
    rd = settings.redis
    if rd.url and not rd.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("redis.url: must start with redis://, rediss:// or unix:// (or be empty: off)")
    if not 1 <= len(rd.key_prefix) <= 100 or any(c.isspace() for c in rd.key_prefix):
        raise ConfigError("redis.key_prefix: must be 1 to 100 characters without spaces")
    for key, seconds in (
        ("connect_timeout_seconds", rd.connect_timeout_seconds),
        ("command_timeout_seconds", rd.command_timeout_seconds),
    ):
        if not 0 < seconds <= 60:
            raise ConfigError(f"redis.{key}: must be more than 0 and at most 60")
    if not 0.1 <= rd.viewer_flush_seconds <= 10:
        raise ConfigError("redis.viewer_flush_seconds: must be between 0.1 and 10")
    _validate_cluster(settings.cluster)


NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


# OWASP's Password Storage Cheat Sheet lists argon2id settings of equal strength from 46 MiB x 1
# pass to 7 MiB x 5 passes: memory times passes of at least ~35 MiB, and never under 7 MiB.
ARGON2_MIN_MEMORY_KIB = 7 * 1024
ARGON2_MIN_MEMORY_TIMES_PASSES_KIB = 35 * 1024


def _check_password_hash_cost(a: AuthSettings) -> None:
    if not 1 <= a.password_hash_time_cost <= 20:
        raise ConfigError("auth.password_hash_time_cost: must be between 1 and 20 passes")
    if not ARGON2_MIN_MEMORY_KIB <= a.password_hash_memory_kib <= 4 * 1024 * 1024:
        raise ConfigError(
            f"auth.password_hash_memory_kib: must be between {ARGON2_MIN_MEMORY_KIB} (7 MiB, OWASP's "
            "floor for argon2id) and 4194304 (4 GiB)"
        )
    if a.password_hash_memory_kib * a.password_hash_time_cost < ARGON2_MIN_MEMORY_TIMES_PASSES_KIB:
        raise ConfigError(
            "auth.password_hash_memory_kib x auth.password_hash_time_cost: "
            f"{a.password_hash_memory_kib} KiB x {a.password_hash_time_cost} is weaker than OWASP's "
            f"minimum for argon2id (at least {ARGON2_MIN_MEMORY_TIMES_PASSES_KIB} KiB in all, "
            "e.g. 19456 KiB x 2 or 47104 KiB x 1)"
        )
    if not 1 <= a.password_hash_parallelism <= 16:
        raise ConfigError("auth.password_hash_parallelism: must be between 1 and 16 lanes")


def _validate_cluster(c: ClusterSettings) -> None:
    if c.node_id and not NODE_ID.fullmatch(c.node_id):
        raise ConfigError(
            f"cluster.node_id: {c.node_id!r} must be 1 to 64 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit), or empty to use <data_dir>/node_id"
        )
    url = c.internal_stream_url
    if url and (not url.startswith(("http://", "https://")) or "@" in url or any(ch in url for ch in "?# ")):
        raise ConfigError(
            f"cluster.internal_stream_url: {url!r} must be an http(s):// base URL without credentials, "
            "query or spaces (or empty: http://<server.public_host>:<server.stream_port>)"
        )
    if not 0.1 <= c.heartbeat_seconds <= 60:
        raise ConfigError("cluster.heartbeat_seconds: must be between 0.1 and 60")
    if not 2 * c.heartbeat_seconds < c.node_timeout_seconds <= 3600:
        raise ConfigError(
            "cluster.node_timeout_seconds: must be more than twice cluster.heartbeat_seconds "
            "(one late heartbeat must not lose a node) and at most 3600"
        )
    if not 0.1 <= c.max_clock_skew_seconds <= 3600:
        raise ConfigError("cluster.max_clock_skew_seconds: must be between 0.1 and 3600")


def _validate_object_storage(o: ObjectStorageSettings) -> None:
    for key in ("endpoint_url", "public_endpoint_url"):
        url = getattr(o, key)
        if url and (not url.startswith(("http://", "https://")) or "@" in url):
            raise ConfigError(
                f"object_storage.{key}: {url!r} must be an http(s):// URL without credentials"
                " (credentials come from the environment)"
            )
    if o.public_endpoint_url and not o.endpoint_url:
        raise ConfigError("object_storage.public_endpoint_url: needs object_storage.endpoint_url too")
    if o.bucket and (not 3 <= len(o.bucket) <= 63 or any(c in o.bucket for c in "/ ?#")):
        raise ConfigError(f"object_storage.bucket: {o.bucket!r} is not an S3 bucket name")
    if o.key_prefix.startswith("/") or ".." in o.key_prefix.split("/"):
        raise ConfigError("object_storage.key_prefix: must not start with / or contain ..")
    if not 1 <= o.presign_seconds <= 7 * 24 * 3600:
        raise ConfigError("object_storage.presign_seconds: must be between 1 and 604800 (7 days, S3's limit)")
    if not 5 * 1_048_576 <= o.multipart_chunk_bytes <= 5 * 1024**3:
        raise ConfigError(
            "object_storage.multipart_chunk_bytes: must be between 5 MiB and 5 GiB (S3's part limits)"
        )
    if o.multipart_threshold_bytes < o.multipart_chunk_bytes:
        raise ConfigError("object_storage.multipart_threshold_bytes: must be at least multipart_chunk_bytes")
    if not 1 <= o.max_concurrency <= 64:
        raise ConfigError("object_storage.max_concurrency: must be between 1 and 64")
    if not 1 <= o.upload_attempts <= 1000:
        raise ConfigError("object_storage.upload_attempts: must be between 1 and 1000")
    if not 0 < o.retry_base_seconds <= o.retry_max_seconds:
        raise ConfigError(
            "object_storage.retry_base_seconds: must be more than 0 and at most retry_max_seconds"
        )
    if o.connect_timeout_seconds <= 0 or o.read_timeout_seconds <= 0:
        raise ConfigError("object_storage.connect_timeout_seconds/read_timeout_seconds: must be more than 0")
    if not o.live_prefix or o.live_prefix.startswith("/") or ".." in o.live_prefix.split("/"):
        raise ConfigError("object_storage.live_prefix: must not be empty, start with / or contain ..")
    if o.live_prefix.startswith(o.key_prefix) or o.key_prefix.startswith(o.live_prefix):
        # Deleting a stream's live objects lists <live_prefix><stream_id>/: it must never reach
        # a recording's objects.
        raise ConfigError(
            f"object_storage.live_prefix: {o.live_prefix!r} and key_prefix {o.key_prefix!r} "
            "must not be prefixes of one another"
        )
    if not 1 <= o.live_upload_queue <= 10_000:
        raise ConfigError("object_storage.live_upload_queue: must be between 1 and 10000")


def load(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build the settings: defaults, then the TOML file, then the environment, then `overrides`."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
    _apply_env(data, environ)
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    try:
        settings = msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise _convert_error(exc) from None
    _validate(settings)
    return settings
