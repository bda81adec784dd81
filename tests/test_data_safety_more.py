"""More data files that are data: GIFs walked block by block (frame bombs refused, an animated GIF served as its first
frame), WordNet lines that are not synset lines and JSON nested past the recursion limit reported, never a traceback."""

from __future__ import annotations

import logging
import re
import struct
import warnings
from pathlib import Path

import pytest

from ssl_train.data.folders import ImageFileDataset
from ssl_train.data.graphs import WordNetNouns, parse_wordnet_nouns
from ssl_train.data.image_guard import ImageRefused, check_image, first_gif_frame
from ssl_train.data.text import TextFiles, WordNetGlosses, parse_wordnet_glosses, read_rows
from ssl_train.errors import UserError
from tests.test_data_safety import decode_in_child, one_line

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


@pytest.mark.parametrize("data, reason", [
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
])
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
        "(a decompression bomb?)"]
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
    assert (f"{root / 'data.noun'}: skipped 3 line(s) that are not WordNet synset lines (first: line 3: word count 'zz' is not a hexadecimal "
            "count of the words on the line)") in caplog.text
    for body, first in [("00001740 03 n zz entity 0 | that which is perceived\n", "line 2: word count 'zz' is not a hexadecimal count"),
                        ("garbage\n", "line 2: not 'offset lex_filenum ss_type w_cnt word lex_id ... | gloss'"),
                        ("00002 99 n 01 x 0 000 | a gloss\n", "line 2: lexicographer file '99' is not a number 0..44")]:
        root = wordnet(tmp_path / "bad", body)
        with pytest.raises(UserError) as error:
            WordNetGlosses(root=str(root)).load()
        assert one_line(error).startswith(f"data.source.root: {root / 'data.noun'} holds no WordNet synset line ({first}")


@pytest.mark.parametrize("line, why", [
    ("00001740 03 n zz entity 0 000 | bad hex", "invalid literal for int() with base 16: 'zz'"),
    ("00001740 03 n", "list index out of range"),
    ("00001740 03 n 01 entity 0 009 @ 00000001 n 0000 | too few pointers", "1 words and 9 pointers do not fit its 11 fields"),
    ("00001740 77 n 01 entity 0 000 | not a noun file", "lexicographer file 77 is not a noun file (03..28)"),
])
def test_malformed_wordnet_noun_line_is_one_error_naming_the_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    root = wordnet(tmp_path, WORDNET_LINE.format(offset=1, lexfile=3, word="entity", gloss="a thing") + line + "\n")
    with pytest.raises(UserError) as error:
        WordNetNouns(str(root)).load()
    assert one_line(error).startswith(f"{root / 'data.noun'}: line 3 is not a WordNet data.noun synset line")
    assert one_line(error).endswith(why)
    assert parse_wordnet_nouns(wordnet(tmp_path, WORDNET_LINE.format(offset=1, lexfile=3, word="entity", gloss="a thing")) / "data.noun")[0] == [1]
