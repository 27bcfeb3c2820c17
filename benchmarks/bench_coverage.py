"""Coverage of teachers on tokenizers of their own, on the demo corpus: how many of the data's positions each
teacher tokenizer aligns with, and how much of a teacher's next-token distribution maps onto the data's ids.

Data tokenizer: logitcache's byte-level BPE of 8,000 ids (`prepare`, seq_len 128), the demo corpus that `run`
uses when raw_dir is empty (KJV, Shakespeare, Austen). Teacher tokenizers, trained here on the same cleaned
train text: (a) logitcache's byte-level BPE of another size (6,000 as configs/demo-mixed.toml's GPT-2, and
16,000), (b) Llama-2-style BPE over Metaspace words with <0xNN> byte fallback (8,000), (c) a unigram over
Metaspace words (8,000).

Per teacher, over chunks spread over the train split (the dump's own code: teachers.cross.CrossTeaching, with
--min-coverage 0, and teachers/align.py's id map):
  positions           the fraction of the data's positions the teacher aligns with (tokenization only)
  next_tokens_mapped  at aligned positions, the fraction of the teacher's own next tokens (the text's) that
                      have a counterpart among the data's ids: the mass mapped of a teacher that predicts the
                      text perfectly
  vocab_mapped        the fraction of the teacher's ids with a counterpart mid-text: the mass mapped of a
                      teacher spreading its probability evenly over its vocabulary
  random_init_mass    the probability a random-init tiny teacher (llama-tiny on that tokenizer) puts on mapped
                      ids at aligned positions, through the dump's MixedEnsemble (close to vocab_mapped: such a
                      teacher is nearly uniform)
A trained teacher sits between next_tokens_mapped and vocab_mapped, nearer the first the better it predicts;
`dump` prints the trained teacher's own figure (the demo-mixed run's is in the README).

  .venv/bin/python benchmarks/bench_coverage.py [--data DIR] [--chunks 512] [--mass-chunks 48]
The last line of stdout is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def train_text(data) -> list[str]:
    """The cleaned train split's text, one line a string (what the teacher tokenizers train on)."""
    text, _ = data.store.split_text("train")
    return [line for line in text.tobytes().decode("utf-8").split("\n") if line]


def byte_level(lines: list[str], size: int):
    """(a) logitcache's own byte-level BPE (prepare's, and run's tokenizer_vocab_size)."""
    from logitcache.data.tokenizer import train_tokenizer

    return train_tokenizer(iter(lines), size)


def metaspace_byte_fallback(lines: list[str], size: int):
    """(b) Llama-2 style: BPE over ▁-words, <0xNN> byte fallback, Prepend/Replace normalizer, <s> in front."""
    from logitcache.data.tokenizer import train_metaspace_bpe

    return train_metaspace_bpe(lines, size - 256)


def unigram(lines: list[str], size: int):
    """(c) a unigram over Metaspace words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(lines, trainers.UnigramTrainer(
        vocab_size=size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    return tokenizer


PAIRS = [("byte-level BPE 6000", byte_level, 6000), ("byte-level BPE 16000", byte_level, 16000),
         ("Metaspace BPE + byte fallback 8000", metaspace_byte_fallback, 8000), ("unigram 8000", unigram, 8000)]


def teacher_folder(root: Path, name: str, tokenizer, seed: int) -> Path:
    """A random-init llama-tiny on `tokenizer`, saved with its tokenizer.json."""
    from logitcache.teachers.models import build_model, get_preset
    from logitcache.data.tokenizer import special_ids

    folder = root / name
    specials = special_ids(tokenizer)
    model = build_model(get_preset("llama-tiny"), tokenizer.get_vocab_size(with_added_tokens=True), seed=seed,
                        specials={k: specials.get(k) for k in ("bos", "eos", "pad")})
    model.save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def prepared_demo(root: Path) -> Path:
    from logitcache.data.corpus import build_demo_corpus
    from logitcache.prepare import PrepareConfig, prepare

    build_demo_corpus(root / "raw")
    prepare(PrepareConfig(data=root / "raw", out=root / "data", vocab_size=8000, seq_len=128))
    return root / "data"


def main() -> None:
    import torch

    from logitcache.teachers.cross import CrossTeaching
    from logitcache.data.prepared import load_data
    from logitcache.dump import DumpConfig
    from logitcache.teachers.models import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a prepared demo data dir (default: prepare one in a temp dir)")
    parser.add_argument("--chunks", type=int, default=512, help="train chunks (spread) the alignment is measured on")
    parser.add_argument("--mass-chunks", type=int, default=48, help="chunks the random-init teachers run on")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_dir = args.data or prepared_demo(root)
        data = load_data(data_dir)
        lines = train_text(data)
        rows_all = data.store.split("train")
        results = []
        for index, (name, make, size) in enumerate(PAIRS):
            started = time.perf_counter()
            folder = teacher_folder(root / "teachers", f"t{index}", make(lines, size), seed=index)
            model = load_model(folder)
            config = DumpConfig(data=data_dir, teachers=(folder,), out=root / "unused.zarr", combine="mean-probs",
                                min_coverage=0.0, max_chunks=args.chunks, device="cpu", temperature=1.0)
            from logitcache.teachers.cross import selected_indices

            indices = selected_indices(rows_all.shape[0], config)
            rows = rows_all[indices]
            cross = CrossTeaching(config, data, rows, [model], [{"path": str(folder), "tokenizer": "own"}])
            [coverage] = cross.coverage
            aligner = cross.aligners[0]
            ensemble = cross.ensemble(config, [model], torch.device("cpu"), data.vocab_size)
            sample = np.linspace(0, rows.shape[0] - 1, min(args.mass_chunks, rows.shape[0])).round().astype(np.int64)
            for start in range(0, len(sample), 8):
                part = sample[start:start + 8]
                ensemble.targets(torch.from_numpy(rows[part].astype(np.int64)), part)
            [measured] = ensemble.coverage()
            teacher_ids = np.array([b is not None for b in aligner.teacher.bytes_of])
            results.append({"teacher_tokenizer": name, "teacher_vocab": aligner.teacher.size,
                            "positions": coverage["positions"], "next_tokens_mapped": coverage["next_tokens_mapped"],
                            "vocab_mapped": float((aligner.map.mid[teacher_ids] >= 0).mean()),
                            "random_init_mass": measured["mass"], "chunks": coverage["chunks"],
                            "seconds": round(time.perf_counter() - started, 1)})
            print(json.dumps(results[-1]), file=sys.stderr)
    print("| teacher tokenizer | ids | positions aligned | next tokens mapped | vocabulary mapped | random-init mass mapped |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['teacher_tokenizer']} | {r['teacher_vocab']} | {r['positions']:.1%} | {r['next_tokens_mapped']:.1%} | "
              f"{r['vocab_mapped']:.1%} | {r['random_init_mass']:.1%} |")
    print(json.dumps({"bench": "coverage", "data_tokenizer": "byte-level BPE 8000 (prepare)", "corpus": "demo",
                      "seq_len": data.seq_len, "results": results}))


if __name__ == "__main__":
    main()
