"""`prepare`: raw text -> cleaned text -> BPE tokenizer (train split) -> 128-token chunk store."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from ._settings import to_dict
from .config import SPLITS, PrepareConfig  # noqa: F401  (PrepareConfig re-exported)
from .data.cleaners import CLEANERS_BY_NAME, clean_basic, cleaner_for
from .data.inputs import read_documents
from .data.prepared import document_prefix, fingerprint
from .data.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, find_tokenizer, special_ids, tokenizer_identity, train_tokenizer
from .errors import LogitcacheError
from .files import check_output, prepare_output, sha256_file, write_json_atomic
from .progress import NULL_PROGRESS, ProgressHook
from .store import token_dtype, write_token_store
from .store.tokens import text_ends_dtype
from .runtime.process import default_heap

log = logging.getLogger(__name__)

_RAW_NAME = re.compile(rf"^(?P<source>[^.]+)\.(?P<split>{'|'.join(SPLITS)})$")


@dataclass
class PrepareReport:
    splits: dict = field(default_factory=dict)  # split -> {"chunks", "tokens"}
    vocab_size: int = 0
    fingerprint: str = ""
    sources: dict = field(default_factory=dict)  # source -> {"words", "tokens", "replaced_bytes", "cleaning"}
    seconds: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)  # cleaner steps that removed more than expected

    def to_json(self) -> dict:
        return {"splits": self.splits, "vocab_size": self.vocab_size, "fingerprint": self.fingerprint,
                "sources": self.sources, "seconds": self.seconds, "warnings": self.warnings}


# The BabyLM releases: 2023 has babylm_10M/ (or babylm_100M/), babylm_dev/, babylm_test/ side by side;
# 2024 has train_10M/ (train_100M/), dev/, test/. Files are <source>.<split> in each.
BABYLM_TRAIN = {"10M": ("babylm_10M", "train_10M"), "100M": ("babylm_100M", "train_100M")}
BABYLM_DEV, BABYLM_TEST = ("babylm_dev", "dev"), ("babylm_test", "test")


def babylm_layout(data: Path, track: str = "10M") -> dict[str, Path] | None:
    """{split: folder} when `data` is a BabyLM folder (holding the track, dev and test folders) or the
    track folder itself with dev and test beside it; None for any other layout."""
    data = Path(data)

    def first(root: Path, names) -> Path | None:
        return next((root / n for n in names if (root / n).is_dir()), None)

    if (train := first(data, BABYLM_TRAIN[track])) is not None:
        root = data
    elif data.name in sum(BABYLM_TRAIN.values(), ()):
        train, root = data, data.parent
    else:
        return None
    dev, test = first(root, BABYLM_DEV), first(root, BABYLM_TEST)
    if dev is None:
        raise LogitcacheError(f"BabyLM layout: no babylm_dev/ (or dev/) folder beside {train}")
    return {"train": train, "dev": dev} | ({"test": test} if test is not None else {})


def find_raw_files(data: Path, track: str = "10M") -> dict[tuple[str, str], list[Path]]:
    """{(source, split): [paths]} for every `<source>.<split>` file: in the BabyLM layout from the track,
    dev and test folders, else anywhere under `data` (recursive)."""
    data = Path(data)
    if not data.is_dir():
        raise LogitcacheError(f"raw data directory {data} does not exist")
    layout = babylm_layout(data, track)
    roots = list(layout.items()) if layout else [(None, data)]
    found: dict[tuple[str, str], list[Path]] = {}
    for wanted, root in roots:
        for path in sorted(root.rglob("*")):
            match = _RAW_NAME.match(path.name)
            if match and path.is_file() and wanted in (None, match["split"]):
                found.setdefault((match["source"], match["split"]), []).append(path)
    if not any(split == "train" for _, split in found):
        raise LogitcacheError(f"no '<source>.train' files under {data} (expected the BabyLM raw layout)")
    return found


def read_text(path: Path) -> tuple[str, int]:
    """Decode as UTF-8, replacing bad bytes; returns (text, number of replacement characters added)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LogitcacheError(f"cannot read {path}: {exc.strerror}") from None
    text = raw.decode("utf-8", errors="replace")
    return text, text.count("\ufffd") - raw.count("\ufffd".encode())


