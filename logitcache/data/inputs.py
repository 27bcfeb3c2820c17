"""Documents from the text people have: .txt, .jsonl, .jsonl.gz, .parquet files, folders of them, and
folders written by `datasets.save_to_disk`. `READERS` maps each file suffix to its reader.

A document is (source, text). A .txt file is one document; a JSONL line, a Parquet row or a dataset
row is one document, its text in `text_field`; `source_field` (optional) names the column whose value
picks the per-source cleaner. Without it the source is "" and only whitespace and control bytes are
normalised.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable, Iterator

from ..errors import LogitcacheError

# a reader: (file, text_field, source_field) -> (source, text, bad bytes replaced) per document; the table is at the end
Reader = Callable[[Path, str, "str | None"], Iterator[tuple[str, str, int]]]


def _suffix(path: Path) -> str | None:
    """The longest suffix in READERS that the name ends with (".jsonl.gz" before ".gz"), or None."""
    name = path.name.lower()
    return next((s for s in sorted(READERS, key=len, reverse=True) if name.endswith(s)), None)


def is_saved_dataset(folder: Path) -> bool:
    """A folder written by `datasets.Dataset.save_to_disk` (or DatasetDict's)."""
    return (folder / "dataset_info.json").is_file() or (folder / "state.json").is_file() or \
        (folder / "dataset_dict.json").is_file()


def input_files(path: Path) -> list[Path]:
    """The files a split path stands for, in a fixed (sorted) order."""
    path = Path(path)
    if not path.exists():
        raise LogitcacheError(f"{path} does not exist")
    if path.is_file():
        if _suffix(path) is None:
            raise LogitcacheError(f"{path}: not a {', '.join(READERS)} file")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) is not None)
    if not files:
        raise LogitcacheError(f"{path} holds no {', '.join(READERS)} files (nor a saved dataset)")
    return files


def read_documents(path: Path, text_field: str = "text", source_field: str | None = None,
                   replaced: dict[str, int] | None = None) -> Iterator[tuple[str, str]]:
    """(source, text) for every document under `path`. Bytes of .txt and JSONL files that are not UTF-8 become
    U+FFFD, as in the raw layout; `replaced` (optional) adds up how many per source."""
    path = Path(path)
    files = [(path, _dataset_rows)] if path.is_dir() and is_saved_dataset(path) else \
        [(file, READERS[_suffix(file)]) for file in input_files(path)]
    for file, reader in files:
        for source, text, bad in reader(file, text_field, source_field):
            if replaced is not None and bad:
                replaced[source] = replaced.get(source, 0) + bad
            yield source, text


def _decode(raw: bytes) -> tuple[str, int]:
    """UTF-8 with bad bytes replaced by U+FFFD, and how many were (U+FFFD written in the bytes is text)."""
    text = raw.decode("utf-8", errors="replace")
    return text, text.count("\ufffd") - raw.count("\ufffd".encode())


def _field(record: dict, name: str, where: str) -> str:
    if not isinstance(record, dict) or name not in record:
        keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        raise LogitcacheError(f"{where}: no field '{name}' (has: {keys}); choose it with --text-field/--source-field")
    value = record[name]
    if not isinstance(value, str):
        raise LogitcacheError(f"{where}: field '{name}' is {type(value).__name__}, not text")
    return utf8_text(value, f"{where}: field '{name}'")


