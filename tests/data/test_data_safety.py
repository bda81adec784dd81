"""Data files are data: pickles cannot run code, malformed images (PNG, JPEG, GIF block by block: frame bombs refused, an
animated GIF served as its first frame) never reach (and crash) the native decoder, and bad arrays / tables / WordNet
lines / JSON nested past the recursion limit are refused or skipped in one line naming the file, the array or row, and
what is allowed, never a traceback."""

from __future__ import annotations

import builtins
import io
import logging
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
from ssl_train.data.graphs import GraphArrays, WordNetNouns, parse_wordnet_nouns
from ssl_train.data.image_guard import ImageRefused, check_image, first_gif_frame
from ssl_train.data.safe_pickle import loads_data_pickle
from ssl_train.data.sequences import SequenceArrays
from ssl_train.data.text import TextFiles, WordNetGlosses, parse_wordnet_glosses
from ssl_train.data.text_records import read_rows
from ssl_train.errors import DataNotFoundError, UserError
from tests.fixtures import chunk, crashing_png, decode_in_child, make_cifar, one_line, png


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


@pytest.mark.parametrize(
    "call, args",
    [
        (os.system, ("touch MARKER",)),
        (builtins.eval, ("__import__('os').system('touch MARKER')",)),
        (subprocess.call, (["touch", "MARKER"],)),
        (torch.load, ("MARKER",)),
    ],
)
def test_cifar_code_payloads_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: Any, args: tuple[Any, ...]) -> None:
    monkeypatch.chdir(tmp_path)
    make_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(pickle.dumps({b"data": Payload(call, *args), b"labels": [0]}, protocol=2))
    with pytest.raises(UserError) as error:
        CIFARSource(str(tmp_path)).load()
    name = f"{call.__module__}.{call.__qualname__}"
    assert one_line(error) == (
        f"{path}: refused: a CIFAR python batch that names {name}, which would need code to load (real CIFAR batches hold only lists, bytes and numpy arrays)"
    )
    assert not (tmp_path / "MARKER").exists()


def test_codecs_encode_is_admitted_only_for_latin1() -> None:
    import _codecs

    with pytest.raises(pickle.UnpicklingError, match="only for latin1"):
        loads_data_pickle(pickle.dumps(Payload(_codecs.encode, "text", "rot13")))