def chunk(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """Contiguous (N, seq_len) chunks; the remainder (< seq_len tokens) is dropped."""
    n = len(ids) // seq_len
    return ids[: n * seq_len].reshape(n, seq_len)


# Sources whose lines are verse or hard-wrapped prose: a document is a blank-line-separated block (a speech).
BLOCK_SOURCES = frozenset({"shakespeare"})


def raw_documents(source: str, text: str) -> list[str]:
    """The documents of a cleaned `<source>.<split>` file, in order: one per non-empty line (BabyLM's files
    hold newline-separated documents: an utterance, a subtitle, a paragraph; the demo's austen and kjv a
    paragraph and a chapter), or one per blank-line-separated block for BLOCK_SOURCES; edges stripped."""
    parts = re.split(r"\n[ \t]*\n", text) if source in BLOCK_SOURCES else text.split("\n")
    return [part.strip() for part in parts if part.strip()]


def with_bos_template(tokenizer):
    """logitcache's trained BPE with the template prepare encodes by: `<s>` before every document."""
    from tokenizers import processors

    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)])
    return tokenizer


def collect_documents(config: PrepareConfig, report: PrepareReport, progress: ProgressHook) -> dict[str, list[tuple[str, str]]]:
    """{split: [(source, cleaned text)]} in a fixed order. Raw layout: sources sorted, each file's documents
    as raw_documents splits them. --train/--dev/--test: one document per .txt file, JSONL line, Parquet or
    dataset row."""
    docs: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLITS}
    if config.data is not None:
        files = find_raw_files(config.data, config.babylm_track)
        progress.start("clean", len(files))
        for (source, split), paths in sorted(files.items()):
            texts = []
            for path in paths:
                text, replaced = read_text(path)
                texts.append(cleaner_for(source).counted(text, _cleaning_tally(report, source)))
                report.sources.setdefault(source, {"words": 0, "tokens": 0, "replaced_bytes": 0})["replaced_bytes"] += replaced
            docs[split].extend((source, document) for text in texts for document in raw_documents(source, text))
            progress.update(1)
        progress.finish()
    else:
        progress.start("clean", None)
        replaced: dict[str, int] = {}  # bad bytes of .txt and JSONL files, per source as read
        for split, path in (("train", config.train), ("dev", config.dev), ("test", config.test)):
            if path is None:
                continue
            for source, text in read_documents(path, config.text_field, config.source_field, replaced):
                clean = cleaner_for(source) if config.source_field else clean_basic
                docs[split].append((source or "text", clean.counted(text, _cleaning_tally(report, source or "text"))))
                progress.update(1)
        for source, count in replaced.items():
            report.sources[source or "text"]["replaced_bytes"] += count
        progress.finish()
    for split_docs in docs.values():
        for source, text in split_docs:
            report.sources.setdefault(source, {"words": 0, "tokens": 0, "replaced_bytes": 0})["words"] += len(text.split())
    for source, entry in sorted(report.sources.items()):
        for warning in CLEANERS_BY_NAME[entry["cleaning"]["cleaner"]].warnings(source, entry["cleaning"]):
            log.warning("%s", warning)
            report.warnings.append(warning)
    return docs


def _cleaning_tally(report: PrepareReport, source: str) -> dict:
    """The source's {"cleaner", "chars", "lines", "removed": {step: {"chars", "lines"}}} in the report."""
    entry = report.sources.setdefault(source, {"words": 0, "tokens": 0, "replaced_bytes": 0})
    return entry.setdefault("cleaning", {})


def encode_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    """Ids of each text without specials, the lines of all texts in one parallel batch; decoding a text's ids
    gives the text back (encode_text, over many texts)."""
    lines, owners = [], []
    for owner, text in enumerate(texts):
        for line in text.splitlines(keepends=True):
            lines.append(line)
            owners.append(owner)
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    out: list[list[int]] = [[] for _ in texts]
    for owner, encoding in zip(owners, encode(lines, add_special_tokens=False)):
        out[owner].extend(encoding.ids)
    return out


