"""The installed JupyterLab starts and serves the notebooks: a short-lived server on 127.0.0.1 (a free port, a
token), asked for its status, the lab page and a notebook through the contents REST API, then stopped by the test.
Deselect with ``-m "not lab"`` (the server takes some seconds to start)."""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("jupyterlab")

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 180  # s: a cold start on two busy cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.lab
def test_jupyterlab_starts_and_serves_a_notebook(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    log = (tmp_path / "lab.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
                               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
                               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT}"],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert server.poll() is None, f"JupyterLab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}"
            try:
                status, body = get(f"{base}/api/status", token)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, f"no answer in {START_TIMEOUT} s"
                time.sleep(1)
        assert status == 200 and "started" in json.loads(body)
        status, page = get(f"{base}/lab", token)
        assert status == 200 and b"JupyterLab" in page
        status, body = get(f"{base}/api/contents/notebooks/07_review_labels.ipynb?content=1", token)
        notebook = json.loads(body)
        assert status == 200 and notebook["type"] == "notebook"
        assert notebook["content"]["metadata"]["ferlib"] == {"role": "view"}
        assert any("ReviewWidget" in cell["source"] for cell in notebook["content"]["cells"])
        assert get(f"{base}/api/contents/notebooks/07_review_labels.ipynb", None)[0] == 403  # the token is needed
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    assert server.returncode is not None
