"""The dump side of teachers with tokenizers of their own: checks, coverage, the mixed ensemble and one
batch's targets. dump/teaching.load_teaching calls it when a teacher's tokenizer differs from the data's,
so every engine (local, torchrun, Ray) computes the same bytes."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .._settings import check
from ..data.prepared import selected_indices, spread_indices
from ..data.tokenizer import load_tokenizer
from ..errors import LogitcacheError
from ..runtime import device as D
from .align import Aligner, ChunkTexts, folder_vocabulary, vocabulary
from .combines import refuse_mean_logits
from .mixed import MixedEnsemble

log = logging.getLogger(__name__)

COVERAGE_CHUNKS = 512  # chunks (spread over the cached ones) the coverage check tokenizes


def own_tokenizer(info: dict) -> bool:
    """Whether load_teachers found the teacher's tokenizer to differ from the data's."""
    return info.get("tokenizer") == "own"


def check_mixed_config(config, infos: list[dict]) -> None:
    """Settings an ensemble with a different-tokenizer teacher cannot honour, refused in one line."""
    refuse_mean_logits(config.combine, [Path(i["path"]).name for i in infos if own_tokenizer(i)])
    if config.teacher_weights:
        check(len(config.teacher_weights) == len(infos), f"{len(config.teacher_weights)} --teacher-weight values "
              f"for {len(infos)} teachers: give one per --teacher, in order")
        check(config.combine == "mean-probs", "--teacher-weight weighs probabilities: use --combine mean-probs")


def teacher_context(model) -> int:
    """The longest sequence a teacher reads (its position embeddings); 0: unbounded."""
    config = model.config
    return int(getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0) or 0)


def chunk_aligners(data, split: str, indices: np.ndarray, models: list, infos: list[dict]) -> list[Aligner | None]:
    """Per teacher, the Aligner over split rows `indices` (its row keys are positions in them) of a teacher on
    a tokenizer of its own, None for one on the data's tokenizer. Shared by the dump, eval and bench."""
    if not data.store.has_text(split):
        raise LogitcacheError(f"{data.path} records no text for split '{split}' (a teacher with a tokenizer of "
                              "its own reads the chunks' text): re-run `logitcache prepare` on it")
    texts = ChunkTexts(data.store, split, indices, data.seq_len)
    student = vocabulary(load_tokenizer(data.tokenizer_path), data.special_ids)
    aligners = []
    for model, info in zip(models, infos):
        if not own_tokenizer(info):
            aligners.append(None)
            continue
        teacher = folder_vocabulary(Path(info["path"]))
        check(int(model.config.vocab_size) >= teacher.size, f"teacher {info['path']} has vocabulary "
              f"{model.config.vocab_size}, smaller than its tokenizer's ({teacher.size})")
        aligners.append(Aligner(teacher, student, texts, teacher_context(model) or 1 << 30,
                                name=Path(info["path"]).name))
    return aligners


AGREEMENT_CHUNKS = 64  # chunks whose text the teacher's tokenizer.json and transformers' tokenizer must encode alike