def utf8_offsets(text: str) -> np.ndarray:
    """(len(text) + 1,) int64: the UTF-8 byte offset of each character index of `text` (and of its end)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (codes >= 0x80).astype(np.int64) + (codes >= 0x800) + (codes >= 0x10000)
    return np.concatenate([[0], np.cumsum(widths)])


def encoding_byte_ends(encoding, text: str, bytes_of: list | None = None) -> tuple[np.ndarray, int]:
    """Where each token of `encoding` (of `text`, a tokenizer's own encode) ends in the text's UTF-8 bytes, and
    how many tokens' recorded bytes differ from the bytes they spell. With `bytes_of` (each id's bytes,
    data/tokenizer.token_byte_table; None for specials and `<unk>`) the ends are the running sum of the
    tokens' own bytes, so a byte-level piece or a byte-fallback <0xNN> of a character ends inside it, as it
    does in the text: special tokens are zero-width, a `<unk>` covers the characters it replaced, and a
    prefix space the tokenizer put in front of the text (▁ at a document start) is no text; this holds when
    those bytes spell the text exactly (checked: then no piece differs). A tokenizer whose tokens do not spell
    the text (a normalizer that changes it, such as NFKC or lowercasing) gets its ends from the encoding's
    character offsets instead (of tokens sharing one character's span all but the last zero-width), and every
    token whose recorded bytes then differ from its own is counted. Returns ((n,) int64 monotone, count)."""
    spans = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)  # (n, 2) character offsets
    if len(text) != len(text.encode()):
        spans = utf8_offsets(text)[spans]
    special = np.asarray(encoding.special_tokens_mask, dtype=bool)
    if bytes_of is not None:
        doc = text.encode()
        pieces = [b"" if is_special else bytes_of[i] if 0 <= i < len(bytes_of) and bytes_of[i] is not None
                  else doc[a:b] for i, is_special, (a, b) in zip(encoding.ids, special.tolist(), spans.tolist())]
        lengths = np.array([len(p) for p in pieces], dtype=np.int64)
        spelled = b"".join(pieces)
        first = next((k for k, p in enumerate(pieces) if p), None)
        if spelled != doc and first is not None and spelled[:1] == b" " and spelled[1:] == doc:
            lengths[first] -= 1  # the tokenizer's prefix space: no text
            spelled = spelled[1:]
        if spelled == doc:
            return np.cumsum(lengths), 0
    starts, ends = spans[:, 0].copy(), spans[:, 1].copy()
    shared = np.zeros(len(ends), dtype=bool)
    shared[:-1] = (starts[:-1] == starts[1:]) & (ends[:-1] == ends[1:]) & ~special[1:]
    ends[shared] = starts[shared]
    ends[special] = 0
    ends = np.maximum.accumulate(ends) if len(ends) else ends
    if bytes_of is None:
        return ends, 0
    doc = text.encode()
    begin = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
    differ = sum(1 for i, is_special, a, b in zip(encoding.ids, special.tolist(), begin.tolist(), ends.tolist())
                 if not is_special and 0 <= i < len(bytes_of) and bytes_of[i] is not None and doc[a:b] != bytes_of[i])
    return ends, differ


def token_bytes_or_none(tokenizer) -> list | None:
    """Each id's bytes (data/tokenizer.token_byte_table), or None for a tokenizer whose decoder logitcache
    cannot turn into bytes (its record then comes from character offsets alone)."""
    from .data.tokenizer import token_byte_table

    try:
        return token_byte_table(tokenizer)
    except LogitcacheError:
        return None


def own_bpe_byte_ends(tokenizer, flat: np.ndarray) -> np.ndarray:
    """(n,) int64 token ends in the split's text bytes for logitcache's byte-level BPE: each token stands for
    exactly its decoded bytes (no normalizer, no prefix space), specials for none, so the ends are the
    running sum of the tokens' byte lengths."""
    from .data.tokenizer import token_byte_table

    lengths = np.array([len(b) if b is not None else 0 for b in token_byte_table(tokenizer)], dtype=np.int64)
    return np.cumsum(lengths[flat])


def check_document_ends(ends: np.ndarray, flat: np.ndarray, eos: int, doc_bytes: np.ndarray) -> None:
    """Each document's EOS must end where its text ends in the split's bytes; a tokenizer whose tokens do
    not spell the text is refused (the recorded text would not be the chunks' text)."""
    at_eos = ends[flat == eos]
    expected = np.cumsum(doc_bytes)
    if at_eos.shape != expected.shape or not np.array_equal(at_eos, expected):
        raise LogitcacheError("prepare: the tokens' bytes do not add up to the documents' text (the tokenizer does "
                              "not spell its input back): cannot record the chunks' text")


def literal_specials(docs: list[tuple[str, str]], contents: tuple[str, ...]) -> tuple[dict[str, int], tuple[str, int] | None]:
    """Which of `contents` (the trained tokenizer's specials) appear as plain text in the documents:
    {content: documents holding it} and (source, document index) of the first such document."""
    counts: dict[str, int] = {}
    first = None
    for index, (source, text) in enumerate(docs):
        for content in contents:
            if content in text:
                counts[content] = counts.get(content, 0) + 1
                first = first or (source, index)
    return counts, first


def check_literal_specials(docs: dict, contents: tuple[str, ...]) -> None:
    """Refuse text that spells one of the trained tokenizer's specials: the tokenizer would read it as an EOS
    or BOS the text never had. Checked before the tokenizer is trained."""
    for split in SPLITS:
        counts, first = literal_specials(docs[split], contents)
        if counts:
            listed = ", ".join(f"{content!r} in {n} document(s)" for content, n in counts.items())
            raise LogitcacheError(f"prepare: the {split} text holds the literal special token(s) {listed} (first: "
                                  f"source {first[0]}, document {first[1] + 1} of the split); the trained tokenizer "
                                  f"would read them as its {'/'.join(contents)} ids, not as text: remove them from the raw text")


def tokenize_split(tokenizer, docs: list[tuple[str, str]], own_bpe: bool, eos: int | None, report: PrepareReport,
                   progress: ProgressHook) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The split's token stream: each document as the tokenizer encodes it (its template's BOS where it
    adds one), then EOS unless the template already ended with it. Returns ids (n_tokens,) int64, the
    split's text (the documents' UTF-8 back to back) (n_bytes,) uint8 and each token's end byte in it
    (n_tokens,) int64 (special tokens zero-width)."""
    pieces: list[list[int]] = []
    ends_of: list[np.ndarray] = []  # per document: token ends in its own bytes (tokenizers other than ours)
    text = "".join(text for _, text in docs).encode()
    if own_bpe:  # logitcache's byte-level BPE (with_bos_template): <s>, the text line by line (exact for it), </s>
        for start in range(0, len(docs), 1024):
            batch = docs[start:start + 1024]
            with default_heap():
                encoded = encode_documents(tokenizer, [text for _, text in batch])
            for (source, _), ids in zip(batch, encoded):
                pieces.append([BOS_ID] + ids + [EOS_ID])
                report.sources[source]["tokens"] += len(ids) + 2
            progress.update(len(batch))
    else:
        template = tokenizer.post_processor.num_special_tokens_to_add(False) if tokenizer.post_processor else 0
        special = {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
        spelled = 0  # documents whose text spells a special token (a pretrained tokenizer's convention: kept)
        bytes_of = token_bytes_or_none(tokenizer)
        differ = 0  # tokens whose recorded text is not the bytes they spell (a normalizer that changes the text)
        for start in range(0, len(docs), 1024):
            batch = docs[start:start + 1024]
            with default_heap():
                encodings = tokenizer.encode_batch([text for _, text in batch], add_special_tokens=True)
            for (source, doc), encoding in zip(batch, encodings):
                ids = list(encoding.ids)
                spelled += sum(i in special for i in ids) > template  # the mask marks the template's alone
                doc_ends, doc_differ = encoding_byte_ends(encoding, doc, bytes_of)
                differ += doc_differ
                if eos is not None and ids[-1:] != [eos]:
                    ids.append(eos)
                    doc_ends = np.append(doc_ends, doc_ends[-1] if len(doc_ends) else 0)
                pieces.append(ids)
                ends_of.append(doc_ends)
                report.sources[source]["tokens"] += len(ids)
            progress.update(len(batch))
        if differ:
            log.warning("%d token(s) of the split cover text other than the bytes they spell (the tokenizer's normalizer "
                        "changes the text); a teacher with a tokenizer of its own is aligned only where both spell it",
                        differ)
        if spelled:
            log.warning("%d document(s) spell a special token of the tokenizer as text; it encodes each as its special "
                        "id, as it does for any text", spelled)
    flat = np.fromiter((i for piece in pieces for i in piece), dtype=np.int64)
    doc_bytes = np.fromiter((len(doc.encode()) for _, doc in docs), dtype=np.int64, count=len(docs))
    if own_bpe:
        ends = own_bpe_byte_ends(tokenizer, flat)
        check_document_ends(ends, flat, EOS_ID, doc_bytes)
    else:  # each document's ends shifted by the bytes of the documents before it
        starts = np.concatenate([[0], np.cumsum(doc_bytes)[:-1]]) if len(docs) else np.zeros(0, np.int64)
        ends = np.concatenate([e + s for e, s in zip(ends_of, starts)]) if ends_of else np.zeros(0, np.int64)
    return flat, np.frombuffer(text, dtype=np.uint8), ends


def chunked_text(text: np.ndarray, ends: np.ndarray, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The text record of a split's chunks: the ends of its first `n_tokens` tokens (the chunked ones) in
    the stored width, and the text up to the last of them."""
    ends = ends[:n_tokens]
    last = int(ends[-1]) if n_tokens else 0
    return text[:last], ends.astype(text_ends_dtype(last))


