"""Structural checks of an image file's bytes before torchvision's native decoder sees them.

libpng errors raised while rows are read (a short or corrupt IDAT stream, a bad filter byte) take the whole process
down inside torchvision's decoder (SIGSEGV), so a PNG is verified end to end first: signature, chunk lengths and CRCs,
a sane IHDR, and IDAT data that inflates to exactly the bytes its width, height, bit depth, colour type and interlace
need, every row with a valid filter byte. JPEG, GIF and WebP get their markers and header sizes checked (their
decoders report errors as exceptions); a GIF's block sequence is walked without decoding, frames counted. Every
format's pixel count is read from its header and refused above `max_pixels` (decompression bombs); a GIF's counts
frames x screen pixels (the decoder returns every frame at the screen's size). A refusal is an ImageRefused whose
message is the reason.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

DEFAULT_MAX_PIXELS = 64_000_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
PNG_SIDE_MAX = 1_000_000  # libpng's default user limit on width and height
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))  # x0, y0, dx, dy
INFLATE_STEP = 1 << 20
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageRefused(ValueError):
    """Image bytes the native decoder must not see; the message says why."""


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of a PNG, JPEG, GIF or WebP file's bytes that pass the structural checks; else ImageRefused."""
    if data.startswith(PNG_SIGNATURE):
        return check_png(data, max_pixels)
    if data.startswith(b"\xff\xd8\xff"):
        return check_jpeg(data, max_pixels)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return check_gif(data, max_pixels)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return check_webp(data, max_pixels)
    raise ImageRefused("not a PNG, JPEG, GIF or WebP file (unknown signature); only those formats are decoded")


def check_size(kind: str, width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) when both are positive and their product is at most `max_pixels`; else ImageRefused."""
    if width <= 0 or height <= 0:
        raise ImageRefused(f"{kind} header claims {width}x{height} pixels")
    if width * height > max_pixels:
        raise ImageRefused(f"{kind} header claims {width}x{height} = {width * height} pixels, over max_pixels={max_pixels} (a decompression bomb?)")
    return width, height


def png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, payload) of each chunk up to IEND, lengths and CRCs verified."""
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise ImageRefused(f"PNG truncated at byte {pos}: no IEND chunk")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if not kind.isalpha() or not kind.isascii():
            raise ImageRefused(f"PNG chunk type {kind!r} at byte {pos} is not 4 letters")
        if length > 0x7FFFFFFF or end > len(data):
            raise ImageRefused(f"PNG chunk {kind.decode()} claims {length} bytes, past the end of the {len(data)}-byte file")
        payload = data[pos + 8 : pos + 8 + length]
        if zlib.crc32(kind + payload) != struct.unpack(">I", data[end - 4 : end])[0]:
            raise ImageRefused(f"PNG chunk {kind.decode()} fails its CRC")
        yield kind, payload
        if kind == b"IEND":
            return
        pos = end


