"""Every route of the service and every error it promises, through FastAPI's TestClient."""
from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from imcap.errors import ImcapError
from imcap.serve.app import load_search_index

from .conftest import FakeIndex, encode, expected_captions


def _files(*items: tuple[str, bytes]) -> list:
    return [("image", (name, data, "application/octet-stream")) for name, data in items]


def _error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["message"], body
    return body["message"]


# ---------------------------------------------------------------- routes


def test_healthz_page_static_and_docs(make_client):
    with make_client() as client:
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["queued_images"] == 0
        page = client.get("/")
        assert page.status_code == 200 and 'id="file-input"' in page.text and "/static/app.js" in page.text
        assert "drawAttention" in client.get("/static/app.js").text
        assert client.get("/static/style.css").status_code == 200
        assert client.get("/docs").status_code == 200
        spec = client.get("/openapi.json").json()
        assert {"/healthz", "/v1/caption", "/v1/model", "/v1/search"} <= set(spec["paths"])
        assert "multipart/form-data" in spec["paths"]["/v1/caption"]["post"]["requestBody"]["content"]


def test_model_card(make_client, captioner):
    with make_client(max_batch=7) as client:
        card = client.get("/v1/model").json()
    assert card["vocab_size"] == len(captioner.vocab)
    assert card["model_args"]["rnn_size"] == captioner.model.args.rnn_size
    assert card["iteration"] == 6 and "loss" in card["metrics"]
    assert card["options"]["max_iters"] == 6
    assert card["serving"]["max_batch"] == 7
    assert card["serving"]["has_attention"] is False and card["serving"]["search_index"] is False
    assert "api_key" not in card["serving"]


def test_caption_multipart_matches_the_model(make_client, captioner, scene_paths):
    images = [(p.name, p.read_bytes()) for p in scene_paths[:3]]
    with make_client() as client:
        r = client.post("/v1/caption", params={"beam_size": 3, "n": 2, "max_length": 12}, files=_files(*images))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [res["filename"] for res in body["results"]] == [name for name, _ in images]
    for (_, data), res in zip(images, body["results"]):
        assert (res["width"], res["height"]) == Image.open(scene_paths[0]).size
        assert [c["caption"] for c in res["captions"]] == expected_captions(captioner, data, beam_size=3, n=2, max_length=12)
        scores = [c["score"] for c in res["captions"]]
        assert scores == sorted(scores, reverse=True)
    assert body["timing"]["total_ms"] > 0 and body["results"][0]["inference_ms"] > 0


def test_caption_raw_body_and_other_formats(make_client, captioner, png):
    jpeg = encode(Image.open(io.BytesIO(png)).convert("RGB"), "JPEG")
    with make_client() as client:
        raw = client.post("/v1/caption", content=png, headers={"content-type": "image/png"})
        wrong_type = client.post("/v1/caption", content=jpeg, headers={"content-type": "text/plain"})
    assert raw.status_code == 200 and raw.json()["results"][0]["filename"] == "body"
    assert [c["caption"] for c in raw.json()["results"][0]["captions"]] == expected_captions(captioner, png)
    assert wrong_type.status_code == 200  # the bytes are sniffed; the declared type is not trusted


# ---------------------------------------------------------------- limits and bad input


def test_upload_cap_413(make_client, png):
    big = encode(Image.effect_noise((200, 200), 60).convert("RGB"))  # about 60 kB of noise
    with make_client(max_upload_mb=0.02) as client:
        assert "upload limit" in _error(client.post("/v1/caption", content=big), 413, "payload_too_large")
        _error(client.post("/v1/caption", files=_files(("a.png", big))), 413, "payload_too_large")
        chunked = client.post("/v1/caption", content=iter([big[:10_000], big[10_000:]]))  # no Content-Length
        _error(chunked, 413, "payload_too_large")
        assert client.post("/v1/caption", content=png).status_code == 200


def test_too_many_images_413(make_client, png):
    with make_client(max_images=2) as client:
        message = _error(client.post("/v1/caption", files=_files(*[("a.png", png)] * 3)), 413, "too_many_images")
    assert "limit is 2" in message


def test_decompression_bomb_413(make_client):
    bomb = encode(Image.new("1", (6000, 6000)))  # 36 megapixels in a few kB
    assert len(bomb) < 100_000
    with make_client() as client:  # default cap: 25 megapixels
        message = _error(client.post("/v1/caption", files=_files(("bomb.png", bomb))), 413, "too_many_pixels")
    assert "bomb.png" in message and "6000x6000" in message


@pytest.mark.parametrize("data", [b"hello, world", b"<!doctype html><html></html>", b"%PDF-1.7\n", b"\x00" * 64])
def test_non_images_415(make_client, data):
    with make_client() as client:
        message = _error(client.post("/v1/caption", files=_files(("cat.jpg", data))), 415, "unsupported_media_type")
    assert message.startswith("cat.jpg: not an image")