def test_crashing_png_is_skipped_not_fatal_and_valid_pngs_decode(tmp_path: Path) -> None:
    assert len(crashing_png()) == 69
    files = {
        "bad.png": crashing_png(),
        "rgb.png": png(5, 3),
        "adam7.png": png(9, 7, colour=6, interlace=1),
        "gray16.png": png(4, 4, depth=16, colour=0),
        "bits.png": png(11, 2, depth=1, colour=0),
        "palette.png": png(6, 6, colour=3, extra=chunk(b"PLTE", bytes(range(12)))),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    exitcode, report = decode_in_child([tmp_path / name for name in files])
    assert exitcode == 0 and report is not None
    skipped, shapes, messages = report
    assert skipped == 1 and shapes == [(3, 3, 5), (3, 3, 5), (3, 7, 9), (3, 4, 4), (3, 2, 11), (3, 6, 6)]
    assert messages == [
        f"skipping unreadable image {tmp_path / 'bad.png'}: PNG IDAT zlib stream is truncated: it inflates to 0 of the 12352 bytes its header needs"
    ]


@pytest.mark.parametrize(
    "data, reason",
    [
        (png(100_000, 100_000, idat=b"x"), "PNG header claims 100000x100000 = 10000000000 pixels, over max_pixels=64000000 (a decompression bomb?)"),
        (
            b"\xff\xd8\xff\xc0\x00\x11\x08\xfd\xe8\xfd\xe8\x03" + b"\x00" * 9 + b"\xff\xd9",
            "JPEG header claims 65000x65000 = 4225000000 pixels, over max_pixels=64000000 (a decompression bomb?)",
        ),
        (b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00" * 8 + b";", "GIF header claims 65535x65535 = 4294836225 pixels, over max_pixels"),
    ],
)
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
    expected = (
        "holds no images (.bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp) in its class sub-folders cat"
        if layout == "empty class folders"
        else "has no class sub-folders"
    )
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


@pytest.mark.parametrize(
    "override, message",
    [
        ({"train_x": np.array([[["a"]]] * 4)}, "array train_x has dtype <U1; allowed: bool, int, uint or float arrays (no strings, objects or records)"),
        ({"test_y": np.array(["cat", None], dtype=object)}, "array test_y has dtype object; allowed: bool, int, uint or float arrays"),
        ({"train_y": np.array([0, 1, 2**40, 1])}, f"array train_y holds label {2**40}; labels must be class indices 0..{MAX_CLASSES - 1}"),
        ({"test_y": np.array([0, -3])}, "array test_y holds label -3; labels must be class indices 0..999999 (num_classes is the largest + 1)"),
        ({"train_x": np.where(np.arange(24).reshape(4, 3, 2) >= 18, np.nan, 0.0)}, "array train_x holds NaN/inf values (6 of 24): fix or drop those samples"),
        ({"train_y": np.arange(3)}, "train_x holds 4 samples but train_y 3 labels"),
    ],
)
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


@pytest.mark.parametrize(
    "override, message",
    [
        ({"x": np.array([[1.0, np.nan]] * 4)}, "array x holds NaN/inf values (4 of 8)"),
        ({"y": np.array([0, 1, 2**40, 1])}, f"array y holds label {2**40}; labels must be class indices"),
        ({"y": np.array(["a", "b", "a", "b"])}, "array y has dtype <U1; allowed: bool, int, uint or float arrays"),
        ({"train_mask": np.ones(3, bool)}, "array train_mask must be (4,) flags, one per node, got shape (3,)"),
    ],
)
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
    expected = (
        f"{path}: row 2 (starting at line 3): a field longer than {csv.field_size_limit()} characters; an unclosed quote makes the rest of "
        "the file one field: check the file's quoting"
    )
    with pytest.raises(UserError) as error:
        TextFiles(str(path)).load()
    assert one_line(error) == expected
    with pytest.raises(UserError, match=re.escape(expected)):
        CaptionTable(str(path), image_column="text", caption_column="label").load()


# --- GIFs block by block, WordNet lines, JSON nested past the recursion limit --------------------------------------

BLACK, WHITE = b"\x02\x02\x44\x01\x00", b"\x02\x02\x4c\x01\x00"  # LZW (minimum code size 2) of one pixel of colour 0 / colour 1


def gif(width: int, height: int, frames: list[bytes] | int, size: tuple[int, int] = (1, 1), table: bool = True, tail: bytes = b"\x3b") -> bytes:
    """A GIF89a with a black-and-white global colour table and one size-`size` image at (0, 0) per LZW data in `frames`."""
    out = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80 if table else 0, 0, 0) + (b"\x00\x00\x00\xff\xff\xff" if table else b"")
    for data in [BLACK] * frames if isinstance(frames, int) else frames:
        out += b"\x21\xf9\x04\x00\x00\x00\x00\x00" + b"\x2c" + struct.pack("<HHHHB", 0, 0, *size, 0) + data  # a graphic control extension, an image
    return out + tail


def test_gif_frame_bomb_is_refused_counting_frames_times_screen_pixels() -> None:
    bomb = gif(2000, 2000, 100)
    assert len(bomb) < 2500  # 2.3 KB that would decode to 100 x 3 x 2000 x 2000 bytes (1.2 GB)
    with pytest.raises(ImageRefused, match=re.escape("GIF holds 100 frames of a 2000x2000 screen = 400000000 pixels decoded, over max_pixels=64000000")):
        check_image(bomb)
    with pytest.raises(ImageRefused, match=re.escape("GIF holds 2 frames of a 40x40 screen = 3200 pixels decoded, over max_pixels=2000")):
        check_image(gif(40, 40, 2), max_pixels=2000)
    with pytest.raises(ImageRefused, match=re.escape("GIF's 1 frame(s) hold 2500 pixels in all, over max_pixels=2000")):
        check_image(gif(1, 1, 1, size=(50, 50)), max_pixels=2000)  # a frame far larger than its screen
    assert check_image(gif(40, 40, 1), max_pixels=2000) == (40, 40)


@pytest.mark.parametrize(
    "data, reason",
    [
        (gif(4, 3, 1, tail=b""), "GIF ends at byte 42 without its trailer (truncated?)"),
        (gif(4, 3, 1, tail=b"\x00\x3b"), "GIF has block 0x00 at byte 42; allowed: 0x21 (extension), 0x2C (image), 0x3B (trailer)"),
        (gif(4, 3, [b"\x02\x09\x44\x01\x00"]), "GIF image block's data runs past the end of the file (truncated?)"),
        (gif(4, 3, [b"\x0c\x02\x44\x01\x00"]), "GIF frame 1's LZW minimum code size is 12 (allowed: 2..8)"),
        (gif(4, 3, 0), "GIF holds no image"),
        (gif(4, 3, 1, size=(0, 3)), "GIF frame 1 at byte 27 is 0x3 pixels"),
        (gif(4, 3, 1, table=False), "GIF frame 1 has no colour table (neither global nor local)"),
        (gif(4, 3, 1)[:30], "GIF image descriptor at byte 27 is truncated"),
        (gif(4, 3, 1)[:12], "GIF is shorter than its header"),
        (b"GIF89a" + struct.pack("<HH", 0, 3) + b"\x00" * 3 + b"\x3b", "GIF header claims 0x3 pixels"),
    ],
)
def test_broken_gif_block_sequences_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRefused, match=re.escape(reason)):
        check_image(data)