def make_tokenizer(config: PrepareConfig, docs: dict, progress: ProgressHook):
    """The tokenizer prepare encodes by: `--tokenizer`'s, or a byte-level BPE trained on the train split
    (with `<s>` before every document). Returns it and its special ids."""
    progress.start("tokenizer", None)
    if config.tokenizer is not None:
        tokenizer = find_tokenizer(config.tokenizer)
        if tokenizer is None:
            raise LogitcacheError(f"{config.tokenizer} holds no tokenizer (tokenizer.json, or files transformers can "
                                  "load as a fast tokenizer)")
        folder = config.tokenizer if Path(config.tokenizer).is_dir() else Path(config.tokenizer).parent
        specials = special_ids(tokenizer, folder)
    else:
        with default_heap():  # the tuned torch heap makes the Rust trainer ~90x slower
            tokenizer = train_tokenizer((line for _, text in docs["train"] for line in text.splitlines()),
                                        config.vocab_size)
        tokenizer = with_bos_template(tokenizer)
        specials = {"bos": BOS_ID, "eos": EOS_ID, "pad": PAD_ID}
    progress.finish()
    return tokenizer, specials


def tokenize_splits(config: PrepareConfig, tokenizer, docs: dict, eos: int | None, report: PrepareReport,
                    progress: ProgressHook) -> tuple[dict, dict]:
    """Every split as (N, seq_len) chunks and its text record: ({split: tokens}, {split: (bytes, ends)})."""
    progress.start("tokenize", sum(len(d) for d in docs.values()))
    split_arrays: dict[str, np.ndarray] = {}
    texts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        flat, text, ends = tokenize_split(tokenizer, docs[split], config.tokenizer is None, eos, report, progress)
        split_arrays[split] = chunk(flat, config.seq_len).astype(token_dtype(report.vocab_size))
        texts[split] = chunked_text(text, ends, split_arrays[split].size)
        report.splits[split] = {"chunks": int(split_arrays[split].shape[0]),
                                "tokens": int(split_arrays[split].size)}
    progress.finish()
    if report.splits["dev"]["chunks"] == 0:
        raise LogitcacheError(f"the dev split has no chunk of {config.seq_len} tokens: validation needs dev text "
                              "(<source>.dev files, or --dev)")
    if report.splits["test"]["chunks"] == 0:
        log.warning("the test split is empty: eval --split test will have nothing to score")
    return split_arrays, texts


