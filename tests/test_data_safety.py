"""Data files are data: pickles cannot run code, malformed images never reach (and crash) the native decoder, and bad
arrays / tables are refused in one line naming the file, the array or row, and what is allowed."""

from __future__ import annotations

import builtins
import io
import multiprocessing
import os
import pickle
import re
import struct
import subprocess
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ssl_train.data.array_files import MAX_CLASSES
from ssl_train.data.cifar_stl import CIFARSource
from ssl_train.data.folders import ImageFileDataset, ImageFolderSource
from ssl_train.data.graphs import GraphArrays
from ssl_train.data.image_guard import ImageRefused, check_image, png_rows
from ssl_train.data.safe_pickle import loads_data_pickle
from ssl_train.data.sequences import SequenceArrays
from ssl_train.errors import DataNotFoundError, UserError
from tests.conftest import make_cifar


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    """The exception's message, asserted to be one line."""
    message = str(error.value)
    assert "\n" not in message
    return message



class Payload:
    """A pickle that calls `call(*args)` when loaded."""

    def __init__(self, call: Any, *args: Any) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.call, self.args


def test_cifar_fixture_still_loads(tmp_path: Path) -> None:
    splits = CIFARSource(str(make_cifar(tmp_path)), 10).load()
    assert splits.train.images.shape == (40, 3, 32, 32) and splits.num_classes == 10


@pytest.mark.parametrize("protocol", [2, 5])
def test_numpy_arrays_unpickle_at_protocols_2_and_5(protocol: int) -> None:
    data = np.arange(24, dtype=np.uint8).reshape(2, 12)
    batch = loads_data_pickle(pickle.dumps({b"data": data, b"labels": [3, 4], b"scale": np.float32(0.5)}, protocol=protocol))
    assert np.array_equal(batch[b"data"], data) and batch[b"labels"] == [3, 4] and batch[b"scale"] == np.float32(0.5)


@pytest.mark.parametrize("call, args", [(os.system, ("touch MARKER",)), (builtins.eval, ("__import__('os').system('touch MARKER')",)),
                                        (subprocess.call, (["touch", "MARKER"],)), (torch.load, ("MARKER",))])
def test_cifar_code_payloads_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: Any, args: tuple[Any, ...]) -> None:
    monkeypatch.chdir(tmp_path)
    make_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(pickle.dumps({b"data": Payload(call, *args), b"labels": [0]}, protocol=2))
    with pytest.raises(UserError) as error:
        CIFARSource(str(tmp_path)).load()
    name = f"{call.__module__}.{call.__qualname__}"
    assert one_line(error) == (f"{path}: refused: a CIFAR python batch that names {name}, which would need code to load "
                               "(real CIFAR batches hold only lists, bytes and numpy arrays)")
    assert not (tmp_path / "MARKER").exists()


def test_codecs_encode_is_admitted_only_for_latin1() -> None:
    import _codecs

    with pytest.raises(pickle.UnpicklingError, match="only for latin1"):
        loads_data_pickle(pickle.dumps(Payload(_codecs.encode, "text", "rot13")))



def chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png(width: int, height: int, depth: int = 8, colour: int = 2, interlace: int = 0, idat: bytes | None = None, extra: bytes = b"") -> bytes:
    """A PNG of zero pixels (or with the IDAT payload `idat`), CRCs correct."""
    if idat is None:
        rows = png_rows(width, height, depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour], interlace)
        idat = zlib.compress(b"".join(b"\x00" * stride for stride, count in rows for _ in range(count)))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))
    return b"\x89PNG\r\n\x1a\n" + header + extra + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def crashing_png() -> bytes:
    """69 bytes: a 64x64 RGB PNG whose IDAT zlib stream is cut to 12 bytes (torchvision's decoder segfaults on it)."""
    return png(64, 64, idat=png(64, 64)[41:53])


