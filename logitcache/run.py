"""`run`: the whole paper pipeline from one config, each stage skipped when its output is complete.

corpus -> prepare -> teachers -> dump -> students (distilled and baseline, per seed) -> eval -> report.
A stage is complete when its stamp file (`.stage.json`) holds the hash of the config that made it;
an interrupted stage resumes (teachers and students from their checkpoints, the dump from its done
markers), and a changed config redoes that stage.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .configs import check, config_hash, from_dict, to_dict, write_json_atomic
from .errors import LogitcacheError
from .progress import NULL_PROGRESS, ProgressHook
from .train import TrainConfig

log = logging.getLogger(__name__)

STAMP = ".stage.json"


@dataclass(frozen=True)
class DataSection:
    raw_dir: str = ""  # empty: the embedded demo corpus
    vocab_size: int = 16000
    seq_len: int = 128
    val_chunks: int = 8192

    def __post_init__(self):
        check(self.vocab_size >= 259, "data.vocab_size must be at least 259")


@dataclass(frozen=True)
class TeacherSection:
    name: str
    arch: str
    preset: str
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class DumpSection:
    top_k: int = 32
    temperature: float = 2.0
    combine: str = "mean-logits"
    prob_dtype: str = "sqrt-u7"
    targets: str = "topk"
    samples: int = 16
    batch_size: int = 16
    block_rows: int = 256
    max_chunks: int = 0


@dataclass(frozen=True)
class StudentSection:
    preset: str = "llama-58m"
    alpha: float = 0.5
    tail: str = "bucket"
    kl_reduction: str = "token"
    seeds: tuple[int, ...] = (0,)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        check(len(self.seeds) > 0, "student.seeds must list at least one seed")


@dataclass(frozen=True)
class EvalSection:
    max_chunks: int = 0
    blimp_dir: str = ""
    blimp_max_pairs: int = 0
    batch_size: int = 32


@dataclass(frozen=True)
class RunConfig:
    data: DataSection = field(default_factory=DataSection)
    teachers: tuple[TeacherSection, ...] = ()
    dump: DumpSection = field(default_factory=DumpSection)
    student: StudentSection = field(default_factory=StudentSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def __post_init__(self):
        check(len(self.teachers) > 0, "the config needs at least one [[teachers]] table")
        names = [t.name for t in self.teachers]
        check(len(set(names)) == len(names), f"teacher names must be unique, got {names}")


def default_config_path() -> Path:
    """configs/demo.toml, shipped inside the package as `logitcache.run_configs`."""
    from importlib.resources import files

    return Path(str(files("logitcache.run_configs") / "demo.toml"))


def load_run_config(path: Path | None) -> RunConfig:
    path = Path(path) if path else default_config_path()
    if not path.is_file():
        raise LogitcacheError(f"config file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise LogitcacheError(f"{path} is not valid TOML ({exc})") from None
    return from_dict(RunConfig, raw)


class Stages:
    """Stamps: which stage outputs are complete, for which config, and how long they took."""

    def __init__(self, work: Path, force: tuple[str, ...], progress: ProgressHook):
        self.work, self.force, self.progress = work, set(force), progress
        self.seconds: dict[str, float] = {}
        self.ran: list[str] = []

    def run(self, name: str, output: Path, config_key, action) -> None:
        stamp = output / STAMP if output.suffix != ".zarr" else output.with_name(output.name + STAMP)
        key = config_hash(config_key)
        forced = any(name == f or name.startswith(f + ":") for f in self.force)
        if stamp.exists() and not forced:
            saved = json.loads(stamp.read_text())
            if saved.get("config_hash") == key:
                self.seconds[name] = saved.get("seconds", 0.0)
                log.info("stage %s: complete, skipped", name)
                return
        if forced or stamp.exists():  # forced, or made with another config: start this stage over
            stamp.unlink(missing_ok=True)
            shutil.rmtree(output, ignore_errors=True)
        t0 = time.perf_counter()
        log.info("stage %s: running", name)
        action()
        self.seconds[name] = time.perf_counter() - t0
        self.ran.append(name)
        if output.suffix != ".zarr":
            output.mkdir(parents=True, exist_ok=True)
        write_json_atomic(stamp, {"config_hash": key, "seconds": self.seconds[name], "stage": name})


def run_pipeline(config: RunConfig, work: Path, force: tuple[str, ...] = (), progress: ProgressHook = NULL_PROGRESS) -> dict:
    from .corpus import build_demo_corpus
    from .data import PrepareConfig, prepare
    from .dump import DumpConfig, dump
    from .evaluate import EvalConfig, evaluate
    from .report import write_report
    from .student import StudentConfig, train_student
    from .teacher import TeacherConfig, train_teacher

    work = Path(work).resolve()  # stage stamps hash paths: `work/demo` and its absolute form are one WORK
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(work / "config.json", to_dict(config))
    stages = Stages(work, force, progress)

    raw = Path(config.data.raw_dir).resolve() if config.data.raw_dir else work / "raw"
    if not config.data.raw_dir:
        stages.run("corpus", raw, "demo-corpus-v1", lambda: build_demo_corpus(raw))
    elif not raw.is_dir():
        raise LogitcacheError(f"data.raw_dir {raw} does not exist")

    data_dir = work / "data"
    prep = PrepareConfig(data=raw, out=data_dir, vocab_size=config.data.vocab_size, seq_len=config.data.seq_len,
                         val_chunks=config.data.val_chunks)
    stages.run("prepare", data_dir, prep, lambda: prepare(prep, progress))

    teacher_dirs = []
    for section in config.teachers:
        out = work / "teachers" / section.name
        tcfg = TeacherConfig(data=data_dir, out=out, arch=section.arch, preset=section.preset, train=section.train)
        stages.run(f"teacher:{section.name}", out, (tcfg, prep),
                   lambda tcfg=tcfg: train_teacher(tcfg, resume=True, progress=progress))
        teacher_dirs.append(out)

    cache = work / "cache.zarr"
    d = config.dump
    dcfg = DumpConfig(data=data_dir, teachers=tuple(teacher_dirs), out=cache, top_k=d.top_k, temperature=d.temperature,
                      combine=d.combine, prob_dtype=d.prob_dtype, targets=d.targets, samples=d.samples,
                      batch_size=d.batch_size, block_rows=d.block_rows, max_chunks=d.max_chunks)
    stages.run("dump", cache, (dcfg, config.teachers, prep), lambda: _dump_resuming(dcfg, progress))

    students: dict[str, list[Path]] = {"distilled": [], "baseline": []}
    s = config.student
    for seed in s.seeds:
        for kind, alpha in (("distilled", s.alpha), ("baseline", 1.0)):
            out = work / "students" / f"{kind}-seed{seed}"
            scfg = StudentConfig(cache=cache, data=data_dir, out=out, preset=s.preset, alpha=alpha, tail=s.tail,
                                 kl_reduction=s.kl_reduction, train=dataclasses.replace(s.train, seed=seed))
            stages.run(f"student:{kind}:seed{seed}", out, (scfg, dcfg, config.teachers, prep),
                       lambda scfg=scfg: train_student(scfg, resume=True, progress=progress))
            students[kind].append(out)

    eval_dir = work / "eval"
    models = tuple(teacher_dirs) + tuple(students["distilled"]) + tuple(students["baseline"])
    e = config.eval
    results: dict[str, dict] = {}

    def do_eval():
        eval_dir.mkdir(parents=True, exist_ok=True)
        for split in ("dev", "test"):
            ecfg = EvalConfig(models=models, data=data_dir, split=split, max_chunks=e.max_chunks, batch_size=e.batch_size,
                              blimp=Path(e.blimp_dir) if e.blimp_dir and split == "dev" else None,
                              blimp_max_pairs=e.blimp_max_pairs)
            write_json_atomic(eval_dir / f"{split}.json", evaluate(ecfg, progress))

    stages.run("eval", eval_dir, (e, config.teachers, config.student, dcfg, prep), do_eval)
    for split in ("dev", "test"):
        results[split] = json.loads((eval_dir / f"{split}.json").read_text())
    return write_report(work, config, teacher_dirs, students, cache, results, stages.seconds)


def _dump_resuming(dcfg, progress) -> None:
    """A dump interrupted earlier continues from its done markers (same config guaranteed by the stamp)."""
    from .dump import dump

    try:
        dump(dcfg, resume=dcfg.out.exists(), progress=progress)
    except LogitcacheError as exc:
        if "different config" not in str(exc) and "layout differs" not in str(exc):
            raise
        log.info("cache in %s was made with another config: starting it over", dcfg.out)
        shutil.rmtree(dcfg.out)
        dump(dcfg, resume=False, progress=progress)
