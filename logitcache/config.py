"""One frozen dataclass per stage: the single definition of every setting.

Each field is a `setting` with its default and help text. The CLI options of every command
(cli/options.py) and the TOML sections of `run` (run.py) are derived from these classes, so a
setting has one name, one type and one default everywhere. Choices are Literal types: `--help` lists
them and a TOML value outside them is refused by name. This module imports neither torch nor zarr,
so building the CLI and validating a config cost nothing.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Literal, Optional

from ._settings import check, config_dataclass, field_default, setting, to_dict
from .store.codecs import PROB_CODES, prob_codes_help
from .teachers.combines import COMBINES, combines_help
from .teachers.presets import ARCHS, get_preset

SPLITS = ("train", "dev", "test")
Split = Literal[SPLITS]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Combine = Literal[tuple(COMBINES)]  # the combine modes' registry (combines.py)
ProbDtype = Literal[tuple(PROB_CODES)]  # the probability codes' registry (store/codecs)
Targets = Literal["topk", "sample", "mass"]
RowSelection = Literal["spread", "first"]
Arch = Literal[ARCHS]  # the presets' architectures (presets.py)
Tail = Literal["bucket", "renormalize"]
Engine = Literal["local", "ray"]
KLReduction = Literal["token", "paper"]
# A local path or an object-storage URL (s3://bucket/prefix/cache.zarr, gs://, file://): kept as typed,
# since Path("s3://b/x") would collapse it to the local folder "s3:/b/x" (store/location.py).
Where = str


def choices(literal) -> tuple:
    return typing.get_args(literal)


def _in(value, literal, name: str) -> None:
    check(value in choices(literal), f"{name} must be one of {', '.join(choices(literal))}, got {value!r}")


@config_dataclass
class PrepareConfig:
    out: Path = setting(help="Output dir (WORK/data): tokenizer.json and tokens.zarr.", in_run=False)
    data: Optional[Path] = setting(None, help="Raw text: <source>.<split> files (BabyLM layout); subfolders searched too.",
                                   in_run=False)
    train: Optional[Path] = setting(None, help="Instead of --data: the train split, a .txt/.jsonl/.jsonl.gz/.parquet "
                                               "file, a folder of them, or a datasets.save_to_disk folder.", in_run=False)
    dev: Optional[Path] = setting(None, help="The dev split (validation), as --train.", in_run=False)
    test: Optional[Path] = setting(None, help="The test split, as --train.", in_run=False)
    babylm_track: Literal["10M", "100M"] = setting("10M", help="With --data in the BabyLM layout (babylm_10M/, "
                                                               "babylm_dev/, babylm_test/): which training track.")
    text_field: str = setting("text", help="Column (JSONL key) holding the text.")
    source_field: Optional[str] = setting(None, help="Column naming each document's source, to pick its cleaner "
                                                     "(without it: whitespace and control bytes only).")
    tokenizer: Optional[Path] = setting(None, help="Tokenize with this Hugging Face tokenizer (a folder or a "
                                                   "tokenizer.json), e.g. the teachers', instead of training a BPE.")
    vocab_size: int = setting(16000, help="BPE vocabulary size (when training one).")
    seq_len: int = setting(128, help="Tokens per chunk.")

    def __post_init__(self):
        check((self.data is None) != (self.train is None), "give the raw layout (--data) or the splits (--train, --dev, "
                                                            "--test), not both")
        check(self.data is None or (self.dev is None and self.test is None), "--dev/--test go with --train, not --data")
        check(self.train is None or self.dev is not None, "--train needs --dev (the validation text)")
        check(self.vocab_size >= 259, f"vocab_size must be at least 259 (256 bytes + 3 specials), got {self.vocab_size}")
        check(self.seq_len >= 2, f"seq_len must be at least 2, got {self.seq_len}")


@config_dataclass
class TrainConfig:
    """The training loop's settings, shared by teachers and students (defaults: the paper's student)."""

    lr: float = setting(2.5e-4, help="Peak learning rate (AdamW).")
    batch_size: int = setting(32, help="Global batch: sequences per optimizer step, over all ranks and micro-batches.")
    grad_accum: int = setting(1, help="Micro-batches per optimizer step.")
    epochs: int = setting(6, help="Epochs over the training rows.")
    max_steps: int = setting(0, help="Stop after this many optimizer steps (overrides --epochs; 0: off).")
    warmup_steps: int = setting(200, help="Linear warmup steps before the cosine decay.")
    weight_decay: float = setting(0.1, help="AdamW weight decay on matrices.")
    eval_every: int = setting(0, help="Also validate every N steps (0: at epoch ends only).")
    checkpoint_every: int = setting(0, help="Also checkpoint every N steps (0: at epoch ends only).")
    val_chunks: int = setting(8192, help="Size of the fixed validation subset of dev.")
    seed: int = setting(0, help="Seed for initialisation and data order.")
    device: Device = setting("auto", help="Where to train: auto (CUDA when present), cpu or cuda.")
    precision: Precision = setting("auto", help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16 or fp16 (with dynamic loss scaling).")
    tensorboard: bool = setting(False, help="Also write TensorBoard event files to OUT/tensorboard.")
    activation_checkpointing: bool = setting(False, help="Recompute each decoder layer in the backward instead of "
                                             "keeping its activations (less memory, about a third more compute).",
                                             affects_output=False)
    fsdp: bool = setting(False, help="Under torchrun: shard the model over ranks with FSDP2 (per decoder layer), "
                                     "instead of a full copy per rank (DDP).", affects_output=False)

    def __post_init__(self):
        check(self.lr > 0, f"lr must be positive, got {self.lr}")
        check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        check(self.grad_accum > 0, f"grad_accum must be positive, got {self.grad_accum}")
        check(self.batch_size % self.grad_accum == 0, "batch_size must be a multiple of grad_accum")
        check(self.epochs > 0, f"epochs must be positive, got {self.epochs}")
        check(self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}")
        check(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        check(self.weight_decay >= 0, "weight_decay must be >= 0")
        check(self.val_chunks >= 1, f"val_chunks must be positive, got {self.val_chunks}")
        _in(self.device, Device, "device")
        _in(self.precision, Precision, "precision")


@config_dataclass
class TeacherConfig:
    data: Where = setting(help="Prepared data dir (a folder or a URL: WORK/data).", in_run=False)
    out: Path = setting(help="Output model dir (save_pretrained + tokenizer.json).", in_run=False)
    arch: Arch = setting("llama", help="Architecture of the teacher.")
    preset: str = setting("llama-small", help="Model preset, e.g. llama-small, gpt2-705m (must match --arch).")
    vocab_size: int = setting(0, help="Expected vocabulary (0: the data's); refused if it differs.")
    train: TrainConfig = setting(default_factory=TrainConfig, help="Training loop settings.")

    def __post_init__(self):
        _in(self.arch, Arch, "arch")
        preset = get_preset(self.preset)
        check(preset.arch == self.arch, f"preset '{self.preset}' is a {preset.arch} model, not {self.arch}")
        check(self.vocab_size >= 0, "vocab_size must be >= 0")


@config_dataclass
class RayConfig:
    """`dump --engine ray`: the cluster and its workers. They decide who computes a block, never its bytes."""

    address: Optional[str] = setting(None, help="--engine ray: the cluster (auto, ray://host:port, host:port); none: "
                                                "$RAY_ADDRESS, else a local cluster.", flag="--ray-address",
                                     affects_output=False)
    workers: str = setting("1", help="--engine ray: workers MIN[:MAX], the actor pool's autoscaling range.",
                           affects_output=False)
    gpus_per_worker: float = setting(0.0, help="--engine ray: GPUs each worker reserves (0: CPU workers).",
                                     affects_output=False)
    cpus_per_worker: float = setting(1.0, help="--engine ray: CPUs each worker reserves.", affects_output=False)

    def __post_init__(self):
        worker_range(self.workers)
        check(self.gpus_per_worker >= 0 and self.cpus_per_worker >= 0, "gpus_per_worker and cpus_per_worker must be >= 0")


@config_dataclass
class DumpConfig:
    # affects_output=False: the paths (the resume check compares what they hold: the data's fingerprint, each
    # teacher's path and weights sha256 in the attributes) and the writer threads (each block's bytes are its
    # own: test_dump checks a parallel writer against one thread). batch_size, logit_budget_mb and device stay compared: they set
    # the GEMM shapes and kernels, and a GPU's BLAS picks kernels (reduction orders) by shape.
    data: Where = setting(help="Prepared data dir (a folder or a URL: WORK/data).", in_run=False, affects_output=False)
    teachers: tuple[Path, ...] = setting(help="A teacher model dir (repeat for an ensemble).", flag="--teacher", in_run=False,
                                         affects_output=False)
    out: Where = setting(help="The cache to write: a folder or a URL (WORK/cache.zarr, s3://bucket/prefix/cache.zarr).",
                         in_run=False, affects_output=False)
    split: Split = setting("train", help="Which split to cache.", in_run=False)
    top_k: int = setting(32, help="Ids kept per position (top-k targets).")
    temperature: float = setting(2.0, help="Distillation temperature T of the stored probabilities.")
    combine: Combine = setting("mean-logits", help=f"Ensemble rule: {combines_help()}.")
    prob_dtype: ProbDtype = setting("sqrt-u7", help=f"Probability code: {prob_codes_help()}.")
    targets: Targets = setting("topk", help="topk, sample (importance-sampled unique ids), or mass (per position the "
                                            "fewest top ids whose probability reaches --mass, at most --max-k, "
                                            "stored without padding).")
    mass: float = setting(0.95, help="Mass targets: keep top ids until their probability reaches this (0 < mass <= 1).")
    max_k: int = setting(64, help="Mass targets: at most this many ids per position.")
    samples: int = setting(16, help="Sampled targets: draws per position.")
    proposal_temperature: float = setting(1.0, help="Sampled targets: draw from p^(1/this), renormalised.")
    batch_size: int = setting(16, help="Chunks per teacher forward pass.")
    block_rows: int = setting(256, help="Rows per committed block (one storage chunk).")
    max_chunks: int = setting(0, help="Cache N chunks of the split (0: all); see --row-selection.")
    row_selection: RowSelection = setting("spread", help="With --max-chunks: spread (evenly over the split) or first.")
    seed: int = setting(0, help="Seed of the sampled targets.")
    device: Device = setting("auto", help="Where the teachers run: auto, cpu or cuda.")
    precision: Precision = setting("auto", help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16 or fp16.")
    writer_threads: int = setting(2, help="Threads that encode, compress and write blocks beside the teachers.",
                                  affects_output=False)
    logit_budget_mb: int = setting(1024, help="Working memory for the (rows, T, V) logit buffers: a batch runs in "
                                              "row slices that fit (bounds memory at any vocabulary).")
    teacher_weights: tuple[float, ...] = setting((), help="Comma-separated weights, one per --teacher in order, for "
                                                      "--combine mean-probs: each position's mean over the teachers "
                                                      "aligned there is weighted by them (empty: equal weights).")
    min_coverage: float = setting(0.5, help="A teacher with a tokenizer of its own must align with at least this "
                                            "fraction of the data's positions (measured on the chunks' text before "
                                            "anything is written), else the dump is refused.",
                                 affects_output=False)
    # the engine and its resources decide who computes a block, never its bytes (fixed batches per block)
    engine: Engine = setting("local", help="local (this process, or torchrun ranks), or ray: elastic workers of a "
                                           "Ray cluster, one task per block (pip install 'logitcache[ray]').",
                             affects_output=False)
    ray: RayConfig = setting(default_factory=RayConfig, help="--engine ray settings.", affects_output=False)

    def __post_init__(self):
        check(len(self.teachers) >= 1, "at least one teacher is required")
        _in(self.engine, Engine, "engine")
        check(self.logit_budget_mb > 0, "logit_budget_mb must be positive")
        check(self.writer_threads > 0, "writer_threads must be positive")
        check(all(w > 0 for w in self.teacher_weights), "every teacher weight must be positive")
        check(0.0 <= self.min_coverage <= 1.0, f"min_coverage must be in [0, 1], got {self.min_coverage}")
        _in(self.split, Split, "split")
        check(self.top_k > 0, f"top_k must be positive, got {self.top_k}")
        check(self.temperature > 0, f"temperature must be positive, got {self.temperature}")
        _in(self.combine, Combine, "combine")
        _in(self.prob_dtype, ProbDtype, "prob_dtype")
        _in(self.targets, Targets, "targets")
        check(0 < self.samples <= 255, f"samples must be in 1..255, got {self.samples}")
        check(0.0 < self.mass <= 1.0, f"mass must be in (0, 1], got {self.mass}")
        check(self.max_k > 0, f"max_k must be positive, got {self.max_k}")
        check(self.proposal_temperature > 0, "proposal_temperature must be positive")
        check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        check(self.block_rows > 0, f"block_rows must be positive, got {self.block_rows}")
        check(self.max_chunks >= 0, "max_chunks must be >= 0")
        _in(self.row_selection, RowSelection, "row_selection")
        _in(self.device, Device, "device")
        _in(self.precision, Precision, "precision")

    @property
    def width(self) -> int:
        """K: kept ids per position (top-k), the padded number of unique sampled ids, or the most ids a mass
        target keeps (max_k)."""
        return {"topk": self.top_k, "sample": self.samples, "mass": self.max_k}[self.targets]

    def output_settings(self) -> dict:
        """The settings that can change the cache's bytes (JSON values), as `dump --resume` compares them."""
        return dump_output_settings(json.loads(json.dumps(to_dict(self))))


