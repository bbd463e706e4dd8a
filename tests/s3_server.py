"""An S3-compatible server on the loopback for the object-store tests: moto's server mode in a
thread of the test process, on a free port, reached by s3fs (and by CLI subprocesses, which
inherit the environment) through ``AWS_ENDPOINT_URL``, which botocore (and so aiobotocore and
s3fs) honours. Nothing leaves the machine and CI needs nothing else.

Usage in a test module::

    from .s3_server import s3_bucket  # noqa: F401  (the fixture)

    def test_x(s3_bucket):  # "s3://<bucket>"
        ...
"""

from __future__ import annotations

import logging
import os
import uuid

import pytest

# dummy credentials and a region: botocore refuses to sign without them, moto accepts any
_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1"}


def clear_s3fs_cache() -> None:
    """Forget every cached s3fs instance (fsspec caches one per set of arguments, and each holds a
    client bound to the endpoint it was created with), so no test reaches another's server."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def s3_server():
    """``http://127.0.0.1:<port>``: a moto S3 server for the module, with the environment set so
    that s3fs and CLI subprocesses reach it. Skips when moto or s3fs are not installed."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in _ENV.items():
            mp.setenv(key, value)
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            mp.delenv(key, raising=False)
        clear_s3fs_cache()
        try:
            yield endpoint
        finally:
            clear_s3fs_cache()
            server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """``s3://<bucket>``: a fresh, empty bucket for one test (the server lives for the module)."""
    import s3fs

    clear_s3fs_cache()
    name = f"liftvid-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(name)
    yield f"s3://{name}"
    clear_s3fs_cache()


def s3_env() -> dict:
    """The environment for a CLI subprocess: this one (with the server's endpoint), one torch thread."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