def utf8_text(value: str, where: str) -> str:
    """`value`, refused when it is no UTF-8 text: JSON's escape "\\ud800" (valid JSON) reads as a lone
    surrogate, which no tokenizer can encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LogitcacheError(f"{where} holds {value[exc.start]!r} at character {exc.start + 1}, a lone UTF-16 "
                              "surrogate (no Unicode character): fix or drop the record") from None
    return value


def _arrow_texts(column, where: str, first_row: int) -> list:
    """The strings of an Arrow string column (None for nulls), each decoded strictly: a Parquet or Arrow
    file whose string column holds bytes that are not UTF-8 is refused at the row."""
    import pyarrow as pa

    if pa.types.is_null(column.type):
        return [None] * len(column)
    raw = column.view(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()).to_pylist()
    texts = []
    for row, value in enumerate(raw, first_row + 1):
        try:
            texts.append(None if value is None else value.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise LogitcacheError(f"{where}: row {row}: the text is not UTF-8 ({value[exc.start:exc.end]!r} at byte "
                                  f"{exc.start})") from None
    return texts


def _check_text_columns(schema, columns: list[str], where: str) -> None:
    """Text and source columns must be strings: a binary or number column is refused, not turned into
    its repr ("b'...'", "3")."""
    import pyarrow as pa

    for name in columns:
        kind = schema.field(name).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
            raise LogitcacheError(f"{where}: column '{name}' is {kind}, not text")


def _txt_rows(file: Path, text_field: str, source_field: str | None) -> Iterator[tuple[str, str]]:
    """The whole file, one document (no fields)."""
    yield "", *_decode(file.read_bytes())


def _jsonl_rows(file: Path, text_field: str, source_field: str | None) -> Iterator[tuple[str, str]]:
    opener = gzip.open if file.name.lower().endswith(".gz") else open
    try:
        with opener(file, "rb") as f:
            for line_no, raw in enumerate(f, 1):  # JSON Lines: records end at \n
                line, bad = _decode(raw)
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LogitcacheError(f"{file}:{line_no}: not JSON ({exc.msg})") from None
                where = f"{file}:{line_no}"
                yield (_field(record, source_field, where) if source_field else ""), _field(record, text_field, where), bad
    except (OSError, EOFError) as exc:  # a truncated .gz
        raise LogitcacheError(f"cannot read {file} ({exc})") from None


def _parquet_rows(file: Path, text_field: str, source_field: str | None) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(file)
    except Exception as exc:
        raise LogitcacheError(f"{file} is not a Parquet file ({exc})") from None
    columns = [text_field] + ([source_field] if source_field else [])
    missing = [c for c in columns if c not in table.schema_arrow.names]
    if missing:
        raise LogitcacheError(f"{file}: no column '{missing[0]}' (has: {', '.join(table.schema_arrow.names)})")
    _check_text_columns(table.schema_arrow, columns, str(file))
    done = 0
    for batch in table.iter_batches(columns=columns, batch_size=4096):
        texts = _arrow_texts(batch.column(text_field), str(file), done)
        sources = _arrow_texts(batch.column(source_field), str(file), done) if source_field else [""] * len(texts)
        done += len(texts)
        for source, text in zip(sources, texts):
            if text is not None:
                yield source or "", text, 0


def _dataset_rows(folder: Path, text_field: str, source_field: str | None) -> Iterator[tuple[str, str]]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(folder))
    except Exception as exc:
        raise LogitcacheError(f"cannot load the saved dataset {folder} ({exc})") from None
    if isinstance(dataset, datasets.DatasetDict):
        raise LogitcacheError(f"{folder} is a DatasetDict ({', '.join(dataset)}): pass one split's folder, "
                              f"e.g. {folder / next(iter(dataset))}")
    for column in [text_field] + ([source_field] if source_field else []):
        if column not in dataset.column_names:
            raise LogitcacheError(f"{folder}: no column '{column}' (has: {', '.join(dataset.column_names)})")
    columns = [text_field] + ([source_field] if source_field else [])
    dataset = dataset.select_columns(columns).with_format("arrow")
    _check_text_columns(dataset.features.arrow_schema, columns, str(folder))
    done = 0
    for batch in dataset.iter(batch_size=4096):  # (rows, columns) pyarrow tables, in the dataset's order
        texts = _arrow_texts(batch.column(text_field).combine_chunks(), str(folder), done)
        sources = (_arrow_texts(batch.column(source_field).combine_chunks(), str(folder), done) if source_field
                   else [""] * len(texts))
        done += len(texts)
        for source, text in zip(sources, texts):
            if text is not None:
                yield source or "", text, 0


READERS: dict[str, Reader] = {
    ".txt": _txt_rows,
    ".jsonl": _jsonl_rows,
    ".jsonl.gz": _jsonl_rows,
    ".parquet": _parquet_rows,
}
