"""CUHK-PEDES reading, identities, caption encoding and query encoding for search."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imcap.data.loader import PreproData
from imcap.data.vocab import UNK, Vocab
from imcap.errors import ImcapError
from imcap.search.data import SearchData, cuhk_pedes_records, encode_query, is_cuhk_pedes, read_cuhk_pedes


def _pedes(tmp_path: Path, items: list[dict], name: str = "reid_raw.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(items))
    return path


PEDES = [
    {"split": "train", "captions": ["A man in a red jacket.", "The man wears red."], "file_path": "CUHK01/0001.png", "id": 1,
     "processed_tokens": [["a", "man"], ["the", "man"]]},
    {"split": "train", "captions": ["A man with a red coat and jeans."], "file_path": "CUHK01/0002.png", "id": 1},
    {"split": "train", "captions": ["A woman in a blue dress."], "file_path": "CUHK01/0003.png", "id": 2},
    {"split": "test", "captions": ["A woman carrying a bag.", "  "], "file_path": "test_query/p3.jpg", "id": 3},
    {"split": "test", "captions": ["Woman with a black bag."], "file_path": "test_query/p4.jpg", "id": 3},
]


def test_cuhk_pedes_records_keep_person_ids_and_merge_repeats(tmp_path):
    items = PEDES + [{"split": "train", "captions": ["A man, red jacket."], "file_path": "CUHK01/0001.png", "id": 1}]
    records = cuhk_pedes_records(items, tmp_path / "reid_raw.json")
    assert [r.file_path for r in records] == ["CUHK01/0001.png", "CUHK01/0002.png", "CUHK01/0003.png", "test_query/p3.jpg", "test_query/p4.jpg"]
    assert [r.extra["person_id"] for r in records] == ["1", "1", "2", "3", "3"]
    assert records[0].captions == ["A man in a red jacket.", "The man wears red.", "A man, red jacket."]
    assert "processed_tokens" not in records[0].extra
    assert records[0].image_id == "CUHK01/0001" and records[3].split == "test"


@pytest.mark.parametrize("item, problem", [
    ({"split": "train", "captions": ["x"], "file_path": "a.png"}, "'id'"),
    ({"split": "later", "captions": ["x"], "file_path": "a.png", "id": 1}, "unknown split"),
    ({"split": "train", "captions": [3], "file_path": "a.png", "id": 1}, "list of strings"),
])
def test_cuhk_pedes_bad_items_fail_in_one_line(tmp_path, item, problem):
    with pytest.raises(ImcapError, match=problem) as err:
        cuhk_pedes_records([item], tmp_path / "reid_raw.json")
    assert "\n" not in str(err.value) and "item #0" in str(err.value)


def test_cuhk_pedes_same_file_with_two_people_is_an_error(tmp_path):
    items = [PEDES[0], {**PEDES[1], "file_path": PEDES[0]["file_path"], "id": 9}]
    with pytest.raises(ImcapError, match="another person id"):
        cuhk_pedes_records(items, tmp_path / "x.json")


def test_cuhk_pedes_without_splits_keeps_each_person_in_one_split(tmp_path):
    items = [{"captions": ["a person"], "file_path": f"{i}.png", "id": i // 4} for i in range(200)]
    records = cuhk_pedes_records(items, tmp_path / "x.json")
    by_person: dict[str, set[str]] = {}
    for r in records:
        by_person.setdefault(r.extra["person_id"], set()).add(r.split)
    assert all(len(s) == 1 for s in by_person.values())
    assert {s for v in by_person.values() for s in v} == {"train", "val", "test"}


def test_detection_by_name_tokens_or_repeated_ids(tmp_path):
    assert is_cuhk_pedes(tmp_path / "reid_raw.json", [PEDES[1]])
    assert is_cuhk_pedes(tmp_path / "other.json", PEDES[:1])  # processed_tokens
    assert is_cuhk_pedes(tmp_path / "other.json", [PEDES[1], {**PEDES[1], "file_path": "x.png"}])  # person 1 twice
    assert not is_cuhk_pedes(tmp_path / "other.json", PEDES[1:3])  # ids 1, 2: a plain raw list
    raw = [{"file_path": "a.png", "captions": ["x"], "id": 1}, {"file_path": "b.png", "captions": ["y"], "id": 2}]
    assert not is_cuhk_pedes(tmp_path / "other.json", raw)
    assert not is_cuhk_pedes(tmp_path / "other.json", {"images": []})


def test_search_data_from_reid_raw_json_shares_identities(tmp_path):
    path = _pedes(tmp_path, PEDES)
    (tmp_path / "imgs").mkdir()
    data = SearchData.load(path, word_count_threshold=0)
    assert data.image_root == (tmp_path / "imgs").resolve()
    assert len(data.images) == 5 and len(data.labels) == 6  # the blank caption is skipped
    assert data.identity[0] == data.identity[1] != data.identity[2]
    assert data.identity[3] == data.identity[4]
    assert list(data.split_images("test")) == [3, 4]
    assert list(data.captions_of_images(np.array([3, 4]))) == [4, 5]
    words = data.vocab.decode(data.labels[0])
    assert words == "a man in a red jacket"
    renamed = tmp_path / "people.json"
    renamed.write_text(json.dumps([{k: v for k, v in it.items() if k != "processed_tokens"} for it in PEDES[1:3]]))
    assert len(SearchData.load(renamed, format="cuhk-pedes", word_count_threshold=0).images) == 2  # no repeated id: forced
    records, root = read_cuhk_pedes(path, image_root=str(tmp_path))
    assert root == str(tmp_path.resolve()) and len(records) == 5


def test_search_data_from_prepro_folder_matches_prepro(tiny_data):
    data = SearchData.load(tiny_data)
    pre = PreproData.load(tiny_data)
    assert len(data.images) == len(pre.images) and data.vocab.idx_to_word == pre.vocab.idx_to_word
    assert len(set(data.identity.tolist())) == len(pre.images)  # synthetic scenes: each image its own identity
    for i in (0, 17, len(pre.images) - 1):
        rows = data.labels[data.caption_image == i]
        assert np.array_equal(rows, pre.captions_of(i))
    assert list(data.split_images("test")) == pre.split_indices("test")


def test_search_data_reads_a_synth_folder_directly(tiny_data):
    data = SearchData.load(tiny_data.parent / "synth", max_length=8, word_count_threshold=0)
    assert len(data.images) == 60 and data.labels.shape == (300, 8)
    assert data.image_path(0).is_file()
    Image.open(data.image_path(0)).verify()


def test_encode_query_errors_and_unknown_words():
    vocab = Vocab(["<NULL>", "<START>", "<END>", "<UNK>", "a", "red", "circle"])
    assert encode_query("A red, circle!", vocab, 16) == [4, 5, 6]
    assert encode_query("a purple circle", vocab, 2) == [4, UNK]
    for empty in ("", "   ", "?!."):
        with pytest.raises(ImcapError, match="empty query"):
            encode_query(empty, vocab, 16)
    with pytest.raises(ImcapError, match="vocabulary"):
        encode_query("zebra crossing", vocab, 16)
