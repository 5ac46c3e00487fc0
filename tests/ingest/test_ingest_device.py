"""fgsearch.ingest.device on the CPU: header guards, routing, orientation, batched decode with the
device decoder refusing files (an injected nvjpeg failure), and agreement with the Pillow path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from _library_data import scene
from PIL import Image

from fgsearch.errors import ImageError
from fgsearch.ingest.device import DeviceJpeg, DeviceStager, _upright, read_jpeg_header
from fgsearch.ingest.prepare import Prepared
from fgsearch.model.preprocess import ImageTransform


def _jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92, **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _jpeg(img, exif=exif.tobytes())


def test_header_guards_refuse_bombs_and_tiny_images_before_decoding() -> None:
    data = _jpeg(scene(1, (320, 240)))
    jpeg, w, h, _ = read_jpeg_header(data, max_megapixels=100, min_side=16)
    assert isinstance(jpeg, DeviceJpeg) and (w, h) == (320, 240)
    with pytest.raises(ImageError, match=r"320x240 .*megapixel limit.*--max-megapixels"):
        read_jpeg_header(data, max_megapixels=0.05, min_side=16)
    with pytest.raises(ImageError, match=r"too small .*--min-side"):
        read_jpeg_header(data, max_megapixels=100, min_side=300)
    turned, w, h, _ = read_jpeg_header(_with_orientation(scene(1, (320, 240)), 6), 100, 16)
    assert turned is not None and turned.orientation == 6 and (w, h) == (240, 320)  # displayed size


def test_only_rgb_and_grey_jpegs_go_to_the_device() -> None:
    assert read_jpeg_header(_png(scene(2)), 100, 16)[0] is None  # the CPU decodes it
    cmyk, w, h, _ = read_jpeg_header(_jpeg(scene(2).convert("CMYK")), 100, 16)
    assert cmyk is None and (w, h) == (160, 120)  # nvjpeg does not take CMYK: the CPU path
    assert read_jpeg_header(_jpeg(scene(2).convert("L")), 100, 16)[0] is not None
    assert read_jpeg_header(b"not an image at all", 100, 16)[0] is None  # the CPU path gives the reason


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow(orientation: int) -> None:
    arr = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    from PIL import ImageOps

    want = np.asarray(ImageOps.exif_transpose(img)).transpose(2, 0, 1)
    got = _upright(torch.from_numpy(arr.transpose(2, 0, 1).copy()), orientation).numpy()
    assert np.array_equal(got, want)


def _prepared(data: bytes, name: str) -> Prepared:
    jpeg, w, h, _ = read_jpeg_header(data, 100, 16)
    p = Prepared("new", name, len(data), 0, sha256=name, width=w, height=h)
    if jpeg is not None:
        p.pixels = jpeg
    else:
        from fgsearch.decode import load_image

        p.pixels = ImageTransform((32, 32)).item(load_image(data).image)
    return p


def test_stage_mixes_device_and_cpu_items_in_order_and_agrees_with_pillow() -> None:
    t = ImageTransform((32, 32), patch_size=16)
    images = [scene(i, (240, 180)) for i in range(4)]
    files = [_jpeg(images[0]), _png(images[1]), _with_orientation(images[2], 6), _jpeg(images[3].convert("L"))]
    batch = [_prepared(d, f"f{i}") for i, d in enumerate(files)]
    stager = DeviceStager(t, "cpu")
    staged, failed, event = stager.stage(batch)
    assert failed == [] and event is None and stager.device_decoded == 3 and stager.fallbacks == 0
    assert tuple(staged.pixels.shape) == (4, 3, 32, 32) and staged.shapes.tolist() == [[2, 2]] * 4
    from fgsearch.decode import load_image

    for i, data in enumerate(files):
        want = t.to_array(load_image(data).image)  # Pillow: decode, EXIF, bicubic resize, normalise
        diff = np.abs(staged.pixels[i].numpy() - want)
        if i == 1:
            assert diff.max() == 0  # the PNG went through the CPU path unchanged
        else:
            assert diff.mean() < 0.05, (i, diff.mean())  # torch's antialiased bicubic vs Pillow's


def test_a_refused_jpeg_is_decoded_on_the_cpu_and_an_unreadable_one_fails() -> None:
    """Injected nvjpeg refusal: one file makes the batched call fail; decoded one by one, the
    device refuses it again, and Pillow decodes it; a truncated JPEG fails with Pillow's reason."""
    good = [_jpeg(scene(i, (200, 150))) for i in range(3)]
    whole = _jpeg(scene(9, (200, 150)))
    broken = whole[: len(whole) // 2]
    calls: list[int] = []

    def picky(data: list[torch.Tensor], device: object) -> list[torch.Tensor]:
        calls.append(len(data))
        if any(len(d) == len(good[1]) for d in data):
            raise RuntimeError("nvjpeg: unsupported JPEG")
        from torchvision.io import ImageReadMode, decode_jpeg

        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device="cpu"))

    batch = [_prepared(d, f"f{i}") for i, d in enumerate(good)] + [_prepared(broken, "broken")]
    stager = DeviceStager(ImageTransform((32, 32)), "cpu", decode=picky)
    staged, failed, _ = stager.stage(batch)
    assert calls[0] == 4 and calls[1:] == [1, 1, 1, 1]  # the batch, then one by one
    assert failed == [3] and "truncated" in batch[3].reason
    assert stager.fallbacks == 1 and stager.device_decoded == 2 and len(staged.pixels) == 3