def prepare(config: PrepareConfig, resume: bool = False, overwrite: bool = False,
            progress: ProgressHook = NULL_PROGRESS) -> PrepareReport:
    """Clean, tokenize and chunk the raw text into `config.out`. An `out` that holds something is refused
    unless `overwrite` (it is replaced) or `resume` (prepare is redone into it: it keeps no partial state,
    tokens.zarr is swapped in whole; `run` resumes its own WORK/data so)."""
    import time

    check_output(config.out, resume, overwrite)  # refused before anything is read
    report = PrepareReport(vocab_size=config.vocab_size)
    out = Path(config.out)
    t0 = time.perf_counter()
    docs = collect_documents(config, report, progress)
    if not docs["train"]:
        raise LogitcacheError("no training text: the train split is empty")
    if config.tokenizer is None:
        check_literal_specials(docs, SPECIAL_TOKENS)
    report.seconds["clean"], t0 = time.perf_counter() - t0, time.perf_counter()
    tokenizer, specials = make_tokenizer(config, docs, progress)
    report.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    report.seconds["tokenizer"], t0 = time.perf_counter() - t0, time.perf_counter()
    split_arrays, texts = tokenize_splits(config, tokenizer, docs, specials["eos"], report, progress)
    report.seconds["tokenize"] = time.perf_counter() - t0
    prepare_output(config.out, resume, overwrite)  # touched only once every split is tokenized: a refusal keeps it
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))

    tok_sha = sha256_file(out / "tokenizer.json")
    report.fingerprint = fingerprint(tok_sha, split_arrays, texts)
    attrs = {
        "kind": "tokens", "package_version": __version__, "seq_len": config.seq_len,
        "vocab_size": report.vocab_size, "sources": report.sources, "tokenizer_sha256": tok_sha,
        "tokenizer_identity": tokenizer_identity(tokenizer), "special_ids": specials,
        "document_prefix": document_prefix(tokenizer, specials),
        "tokenizer_source": str(config.tokenizer) if config.tokenizer is not None else "trained (byte-level BPE)",
        "fingerprint": report.fingerprint, "config": to_dict(config),
    }
    write_token_store(out / "tokens.zarr", split_arrays, attrs, texts=texts)
    write_json_atomic(out / "prepare_config.json", to_dict(config))
    write_json_atomic(out / "prepare_report.json", report.to_json())
    log.info("prepared %s: %s", out, report.splits)
    return report
