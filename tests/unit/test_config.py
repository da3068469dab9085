"""Config loading: defaults, file, environment, validation."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest

from streamplat.config import ConfigError, Settings, load

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_documents_every_key_with_its_default() -> None:
    shipped = tomllib.loads((ROOT / "config.toml").read_text())
    defaults = msgspec.to_builtins(Settings())
    assert set(shipped) == set(defaults)
    for section, values in defaults.items():
        assert set(shipped[section]) == set(values), section
    assert load(ROOT / "config.toml", environ={}) == load(None, environ={})


def test_environment_overrides_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nmain_port = 1234\n[ingest]\nsegment_seconds = 1\n")
    s = load(
        cfg,
        environ={"STREAMPLAT_SERVER__MAIN_PORT": "4321", "STREAMPLAT_SERVER__CORS_ORIGINS": '["http://a"]'},
    )
    assert s.server.main_port == 4321 and s.ingest.segment_seconds == 1.0
    assert s.server.cors_origins == ["http://a"]


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"STREAMPLAT_SERVER__NOPE": "1"}, "server.nope: unknown key"),
        ({"STREAMPLAT_SERVER__MAIN_PORT": "x"}, "server.main_port"),
        ({"STREAMPLAT_SERVER__MAIN_PORT": "70000"}, "server.main_port"),
        ({"STREAMPLAT_SERVER__MAIN_PORT": "8082"}, "ports must differ"),
        ({"STREAMPLAT_WHAT__X": "1"}, "unknown section"),
        ({"STREAMPLAT_MAINPORT": "1"}, "STREAMPLAT_<SECTION>__<KEY>"),
        ({"STREAMPLAT_AUTH__JWT_SECRET": "short"}, "auth.jwt_secret"),
        ({"STREAMPLAT_INGEST__PORT_MIN": "20000", "STREAMPLAT_INGEST__PORT_MAX": "10000"}, "ingest.port_min"),
        ({"STREAMPLAT_LOGGING__FORMAT": "xml"}, "logging.format"),
        ({"STREAMPLAT_REDIS__URL": "127.0.0.1:6379"}, "redis.url: must start with redis://"),
        ({"STREAMPLAT_REDIS__KEY_PREFIX": ""}, "redis.key_prefix"),
        ({"STREAMPLAT_REDIS__CONNECT_TIMEOUT_SECONDS": "0"}, "redis.connect_timeout_seconds"),
        ({"STREAMPLAT_REDIS__VIEWER_FLUSH_SECONDS": "0"}, "redis.viewer_flush_seconds"),
        ({"STREAMPLAT_CLUSTER__NODE_ID": "a b"}, "cluster.node_id"),
        ({"STREAMPLAT_CLUSTER__NODE_ID": "x" * 65}, "cluster.node_id"),
        ({"STREAMPLAT_CLUSTER__INTERNAL_STREAM_URL": "10.0.0.5:9090"}, "cluster.internal_stream_url"),
        ({"STREAMPLAT_CLUSTER__INTERNAL_STREAM_URL": "http://u:p@h:1"}, "cluster.internal_stream_url"),
        ({"STREAMPLAT_CLUSTER__HEARTBEAT_SECONDS": "0"}, "cluster.heartbeat_seconds"),
        ({"STREAMPLAT_CLUSTER__NODE_TIMEOUT_SECONDS": "3"}, "cluster.node_timeout_seconds"),
        ({"STREAMPLAT_CLUSTER__MAX_CLOCK_SKEW_SECONDS": "0"}, "cluster.max_clock_skew_seconds"),
        ({"STREAMPLAT_SERVER__TRUSTED_PROXIES": '["nginx.local"]'}, "server.trusted_proxies: 'nginx.local'"),
        ({"STREAMPLAT_SERVER__TRUSTED_PROXIES": '["10.0.0.0/33"]'}, "server.trusted_proxies"),
        ({"STREAMPLAT_INGEST__PART_SECONDS": "0.05"}, "ingest.part_seconds"),
        ({"STREAMPLAT_INGEST__PART_SECONDS": "1.5"}, "at most segment_seconds"),
        ({"STREAMPLAT_INGEST__FIRST_SEGMENT_SECONDS": "0.1"}, "ingest.first_segment_seconds"),
        ({"STREAMPLAT_INGEST__FIRST_SEGMENT_SECONDS": "1.5"}, "ingest.first_segment_seconds"),
        ({"STREAMPLAT_INGEST__FIRST_SEGMENT_SECONDS": "-1"}, "ingest.first_segment_seconds"),
        ({"STREAMPLAT_INGEST__MEMORY_SEGMENTS": "3"}, "ingest.memory_segments"),
        ({"STREAMPLAT_INGEST__LOW_LATENCY": "maybe"}, "ingest.low_latency"),
        ({"STREAMPLAT_AUTH__PASSWORD_HASH_TIME_COST": "0"}, "auth.password_hash_time_cost"),
        ({"STREAMPLAT_AUTH__PASSWORD_HASH_MEMORY_KIB": "4096"}, "OWASP's floor"),
        ({"STREAMPLAT_AUTH__PASSWORD_HASH_PARALLELISM": "0"}, "auth.password_hash_parallelism"),
        # 16 MiB x 2 passes: each part allowed, the product under OWASP's minimum.
        (
            {
                "STREAMPLAT_AUTH__PASSWORD_HASH_MEMORY_KIB": "16384",
                "STREAMPLAT_AUTH__PASSWORD_HASH_TIME_COST": "2",
            },
            "weaker than OWASP's minimum",
        ),
    ],
)
def test_bad_values_name_the_key(environ: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        load(None, environ=environ)
    assert needle in str(err.value)


def test_password_hash_cost_accepts_owasps_settings_and_defaults_above_them() -> None:
    # OWASP's table of equal-strength argon2id settings, from its least memory to its most.
    for memory_kib, passes in ((7168, 5), (9216, 4), (12288, 3), (19456, 2), (47104, 1)):
        a = load(
            None,
            environ={
                "STREAMPLAT_AUTH__PASSWORD_HASH_MEMORY_KIB": str(memory_kib),
                "STREAMPLAT_AUTH__PASSWORD_HASH_TIME_COST": str(passes),
            },
        ).auth
        assert (a.password_hash_memory_kib, a.password_hash_time_cost) == (memory_kib, passes)
    a = load(None, environ={}).auth
    assert (a.password_hash_time_cost, a.password_hash_memory_kib, a.password_hash_parallelism) == (
        2,
        65536,
        1,
    )


def test_default_database_lives_in_the_data_dir(tmp_path: Path) -> None:
    s = load(None, environ={"STREAMPLAT_STORAGE__DATA_DIR": str(tmp_path)})
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path}/streamplat.db"
    assert s.hls_path == tmp_path / "hls"


def test_redis_is_off_by_default() -> None:
    assert load(None, environ={}).redis.url == ""


def test_cluster_defaults_need_no_config_and_short_test_timings_are_accepted() -> None:
    c = load(None, environ={}).cluster
    assert (c.node_id, c.internal_stream_url, c.heartbeat_seconds, c.node_timeout_seconds) == ("", "", 2, 10)
    assert c.max_clock_skew_seconds == 2.0
    short = load(
        None,
        environ={
            "STREAMPLAT_CLUSTER__NODE_ID": "node-a.1",
            "STREAMPLAT_CLUSTER__HEARTBEAT_SECONDS": "0.5",
            "STREAMPLAT_CLUSTER__NODE_TIMEOUT_SECONDS": "3",
            "STREAMPLAT_CLUSTER__INTERNAL_STREAM_URL": "http://10.0.0.5:9090",
        },
    ).cluster
    assert (short.node_id, short.heartbeat_seconds, short.node_timeout_seconds) == ("node-a.1", 0.5, 3.0)


def test_object_storage_is_off_by_default_and_validated() -> None:
    assert not load(None, environ={}).object_storage.enabled
    on = load(
        None,
        environ={
            "STREAMPLAT_OBJECT_STORAGE__BUCKET": "recordings",
            "STREAMPLAT_OBJECT_STORAGE__ENDPOINT_URL": "http://127.0.0.1:9000",
        },
    )
    assert on.object_storage.enabled and on.object_storage.addressing_style == "path"
    bad = {
        "ENDPOINT_URL": ("ftp://store", "object_storage.endpoint_url"),
        "BUCKET": ("a/b", "object_storage.bucket"),
        "PRESIGN_SECONDS": ("0", "object_storage.presign_seconds"),
        "MULTIPART_CHUNK_BYTES": ("1000", "object_storage.multipart_chunk_bytes"),
        "UPLOAD_ATTEMPTS": ("0", "object_storage.upload_attempts"),
        "KEY_PREFIX": ("/abs/", "object_storage.key_prefix"),
        "ADDRESSING_STYLE": ("sideways", "object_storage.addressing_style"),
    }
    for key, (value, needle) in bad.items():
        with pytest.raises(ConfigError, match=needle):
            load(None, environ={f"STREAMPLAT_OBJECT_STORAGE__{key}": value})
    # Credentials belong in the environment, never in a URL of the config.
    with pytest.raises(ConfigError, match="without credentials"):
        load(None, environ={"STREAMPLAT_OBJECT_STORAGE__ENDPOINT_URL": "http://key:secret@minio:9000"})


def test_live_upload_is_on_with_a_bucket_and_validated() -> None:
    off = load(None, environ={}).object_storage
    assert off.live_upload and off.live_prefix == "live/" and not off.live_enabled  # no bucket
    on = load(None, environ={"STREAMPLAT_OBJECT_STORAGE__BUCKET": "recordings"}).object_storage
    assert on.live_enabled and on.live_upload_queue == 64
    assert not load(
        None,
        environ={
            "STREAMPLAT_OBJECT_STORAGE__BUCKET": "recordings",
            "STREAMPLAT_OBJECT_STORAGE__LIVE_UPLOAD": "false",
        },
    ).object_storage.live_enabled
    bad = {
        "LIVE_PREFIX": ["", "/live/", "a/../b/", "recordings/live/"],  # the last is inside key_prefix
        "LIVE_UPLOAD_QUEUE": ["0", "10001"],
    }
    for key, values in bad.items():
        for value in values:
            with pytest.raises(ConfigError, match=f"object_storage.{key.lower()}"):
                load(None, environ={f"STREAMPLAT_OBJECT_STORAGE__{key}": value})
    with pytest.raises(ConfigError, match="must not be prefixes of one another"):
        load(None, environ={"STREAMPLAT_OBJECT_STORAGE__KEY_PREFIX": ""})  # would hold live/ too


def test_trusted_proxies_take_addresses_and_networks() -> None:
    assert load(None, environ={}).server.trusted_proxies == ["127.0.0.1", "::1"]
    s = load(None, environ={"STREAMPLAT_SERVER__TRUSTED_PROXIES": '["10.0.0.3", "fd00::/64"]'})
    assert s.server.trusted_proxies == ["10.0.0.3", "fd00::/64"]
