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

from .configs import check, config_hash, from_dict, section_of, settings_of, to_dict, write_json_atomic
from .store.location import Location, is_url
from .errors import LogitcacheError
from .progress import NULL_PROGRESS, ProgressHook
from .stage_configs import DumpConfig, EvalConfig, PrepareConfig, StudentConfig, TeacherConfig

log = logging.getLogger(__name__)

STAMP = ".stage.json"


def _run_only(help: str, **default):
    """A key of run's TOML that no stage config has (where the raw text is, the teachers' names, the seeds)."""
    return dataclasses.field(**default, metadata={"help": help, "run_only": True})


# Each section is derived from its stage config (configs.section_of): the same keys, types, defaults
# and help as the CLI options, minus the paths and wiring that `run` fills in itself.
DataSection = section_of(PrepareConfig, "DataSection", extra=[
    ("raw_dir", str, _run_only("Raw text in the BabyLM layout; empty: the embedded demo corpus.", default="")),
])
TeacherSection = section_of(TeacherConfig, "TeacherSection", extra=[
    ("name", str, _run_only("The teacher's name: its folder WORK/teachers/NAME.")),
])
DumpSection = section_of(DumpConfig, "DumpSection", extra=[
    ("cache", str, _run_only("Where the cache goes: empty for WORK/cache.zarr, or a URL (s3://bucket/prefix/cache.zarr).",
                             default="")),
])
StudentSection = section_of(StudentConfig, "StudentSection", extra=[
    ("seeds", tuple[int, ...], _run_only("Train each arm once per seed (empty: once, with train.seed).", default=())),
])
EvalSection = section_of(EvalConfig, "EvalSection")


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

    @property
    def student_seeds(self) -> tuple[int, ...]:
        return self.student.seeds or (self.student.train.seed,)


def default_config_path() -> Path:
    """configs/demo.toml, shipped inside the package as `logitcache.run_configs`."""
    from importlib.resources import files

    return Path(str(files("logitcache.run_configs") / "demo.toml"))


def parse_override(text: str) -> tuple[list[str], object]:
    """'student.train.max_steps=20' -> (['student', 'train', 'max_steps'], 20); the value is read as
    TOML (numbers, booleans, strings in quotes, [lists]) and otherwise taken as a bare string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise LogitcacheError(f"--set takes KEY=VALUE, got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip().split("."), parsed


def apply_override(raw: dict, path: list[str], value) -> None:
    """Set one dotted key in the raw TOML dict; `teachers.NAME.rest` addresses the teacher named NAME."""
    node = raw
    for i, part in enumerate(path[:-1]):
        if part == "teachers" and node is raw:
            name = path[i + 1] if i + 1 < len(path) - 1 else None
            matches = [t for t in raw.get("teachers", []) if t.get("name") == name]
            if not matches:
                known = ", ".join(t.get("name", "?") for t in raw.get("teachers", []))
                raise LogitcacheError(f"--set {'.'.join(path)}: no teacher named {name!r} (teachers: {known})")
            return apply_override(matches[0], path[i + 2:], value)
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise LogitcacheError(f"--set {'.'.join(path)}: '{part}' is a value, not a table")
        node = child
    node[path[-1]] = value


def load_run_config(path: Path | None, overrides: tuple[str, ...] = ()) -> RunConfig:
    """The TOML at `path` (default: the demo) with `--set` overrides; unknown keys are refused by name, and
    every stage config is built once with placeholder paths so a bad value fails now, not hours later."""
    path = Path(path) if path else default_config_path()
    if not path.is_file():
        raise LogitcacheError(f"config file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise LogitcacheError(f"{path} is not valid TOML ({exc})") from None
    for text in overrides:
        apply_override(raw, *parse_override(text))
    config = from_dict(RunConfig, raw)
    stage_configs(config, Path("WORK"))
    return config


def stage_configs(config: RunConfig, work: Path) -> dict:
    """Every stage's config, wired to its place under `work`: the one place sections become stage configs."""
    data_dir, cache = work / "data", config.dump.cache or work / "cache.zarr"
    raw = Path(config.data.raw_dir).resolve() if config.data.raw_dir else work / "raw"
    out = {"raw": raw, "prepare": PrepareConfig(data=raw, out=data_dir, **settings_of(config.data))}
    out["teachers"] = {t.name: TeacherConfig(data=data_dir, out=work / "teachers" / t.name, **settings_of(t))
                       for t in config.teachers}
    teacher_dirs = tuple(t.out for t in out["teachers"].values())
    out["dump"] = DumpConfig(data=data_dir, teachers=teacher_dirs, out=cache, **settings_of(config.dump))
    s = config.student
    out["students"] = {}
    for seed in config.student_seeds:
        for kind, alpha in (("distilled", s.alpha), ("baseline", 1.0)):
            settings = settings_of(s) | {"alpha": alpha, "train": dataclasses.replace(s.train, seed=seed)}
            out["students"][(kind, seed)] = StudentConfig(cache=cache, data=data_dir, out=work / "students" / f"{kind}-seed{seed}",
                                                          **settings)
    models = teacher_dirs + tuple(c.out for c in out["students"].values())
    out["eval"] = {split: EvalConfig(models=models, data=data_dir, split=split,
                                     **(settings_of(config.eval) | ({"blimp": None} if split != "dev" else {})))
                   for split in ("dev", "test")}
    return out