def test_corrupt_images_422(make_client, png):
    jpeg = encode(Image.open(io.BytesIO(png)).convert("RGB"), "JPEG")
    cases = {"truncated.png": png[: len(png) // 2], "header.png": png[:40], "garbage.jpg": jpeg[:20] + b"\x00" * 200}
    with make_client() as client:
        for name, data in cases.items():
            message = _error(client.post("/v1/caption", files=_files((name, data))), 422, "corrupt_image")
            assert message.startswith(name)
        _error(client.post("/v1/caption", files=_files(("empty.png", b""))), 422, "empty_image")
        _error(client.post("/v1/caption", content=b""), 422, "empty_image")


def test_bad_forms_and_options_422(make_client, png):
    with make_client() as client:
        _error(client.post("/v1/caption", data={"beam_size": "3"}, files=_files(("a.png", png))), 422, "unexpected_field")
        no_files = client.post("/v1/caption", content=b"--xyz--\r\n", headers={"content-type": "multipart/form-data; boundary=xyz"})
        _error(no_files, 422, "no_image")
        no_boundary = client.post("/v1/caption", content=b"abc", headers={"content-type": "multipart/form-data"})
        _error(no_boundary, 400, "bad_multipart")
        for params in ({"beam_size": 0}, {"beam_size": 11}, {"n": "two"}, {"max_length": 51}, {"attention": "maybe"}):
            message = _error(client.post("/v1/caption", params=params, content=png), 422, "invalid_request")
            assert next(iter(params)) in message
        assert "has no attention" in _error(client.post("/v1/caption?attention=true", content=png), 422, "attention_unavailable")


def test_unknown_routes_and_methods_are_json(make_client):
    with make_client() as client:
        _error(client.get("/v2/nothing"), 404, "not_found")
        _error(client.get("/v1/caption"), 405, "method_not_allowed")


def test_api_key(make_client, png):
    with make_client(api_key="s3cret") as client:
        missing = client.post("/v1/caption", content=png)
        assert "Bearer" in _error(missing, 401, "unauthorized") and missing.headers["www-authenticate"] == "Bearer"
        _error(client.get("/v1/model", headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
        _error(client.post("/v1/search", json={"query": "x"}, headers={"Authorization": "Basic s3cret"}), 401, "unauthorized")
        ok = {"Authorization": "Bearer s3cret"}
        assert client.post("/v1/caption", content=png, headers=ok).status_code == 200
        assert client.get("/v1/model", headers=ok).json()["serving"]["auth"] is True
        assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200


def test_settings_are_checked():
    from imcap.serve.settings import ServeSettings

    for bad in ({"max_batch": 0}, {"timeout": 0}, {"max_wait_ms": -1}, {"api_key": ""}):
        with pytest.raises(ImcapError):
            ServeSettings(**bad)


# ---------------------------------------------------------------- concurrency: batching, queue bound, timeout, isolation


def test_concurrent_requests_share_batches(make_client, gated, png):
    with make_client(max_batch=8, max_wait_ms=5) as client, ThreadPoolExecutor(6) as pool:
        first = pool.submit(client.post, "/v1/caption", content=png)
        assert gated.entered.wait(10)
        rest = [pool.submit(client.post, "/v1/caption", content=png) for _ in range(5)]
        _wait_until(lambda: client.get("/healthz").json()["queued_images"] == 5)
        gated.open()
        responses = [first.result(), *[f.result() for f in rest]]
    assert all(r.status_code == 200 for r in responses)
    assert gated.batch_sizes == [1, 5]  # the five requests that queued behind the first ran as one batch
    assert {r.json()["results"][0]["batch_size"] for r in responses[1:]} == {5}


def test_different_options_are_not_batched_together(make_client, gated, png):
    with make_client(max_batch=8) as client, ThreadPoolExecutor(5) as pool:
        first = pool.submit(client.post, "/v1/caption", content=png)
        assert gated.entered.wait(10)
        rest = [pool.submit(client.post, "/v1/caption", params={"beam_size": b}, content=png) for b in (1, 2, 1, 2)]
        _wait_until(lambda: client.get("/healthz").json()["queued_images"] == 4)
        gated.open()
        assert all(f.result().status_code == 200 for f in [first, *rest])
    assert gated.batch_sizes == [1, 2, 2]


def test_full_queue_503_then_recovers(make_client, gated, png):
    with make_client(max_queue=2, max_batch=4, max_wait_ms=0) as client, ThreadPoolExecutor(2) as pool:
        running = pool.submit(client.post, "/v1/caption", content=png)
        assert gated.entered.wait(10)
        waiting = pool.submit(client.post, "/v1/caption", files=_files(("a.png", png), ("b.png", png)))
        _wait_until(lambda: client.get("/healthz").json()["queued_images"] == 2)
        refused = client.post("/v1/caption", content=png)
        assert "queued" in _error(refused, 503, "overloaded") and refused.headers["retry-after"] == "1"
        gated.open()
        assert running.result().status_code == 200 and waiting.result().status_code == 200
        assert client.post("/v1/caption", content=png).status_code == 200


def test_timeout_504_leaves_the_server_healthy(make_client, gated, captioner, png):
    with make_client(timeout=0.3, max_batch=4) as client:
        started = time.perf_counter()
        assert "0.3 s" in _error(client.post("/v1/caption", content=png), 504, "timeout")
        assert time.perf_counter() - started < 5
        gated.open()
        after = client.post("/v1/caption", content=png)
    assert after.status_code == 200
    assert [c["caption"] for c in after.json()["results"][0]["captions"]] == expected_captions(captioner, png)


def test_bad_requests_do_not_disturb_good_ones(make_client, captioner, scene_paths):
    good = [p.read_bytes() for p in scene_paths[:6]]
    bad = [b"not an image", good[0][:50], encode(Image.new("1", (6000, 6000)))]
    with make_client(max_batch=4, max_wait_ms=20) as client, ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client.post, "/v1/caption", content=data) for data in [*good, *bad]]
        responses = [f.result() for f in futures]
        assert client.get("/healthz").json()["status"] == "ok"
    for data, r in zip(good, responses):
        assert r.status_code == 200
        assert [c["caption"] for c in r.json()["results"][0]["captions"]] == expected_captions(captioner, data)
    assert [r.status_code for r in responses[len(good):]] == [415, 422, 413]


def test_model_crash_is_500_json_and_isolated(make_client, captioner, monkeypatch, png):
    inner = captioner.caption_tensors
    calls = []

    def flaky(images, opts=None, **kw):
        calls.append(images.size(0))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return inner(images, opts, **kw)

    monkeypatch.setattr(captioner, "caption_tensors", flaky)
    with make_client(raise_errors=False) as client:
        message = _error(client.post("/v1/caption", content=png), 500, "internal_error")
        assert "RuntimeError" in message
        assert client.post("/v1/caption", content=png).status_code == 200


# ---------------------------------------------------------------- attention contract


def test_attention_maps_when_the_model_has_them(make_client, attention_model, png):
    with make_client(model=attention_model) as client:
        assert client.get("/v1/model").json()["serving"]["has_attention"] is True
        plain = client.post("/v1/caption", content=png).json()["results"][0]["captions"][0]
        r = client.post("/v1/caption", params={"attention": "true", "beam_size": 2, "n": 2}, content=png)
    assert r.status_code == 200, r.text
    assert "attention" not in plain
    for cap in r.json()["results"][0]["captions"]:
        att = cap["attention"]
        assert att["words"] == cap["caption"].split()
        assert len(att["maps"]) == len(att["words"]) and all(len(m) == 4 and len(m[0]) == 4 for m in att["maps"])
        assert all(max(max(row) for row in m) == pytest.approx(1.0) for m in att["maps"])


# ---------------------------------------------------------------- search


def test_search(make_client):
    with make_client(index=FakeIndex()) as client:
        assert client.get("/v1/model").json()["serving"]["search_index"] is True
        r = client.post("/v1/search", json={"query": "a red circle", "k": 3})
        assert r.status_code == 200
        assert [h["path"] for h in r.json()["results"]] == FakeIndex.paths[:3]
        assert r.json()["query"] == "a red circle"
        _error(client.post("/v1/search", json={"query": "x", "k": 0}), 422, "invalid_request")
        _error(client.post("/v1/search", json={"k": 3}), 422, "invalid_request")
        _error(client.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"}), 422, "invalid_request")
        assert "no known words" in _error(client.post("/v1/search", json={"query": "fail"}), 422, "bad_query")


def test_search_without_index_501(make_client):
    with make_client() as client:
        assert "--search-index" in _error(client.post("/v1/search", json={"query": "dog"}), 501, "no_search_index")


def test_missing_search_index_is_a_user_error(tmp_path):
    with pytest.raises(ImcapError):
        load_search_index(str(tmp_path / "missing.index"))


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        assert time.perf_counter() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_real_attention_model_returns_one_map_per_word(make_client, tiny_data, png, tmp_path):
    """A real (tiny) show_attend_tell model through the service: per-word maps over the CNN grid."""
    from imcap_testing import tiny_train_options
    from imcap.captioner import Captioner
    from imcap.train import train

    run = train(tiny_train_options(tiny_data, tmp_path / "sat", model="show_attend_tell", max_iters=2, save_checkpoint_every=2))
    model = Captioner.load(run, "cpu")
    with make_client(model=model) as client:
        r = client.post("/v1/caption?attention=true&beam_size=2", files=_files(("a.png", png)))
    assert r.status_code == 200, r.text
    cap = r.json()["results"][0]["captions"][0]
    words = cap["caption"].split()
    assert cap["attention"]["words"] == words
    assert len(cap["attention"]["maps"]) == len(words)
    assert all(max(max(row) for row in m) == pytest.approx(1.0) for m in cap["attention"]["maps"] if m)