def check_transformers_agrees(folder: Path, aligner: Aligner, rows: np.ndarray) -> None:
    """The teacher reads its tokenizer.json; transformers builds the folder's tokenizer from the class its
    tokenizer_config.json names, which can change what the file does (a normalizer the file lacks). Where the
    folder has a tokenizer_config.json and transformers loads it as a fast tokenizer, both encode the text of
    up to AGREEMENT_CHUNKS chunks (special-token parsing off, no template); a difference is refused in one
    line naming the teacher and an example."""
    if not (folder / "tokenizer_config.json").is_file() or not (folder / "tokenizer.json").is_file():
        return
    try:
        from transformers import AutoTokenizer

        auto = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises anything from OSError to TypeError on a folder it cannot read
        log.info("%s: transformers does not load its tokenizer (%s); its tokenizer.json is used as it is", folder,
                 str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return
    if not getattr(auto, "is_fast", False):
        return
    for row in spread_indices(rows.shape[0], AGREEMENT_CHUNKS).tolist():
        text = aligner.texts.chunk(row)[0].decode("utf-8", errors="ignore")
        ours = aligner.teacher.tokenizer.encode(text, add_special_tokens=False).ids
        theirs = list(auto(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
        if ours != theirs:
            at = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            raise LogitcacheError(
                f"teacher {folder.name}: its tokenizer.json and transformers' tokenizer for the folder (tokenizer_config."
                f"json's class) encode cache row {row}'s text differently from token {at} ({ours[at:at + 3]} against "
                f"{theirs[at:at + 3]}, text {text[:40]!r}): make the folder's tokenizer.json the one transformers runs")


class CrossTeaching:
    """The aligners of a dump (None for teachers on the data's tokenizer) and the coverage attributes."""

    def __init__(self, config, data, rows: np.ndarray, models: list, infos: list[dict]):
        check_mixed_config(config, infos)
        split = config.split
        self.rows = rows
        self.aligners: list[Aligner | None] = [None] * len(models)
        self.coverage: list[dict] = []
        if not any(own_tokenizer(i) for i in infos):  # --teacher-weight alone: every teacher reads the tokens
            return
        indices = selected_indices(data.store.num_rows(split), config.max_chunks, config.row_selection)
        self.aligners = chunk_aligners(data, split, indices, models, infos)
        for aligner, info in zip(self.aligners, infos):
            if aligner is not None:
                check_transformers_agrees(Path(info["path"]), aligner, self.rows)
        self.coverage = self._coverage(infos)
        for aligner in self.aligners:  # the self-check over the sample, before anything is written
            if aligner is not None:
                aligner.refuse()
        for entry in self.coverage:
            if entry["positions"] < config.min_coverage:
                raise LogitcacheError(
                    f"teacher {entry['teacher']}: its tokenizer aligns with {entry['positions']:.1%} of the data's "
                    f"positions (over {entry['chunks']} chunks), below --min-coverage {config.min_coverage:g}: its "
                    "tokens do not spell the text (a lowercasing or NFKC normalizer, <unk>) or split it elsewhere")

    def _coverage(self, infos: list[dict]) -> list[dict]:
        """Per different-tokenizer teacher, over up to COVERAGE_CHUNKS chunks spread over the cached ones
        (tokenization only): the fraction of positions aligned, of the teacher's own next tokens at aligned
        positions the fraction that has a student counterpart, the positions masked because the teacher's
        next token does not spell the text (a normalised span), and the alignment self-check's positions
        checked and violations there."""
        sample = spread_indices(self.rows.shape[0], COVERAGE_CHUNKS)
        out = []
        for aligner, info in zip(self.aligners, infos):
            if aligner is None:
                continue
            aligned = mapped = with_next = 0
            before = aligner.checked, aligner.violations, aligner.masked
            for a in aligner.align(sample, self.rows[sample], strict=False, keep=True):
                here = a.position >= 0
                j, kind = a.position[here], a.kind[here]  # aligned teacher positions and their map kinds
                has_next = j + 1 < len(a.teacher_ids)
                following = a.teacher_ids[j[has_next] + 1]  # the teacher's own next token there
                onto = aligner.map.maps[kind[has_next], following]
                aligned += int(here.sum())
                with_next += int(has_next.sum())
                mapped += int((onto >= 0).sum())
            total = len(sample) * self.rows.shape[1]
            out.append({"teacher": Path(info["path"]).name, "chunks": int(len(sample)),
                        "positions": round(aligned / max(total, 1), 6),
                        "next_tokens_mapped": round(mapped / max(with_next, 1), 6),
                        "masked_before_unspelled": aligner.masked - before[2],
                        "self_check": {"checked": aligner.checked - before[0],
                                       "violations": aligner.violations - before[1]}})
        return out

    def ensemble(self, config, models: list, device: torch.device, vocab_size: int) -> MixedEnsemble:
        return MixedEnsemble(list(zip(models, self.aligners)), config.temperature, device,
                             D.autocast_for(device, config.precision), vocab_size=vocab_size,
                             weights=tuple(config.teacher_weights), logit_budget=config.logit_budget_mb << 20)