def decode_in_child(paths: list[Path]) -> tuple[int | None, Any]:
    """Read every image through ImageFileDataset in a forked child process (a segfault there fails the test, not pytest):
    (the child's exit code, its (skipped, shapes, warnings))."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        dataset = ImageFileDataset(paths, [0] * len(paths))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            shapes = [tuple(dataset[i][0].shape) for i in range(len(paths))]
        send.send((dataset.skipped, shapes, [str(w.message) for w in caught if "skipping" in str(w.message)]))

    process = context.Process(target=child)
    process.start()
    process.join(60)
    return process.exitcode, receive.recv() if receive.poll() else None


def test_crashing_png_is_skipped_not_fatal_and_valid_pngs_decode(tmp_path: Path) -> None:
    assert len(crashing_png()) == 69
    files = {"bad.png": crashing_png(), "rgb.png": png(5, 3), "adam7.png": png(9, 7, colour=6, interlace=1),
             "gray16.png": png(4, 4, depth=16, colour=0), "bits.png": png(11, 2, depth=1, colour=0),
             "palette.png": png(6, 6, colour=3, extra=chunk(b"PLTE", bytes(range(12))))}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    exitcode, report = decode_in_child([tmp_path / name for name in files])
    assert exitcode == 0 and report is not None
    skipped, shapes, messages = report
    assert skipped == 1 and shapes == [(3, 3, 5), (3, 3, 5), (3, 7, 9), (3, 4, 4), (3, 2, 11), (3, 6, 6)]
    assert messages == [f"skipping unreadable image {tmp_path / 'bad.png'}: PNG IDAT zlib stream is truncated: it inflates to 0 of the 12352 bytes "
                        "its header needs"]


@pytest.mark.parametrize("data, reason", [
    (png(100_000, 100_000, idat=b"x"), "PNG header claims 100000x100000 = 10000000000 pixels, over max_pixels=64000000 (a decompression bomb?)"),
    (b"\xff\xd8\xff\xc0\x00\x11\x08\xfd\xe8\xfd\xe8\x03" + b"\x00" * 9 + b"\xff\xd9",
     "JPEG header claims 65000x65000 = 4225000000 pixels, over max_pixels=64000000 (a decompression bomb?)"),
    (b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00" * 8 + b";", "GIF header claims 65535x65535 = 4294836225 pixels, over max_pixels"),
])
def test_decompression_bombs_are_refused_from_the_header(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRefused, match=re.escape(reason)):
        check_image(data)


def test_refused_images_are_skipped_and_counted_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(png(100_000, 100_000, idat=b"x"))
    (tmp_path / "filter.png").write_bytes(png(2, 2, idat=zlib.compress(b"\x07" + b"\x00" * 6 + b"\x00" * 7)))
    (tmp_path / "big.png").write_bytes(png(10, 10))
    (tmp_path / "ok.png").write_bytes(png(2, 2))
    dataset = ImageFileDataset([tmp_path / n for n in ("bomb.png", "filter.png", "big.png", "ok.png")], [0] * 4, max_pixels=50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dataset[0][0].shape == (3, 2, 2)
    messages = [str(w.message) for w in caught if "skipping unreadable image" in str(w.message)]
    assert dataset.skipped == 3 and len(messages) == 3
    assert "bomb.png: PNG header claims 100000x100000 = 10000000000 pixels, over max_pixels=50" in messages[0]
    assert "filter.png: PNG row filter byte 7 at raw offset 0 (allowed: 0..4)" in messages[1]
    assert "big.png: PNG header claims 10x10 = 100 pixels, over max_pixels=50" in messages[2]


def test_max_pixels_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data.source.max_pixels must be a positive integer"):
        ImageFolderSource(str(tmp_path), max_pixels=0)


@pytest.mark.parametrize("layout", ["empty class folders", "no class folders"])
def test_empty_image_folder_names_the_folder(tmp_path: Path, layout: str) -> None:
    (tmp_path / "train").mkdir()
    if layout == "empty class folders":
        (tmp_path / "train" / "cat").mkdir()
        (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DataNotFoundError) as error:
        ImageFolderSource(str(tmp_path)).load()
    expected = "holds no images (.bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp) in its class sub-folders cat" if layout == "empty class folders" \
        else "has no class sub-folders"
    assert one_line(error).startswith(f"data.source.root: {tmp_path / 'train'} {expected}")



def sequences(**override: Any) -> dict[str, Any]:
    """Four tiny sequence arrays, some replaced by `override`."""
    arrays = {"train_x": np.zeros((4, 3, 2), np.float32), "train_y": np.arange(4) % 2, "test_x": np.zeros((2, 3, 2), np.float32), "test_y": np.arange(2)}
    return {**arrays, **override}


def absurd_npz(path: Path, name: str, others: dict[str, np.ndarray]) -> Path:
    """An .npz whose member `name` has a header claiming 10**12 float64 elements but 16 bytes of data."""
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in others.items():
            buffer = io.BytesIO()
            np.save(buffer, value)
            archive.writestr(f"{key}.npy", buffer.getvalue())
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
        archive.writestr(f"{name}.npy", buffer.getvalue() + b"\x00" * 16)
    return path


@pytest.mark.parametrize("override, message", [
    ({"train_x": np.array([[["a"]]] * 4)}, "array train_x has dtype <U1; allowed: bool, int, uint or float arrays (no strings, objects or records)"),
    ({"test_y": np.array(["cat", None], dtype=object)}, "array test_y has dtype object; allowed: bool, int, uint or float arrays"),
    ({"train_y": np.array([0, 1, 2**40, 1])}, f"array train_y holds label {2**40}; labels must be class indices 0..{MAX_CLASSES - 1}"),
    ({"test_y": np.array([0, -3])}, "array test_y holds label -3; labels must be class indices 0..999999 (num_classes is the largest + 1)"),
    ({"train_x": np.where(np.arange(24).reshape(4, 3, 2) >= 18, np.nan, 0.0)}, "array train_x holds NaN/inf values (6 of 24): fix or drop those samples"),
    ({"train_y": np.arange(3)}, "train_x holds 4 samples but train_y 3 labels"),
])
def test_sequence_arrays_refuse_bad_arrays_in_one_line(tmp_path: Path, override: dict[str, Any], message: str) -> None:
    np.savez(tmp_path / "s.npz", **sequences(**override))
    with pytest.raises(UserError) as error:
        SequenceArrays(str(tmp_path / "s.npz")).load()
    assert one_line(error).startswith(f"data.source.path={tmp_path / 's.npz'}: {message}")


def test_absurd_npz_and_npy_headers_are_refused_before_allocating(tmp_path: Path) -> None:
    path = absurd_npz(tmp_path / "s.npz", "train_x", {k: v for k, v in sequences().items() if k != "train_x"})
    claim = "array train_x's header claims shape (1000000000000,) (1000000000000 elements, 8000000000000 bytes) but the file holds 16 bytes for it"
    with pytest.raises(UserError) as error:
        SequenceArrays(str(path)).load()
    assert one_line(error).startswith(f"data.source.path={path}: {claim}")
    folder = tmp_path / "folder"
    folder.mkdir()
    for key, value in sequences().items():
        np.save(folder / f"{key}.npy", value)
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    (folder / "train_x.npy").write_bytes(buffer.getvalue() + b"\x00" * 16)
    with pytest.raises(UserError, match=re.escape(claim)):
        SequenceArrays(str(folder)).load()


def graph(**override: Any) -> dict[str, np.ndarray]:
    """A 4-node path graph, some arrays replaced by `override`."""
    return {"x": np.eye(4, dtype=np.float32), "edge_index": np.array([[0, 1, 2], [1, 2, 3]]), "y": np.array([0, 1, 0, 1]), **override}


@pytest.mark.parametrize("override, message", [
    ({"x": np.array([[1.0, np.nan]] * 4)}, "array x holds NaN/inf values (4 of 8)"),
    ({"y": np.array([0, 1, 2**40, 1])}, f"array y holds label {2**40}; labels must be class indices"),
    ({"y": np.array(["a", "b", "a", "b"])}, "array y has dtype <U1; allowed: bool, int, uint or float arrays"),
    ({"train_mask": np.ones(3, bool)}, "array train_mask must be (4,) flags, one per node, got shape (3,)"),
])
def test_graph_arrays_refuse_bad_arrays_in_one_line(tmp_path: Path, override: dict[str, Any], message: str) -> None:
    np.savez(tmp_path / "g.npz", **graph(**override))
    with pytest.raises(UserError) as error:
        GraphArrays(str(tmp_path / "g.npz")).load()
    assert one_line(error).startswith(f"data.source.path={tmp_path / 'g.npz'}: {message}")


def test_absurd_graph_header_is_refused(tmp_path: Path) -> None:
    path = absurd_npz(tmp_path / "g.npz", "x", {k: v for k, v in graph().items() if k != "x"})
    with pytest.raises(UserError, match=r"array x's header claims shape \(1000000000000,\)"):
        GraphArrays(str(path)).load()



def test_over_long_csv_field_names_the_file_and_row(tmp_path: Path) -> None:
    import csv

    from ssl_train.data.captions import CaptionTable
    from ssl_train.data.text import TextFiles

    path = tmp_path / "t.csv"
    path.write_text('text,label\nfine,a\n"' + "x" * (csv.field_size_limit() + 1) + '",b\nalso fine,a\n')
    expected = (f"{path}: row 2 (starting at line 3): a field longer than {csv.field_size_limit()} characters; an unclosed quote makes the rest of "
                "the file one field: check the file's quoting")
    with pytest.raises(UserError) as error:
        TextFiles(str(path)).load()
    assert one_line(error) == expected
    with pytest.raises(UserError, match=re.escape(expected)):
        CaptionTable(str(path), image_column="text", caption_column="label").load()
