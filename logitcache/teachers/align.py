"""Teachers with a tokenizer of their own: each chunk's text in the teacher's tokens, aligned with the student's
positions, and the teacher's vocabulary mapped onto the student's (docs/architecture.md, "Teachers with
other tokenizers").

For one chunk the student's tokens split into items: special tokens (BOS, EOS) and segments, the text
between them, whose exact bytes the data's text record gives (prepare.py, store/tokens.py). The teacher's
sequence is the items in order: a student special as the teacher's own (BOS to BOS, EOS to EOS; dropped
where the teacher has none), each segment as the teacher's tokenizer encodes that text, and the teacher's
BOS in front of every segment that starts the chunk or follows a special, where the teacher's template
adds one and the teacher's BOS is not already there.

Alignment: a position of either sequence has consumed some of the chunk's content: bytes of text and
student specials. A student position t is aligned with the last teacher position that consumed exactly
the same (its tokens spell the chunk's bytes up to the same byte, and the same specials). A teacher token
that does not spell its text (a lowercasing normalizer, <unk>) ends the teacher's aligned positions in
that segment; a position inside a UTF-8 character is never aligned. There, the teacher's next-token
distribution is the teacher's target for t.

Mapping: a teacher id goes to the student id whose token decodes to exactly the same bytes (EOS to EOS,
BOS to BOS); right before a segment whose teacher tokens carry the teacher's prefix space (Metaspace's ▁,
which stands for no text at a document start), the teacher token's bytes without that space. Teacher ids
with no student counterpart map to none: their mass is the cache's tail.
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.tokenizer import adds_prefix_space, find_tokenizer, special_ids, token_byte_table
from ..errors import LogitcacheError

log = logging.getLogger(__name__)

_BYTE_PIECE = __import__("re").compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass(frozen=True)
class Vocabulary:
    """What alignment needs of one tokenizer: every id's bytes (None: a special or an id without text),
    whether encoding prepends a space, its BOS and EOS, and whether its template puts BOS in front."""

    tokenizer: object  # tokenizers.Tokenizer
    bytes_of: tuple  # (V,) bytes | None
    prefix_space: bool
    bos: int | None
    eos: int | None
    adds_bos: bool

    @property
    def size(self) -> int:
        return len(self.bytes_of)

    @functools.cached_property
    def specials(self) -> frozenset[int]:
        return frozenset(i for i, b in enumerate(self.bytes_of) if b is None)


def vocabulary(tokenizer, specials: dict) -> Vocabulary:
    """The Vocabulary of a `tokenizers` Tokenizer with its {"bos", "eos"} ids (tokenizer.special_ids)."""
    spec = json.loads(tokenizer.to_str())
    bos = specials.get("bos")
    adds_bos = bos is not None and tokenizer.encode("a", add_special_tokens=True).ids[:1] == [bos]
    return Vocabulary(tokenizer, tuple(token_byte_table(tokenizer)), adds_prefix_space(spec), bos,
                      specials.get("eos"), adds_bos)


def folder_vocabulary(folder: Path) -> Vocabulary:
    """The Vocabulary of a teacher folder's own tokenizer."""
    tokenizer = find_tokenizer(folder)
    if tokenizer is None:
        raise LogitcacheError(f"{folder} has no tokenizer")
    return vocabulary(tokenizer, special_ids(tokenizer, folder))


