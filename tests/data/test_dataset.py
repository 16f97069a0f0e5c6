import numpy as np
import pytest
from PIL import Image

from histoseek.data.dataset import ImageDataset, make_loader
from histoseek.data.transforms import EvalTransform
from histoseek.errors import HistoseekError


def test_unreadable_files_are_skipped_and_reported(tmp_path):
    paths = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(path)
        paths.append(path)
    paths[2].write_bytes(b"broken")
    dataset = ImageDataset(paths, [0, 1, 0, 1, 0], EvalTransform(16, (0, 0, 0), (1, 1, 1)))
    batches = list(make_loader(dataset, workers=0, batch_size=4))
    indices = np.concatenate([b.indices.numpy() for b in batches]).tolist()
    failed = [i for b in batches for i in b.failed]
    assert indices == [0, 1, 3, 4] and failed == [2]
    assert batches[0].images.shape == (3, 3, 16, 16)
    assert batches[0].labels.tolist() == [0, 1, 1]


def test_batch_of_only_unreadable_files_is_empty(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"broken")
    dataset = ImageDataset([path], [0], EvalTransform(16, (0, 0, 0), (1, 1, 1)))
    (batch,) = list(make_loader(dataset, workers=0, batch_size=4))
    assert len(batch.labels) == 0 and batch.failed == [0]


def test_worker_processes_give_the_same_batches(tmp_path):
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (20, 20), (0, i * 30, 0)).save(path)
        paths.append(path)
    dataset = ImageDataset(paths, list(range(6)), EvalTransform(16, (0, 0, 0), (1, 1, 1)))
    inline = [b.images for b in make_loader(dataset, workers=0, batch_size=3)]
    parallel = [b.images for b in make_loader(dataset, workers=2, batch_size=3)]
    assert all(np.array_equal(a, b) for a, b in zip(inline, parallel, strict=True))


def _coloured_images(folder, count):
    paths = []
    for i in range(count):
        path = folder / f"{i}.png"
        Image.new("RGB", (20, 20), (i * 30, 100, 0)).save(path)
        paths.append(path)
    return paths


def test_training_replaces_an_unreadable_file_with_the_next_one_of_its_class(tmp_path):
    paths = _coloured_images(tmp_path, 6)
    paths[1].write_bytes(b"broken")
    paths[3].write_bytes(b"broken")
    labels = [0, 1, 0, 1, 0, 1]
    transform = EvalTransform(16, (0, 0, 0), (1, 1, 1))
    dataset = ImageDataset(paths, labels, transform, replace_unreadable=True)
    item = dataset[1]
    # Class 1 is 1, 3, 5: after 1 comes 3 (unreadable too), then 5.
    assert (item.label, item.index, item.failed, item.stored_size) == (1, 5, [1], (20, 20))
    assert np.array_equal(item.image, dataset[5].image)
    assert dataset[3].index == 5  # and from 3 it wraps round to 5 as well
    (batch,) = list(make_loader(dataset, workers=0, batch_size=6))
    assert len(batch.labels) == 6 and batch.labels.tolist() == labels
    assert sorted(batch.failed) == [1, 3]
    (parallel,) = list(make_loader(dataset, workers=2, batch_size=6))
    assert np.array_equal(batch.images, parallel.images) and parallel.failed == batch.failed


def test_a_class_with_no_readable_file_cannot_be_replaced(tmp_path):
    paths = _coloured_images(tmp_path, 3)
    paths[0].write_bytes(b"broken")
    dataset = ImageDataset(
        paths, [0, 1, 1], EvalTransform(16, (0, 0, 0), (1, 1, 1)), replace_unreadable=True
    )
    with pytest.raises(HistoseekError, match="no image of the class of .*0.png is readable"):
        dataset[0]


def test_batches_carry_each_images_stored_size_even_when_decoded_reduced(tmp_path):
    large, small, broken = tmp_path / "large.jpg", tmp_path / "small.png", tmp_path / "bad.png"
    Image.new("RGB", (1000, 900), (200, 100, 150)).save(large)
    Image.new("RGB", (30, 20), (10, 20, 30)).save(small)
    broken.write_bytes(b"broken")
    transform = EvalTransform(16, (0, 0, 0), (1, 1, 1))
    dataset = ImageDataset([large, broken, small], [0, 0, 0], transform, decode_size=224)
    (batch,) = list(make_loader(dataset, workers=0, batch_size=3))
    # The large JPEG decodes at 1/4 scale (250 × 225), yet its stored size is reported.
    assert batch.indices.tolist() == [0, 2] and batch.failed == [1]
    assert batch.stored_sizes == [(1000, 900), (30, 20)]
