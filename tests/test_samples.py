"""The samples' data loaders on the real files (fast; the samples' full runs are not tests)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from samples import data
from samples.image_net import IMAGE_PREPROCESS, fashion_cnn


def _need(loader, *args):
    try:
        return loader(*args)
    except data.NotInstalled as e:
        pytest.skip(str(e))


@pytest.mark.parametrize(("split", "size", "earn", "grain"), [("train", 5485, 2840, 41), ("test", 2189, 1083, 10)])
def test_r8_has_the_published_split_sizes_and_eight_classes(split, size, earn, grain):
    texts, labels, names = _need(data.r8, split)
    assert names == ["acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade"]
    assert len(texts) == len(labels) == size
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(8))
    counts = Counter(names[i] for i in labels)
    assert counts["earn"] == earn and counts["grain"] == grain  # the largest and the smallest class
    assert all(isinstance(t, str) and t.strip() for t in texts)
    assert "\t" not in "".join(texts[:50])  # a cell boundary never leaks into the text


def test_r8_first_test_item_is_the_reuters_japan_story():
    texts, labels, names = _need(data.r8, "test")
    assert texts[0].startswith("asian exporters fear damage from u s japan rift")
    assert names[labels[0]] == "trade"


def test_read_tab_skips_the_three_header_rows(tmp_path):
    path = tmp_path / "x.tab"
    path.write_text("Category\tText\nd\tstring\nclass\t\n\nearn\tprofit up\nacq\tbuys rival\n")
    assert data.read_tab(path) == {"Category": ["earn", "acq"], "Text": ["profit up", "buys rival"]}
    path.write_text("Category\tText\nd\tstring\nclass\t\nearn\tone\ttwo\n")
    with pytest.raises(ValueError, match="3 cells"):
        data.read_tab(path)


@pytest.mark.parametrize(("split", "size"), [("train", 60000), ("test", 10000)])
def test_fashion_mnist_shapes_and_labels(split, size):
    images, labels = _need(data.fashion_mnist, split)
    assert images.shape == (size, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (size,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [size // 10] * 10  # balanced: 6,000 / 1,000 per class
    assert images.max() == 255 and images.min() == 0
    assert 0.25 < images.mean() / 255 < 0.32  # the known mean (0.286), not noise or a wrong offset


def test_fashion_mnist_test_split_starts_with_the_known_labels():
    _, labels = _need(data.fashion_mnist, "test")
    assert labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert data.FASHION_CLASSES[labels[0]] == "Ankle boot"


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split"):
        data.r8("validation")


def test_lee_corpus_is_300_articles():
    lines = _need(data.lee_lines)
    assert len(lines) == 300
    assert data.lee_text().count("\n") == 299


def test_image_net_takes_normalised_28x28_grey_and_gives_10_logits():
    torch = pytest.importorskip("torch")
    net = fashion_cnn().eval()
    with torch.inference_mode():
        out = net(torch.zeros(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert IMAGE_PREPROCESS["size"] == [28, 28] and IMAGE_PREPROCESS["channels"] == 1