# --- the id map ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IdMap:
    """Teacher id -> student id (-1: no counterpart), for mid-text positions and for positions right before a
    segment whose teacher tokens carry the teacher's prefix space."""

    mid: np.ndarray  # (V_teacher,) int64
    start: np.ndarray  # (V_teacher,) int64

    def layers(self, which: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """The map as injective layers [(teacher ids, student ids)]: layer k holds the k-th teacher id of every
        student id several teacher ids map to, so each layer is one scatter with unique targets (exact and
        deterministic on every device, unlike an atomic scatter-add)."""
        target = self.mid if which == "mid" else self.start
        teacher = np.flatnonzero(target >= 0)
        student = target[teacher]
        order = np.lexsort((teacher, student))  # by student id, then teacher id
        teacher, student = teacher[order], student[order]
        first = np.ones(len(student), dtype=bool)
        first[1:] = student[1:] != student[:-1]
        rank = np.arange(len(student)) - np.maximum.accumulate(np.where(first, np.arange(len(student)), 0))
        return [(teacher[rank == k], student[rank == k]) for k in range(int(rank.max(initial=-1)) + 1)]


def _start_text(token: bytes, prefix_space: bool) -> bytes:
    return token[1:] if prefix_space and token[:1] == b" " else token


def _student_lookup(student: Vocabulary, at_start: bool) -> dict[bytes, int]:
    """bytes -> the student id that spells them: the token the student's tokenizer itself emits, so a
    whole piece before a byte-fallback <0xNN> of the same byte, and at a segment start one with the prefix
    space before one without; then the lowest id."""
    best: dict[bytes, tuple] = {}
    for token_id, raw in enumerate(student.bytes_of):
        if raw is None:
            continue
        text = _start_text(raw, student.prefix_space) if at_start else raw
        if not text:
            continue
        token = student.tokenizer.id_to_token(token_id) or ""
        rank = (bool(_BYTE_PIECE.fullmatch(token)), not (at_start and text != raw), token_id)
        if text not in best or rank < best[text]:
            best[text] = rank
    return {text: rank[-1] for text, rank in best.items()}


def id_map(teacher: Vocabulary, student: Vocabulary) -> IdMap:
    """Teacher ids onto student ids by exact byte equality (EOS to EOS, BOS to BOS)."""
    maps = []
    for at_start in (False, True):
        lookup = _student_lookup(student, at_start)
        out = np.full(teacher.size, -1, dtype=np.int64)
        for token_id, raw in enumerate(teacher.bytes_of):
            if raw is not None:
                text = _start_text(raw, teacher.prefix_space) if at_start else raw
                out[token_id] = lookup.get(text, -1)
        for ours, theirs in ((student.eos, teacher.eos), (student.bos, teacher.bos)):
            if ours is not None and theirs is not None:
                out[theirs] = ours
        maps.append(out)
    return IdMap(*maps)


# --- one chunk ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChunkAlignment:
    teacher_ids: np.ndarray  # (L,) int64: the chunk in the teacher's tokens
    position: np.ndarray  # (T,) int64: the teacher position aligned with student position t; -1: none
    at_start: np.ndarray  # (T,) bool: that teacher position precedes a segment carrying the prefix space


def _is_continuation(text: bytes, at: int) -> bool:
    return at < len(text) and 0x80 <= text[at] < 0xC0


def whole_characters(text: bytes, start: int, stop: int) -> tuple[int, int]:
    """[start, stop) shrunk to whole UTF-8 characters: a chunk edge can cut one (byte-level tokens)."""
    while start < stop and _is_continuation(text, start):
        start += 1
    lead = stop - 1  # the first byte of the last character
    while lead > start and _is_continuation(text, lead) and stop - lead <= 3:
        lead -= 1
    if lead >= start and text[lead] >= 0xC0:
        width = 2 if text[lead] < 0xE0 else 3 if text[lead] < 0xF0 else 4
        if stop - lead < width:
            stop = lead
    return start, stop


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    x, y = np.frombuffer(a, np.uint8, n), np.frombuffer(b, np.uint8, n)
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if len(diff) else n


def segment_ends(teacher: Vocabulary, ids: list[int], text: bytes) -> tuple[np.ndarray, bool]:
    """Where each of a segment's teacher tokens ends in its bytes (-1: the tokens up to it do not spell the
    text there, or it ends inside a character), and whether the first token's prefix space was no text."""
    pieces = [teacher.bytes_of[i] if 0 <= i < teacher.size else None for i in ids]
    spelled = len(pieces) if None not in pieces else pieces.index(None)
    stream = b"".join(pieces[:spelled])
    stripped = (teacher.prefix_space and stream[:1] == b" "
                and _common_prefix(stream[1:], text) > _common_prefix(stream, text))
    lengths = np.array([len(p) for p in pieces[:spelled]], dtype=np.int64)
    if stripped:
        lengths[0] -= 1
        stream = stream[1:]
    matched = _common_prefix(stream, text)
    ends = np.full(len(ids), -1, dtype=np.int64)
    cum = np.cumsum(lengths)
    good = cum <= matched
    good &= np.array([not _is_continuation(text, int(c)) for c in cum], dtype=bool)
    ends[:spelled][good] = cum[good]
    return ends, stripped


def align_chunk(tokens: np.ndarray, text: bytes, token_ends: np.ndarray, student: Vocabulary,
                teacher: Vocabulary, encode, max_len: int) -> ChunkAlignment:
    """One chunk: `tokens` (T,) student ids, `text` the chunk's bytes, `token_ends` (T,) each token's end in
    them; `encode(list of str) -> list of id lists` the teacher's tokenizer without specials. Teacher
    positions past `max_len` (the teacher's context) are cut off, unaligned."""
    items = _items(tokens, token_ends, student.specials)
    segments = []
    for kind, a, b in items:
        if kind == "text":
            lo, hi = whole_characters(text, a, b)
            segments.append((lo, text[lo:hi]))
    encoded = encode([seg.decode("utf-8", errors="strict") for _, seg in segments])
    teacher_ids: list[int] = []
    keys: list[tuple | None] = []  # per teacher position: (bytes consumed, specials consumed) or None
    starts: list[bool] = []
    n_specials, consumed, seg_index = 0, 0, 0
    translate = {student.bos: teacher.bos, student.eos: teacher.eos}
    for kind, a, b in items:
        if kind == "special":
            n_specials += 1
            consumed = b
            theirs = translate.get(int(tokens[a]))
            if theirs is None:  # the teacher has no such token: the position before it consumes it too
                if keys and keys[-1] == (consumed, n_specials - 1):
                    keys[-1] = (consumed, n_specials)
                continue
            teacher_ids.append(theirs)
            keys.append((consumed, n_specials))
            starts.append(False)
            continue
        offset, seg = segments[seg_index]
        ids = list(encoded[seg_index])
        seg_index += 1
        # every segment starts the chunk or follows a special: the teacher's template puts its BOS there
        if teacher.adds_bos and (not teacher_ids or teacher_ids[-1] != teacher.bos):
            keys.append((consumed, n_specials) if teacher_ids else None)  # at the chunk start: consumed nothing
            teacher_ids.append(teacher.bos)
            starts.append(False)
        ends, stripped = segment_ends(teacher, ids, seg)
        if stripped and teacher_ids:
            starts[-1] = True
        for token_id, end in zip(ids, ends):
            teacher_ids.append(token_id)
            keys.append((offset + int(end), n_specials) if end >= 0 else None)
            starts.append(False)
        consumed = b
    return _match(tokens, token_ends, student.specials, np.array(teacher_ids[:max_len], dtype=np.int64),
                  keys[:max_len], starts[:max_len])


def _items(tokens: np.ndarray, token_ends: np.ndarray, specials: frozenset) -> list[tuple[str, int, int]]:
    """The chunk as [("special", t, byte) | ("text", start byte, end byte)] in order."""
    items, begin, seg_start = [], 0, None
    for t, token in enumerate(tokens.tolist()):
        end = int(token_ends[t])
        if token in specials:
            if seg_start is not None and begin > seg_start:
                items.append(("text", seg_start, begin))
            seg_start = None
            items.append(("special", t, end))
        elif seg_start is None:
            seg_start = begin
        begin = end
    if seg_start is not None and begin > seg_start:
        items.append(("text", seg_start, begin))
    return items


def _match(tokens, token_ends, specials, teacher_ids, keys, starts) -> ChunkAlignment:
    last = {key: j for j, key in enumerate(keys) if key is not None}  # the last teacher position per key
    position = np.full(len(tokens), -1, dtype=np.int64)
    at_start = np.zeros(len(tokens), dtype=bool)
    n_specials, previous = 0, 0
    for t, token in enumerate(tokens.tolist()):
        end = int(token_ends[t])
        if token in specials:
            n_specials += 1
        elif end == previous:  # a zero-width piece inside a character: no boundary
            continue
        previous = end
        j = last.get((end, n_specials), -1)
        position[t] = j
        at_start[t] = j >= 0 and starts[j]
    return ChunkAlignment(teacher_ids, position, at_start)


# --- every chunk of a dump --------------------------------------------------------------------------------------------

class ChunkTexts:
    """The chunks a dump caches (cache row r = split row `rows[r]`) with their exact bytes and token ends."""

    def __init__(self, store, split: str, rows: np.ndarray, seq_len: int):
        self.text, self.ends = store.split_text(split)  # (n_bytes,) uint8, (N * T,) int64
        self.rows = np.asarray(rows, dtype=np.int64)
        self.seq_len = seq_len

    def chunk(self, cache_row: int) -> tuple[bytes, np.ndarray]:
        """(the chunk's bytes, its tokens' ends in them (T,))."""
        row, t = int(self.rows[cache_row]), self.seq_len
        first = row * t
        start = int(self.ends[first - 1]) if first > 0 else 0
        ends = self.ends[first:first + t] - start
        return self.text[start:start + int(ends[-1])].tobytes(), ends


class Aligner:
    """One different-tokenizer teacher against the data: the id map, and alignments of any cache rows."""

    def __init__(self, teacher: Vocabulary, student: Vocabulary, texts: ChunkTexts, max_len: int):
        self.teacher, self.student, self.texts, self.max_len = teacher, student, texts, max_len
        self.map = id_map(teacher, student)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.teacher.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def align(self, cache_rows: np.ndarray, tokens: np.ndarray) -> list[ChunkAlignment]:
        """Alignments of cache rows `cache_rows` whose student tokens are `tokens` (n, T)."""
        out = []
        for row, chunk_tokens in zip(np.asarray(cache_rows).tolist(), tokens):
            text, ends = self.texts.chunk(row)
            out.append(align_chunk(np.asarray(chunk_tokens, dtype=np.int64), text, ends, self.student, self.teacher,
                                   self._encode, self.max_len))
        return out