def png_rows(width: int, height: int, bits: int, interlace: int) -> list[tuple[int, int]]:
    """(bytes per row including its filter byte, rows) of each pass of the raw image data."""
    if not interlace:
        return [(1 + (width * bits + 7) // 8, height)]
    passes = []
    for x0, y0, dx, dy in ADAM7:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w > 0 and h > 0:
            passes.append((1 + (w * bits + 7) // 8, h))
    return passes


def check_png(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of a PNG whose structure and IDAT stream are sound; else ImageRefused."""
    chunks = list(png_chunks(data))
    kinds = [kind for kind, _ in chunks]
    if kinds[0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise ImageRefused("PNG does not start with a 13-byte IHDR chunk")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if colour not in PNG_DEPTHS or depth not in PNG_DEPTHS[colour] or compression or filtering or interlace not in (0, 1):
        raise ImageRefused(
            f"PNG IHDR is invalid: bit depth {depth}, colour type {colour}, compression {compression}, filter {filtering}, interlace {interlace}"
        )
    if width > PNG_SIDE_MAX or height > PNG_SIDE_MAX:
        raise ImageRefused(f"PNG header claims {width}x{height} pixels; a side over {PNG_SIDE_MAX} is not decoded")
    check_size("PNG", width, height, max_pixels)
    unknown = sorted({kind.decode() for kind in kinds if kind[:1].isupper() and kind not in (b"IHDR", b"PLTE", b"IDAT", b"IEND")})
    if unknown or kinds.count(b"IHDR") != 1:
        raise ImageRefused(f"PNG holds critical chunks a decoder cannot read: {', '.join(unknown) or 'a second IHDR'}")
    idat = [i for i, kind in enumerate(kinds) if kind == b"IDAT"]
    if not idat or idat != list(range(idat[0], idat[-1] + 1)):
        raise ImageRefused("PNG has no IDAT data" if not idat else "PNG's IDAT chunks are not consecutive")
    palettes = [payload for kind, payload in chunks if kind == b"PLTE"]
    if colour == 3 and not palettes:
        raise ImageRefused("PNG of colour type 3 (palette) has no PLTE chunk")
    if palettes and (len(palettes) > 1 or kinds.index(b"PLTE") > idat[0] or len(palettes[0]) % 3 or not 3 <= len(palettes[0]) <= 768):
        raise ImageRefused("PNG's PLTE chunk is invalid (one, before IDAT, 1..256 RGB entries)")
    inflate_idat(b"".join(chunks[i][1] for i in idat), png_rows(width, height, depth * PNG_CHANNELS[colour], interlace))
    return width, height


def inflate_idat(stream: bytes, rows: list[tuple[int, int]]) -> None:
    """Inflate the IDAT zlib `stream` in bounded steps: it must end, give exactly the bytes of `rows`, each row's filter byte 0..4."""
    expected = sum(stride * count for stride, count in rows)
    starts = iter([stride for stride, count in rows for _ in range(count)])  # row lengths in order; a row starts with its filter byte
    next_row, produced, pending, inflater = 0, 0, stream, zlib.decompressobj()
    while not inflater.eof:
        try:
            out = inflater.decompress(pending, INFLATE_STEP)
        except zlib.error as error:
            raise ImageRefused(f"PNG IDAT is not a valid zlib stream ({error})") from None
        pending = inflater.unconsumed_tail
        if produced + len(out) > expected:
            raise ImageRefused(f"PNG IDAT inflates to more than the {expected} bytes its header needs")
        while next_row < produced + len(out):
            if out[next_row - produced] > 4:
                raise ImageRefused(f"PNG row filter byte {out[next_row - produced]} at raw offset {next_row} (allowed: 0..4)")
            next_row += next(starts, expected + 1)
        produced += len(out)
        if not out and not pending:
            break
    if not inflater.eof or produced != expected:
        raise ImageRefused(f"PNG IDAT zlib stream is truncated: it inflates to {produced} of the {expected} bytes its header needs")


def check_jpeg(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of a JPEG with SOI, a sane SOF before its first SOS, and an EOI marker; else ImageRefused."""
    pos, size = 2, None
    while True:
        if pos + 4 > len(data):
            raise ImageRefused("JPEG ends before its image data (no SOS segment)")
        if data[pos] != 0xFF:
            raise ImageRefused(f"JPEG has no marker at byte {pos} (corrupt segment lengths)")
        marker = data[pos + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # fill byte, TEM, RSTn: no length
            pos += 1 if marker == 0xFF else 2
            continue
        if marker in (0xD8, 0xD9):
            raise ImageRefused(f"JPEG has a stray {'SOI' if marker == 0xD8 else 'EOI'} marker before its image data")
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > len(data):
            raise ImageRefused(f"JPEG segment 0x{marker:02X} at byte {pos} claims {length} bytes, past the end of the file")
        if marker in JPEG_SOF:
            if length < 8:
                raise ImageRefused("JPEG SOF segment is too short")
            _, height, width, components = struct.unpack(">BHHB", data[pos + 4 : pos + 10])
            if components not in (1, 3, 4) or length != 8 + 3 * components:
                raise ImageRefused(f"JPEG SOF names {components} colour components (allowed: 1, 3 or 4)")
            size = check_size("JPEG", width, height, max_pixels)
        if marker == 0xDA:
            break
        pos += 2 + length
    if size is None:
        raise ImageRefused("JPEG has image data (SOS) but no SOF header before it")
    if data.rfind(b"\xff\xd9") < pos:
        raise ImageRefused("JPEG has no EOI marker after its image data (truncated?)")
    return size


def gif_frames(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """(screen width, screen height, [(end offset, width, height) of each frame]) of a GIF whose block sequence is sound:
    the header and logical screen, then extension blocks (0x21), images (0x2C: descriptor, colour table, LZW minimum
    code size, data sub-blocks) and the trailer (0x3B), walked without decoding; else ImageRefused."""
    if len(data) < 13:
        raise ImageRefused("GIF is shorter than its header")
    width, height, packed = struct.unpack("<HHB", data[6:11])
    frames: list[tuple[int, int, int]] = []
    pos, colours = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0), bool(packed & 0x80)
    while True:
        if pos >= len(data):
            raise ImageRefused(f"GIF ends at byte {pos} without its trailer (truncated?)")
        block = data[pos]
        if block == 0x3B:
            break
        if block == 0x21:
            pos += 2  # introducer and label
        elif block == 0x2C:
            if pos + 10 > len(data):
                raise ImageRefused(f"GIF image descriptor at byte {pos} is truncated")
            frame_width, frame_height, frame_packed = struct.unpack("<HHB", data[pos + 5 : pos + 10])
            if frame_width == 0 or frame_height == 0:
                raise ImageRefused(f"GIF frame {len(frames) + 1} at byte {pos} is {frame_width}x{frame_height} pixels")
            if not (colours or frame_packed & 0x80):
                raise ImageRefused(f"GIF frame {len(frames) + 1} has no colour table (neither global nor local)")
            pos += 10 + (3 << ((frame_packed & 7) + 1) if frame_packed & 0x80 else 0)
            if pos >= len(data) or not 2 <= data[pos] <= 8:
                code_size = "missing" if pos >= len(data) else data[pos]
                raise ImageRefused(f"GIF frame {len(frames) + 1}'s LZW minimum code size is {code_size} (allowed: 2..8)")
            pos += 1
        else:
            raise ImageRefused(f"GIF has block 0x{block:02X} at byte {pos}; allowed: 0x21 (extension), 0x2C (image), 0x3B (trailer)")
        while pos < len(data) and data[pos]:  # data sub-blocks: a length byte, that many bytes; a zero length ends them
            pos += 1 + data[pos]
        if pos >= len(data):
            raise ImageRefused(f"GIF {'image' if block == 0x2C else 'extension'} block's data runs past the end of the file (truncated?)")
        pos += 1
        if block == 0x2C:
            frames.append((pos, frame_width, frame_height))
    if not frames:
        raise ImageRefused("GIF holds no image")
    return width, height, frames


def check_gif(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of a GIF's logical screen, its block sequence sound (gif_frames) and its decoded size within
    `max_pixels`: the decoder returns every frame at the screen's size, so frames x screen pixels count, and it holds
    every frame's pixels while decoding, so their sum counts too; else ImageRefused."""
    if len(data) >= 10:
        screen_width, screen_height = struct.unpack("<HH", data[6:10])
        check_size("GIF", screen_width, screen_height, max_pixels)
    width, height, frames = gif_frames(data)
    if len(frames) * width * height > max_pixels:
        raise ImageRefused(
            f"GIF holds {len(frames)} frames of a {width}x{height} screen = {len(frames) * width * height} pixels decoded, "
            f"over max_pixels={max_pixels} (a decompression bomb?)"
        )
    frame_pixels = sum(w * h for _, w, h in frames)
    if frame_pixels > max_pixels:
        raise ImageRefused(f"GIF's {len(frames)} frame(s) hold {frame_pixels} pixels in all, over max_pixels={max_pixels} (a decompression bomb?)")
    return width, height


def first_gif_frame(data: bytes) -> bytes:
    """A GIF's bytes cut after its first image and closed with a trailer: decoders return that frame as one (C, H, W)
    image, as PIL-based loaders do, and never hold the other frames."""
    return data[: gif_frames(data)[2][0][0]] + b"\x3b"


def check_webp(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of a WebP whose RIFF size fits the file and whose VP8 / VP8L / VP8X header is readable; else ImageRefused."""
    riff = int.from_bytes(data[4:8], "little")
    if len(data) < 30 or riff + 8 > len(data) or riff < 22:
        raise ImageRefused(f"WebP RIFF header claims {riff + 8} bytes but the file has {len(data)} (truncated?)")
    kind = data[12:16]
    if kind == b"VP8X":
        width, height = 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    elif kind == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    elif kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    else:
        raise ImageRefused(f"WebP has no readable VP8 / VP8L / VP8X header (first chunk {kind!r})")
    return check_size("WebP", width, height, max_pixels)