def test_animated_gif_in_a_folder_is_its_first_frame_and_a_frame_bomb_is_skipped(tmp_path: Path) -> None:
    animated = gif(2, 1, [BLACK, WHITE, WHITE])
    assert first_gif_frame(animated) == gif(2, 1, [BLACK])
    files = {"animated.gif": animated, "white.gif": gif(2, 1, [WHITE]), "bomb.gif": gif(40, 40, 2)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    dataset = ImageFileDataset([tmp_path / name for name in files], [0] * 3, max_pixels=2000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, white, served = dataset[0][0], dataset[1][0], dataset[2][0]
    assert first.shape == white.shape == served.shape == (3, 1, 2)  # (C, H, W), never (frames, C, H, W)
    assert first[:, 0, 0].tolist() == [0, 0, 0] and white[:, 0, 0].tolist() == [255, 255, 255]  # the first frame's pixel, not the last's
    assert dataset.skipped == 1 and [str(w.message) for w in caught if "skipping" in str(w.message)] == [
        f"skipping unreadable image {tmp_path / 'bomb.gif'}: GIF holds 2 frames of a 40x40 screen = 3200 pixels decoded, over max_pixels=2000 "
        "(a decompression bomb?)"
    ]
    exitcode, report = decode_in_child([tmp_path / "animated.gif"])  # the default max_pixels, in a child process
    assert exitcode == 0 and report == (0, [(3, 1, 2)], [])


def test_json_nested_past_the_recursion_limit_is_a_skipped_row(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_text('{"text": ' + "[" * 50_000 + "]" * 50_000 + ', "label": "a"}\n' + '{"text": "fine", "label": "a"}\n' * 3 + "[" * 5000 + "\n")
    texts, labels, skips = read_rows(path, "text", "label")
    assert texts == ["fine"] * 3 and labels == ["a"] * 3 and dict(skips.reasons) == {"not valid JSON": 2}
    with caplog.at_level(logging.WARNING):
        splits = TextFiles(str(path), test_fraction=0.34).load()
    assert splits.train.skipped == 2 and f"{path}: skipped 2 row(s): 2 not valid JSON" in caplog.text


WORDNET_LINE = "{offset:08d} {lexfile:02d} n 01 {word} 0 001 @ 00000001 n 0000 | {gloss}\n"


def wordnet(folder: Path, noun_lines: str) -> Path:
    """A WordNet folder whose data.noun holds `noun_lines` after a licence line; the other parts hold one good synset each."""
    folder.mkdir(exist_ok=True)
    for i, part in enumerate(("noun", "verb", "adj", "adv")):
        body = noun_lines if part == "noun" else WORDNET_LINE.format(offset=i, lexfile=30 + i, word=part, gloss=f"a {part}")
        (folder / f"data.{part}").write_text("  1 This software and database is being provided to you, the LICENSEE\n" + body)
    return folder


def test_malformed_wordnet_lines_are_skipped_and_counted_naming_the_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = WORDNET_LINE.format(offset=1, lexfile=3, word="entity", gloss="that which is perceived")
    root = wordnet(tmp_path / "mixed", good + "00001740 03 n zz entity 0 | bad hex\ngarbage\n00002 99 n 01 x 0 000 | no such file\n" + good)
    with caplog.at_level(logging.WARNING):
        glosses, lexfiles, lemmas = parse_wordnet_glosses(root)
    assert glosses == ["that which is perceived"] * 2 + ["a verb", "a adj", "a adv"] and lexfiles == [3, 3, 31, 32, 33] and lemmas[0] == ["entity"]
    assert (
        f"{root / 'data.noun'}: skipped 3 line(s) that are not WordNet synset lines (first: line 3: word count 'zz' is not a hexadecimal "
        "count of the words on the line)"
    ) in caplog.text
    for body, first in [
        ("00001740 03 n zz entity 0 | that which is perceived\n", "line 2: word count 'zz' is not a hexadecimal count"),
        ("garbage\n", "line 2: not 'offset lex_filenum ss_type w_cnt word lex_id ... | gloss'"),
        ("00002 99 n 01 x 0 000 | a gloss\n", "line 2: lexicographer file '99' is not a number 0..44"),
    ]:
        root = wordnet(tmp_path / "bad", body)
        with pytest.raises(UserError) as error:
            WordNetGlosses(root=str(root)).load()
        assert one_line(error).startswith(f"data.source.root: {root / 'data.noun'} holds no WordNet synset line ({first}")


@pytest.mark.parametrize(
    "line, why",
    [
        ("00001740 03 n zz entity 0 000 | bad hex", "invalid literal for int() with base 16: 'zz'"),
        ("00001740 03 n", "list index out of range"),
        ("00001740 03 n 01 entity 0 009 @ 00000001 n 0000 | too few pointers", "1 words and 9 pointers do not fit its 11 fields"),
        ("00001740 77 n 01 entity 0 000 | not a noun file", "lexicographer file 77 is not a noun file (03..28)"),
    ],
)
def test_malformed_wordnet_noun_line_is_one_error_naming_the_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    root = wordnet(tmp_path, WORDNET_LINE.format(offset=1, lexfile=3, word="entity", gloss="a thing") + line + "\n")
    with pytest.raises(UserError) as error:
        WordNetNouns(str(root)).load()
    assert one_line(error).startswith(f"{root / 'data.noun'}: line 3 is not a WordNet data.noun synset line")
    assert one_line(error).endswith(why)
    assert parse_wordnet_nouns(wordnet(tmp_path, WORDNET_LINE.format(offset=1, lexfile=3, word="entity", gloss="a thing")) / "data.noun")[0] == [1]
