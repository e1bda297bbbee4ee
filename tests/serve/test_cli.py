"""`imcap serve` on the command line: bad flags are one-line errors; a real server honours IMCAP_API_KEY."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from imcap.cli import main

from .conftest import free_port


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-batch", "0"], "--max-batch must be >= 1 (got 0)"),
        (["--timeout", "-1"], "--timeout must be > 0.0 (got -1.0)"),
        (["--search-index", "no/such/index"], "no/such/index"),
    ],
)
def test_bad_flags_are_one_line_errors(tiny_run, capsys, extra, message):
    assert _exit_code(["serve", "--model", str(tiny_run), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imcap: error:") and message in err and "Traceback" not in err


def test_missing_model_is_a_one_line_error(tmp_path, capsys):
    assert _exit_code(["serve", "--model", str(tmp_path / "nothing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_served_from_the_command_line_with_an_api_key(tiny_run, png):
    port = free_port()
    env = {**os.environ, "IMCAP_API_KEY": "k3y", "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "imcap", "serve", "--model", str(tiny_run), "--port", str(port), "--device", "cpu", "--max-batch", "4"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "imcap serve did not answer /healthz in 60 s"
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.post(url + "/v1/caption", content=png).status_code == 401
        card = httpx.get(url + "/v1/model", headers={"Authorization": "Bearer k3y"}).json()
        assert card["serving"]["max_batch"] == 4 and card["serving"]["auth"] is True
        r = httpx.post(url + "/v1/caption", content=png, headers={"Authorization": "Bearer k3y"})
        assert r.status_code == 200 and r.json()["results"][0]["captions"]
    finally:
        proc.terminate()
        proc.wait(10)