def worker_range(text: str) -> tuple[int, int]:
    """--workers MIN[:MAX] as (min, max), 1 <= min <= max."""
    parts = str(text).split(":")
    try:
        low, high = int(parts[0]), int(parts[-1])
    except ValueError:
        low = high = 0
    check(len(parts) <= 2 and 1 <= low <= high, f"workers must be MIN or MIN:MAX with 1 <= MIN <= MAX, got {text!r}")
    return low, high


def dump_output_settings(values: dict) -> dict:
    """The output-affecting settings (affects_output) of a DumpConfig given as a dict (a cache's recorded
    `config`), less those the dump does not read: the sampling settings of a top-k dump, top_k of a
    sampled one, mass and max_k of both, row_selection without max_chunks. A setting missing from `values`
    (a recorded config without it) reads as its default."""
    targets = values.get("targets", "topk")
    unused = {"samples", "proposal_temperature", "seed"} if targets in ("topk", "mass") else {"top_k"}
    unused |= {"top_k"} if targets == "mass" else {"mass", "max_k"}
    if not values.get("max_chunks"):
        unused.add("row_selection")
    return {f.name: values.get(f.name, field_default(f)) for f in dataclasses.fields(DumpConfig)
            if f.metadata.get("affects_output", True) and f.name not in unused}