def test_decode_calls_are_bounded_by_pixels() -> None:
    sizes: list[int] = []

    def counting(data: list[torch.Tensor], device: object) -> list[torch.Tensor]:
        sizes.append(len(data))
        from torchvision.io import ImageReadMode, decode_jpeg

        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device="cpu"))

    batch = [_prepared(_jpeg(scene(i, (100, 100))), f"f{i}") for i in range(5)]
    DeviceStager(ImageTransform((16, 16)), "cpu", decode=counting, pixels_per_call=25_000).stage(batch)
    assert sizes == [2, 2, 1]


def test_index_run_with_the_device_pipeline_on_the_cpu(tmp_path: Path, tiny_model_dir: Path) -> None:
    """End to end: a truncated JPEG (its header passes) and its copy fail with the decoder's
    reason; the rest is indexed with vectors close to the serial (Pillow) run's."""
    from fgsearch.library import Library
    from fgsearch.regions import RegionSettings

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        scene(i, (240, 180)).save(photos / f"p{i}.jpg", quality=90)
    scene(7).save(photos / "q.png")
    whole = _jpeg(scene(8, (240, 180)))
    (photos / "broken.jpg").write_bytes(whole[: len(whole) // 2])
    (photos / "broken-copy.jpg").write_bytes(whole[: len(whole) // 2])
    vectors = {}
    for pipeline in ("serial", "device"):
        regions = RegionSettings(proposer="grid", max_regions=2)
        with Library.open(tmp_path / pipeline, model=str(tiny_model_dir), regions=regions, device="cpu") as lib:
            rep = lib.index(photos, batch_size=3, pipeline=pipeline)
            assert (rep.indexed, rep.failed) == (6, 2), rep.to_dict()
            reasons = dict(lib.failures())
            assert "truncated" in reasons[str(photos / "broken.jpg")]
            assert "truncated" in reasons[str(photos / "broken-copy.jpg")]
            hits = lib.search(query=_query("a red circle"))
            vectors[pipeline] = {h.path: h.global_score for h in hits}
        if pipeline == "device":
            assert {"prepare", "device_decode", "forward", "storage"} <= set(rep.stage_seconds)
    assert set(vectors["serial"]) == set(vectors["device"])
    for path, score in vectors["serial"].items():
        assert abs(score - vectors["device"][path]) < 0.02, path


def _query(text: str) -> object:
    from fgsearch.search import SearchQuery

    return SearchQuery(text=text, k=20)


def test_device_pipeline_proposes_on_the_device_and_stores_the_serial_regions(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--regions auto`` with ``--pipeline device``: the proposals run on the model's device
    (torch; the numpy ``after`` is never called) and the stored boxes and region vectors equal
    the serial run's (PNGs: both runs decode the same pixels on the CPU)."""
    from fgsearch.library import Library
    from fgsearch.regions import AutoProposer, RegionSettings

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        scene(i, (200, 150)).save(photos / f"p{i}.png")
    stored = {}
    for pipeline in ("serial", "device"):
        if pipeline == "device":

            def no_host(self: object, dense: object) -> object:
                raise AssertionError("the device pipeline copied the dense maps to numpy")

            monkeypatch.setattr(AutoProposer, "after", no_host)
        regions = RegionSettings(proposer="auto", min_cells=1)
        with Library.open(tmp_path / pipeline, model=str(tiny_model_dir), regions=regions, device="cpu") as lib:
            rep = lib.index(photos, batch_size=4, pipeline=pipeline)
            assert rep.indexed == 4 and rep.regions > 4, rep.to_dict()
            cat, idx = lib.store.catalog, lib.store.region_index
            ids = sorted(int(i) for i in lib.store.global_index.ids())
            rows = {}
            for cid, (rids, boxes) in cat.region_arrays(ids).items():
                rows[cat.content_sha256(cid)] = (boxes, idx.get(rids))
            assert len(rows) == 4
            stored[pipeline] = rows
        if pipeline == "device":
            assert rep.stage_seconds.get("proposals", 0) > 0
    assert stored["serial"].keys() == stored["device"].keys()
    for sha, (boxes, vectors) in stored["serial"].items():
        np.testing.assert_array_equal(stored["device"][sha][0], boxes)
        np.testing.assert_allclose(stored["device"][sha][1], vectors, atol=1e-5)


@pytest.mark.gpu
def test_device_pipeline_on_cuda_proposes_there_and_agrees_with_the_cpu(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CUDA GPU: nvjpeg decoding, proposals in torch on the GPU (the numpy ``after`` is never
    called), RoIAlign there; the global vectors agree with the CPU serial run's (bf16 autocast and
    torch's resize: close, not equal) and every image gets region vectors."""
    from fgsearch.library import Library
    from fgsearch.regions import AutoProposer, RegionSettings

    if not torch.cuda.is_available():
        pytest.fail("selected with -m gpu, but torch sees no CUDA GPU")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        scene(i, (320, 240)).save(photos / f"p{i}.jpg", quality=92)
    vectors = {}
    for pipeline, device in (("serial", "cpu"), ("device", "cuda")):
        if device == "cuda":

            def no_host(self: object, dense: object) -> object:
                raise AssertionError("the device pipeline copied the dense maps to numpy")

            monkeypatch.setattr(AutoProposer, "after", no_host)
        regions = RegionSettings(proposer="auto", min_cells=1)
        with Library.open(tmp_path / pipeline, model=str(tiny_model_dir), regions=regions, device=device) as lib:
            rep = lib.index(photos, batch_size=4, pipeline=pipeline)
            assert rep.indexed == 6 and rep.regions >= 6, rep.to_dict()
            idx, cat = lib.store.global_index, lib.store.catalog
            ids = np.asarray(sorted(int(i) for i in idx.ids()), np.int64)
            vectors[pipeline] = {cat.content_sha256(int(i)): v for i, v in zip(ids, idx.get(ids), strict=True)}
        if device == "cuda":
            assert {"device_decode", "forward", "proposals", "storage"} <= set(rep.stage_seconds)
    for sha, v in vectors["serial"].items():
        assert float(np.dot(v, vectors["device"][sha])) > 0.98, sha
