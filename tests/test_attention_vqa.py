"""`imcap synth --task vqa`: question/answer pairs about the scenes, for the answer-conditioned coatt decoder."""
import json
from collections import Counter

import pytest

from imcap.data.synth import COUNT_WORDS, generate_scenes, named_object, question_candidates, sample_scene, scene_rng
from imcap.data.vocab import tokenize
from imcap.errors import ImcapError


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_scenes(root / "cap", num_images=30, seed=9, progress=False)
    generate_scenes(root / "vqa", num_images=30, seed=9, progress=False, task="vqa")
    load = lambda d: json.loads((root / d / "captions.json").read_text())  # noqa: E731
    return root, load("cap"), load("vqa")


def test_same_images_and_the_default_output_is_unchanged(both):
    root, cap, vqa = both
    assert "task" not in cap and vqa["task"] == "vqa"
    for i in range(30):
        name = f"{i:06d}.png"
        assert (root / "cap" / "images" / name).read_bytes() == (root / "vqa" / "images" / name).read_bytes()
    by_image = {r["filename"]: r for r in cap["images"]}
    for r in vqa["images"]:
        assert r["objects"] == by_image[r["filename"]]["objects"] and r["split"] == by_image[r["filename"]]["split"]


def test_answers_are_true_and_questions_name_their_object(both):
    _, _, vqa = both
    records = vqa["images"]
    assert len({r["id"] for r in records}) == len(records)
    assert Counter(r["filename"] for r in records).most_common(1)[0][1] <= 3
    kinds = Counter(r["question_kind"] for r in records)
    assert set(kinds) == {"colour", "shape", "size", "count"}
    for r in records:
        objs = r["objects"]
        questions = [" ".join(tokenize(s["raw"])) for s in r["sentences"]]
        assert len(questions) == len(set(questions)) == 4
        if r["question_kind"] == "count":
            assert r["answer"] == COUNT_WORDS[len(objs) - 1] and r["target"] is None
            continue
        obj = objs[r["target"]]
        assert r["answer"] == {"colour": obj["color"], "shape": obj["shape"], "size": obj["size"]}[r["question_kind"]]
        if r["question_kind"] == "colour":  # named by its shape, which no other object has
            assert all(obj["shape"] in q.split() and obj["color"] not in q.split() for q in questions)
            assert [o["shape"] for o in objs].count(obj["shape"]) == 1
        if r["question_kind"] == "shape":
            assert all(obj["color"] in q.split() and obj["shape"] not in q.split() for q in questions)
            assert [o["color"] for o in objs].count(obj["color"]) == 1


def test_the_answer_mostly_picks_the_question():
    # Most answers occur once among an image's possible pairs: knowing it tells which question was asked.
    unique = total = 0
    for index in range(300):
        cands = question_candidates(sample_scene(scene_rng(4, index)))
        answers = Counter(a for _, _, a in cands)
        assert len({(kind, obj) for kind, obj, _ in cands}) == len(cands)
        unique += sum(answers[a] == 1 for _, _, a in cands)
        total += len(cands)
    assert unique / total > 0.65


def test_prepro_keeps_the_answer_as_condition(both, tmp_path):
    from imcap.data.loader import PreproData
    from imcap.data.prepro import PreproOptions, prepro

    root, _, vqa = both
    prepro(PreproOptions(input=str(root / "vqa"), output_dir=str(tmp_path), word_count_threshold=0))
    data = PreproData.load(tmp_path)
    assert len(data.images) == len(vqa["images"])
    assert data.condition_texts([0, 1], "answer") == [vqa["images"][0]["answer"], vqa["images"][1]["answer"]]
    with pytest.raises(ImcapError, match="no 'colour' field"):
        data.condition_texts([0], "colour")
    first = vqa["images"][0]
    assert data.condition_texts([0], "answer, question_kind") == [f"{first['answer']} {first['question_kind']}"]


def test_named_object():
    objs = [{"shape": "circle", "color": "red"}, {"shape": "cross", "color": "red"}, {"shape": "square", "color": "blue"}]
    assert named_object("blue", objs) is objs[2]
    assert named_object("red", objs) is None  # two red objects
    assert named_object("ball", objs) is objs[0] and named_object("plus", objs) is objs[1]
    assert named_object("large", objs) is None


def test_bad_task(tmp_path):
    with pytest.raises(ImcapError, match="--task"):
        generate_scenes(tmp_path / "x", num_images=2, task="poems")
