"""Training-set helpers: prepro labels -> <START>/<END> captions, the built-in set, .npy loading."""
import numpy as np
import pytest

from imcap.data.vocab import Vocab
from imcap.errors import ImcapError
from imcap.reference.data import encode_captions, load_array, overfit_set, placeholder_vocab, with_start_end


def test_prepro_labels_get_start_and_end():
    labels = np.array([[5, 6, 7], [5, 0, 0], [0, 0, 0]], dtype=np.int32)
    np.testing.assert_array_equal(with_start_end(labels), [[1, 5, 6, 7, 2], [1, 5, 2, 0, 0], [1, 2, 0, 0, 0]])


def test_encode_captions_cuts_and_pads():
    vocab = Vocab(["<NULL>", "<START>", "<END>", "<UNK>", "a", "dog"])
    out = encode_captions([["a", "dog", "runs"], ["a", "a", "a", "a"]], vocab, max_words=3)
    np.testing.assert_array_equal(out, [[1, 4, 5, 3, 2], [1, 4, 4, 4, 2]])


def test_synthetic_overfit_set_is_reproducible(tmp_path):
    a, vocab_a, source = overfit_set(7, feature_dim=3, seed=1, flickr8k_dir=tmp_path)
    b, vocab_b, _ = overfit_set(7, feature_dim=3, seed=1, flickr8k_dir=tmp_path)
    assert source == "synthetic words" and a.features.shape == (7, 3) and a.captions.shape == (7, 18)
    np.testing.assert_array_equal(a.captions, b.captions)
    assert vocab_a.idx_to_word == vocab_b.idx_to_word
    assert (a.captions[:, 0] == 1).all() and ((a.captions == 2).sum(axis=1) == 1).all()


def test_placeholder_vocab_names_every_id():
    vocab = placeholder_vocab(np.array([[1, 9, 2]]))
    assert len(vocab) == 10 and vocab.decode([1, 4, 9, 2]) == "w4 w9"


def test_load_array_checks_shape_and_type(tmp_path):
    np.save(tmp_path / "three.npy", np.zeros((2, 2, 2)))
    with pytest.raises(ImcapError, match="three.npy: features must be a 2-D array"):
        load_array(tmp_path / "three.npy", "features")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ImcapError, match="obj.npy: not a .npy array"):
        load_array(tmp_path / "obj.npy", "image_idxs")