@config_dataclass
class StudentConfig:
    cache: Where = setting(help="The cache written by `logitcache dump`: a folder or a URL (s3://...).", in_run=False)
    data: Where = setting(help="Prepared data dir the cache was made from (a folder or a URL: WORK/data).", in_run=False)
    out: Path = setting(help="Output model dir.", in_run=False)
    preset: str = setting("llama-58m", help="Student preset (LLaMA by default); see --init-from.")
    init_from: Optional[Path] = setting(None, help="Instead of --preset: a Hugging Face model folder to continue from "
                                                   "(its weights), or a folder/file with only a config.json (random init).")
    alpha: float = setting(0.5, help="Weight of CE; 1 - alpha weighs T^2 KL. 1 = no distillation.")
    temperature: float = setting(0.0, help="Distillation temperature (0: the cache's; the resolved value is saved).")
    retemper: bool = setting(False, help="Allow a T other than the cache's (renormalises p^(Tc/T) over kept ids; approximate). "
                                         "Not needed (and not read) with --online-teacher, whose targets are exact at any T.")
    tail: Tail = setting("bucket", help="bucket (tail mass as one bucket) or renormalize (drop it). On a sampled "
                                        "cache: bucket is the importance-weighted estimate of the full KL, renormalize "
                                        "the KL renormalised over the drawn ids (weights unused).")
    kl_reduction: KLReduction = setting("token", help="token (mean per position) or paper (sum / sequences).")
    online_teachers: tuple[Path, ...] = setting((), help="Reference mode: full-vocabulary targets from this teacher "
                                                     "(repeatable).", flag="--online-teacher", in_run=False)
    loss_chunk_tokens: int = setting(-1, help="The loss from the student's final hidden states and head, this many "
                                              "tokens at a time, never holding (tokens x vocabulary) logits: -1 "
                                              "automatic (a chunk's fp32 logits buffer and scratch within 512 MB "
                                              "together; on CPU at least 1.25 x the hidden size), 0 off (the loss "
                                              "from the full logits). Heads it cannot reproduce "
                                              "exactly take the full logits, with a warning.")
    shuffle_buffer: int = setting(4096, help="Rows in the shuffle buffer (bounds memory).")
    prefetch_blocks: int = setting(4, help="Blocks decoded ahead of use.")
    skip_bad_blocks: bool = setting(False, help="Skip (and count) blocks that fail their checksum instead of stopping.")
    allow_eval_split: bool = setting(False, help="Train on a cache dumped from the dev or test split (the text the "
                                                 "student is evaluated on): refused without this.", in_run=False)
    train: TrainConfig = setting(default_factory=TrainConfig, help="Training loop settings.")

    def __post_init__(self):
        get_preset(self.preset)
        check(0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}")
        check(self.temperature >= 0, f"temperature must be positive (0: the cache's), got {self.temperature}")
        _in(self.tail, Tail, "tail")
        _in(self.kl_reduction, KLReduction, "kl_reduction")
        check(self.loss_chunk_tokens >= -1, f"loss_chunk_tokens must be -1 (automatic), 0 (off) or positive, got "
                                            f"{self.loss_chunk_tokens}")
        check(self.shuffle_buffer > 0, "shuffle_buffer must be positive")
        check(self.prefetch_blocks > 0, "prefetch_blocks must be positive")