class Stages:
    """Stamps: which stage outputs are complete, for which config, and how long they took."""

    def __init__(self, work: Path, force: tuple[str, ...], progress: ProgressHook):
        self.work, self.force, self.progress = work, set(force), progress
        self.seconds: dict[str, float] = {}
        self.ran: list[str] = []

    def run(self, name: str, output: "Path | str", config_key, action) -> None:
        remote = is_url(output)  # a cache in object storage: its stamp stays in WORK
        if remote:
            stamp = self.work / f"{name}{STAMP}"
        else:
            output = Path(output)
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
            if remote:
                Location(output).delete_all()
            else:
                shutil.rmtree(output, ignore_errors=True)
        t0 = time.perf_counter()
        log.info("stage %s: running", name)
        action()
        self.seconds[name] = time.perf_counter() - t0
        self.ran.append(name)
        if not remote and output.suffix != ".zarr":
            output.mkdir(parents=True, exist_ok=True)
        write_json_atomic(stamp, {"config_hash": key, "seconds": self.seconds[name], "stage": name})


def run_pipeline(config: RunConfig, work: Path, force: tuple[str, ...] = (), progress: ProgressHook = NULL_PROGRESS) -> dict:
    from .corpus import build_demo_corpus
    from .data import prepare
    from .evaluate import evaluate
    from .report import write_report
    from .student import train_student
    from .teacher import train_teacher

    work = Path(work).resolve()  # stage stamps hash paths: `work/demo` and its absolute form are one WORK
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(work / "config.json", to_dict(config))
    stages = Stages(work, force, progress)
    configs = stage_configs(config, work)

    raw = configs["raw"]
    if not config.data.raw_dir:
        stages.run("corpus", raw, "demo-corpus-v1", lambda: build_demo_corpus(raw))
    elif not raw.is_dir():
        raise LogitcacheError(f"data.raw_dir {raw} does not exist")

    prep = configs["prepare"]
    stages.run("prepare", prep.out, prep, lambda: prepare(prep, progress))

    teacher_dirs = []
    for name, tcfg in configs["teachers"].items():
        stages.run(f"teacher:{name}", tcfg.out, (tcfg, prep),
                   lambda tcfg=tcfg: train_teacher(tcfg, resume=True, progress=progress))
        teacher_dirs.append(tcfg.out)

    dcfg = configs["dump"]
    stages.run("dump", dcfg.out, (dcfg, config.teachers, prep), lambda: _dump_resuming(dcfg, progress))

    students: dict[str, list[Path]] = {"distilled": [], "baseline": []}
    for (kind, seed), scfg in configs["students"].items():
        stages.run(f"student:{kind}:seed{seed}", scfg.out, (scfg, dcfg, config.teachers, prep),
                   lambda scfg=scfg: train_student(scfg, resume=True, progress=progress))
        students[kind].append(scfg.out)

    eval_dir = work / "eval"
    results: dict[str, dict] = {}

    def do_eval():
        eval_dir.mkdir(parents=True, exist_ok=True)
        for split, ecfg in configs["eval"].items():
            write_json_atomic(eval_dir / f"{split}.json", evaluate(ecfg, progress))

    stages.run("eval", eval_dir, (configs["eval"]["dev"], config.teachers, config.student, dcfg, prep), do_eval)
    for split in ("dev", "test"):
        results[split] = json.loads((eval_dir / f"{split}.json").read_text())
    return write_report(work, config, teacher_dirs, students, dcfg.out, results, stages.seconds)


def _dump_resuming(dcfg, progress) -> None:
    """A dump interrupted earlier continues from its done markers (same config guaranteed by the stamp)."""
    from .dump import dump

    try:
        dump(dcfg, resume=Location(dcfg.out).exists(), progress=progress)
    except LogitcacheError as exc:
        if "different config" not in str(exc) and "layout differs" not in str(exc):
            raise
        log.info("cache in %s was made with another config: starting it over", dcfg.out)
        Location(dcfg.out).delete_all()
        dump(dcfg, resume=False, progress=progress)
