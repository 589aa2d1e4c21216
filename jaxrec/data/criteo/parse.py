"""The Criteo click-log format, parsed a block of lines at a time with vectorised numpy.

One example per line, 40 tab-separated fields: the label (0 or 1), 13 integer features I1..I13
(decimal, possibly negative, empty when missing) and 26 categorical features C1..C26 (8 hex
digits, empty when missing). The Kaggle `train.txt` and the Terabyte `day_0 .. day_23` use it.

Why numpy instead of a CSV reader: every field of a block is located at once from the tab and
newline positions, and the fixed-width categories and short integers are decoded through strided
views of the bytes, so no Python code runs per line or per field. A line that breaks the format
is found the same way; `describe_bad_line` then says what is wrong with it, in Python, for that
one line only.

Legend: n lines of the block, I = 13 integer features, C = 26 categorical features.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NUM_INT, NUM_CAT = 13, 26
NUM_FIELDS = 1 + NUM_INT + NUM_CAT
CAT_WIDTH = 8  # hex digits of a category
INT_WIDTH = 12  # integer fields have at most INT_WIDTH - 1 digits (Criteo's have <= 10)
_HEX = np.full(256, 255, np.uint8)
for _digit, _char in enumerate(b"0123456789abcdef"):
    _HEX[_char] = _HEX[bytes([_char]).upper()[0]] = _digit
_POW10 = 10 ** np.arange(INT_WIDTH, dtype=np.int64)
_HIGH_BITS = np.uint64(0x8080808080808080)
_LOW_NIBBLES, _LOW_BYTES = np.uint64(0x000F000F000F000F), np.uint64(0x000000FF000000FF)
_ONES, _LOW4 = np.uint64(0x0101010101010101), np.uint64(0x0F0F0F0F0F0F0F0F)
_U4, _U5, _U6, _U7, _U8, _U16 = (np.uint64(k) for k in (4, 5, 6, 7, 8, 16))


@dataclasses.dataclass(frozen=True)
class ParsedLines:
    """The well-formed lines of a block, in order, and where the malformed ones were."""

    label: np.ndarray  # uint8 [n]: 0 or 1
    ints: np.ndarray  # int64 [n, I]: 0 where missing
    cats: np.ndarray  # uint32 [n, C]: the hex value; 0 where missing
    cat_missing: np.ndarray  # bool [n, C]
    line: np.ndarray  # int64 [n]: each good line's index in the block
    bad_lines: np.ndarray  # int64 [k]: indices in the block of the malformed lines

    def __len__(self) -> int:
        return len(self.label)


def dense_features(ints_ni: np.ndarray) -> np.ndarray:
    """float32 [n, I]: log(1 + max(x, 0)), missing already 0 (DLRM's transform)."""
    return np.log1p(np.maximum(ints_ni, 0).astype(np.float64)).astype(np.float32)


def parse_lines(buf: bytes) -> ParsedLines:
    """Parse `buf`: whole lines, each ending with b"\\n" (a "\\r" before it is dropped)."""
    pad = b"\0" * INT_WIDTH
    data = np.frombuffer(pad + buf + pad, np.uint8)  # padding keeps every window in range
    body = data[INT_WIDTH : INT_WIDTH + len(buf)]
    line_end = np.flatnonzero(body == 10) + INT_WIDTH
    num_lines = len(line_end)
    line_start = np.r_[INT_WIDTH, line_end[:-1] + 1][:num_lines]
    crlf = (line_end > line_start) & (data[line_end - 1] == 13)
    tabs = np.flatnonzero(body == 9) + INT_WIDTH
    tabs_per_line = np.diff(np.r_[0, np.searchsorted(tabs, line_end)])
    good = tabs_per_line == NUM_FIELDS - 1
    good_tabs = tabs[np.repeat(good, tabs_per_line)].reshape(-1, NUM_FIELDS - 1)
    starts = np.concatenate([line_start[good, None], good_tabs + 1], axis=1)  # [n, 40]
    ends = np.concatenate([good_tabs, (line_end - crlf)[good, None]], axis=1)

    label_ok = (ends[:, 0] - starts[:, 0] == 1) & ((data[starts[:, 0]] == 48) | (data[starts[:, 0]] == 49))
    ints, ints_ok = _parse_ints(data, starts[:, 1 : 1 + NUM_INT], ends[:, 1 : 1 + NUM_INT])
    cats, cat_missing, cats_ok = _parse_cats(data, starts[:, 1 + NUM_INT :], ends[:, 1 + NUM_INT :])
    ok = label_ok & ints_ok & cats_ok
    good_index = np.flatnonzero(good)
    bad = np.sort(np.r_[np.flatnonzero(~good), good_index[~ok]])
    return ParsedLines(
        (data[starts[ok, 0]] - 48).astype(np.uint8), ints[ok], cats[ok], cat_missing[ok], good_index[ok], bad
    )


def _parse_ints(data, starts_ni, ends_ni):
    """(int64 [n, I] values, bool [n] every field empty or an optional '-' and 1+ digits).

    Each field is read through a window of INT_WIDTH bytes ending where it ends, so digit k of
    the window always has place value 10^(INT_WIDTH - 1 - k): one dot product per field."""
    negative = data[starts_ni] == 45
    num_digits = ends_ni - starts_ni - negative
    window = np.lib.stride_tricks.sliding_window_view(data, INT_WIDTH)[ends_ni - INT_WIDTH]  # [n, I, W]
    in_field = np.arange(INT_WIDTH) >= INT_WIDTH - np.minimum(num_digits, INT_WIDTH - 1)[..., None]
    digits = np.where(in_field, window - np.uint8(48), np.uint8(0))
    fields_ok = ((num_digits == 0) & ~negative) | (
        (num_digits > 0) & (num_digits < INT_WIDTH) & ~np.any(digits > 9, axis=-1)
    )
    values = (digits @ _POW10[::-1].astype(np.float64)).astype(np.int64)
    return np.where(negative, -values, values), np.all(fields_ok, axis=1)


def _parse_cats(data, starts_nc, ends_nc):
    """(uint32 [n, C] values, bool [n, C] missing, bool [n] every field empty or 8 hex digits).

    Each field's 8 bytes are read as one little-endian uint64 and decoded in place (SWAR: every
    step works on all 8 bytes at once): a byte's nibble is its low 4 bits, plus 9 for letters
    (bit 6 set). A field is valid when every nibble is below 16 and rendering the nibbles back
    as hex gives the field's bytes again (letters in either case)."""
    raw = np.ndarray((len(data) - 7,), np.dtype("<u8"), data.data, 0, (1,))[starts_nc]  # [n, C]
    letter = (raw >> _U6) & _ONES
    nibbles = (raw & _LOW4) + letter * np.uint64(9)
    at_least_10 = ((nibbles + _ONES * np.uint64(0x76)) >> _U7) & _ONES
    rendered = nibbles + _ONES * np.uint64(0x30) + at_least_10 * np.uint64(0x27)
    missing = ends_nc == starts_nc
    valid = ((nibbles + _ONES * np.uint64(0x70)) & _HIGH_BITS == 0) & ((raw | (at_least_10 << _U5)) == rendered)
    fields_ok = missing | ((ends_nc - starts_nc == CAT_WIDTH) & valid)
    x = ((nibbles & _LOW_NIBBLES) << _U4) | ((nibbles >> _U8) & _LOW_NIBBLES)  # 16-bit lanes: 2 digits
    x = ((x & _LOW_BYTES) << _U8) | ((x >> _U16) & _LOW_BYTES)  # 32-bit lanes: 4 digits
    values = ((x & np.uint64(0xFFFF)) << _U16) | ((x >> np.uint64(32)) & np.uint64(0xFFFF))
    return np.where(missing, 0, values).astype(np.uint32), missing, np.all(fields_ok, axis=1)


def describe_bad_line(line: bytes) -> str:
    """What is wrong with one line of the format, in words (the first problem found)."""
    fields = line.rstrip(b"\n").removesuffix(b"\r").split(b"\t")
    if len(fields) != NUM_FIELDS:
        return f"expected {NUM_FIELDS} tab-separated fields (label, I1..I13, C1..C26), found {len(fields)}"
    if fields[0] not in (b"0", b"1"):
        return f"label {_show(fields[0])} is not 0 or 1"
    for k, value in enumerate(fields[1 : 1 + NUM_INT]):
        digits = value.removeprefix(b"-")
        if value and not (digits.isdigit() and digits.isascii() and len(digits) < INT_WIDTH):
            return f"integer feature I{k + 1} {_show(value)} is not an integer of at most {INT_WIDTH - 1} digits"
    for k, value in enumerate(fields[1 + NUM_INT :]):
        if value and not (len(value) == CAT_WIDTH and all(_HEX[c] != 255 for c in value)):
            return f"categorical feature C{k + 1} {_show(value)} is not {CAT_WIDTH} hex digits"
    return "malformed line"


def _show(value: bytes) -> str:
    return repr(value.decode("utf-8", "replace")[:40])
