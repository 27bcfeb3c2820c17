"""Teachers with a tokenizer of their own: each chunk's text in the teacher's tokens, aligned with the student's
positions, the teacher's vocabulary mapped onto the student's, and a check of both at every aligned position
(docs/architecture.md, "Teachers with other tokenizers").

For one chunk the student's tokens split into items: document markers (the student's BOS and EOS) and
segments, the text between them, whose exact bytes the data's text record gives (prepare.py,
store/tokens.py). Any other student token (an `<unk>`) is text: it covers the characters it replaced, and
the teachers read them. The teacher's sequence is the items in order: a student marker as the teacher's own
(BOS to BOS, EOS to EOS; dropped where the teacher has none, and a BOS right after an EOS dropped where the
teacher's BOS and EOS are one token, as GPT-2's `<|endoftext|>`: such a teacher reads one token between
documents, as it was trained), each segment as the teacher's tokenizer encodes that text (special-token
parsing off: text that spells `<|endoftext|>` is text), and the teacher's BOS in front of every segment that
starts the chunk or follows a marker, where the teacher's template adds one and the teacher's BOS is not
already there.

Alignment: a position of either sequence has consumed some of the chunk's content: bytes of text and
markers. A student position t is aligned with the last teacher position j that consumed exactly the same
(its tokens spell the chunk's bytes up to the same byte, and the same markers), provided the teacher's own
next token j+1 spells the text that follows too: a position before a token that does not spell its text (a
normalised span: NFC, NFKC ligatures, an lstrip token, lowercasing; a teacher `<unk>`) is masked and counted
(`ChunkAlignment.masked`), and the teacher's aligned positions in that segment end there. A position inside a
UTF-8 character is never aligned. There, the teacher's next-token distribution is the teacher's target for t.

Mapping: a teacher id goes to the student id whose token decodes to exactly the same bytes (EOS to EOS, BOS
to BOS; a teacher whose BOS is its EOS to the student's EOS). Right before a segment, where a tokenizer puts
a prefix space that is no text (Metaspace's ▁, ByteLevel's add_prefix_space), the bytes compared leave that
space out, on each side that has it: map `kind` bit 1 for the teacher, bit 2 for the student (`IdMap`).
Teacher ids with no student counterpart map to none: their mass is the cache's tail.

The self-check (`check_alignment`): at every aligned position (i) the teacher's next token spells the next
bytes of the text (a marker: the student's next token is the same marker), and (ii) where it has exactly the
bytes of the student's next token (markers: EOS to EOS), the id map sends it to that student id.
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.tokenizer import adds_prefix_space, find_tokenizer, special_ids, token_byte_table
from ..errors import LogitcacheError

log = logging.getLogger(__name__)

_BYTE_PIECE = __import__("re").compile(r"<0x[0-9A-Fa-f]{2}>")
KINDS = 4  # map kinds: bit 1 the teacher's prefix space is no text here, bit 2 the student's


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
    def markers(self) -> frozenset[int]:
        """The document markers: BOS and EOS (the only tokens that end or start a teacher's document)."""
        return frozenset(i for i in (self.bos, self.eos) if i is not None)


def vocabulary(tokenizer, specials: dict) -> Vocabulary:
    """The Vocabulary of a `tokenizers` Tokenizer with its {"bos", "eos"} ids (tokenizer.special_ids)."""
    spec = json.loads(tokenizer.to_str())
    bos = specials.get("bos")
    adds_bos = bos is not None and tokenizer.encode("a", add_special_tokens=True).ids[:1] == [bos]
    return Vocabulary(tokenizer, tuple(token_byte_table(tokenizer, spec)), adds_prefix_space(spec), bos,
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
    """Teacher id -> student id (-1: no counterpart) per map kind: kind 0 mid-text; bit 1: right before a
    segment whose first teacher token carries the teacher's prefix space (no text); bit 2: right before a
    segment whose first student token carries the student's prefix space."""

    maps: np.ndarray  # (KINDS, V_teacher) int64

    @property
    def mid(self) -> np.ndarray:
        return self.maps[0]

    def layers(self, kind: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The map as injective layers [(teacher ids, student ids)]: layer k holds the k-th teacher id of every
        student id several teacher ids map to, so each layer is one scatter with unique targets (exact and
        deterministic on every device, unlike an atomic scatter-add)."""
        target = self.maps[kind]
        teacher = np.flatnonzero(target >= 0)
        student = target[teacher]
        order = np.lexsort((teacher, student))  # by student id, then teacher id
        teacher, student = teacher[order], student[order]
        first = np.ones(len(student), dtype=bool)
        first[1:] = student[1:] != student[:-1]
        rank = np.arange(len(student)) - np.maximum.accumulate(np.where(first, np.arange(len(student)), 0))
        return [(teacher[rank == k], student[rank == k]) for k in range(int(rank.max(initial=-1)) + 1)]


def _unprefixed(token: bytes | None, strip: bool) -> bytes | None:
    """A token's text where its leading space is the tokenizer's prefix (no text): without it; None for a token
    that cannot come first there (no leading space, or nothing after it)."""
    if token is None or not strip:
        return token
    return token[1:] if token[:1] == b" " and len(token) > 1 else None


def _student_lookup(student: Vocabulary, strip: bool) -> dict[bytes, int]:
    """bytes -> the student id that spells them: the token the student's tokenizer itself emits, so a whole
    piece before a byte-fallback <0xNN> of the same byte; then the lowest id. `strip`: right before a segment
    whose first token carries the student's prefix space: only tokens with that space, compared without it."""
    best: dict[bytes, tuple] = {}
    for token_id, raw in enumerate(student.bytes_of):
        text = _unprefixed(raw, strip)
        if not text:
            continue
        rank = (bool(_BYTE_PIECE.fullmatch(student.tokenizer.id_to_token(token_id) or "")), token_id)
        if text not in best or rank < best[text]:
            best[text] = rank
    return {text: rank[-1] for text, rank in best.items()}


def marker_map(teacher: Vocabulary, student: Vocabulary) -> dict[int, int]:
    """Teacher marker id -> student marker id: EOS to EOS, BOS to BOS; a teacher whose BOS is its EOS
    (GPT-2's <|endoftext|>) predicts the end of a text with it: to the student's EOS (BOS without one)."""
    out = {}
    if teacher.bos is not None and student.bos is not None:
        out[teacher.bos] = student.bos
    if teacher.eos is not None and student.eos is not None:
        out[teacher.eos] = student.eos
    return out


def id_map(teacher: Vocabulary, student: Vocabulary) -> IdMap:
    """Teacher ids onto student ids by exact byte equality per map kind (markers by marker_map)."""
    maps = np.full((KINDS, teacher.size), -1, dtype=np.int64)
    lookups = {}
    for kind in range(KINDS):
        t_strip, s_strip = bool(kind & 1), bool(kind & 2)
        if (t_strip and not teacher.prefix_space) or (s_strip and not student.prefix_space):
            maps[kind] = maps[kind & ~1 if t_strip and not teacher.prefix_space else kind & ~2]
            continue  # a kind that never occurs: the same as the one without that bit
        lookup = lookups.setdefault(s_strip, _student_lookup(student, s_strip))
        out = maps[kind]
        for token_id, raw in enumerate(teacher.bytes_of):
            text = _unprefixed(raw, t_strip)
            if text is not None:
                out[token_id] = lookup.get(text, -1)
        for theirs, ours in marker_map(teacher, student).items():
            out[theirs] = ours
    return IdMap(maps)


# --- one chunk ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChunkAlignment:
    teacher_ids: np.ndarray  # (L,) int64: the chunk in the teacher's tokens
    position: np.ndarray  # (T,) int64: the teacher position aligned with student position t; -1: none
    kind: np.ndarray  # (T,) int64: the map kind there (IdMap)
    masked: int = 0  # positions left unaligned because the teacher's next token does not spell the text
    teacher_kind: np.ndarray = field(default=None, compare=False)  # (L,) the map kind after each teacher position


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


def segment_ends(teacher: Vocabulary, ids: list[int], text: bytes) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per teacher token of a segment: where it ends in the segment's bytes (-1: the tokens up to it do not
    spell the text there, or it ends inside a character), whether it spells its own bytes of the text, and
    whether the first token's prefix space was no text."""
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
    cum = np.cumsum(lengths)
    spells = np.zeros(len(ids), dtype=bool)
    spells[:spelled] = cum <= matched
    ends = np.full(len(ids), -1, dtype=np.int64)
    good = spells[:spelled] & np.array([not _is_continuation(text, int(c)) for c in cum], dtype=bool)
    ends[:spelled][good] = cum[good]
    return ends, spells, stripped


def _student_strips(student: Vocabulary, token: int, piece: bytes) -> bool:
    """Whether the student token that starts a segment carries the student's prefix space as no text: its bytes
    are a space and then the text it covers (`piece`, from the record)."""
    raw = student.bytes_of[token] if 0 <= token < student.size else None
    return student.prefix_space and raw is not None and raw[:1] == b" " and raw[1:] == piece


def align_chunk(tokens: np.ndarray, text: bytes, token_ends: np.ndarray, student: Vocabulary,
                teacher: Vocabulary, encode, max_len: int) -> ChunkAlignment:
    """One chunk: `tokens` (T,) student ids, `text` the chunk's bytes, `token_ends` (T,) each token's end in
    them; `encode(list of str) -> list of id lists` the teacher's tokenizer without specials. Teacher
    positions past `max_len` (the teacher's context) are cut off, unaligned."""
    items = _items(tokens, token_ends, student.markers)
    segments = []
    for kind, a, b, _ in items:
        if kind == "text":
            lo, hi = whole_characters(text, a, b)
            segments.append((lo, text[lo:hi]))
    encoded = encode([seg.decode("utf-8", errors="strict") for _, seg in segments])
    teacher_ids: list[int] = []
    keys: list[tuple | None] = []  # per teacher position: (bytes consumed, markers consumed) or None
    spells: list[bool] = []  # per teacher position: its token spells what it reads
    kinds: list[int] = []  # per teacher position: the map kind for its next token
    n_markers, consumed, seg_index = 0, 0, 0
    translate = {student.bos: teacher.bos, student.eos: teacher.eos}
    one_marker = teacher.bos is not None and teacher.bos == teacher.eos

    def add(token_id, key, ok=True, kind=0):
        teacher_ids.append(token_id)
        keys.append(key)
        spells.append(ok)
        kinds.append(kind)

    for kind, a, b, first in items:
        if kind == "special":
            n_markers += 1
            consumed = b
            theirs = translate.get(int(tokens[a]))
            # the teacher has no such token, or reads one <|endoftext|> between documents: the position
            # before it consumes it too
            if theirs is None or (one_marker and theirs == teacher.bos and teacher_ids and teacher_ids[-1] == theirs
                                  and keys[-1] == (consumed, n_markers - 1)):
                if keys and keys[-1] == (consumed, n_markers - 1):
                    keys[-1] = (consumed, n_markers)
                continue
            add(theirs, (consumed, n_markers))
            continue
        offset, seg = segments[seg_index]
        ids = list(encoded[seg_index])
        seg_index += 1
        # every segment starts the chunk or follows a marker: the teacher's template puts its BOS there
        if teacher.adds_bos and (not teacher_ids or teacher_ids[-1] != teacher.bos):
            add(teacher.bos, (consumed, n_markers) if teacher_ids else None)  # at the chunk start: consumed nothing
        ends, ok, stripped = segment_ends(teacher, ids, seg)
        s_strip = 2 * (offset == a and _student_strips(student, int(tokens[first]), text[a:int(token_ends[first])]))
        if teacher_ids:
            kinds[-1] = int(stripped) | s_strip
        for token_id, end, spelled in zip(ids, ends, ok):
            # a teacher token that spells nothing of the text (its prefix space alone): its next token starts
            # the text, where the student's prefix space still counts
            add(token_id, (offset + int(end), n_markers) if end >= 0 else None, bool(spelled),
                s_strip if end == 0 and spelled else 0)
        consumed = b
    cut = min(len(teacher_ids), max_len)
    return _match(tokens, token_ends, student.markers, np.array(teacher_ids[:cut], dtype=np.int64), keys[:cut],
                  spells[:cut], np.array(kinds[:cut], dtype=np.int64))


def _items(tokens: np.ndarray, token_ends: np.ndarray, markers: frozenset) -> list[tuple[str, int, int, int]]:
    """The chunk as [("special", t, byte, t) | ("text", start byte, end byte, first token)] in order."""
    items, begin, seg_start, first = [], 0, None, 0
    for t, token in enumerate(tokens.tolist()):
        end = int(token_ends[t])
        if token in markers:
            if seg_start is not None:
                items.append(("text", seg_start, begin, first))
            seg_start = None
            items.append(("special", t, end, t))
        elif seg_start is None:
            seg_start, first = begin, t
        begin = end
    if seg_start is not None:  # zero-width (a prefix ▁ at the chunk's end) too: what follows starts a document
        items.append(("text", seg_start, begin, first))
    return items


def _match(tokens, token_ends, markers, teacher_ids, keys, spells, kinds) -> ChunkAlignment:
    last = {key: j for j, key in enumerate(keys) if key is not None}  # the last teacher position per key
    length = len(teacher_ids)
    position = np.full(len(tokens), -1, dtype=np.int64)
    kind = np.zeros(len(tokens), dtype=np.int64)
    n_markers, previous, masked = 0, 0, 0
    for t, token in enumerate(tokens.tolist()):
        end = int(token_ends[t])
        if token in markers:
            n_markers += 1
        elif end == previous:  # a zero-width piece: no boundary of its own
            continue
        previous = end
        j = last.get((end, n_markers), -1)
        if j >= 0 and j + 1 < length and not spells[j + 1]:  # the teacher's next token does not spell the text
            masked += 1
            continue
        position[t] = j
        kind[t] = kinds[j] if j >= 0 else 0
    return ChunkAlignment(teacher_ids, position, kind, masked, kinds)


# --- the self-check -------------------------------------------------------------------------------------------------

def check_alignment(a: ChunkAlignment, tokens: np.ndarray, text: bytes, token_ends: np.ndarray,
                    student: Vocabulary, teacher: Vocabulary, maps: np.ndarray) -> tuple[int, list[tuple[int, str]]]:
    """(aligned positions checked, violations [(student position, what)]) of one chunk's alignment: at each
    aligned position t with teacher position j, (i) the teacher's next token j+1 spells the text after t's
    end (a teacher marker: the student's next token is the marker it stands for), (ii) where that token has
    exactly the bytes of the student's next token (markers: EOS to EOS, BOS to BOS), the id map of the
    position's kind sends it to that student id. Written from the definitions, not from align_chunk."""
    bad: list[tuple[int, str]] = []
    length, n_tokens = len(a.teacher_ids), len(tokens)
    checked = 0
    for t in np.flatnonzero(a.position >= 0).tolist():
        j = int(a.position[t])
        if j + 1 >= length:  # the teacher's last token: its next token lies past the chunk, nothing to check
            continue
        checked += 1
        u, kind = int(a.teacher_ids[j + 1]), int(a.kind[t])
        s = int(tokens[t + 1]) if t + 1 < n_tokens else None
        theirs = teacher.bytes_of[u] if 0 <= u < teacher.size else None
        if theirs is None:  # (i) a teacher marker predicts the student's next marker, the one it stands for
            stands_for = {student.eos if u == teacher.eos else None, student.bos if u == teacher.bos else None}
            if s is None or s not in stands_for - {None}:
                bad.append((t, f"teacher token {u} (a special) where the student's next token is {s}"))
            elif (u == teacher.eos and s == student.eos or u == teacher.bos != teacher.eos) and maps[kind][u] != s:
                bad.append((t, f"teacher marker {u} maps to {maps[kind][u]}, not the student's {s}"))  # (ii)
            continue
        spelled = _unprefixed(theirs, bool(kind & 1))
        end = int(token_ends[t])
        if spelled is None or text[end:end + len(spelled)] != spelled or (s is not None and s in student.markers):
            bad.append((t, f"teacher token {u} {theirs!r} does not spell the text {text[end:end + 8]!r} at byte {end}"))
            continue
        ours = None if s is None else _unprefixed(student.bytes_of[s], bool(kind & 2))
        if ours is not None and ours == spelled and maps[kind][u] != s:  # (ii)
            bad.append((t, f"teacher token {u} {theirs!r} maps to {maps[kind][u]}, not the student's {s} {ours!r}"))
    return checked, bad


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


class AlignmentError(LogitcacheError):
    """The self-check found an aligned position whose target is not the teacher's prediction of the text."""


class Aligner:
    """One different-tokenizer teacher against the data: the id map, alignments of any cache rows, and the
    self-check of each alignment (`checked`, `violations`: counts over every chunk aligned here)."""

    def __init__(self, teacher: Vocabulary, student: Vocabulary, texts: ChunkTexts, max_len: int, name: str = "teacher"):
        self.teacher, self.student, self.texts, self.max_len, self.name = teacher, student, texts, max_len, name
        self.map = id_map(teacher, student)
        self.checked = self.violations = self.masked = 0
        self.example: str | None = None
        self._kept: dict[int, tuple] = {}  # cache row -> (alignment, tokens, checked, violations) (align's keep)
        self.teacher.tokenizer.encode_special_tokens = True  # text that spells a special token is text

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.teacher.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def align(self, cache_rows: np.ndarray, tokens: np.ndarray, strict: bool = True,
              keep: bool = False) -> list[ChunkAlignment]:
        """Alignments of cache rows `cache_rows` whose student tokens are `tokens` (n, T), each checked
        (check_alignment; counted in `checked`, `violations`, the first kept in `example`); `strict`: a
        violation raises AlignmentError (refuse) at once. `keep`: the alignments are kept for the next call
        that asks for the same rows (the coverage sample, then the blocks: one tokenization of each chunk)."""
        out = []
        for row, chunk_tokens in zip(np.asarray(cache_rows).tolist(), tokens):
            chunk_tokens = np.asarray(chunk_tokens, dtype=np.int64)
            kept = self._kept.pop(row, None)
            if kept is not None and np.array_equal(kept[1], chunk_tokens):
                a, checked, bad = kept[0], kept[2], kept[3]
            else:
                text, ends = self.texts.chunk(row)
                a = align_chunk(chunk_tokens, text, ends, self.student, self.teacher, self._encode, self.max_len)
                checked, bad = check_alignment(a, chunk_tokens, text, ends, self.student, self.teacher, self.map.maps)
            if keep:
                self._kept[row] = (a, chunk_tokens, checked, bad)
            self.masked += a.masked
            self.checked += checked
            self.violations += len(bad)
            if bad and self.example is None:
                self.example = f"cache row {row}, position {bad[0][0]}: {bad[0][1]}"
            if bad and strict:
                self.refuse()
            out.append(a)
        return out

    def refuse(self) -> None:
        """Raise AlignmentError when the self-check has found a violation."""
        if self.violations:
            raise AlignmentError(f"teacher {self.name}: the alignment self-check failed at {self.violations} of "
                                 f"{self.checked} aligned position(s) (first: {self.example}): the targets there would "
                                 "not be the teacher's prediction of the text; nothing was written for them")