@config_dataclass
class EvalConfig:
    models: tuple[Path, ...] = setting(help="Model dirs (Hugging Face format) to evaluate.", argument=True, in_run=False)
    data: Where = setting(help="Prepared data dir (a folder or a URL: WORK/data).", in_run=False)
    split: Split = setting("dev", help="Which split to score.", in_run=False)
    blimp: Optional[Path] = setting(None, help="BLiMP directory (one JSONL file per paradigm).")
    blimp_max_pairs: int = setting(0, help="At most this many pairs per paradigm (0: all).")
    teachers: tuple[Path, ...] = setting((), help="Teacher dir(s): report top-1 agreement and KL to their ensemble.",
                                         flag="--teacher", in_run=False)
    temperature: float = setting(1.0, help="Temperature of the teacher ensemble for agreement and KL.")
    combine: Combine = setting("mean-logits", help=f"Ensemble rule of the teachers for agreement and KL: {combines_help()}.")
    max_chunks: int = setting(0, help="Evaluate N chunks spread evenly over the split (0: all).")
    batch_size: int = setting(32, help="Chunks per forward pass.")
    device: Device = setting("auto", help="auto, cpu or cuda.")

    def __post_init__(self):
        check(len(self.models) > 0, "give at least one model dir")
        _in(self.split, Split, "split")
        check(self.batch_size > 0, "batch_size must be positive")
        check(self.max_chunks >= 0, "max_chunks must be >= 0")
        check(self.temperature > 0, "temperature must be positive")
        _in(self.combine, Combine, "combine")
        _in(self.device, Device, "device")


@config_dataclass
class CacheSizeConfig:
    data: Where = setting(help="Prepared data dir (a folder or a URL: WORK/data).")
    teachers: tuple[Path, ...] = setting(help="Teacher dir (repeat for an ensemble).", flag="--teacher")
    out: Path = setting(help="Output dir: cache_size.json/.md/.png and the caches.")
    ks: tuple[int, ...] = setting((1, 2, 4, 8, 16, 32, 64, 128, 256), help="Comma-separated k values.", flag="--k")
    prob_dtypes: tuple[ProbDtype, ...] = setting(("sqrt-u7",), help=f"Comma-separated probability codes: {prob_codes_help()}.",
                                                     flag="--prob-dtype")
    samples: tuple[int, ...] = setting((), help="Comma-separated draw counts for sampled-target rows (empty: none).")
    masses: tuple[float, ...] = setting((), help="Comma-separated masses for mass-target rows (dump --targets mass; "
                                                 "empty: none).", flag="--mass")
    max_k: int = setting(64, help="Mass-target rows: at most this many ids per position (dump --max-k).")
    chunks: int = setting(256, help="Number of train chunks to dump for each row.")
    temperature: float = setting(2.0, help="Distillation temperature T.")
    combine: Combine = setting("mean-logits", help=f"Ensemble rule: {combines_help()}.")
    train_steps: int = setting(0, help="Also distil a student from each cache for S steps (0: off).")
    student_preset: str = setting("llama-student-small", help="Student preset for --train-steps.")
    student_batch_size: int = setting(16, help="Student batch size for --train-steps.")
    student_lr: float = setting(2e-3, help="Student learning rate for --train-steps.")
    alpha: float = setting(0.5, help="Student alpha for --train-steps.")
    seed: int = setting(0, help="Seed of sampled targets and students.")
    student_seeds: tuple[int, ...] = setting((), help="Comma-separated seeds: with --train-steps, one student per seed "
                                                      "for every cache, student CE their mean (empty: --seed only).")

    def __post_init__(self):
        check(len(self.teachers) > 0, "give at least one --teacher")
        check(len(self.ks) + len(self.samples) + len(self.masses) > 0, "give at least one --k, --samples or --mass value")
        check(all(0.0 < m <= 1.0 for m in self.masses), "every mass must be in (0, 1]")
        check(self.max_k > 0, f"max_k must be positive, got {self.max_k}")
        check(all(k > 0 for k in self.ks), "every k must be positive")
        check(all(0 < n <= 255 for n in self.samples), "every sample count must be in 1..255")
        for dtype in self.prob_dtypes:
            _in(dtype, ProbDtype, "prob_dtype")
        check(self.chunks > 0, "chunks must be positive")
        check(self.temperature > 0, f"temperature must be positive, got {self.temperature}")
        check(self.train_steps >= 0, "train_steps must be >= 0")
        check(self.student_lr > 0, f"student_lr must be positive, got {self.student_lr}")
        check(self.student_batch_size > 0, f"student_batch_size must be positive, got {self.student_batch_size}")
        check(0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}")
        get_preset(self.student_preset)


KDFormat = Literal["axolotl"]


@config_dataclass
class ExportTargetsConfig:
    cache: Where = setting(help="The cache to export: a folder or a URL (s3://...).", argument=True)
    out: Path = setting(help="The folder to write: a Hugging Face `datasets` folder (save_to_disk).", argument=True)
    format: KDFormat = setting("axolotl", help="axolotl: the columns Axolotl's KD integration reads "
                                               "(input_ids, labels, attention_mask, target_token_ids, target_logprobs, "
                                               "target_mask).")
    max_rows: int = setting(0, help="Export the first N cache rows only (0: all).")

    def __post_init__(self):
        check(self.max_rows >= 0, "max_rows must be >= 0")
PlanDevice = Literal["cuda", "cpu"]


@config_dataclass
class PlanConfig:
    """`plan`: the per-GPU memory of a train-student configuration, estimated without training."""

    preset: str = setting("llama-58m", help="Student preset (as train-student --preset); see --init-from.")
    init_from: Optional[Path] = setting(None, help="Instead of --preset: a model folder or a config.json to plan.")
    vocab_size: int = setting(0, help="Vocabulary (0: the --init-from config's; needed with a preset).")
    seq_len: int = setting(128, help="Tokens per row (the data's seq_len).")
    batch_size: int = setting(32, help="Global batch, as train-student --batch-size: rows per step over all ranks.")
    grad_accum: int = setting(1, help="Micro-batches per step, as train-student --grad-accum.")
    world_size: int = setting(1, help="Ranks (GPUs) under torchrun.")
    fsdp: bool = setting(False, help="Shard with FSDP2, as train-student --fsdp.")
    activation_checkpointing: bool = setting(False, help="As train-student --activation-checkpointing.")
    precision: Precision = setting("auto", help="auto (bf16, a GPU's), fp32, bf16 or fp16.")
    loss_chunk_tokens: int = setting(-1, help="As train-student --loss-chunk-tokens: tokens per chunk of the fused "
                                              "head loss (-1: automatic), 0 the loss from the full logits.")
    top_k: int = setting(32, help="Target ids per position in the cache.")
    gpu_memory: float = setting(0.0, help="GiB per GPU: also name the largest batch that fits (0: off).")
    device: PlanDevice = setting("cuda", help="Where the step runs: cuda, or cpu (to check against a CPU run).")

    def __post_init__(self):
        get_preset(self.preset)
        for name in ("seq_len", "batch_size", "grad_accum", "world_size"):
            check(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        check(self.batch_size % (self.world_size * self.grad_accum) == 0,
              f"batch_size {self.batch_size} must be a multiple of world size x grad_accum "
              f"({self.world_size} x {self.grad_accum})")
        check(self.loss_chunk_tokens >= -1 and self.gpu_memory >= 0 and self.vocab_size >= 0,
              "loss_chunk_tokens must be -1 (automatic), 0 or positive; gpu_memory and vocab_size not negative")
        check(not self.fsdp or self.world_size > 1, "--fsdp shards over ranks: give --world-size 2 or more")
        _in(self.precision, Precision, "precision")
        _in(self.device, PlanDevice, "device")


@config_dataclass
class ExportConfig:
    src: Path = setting(help="A trained model folder (train-student or train-teacher --out).", argument=True)
    dst: Path = setting(help="The folder to write: Hugging Face format, ready for the BabyLM pipelines and the Hub.",
                        argument=True)
