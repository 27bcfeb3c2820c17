"""`run`: the whole paper pipeline from one config, each stage skipped when its output is complete.

corpus -> prepare -> teachers -> dump -> students (distilled and baseline, per seed) -> eval -> report.
A teacher on a tokenizer of its own (`tokenizer_vocab_size` or `tokenizer` in its table) gets its own
data dir, WORK/data-NAME: the same documents, cleaners and splits tokenized by its tokenizer (stage
prepare:NAME); it trains and is scored there, and its folder holds that tokenizer. The dump, the
students and their eval use WORK/data (the student's vocabulary).
A stage is complete when its stamp (`.stage.json`) holds the hash of its config and the fingerprints
of the outputs it read; a stage that reruns changes its fingerprint, so every stage after it reruns
too. An interrupted stage resumes (teachers and students from their checkpoints, the dump from its
done markers). The dump's stamp lives in WORK, and `run` replaces only a cache that stamp says this
WORK made (or with --force dump): a cache made elsewhere with another config is refused, untouched.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ._settings import check, config_hash, from_dict, section_of, settings_of, to_dict
from .config import DumpConfig, EvalConfig, PrepareConfig, StudentConfig, TeacherConfig
from .errors import LogitcacheError, ResumeMismatchError
from .files import write_json_atomic
from .progress import NULL_PROGRESS, ProgressHook
from .store.cache import delete_cache, root_attrs
from .store.backends import as_location
from .teachers.combines import refuse_mean_logits

log = logging.getLogger(__name__)

STAMP = ".stage.json"
MIN_BPE_VOCAB = 259  # a trained byte-level BPE holds the 256 bytes and <pad>, <s>, </s>


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
    ("tokenizer_vocab_size", int, _run_only(
        "Train this teacher on a byte-level BPE of its own with this many ids, trained on the same cleaned "
        "training text (its data: WORK/data-NAME). 0: the data's tokenizer.", default=0)),
    ("tokenizer", str, _run_only(
        "Train this teacher on this tokenizer (a tokenizer.json, or a folder with one or with files transformers "
        "loads as a fast tokenizer) instead of the data's; its data WORK/data-NAME is the same text tokenized "
        "by it. Empty: the data's tokenizer.", default="")),
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
        for teacher in self.teachers:
            self._check_own_tokenizer(teacher)
        own = [t.name for t in self.teachers if own_tokenizer(t)]
        refuse_mean_logits(self.dump.combine, own, 'dump.combine = "{}"')

    def _check_own_tokenizer(self, teacher) -> None:
        where, size = f"teachers.{teacher.name}", teacher.tokenizer_vocab_size
        check(not (size and teacher.tokenizer), f"{where}: set tokenizer_vocab_size (a BPE of its own) or tokenizer "
                                                 "(an existing one), not both")
        check(size == 0 or size >= MIN_BPE_VOCAB, f"{where}.tokenizer_vocab_size must be at least {MIN_BPE_VOCAB} "
                                                  f"(256 bytes + 3 specials; 0: the data's tokenizer), got {size}")
        # the same text, trainer and size give the data's own BPE: a second copy of WORK/data
        check(not (size == self.data.vocab_size and self.data.tokenizer is None),
              f"{where}.tokenizer_vocab_size = {size} is data.vocab_size: that BPE is the data's tokenizer; drop the "
              "key to train the teacher on the data's tokenizer")

    @property
    def student_seeds(self) -> tuple[int, ...]:
        return self.student.seeds or (self.student.train.seed,)


def own_tokenizer(teacher) -> bool:
    """Whether a [[teachers]] table trains its teacher on a tokenizer other than the data's."""
    return bool(teacher.tokenizer_vocab_size or teacher.tokenizer)


def shipped_configs() -> dict[str, Path]:
    """{name: path} of the recipes shipped inside the package (logitcache/recipes/*.toml; `configs/` in the
    repository is a link to that folder)."""
    from importlib.resources import files

    folder = Path(str(files("logitcache.recipes")))
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def default_config_path() -> Path:
    """The demo recipe, logitcache/recipes/demo.toml."""
    return shipped_configs()["demo"]


def find_config(path: Path | None) -> Path:
    """The TOML file `path`, or a shipped config by name (`demo-mixed` or `demo-mixed.toml`); the demo without one."""
    if path is None:
        return default_config_path()
    path = Path(path)
    if path.is_file():
        return path
    shipped = shipped_configs()
    if path.parent == Path(".") and path.name.removesuffix(".toml") in shipped:
        return shipped[path.name.removesuffix(".toml")]
    raise LogitcacheError(f"config file {path} does not exist (shipped configs, by name: {', '.join(shipped)})")


def default_work_dir(config: Path | None) -> Path:
    """WORK when `run` is given no --out: work/<the config's name>, so two configs never share (and restage)
    one work dir: work/demo for the demo, work/demo-mixed for `--config demo-mixed`, work/my-run for my-run.toml."""
    return Path("work") / find_config(config).name.removesuffix(".toml")


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
    path = find_config(path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise LogitcacheError(f"{path} is not valid TOML ({exc})") from None
    for text in overrides:
        apply_override(raw, *parse_override(text))
    student = raw.get("student", {})
    if student.get("seeds") and "seed" in student.get("train", {}):
        raise LogitcacheError(f"student.train.seed is not used when student.seeds is set (student.seeds = "
                              f"{student['seeds']} gives each arm's seeds): set student.seeds=[{student['train']['seed']}] "
                              "instead, or student.seeds=[] to train once with student.train.seed")
    config = from_dict(RunConfig, raw)
    check_teacher_tokenizers(config)
    build_stage_configs(config, Path("WORK"))
    return config


def check_teacher_tokenizers(config: RunConfig) -> None:
    """Refuse, by key, a teacher `tokenizer` path that does not exist or holds no tokenizer."""
    from .data.tokenizer import find_tokenizer

    for teacher in config.teachers:
        if not teacher.tokenizer:
            continue
        where, path = f"teachers.{teacher.name}.tokenizer", Path(teacher.tokenizer).expanduser().resolve()
        if not path.exists():
            raise LogitcacheError(f"{where}: {path} does not exist")
        try:
            found = find_tokenizer(path)
        except LogitcacheError as exc:
            raise LogitcacheError(f"{where}: {exc}") from None
        if found is None:
            raise LogitcacheError(f"{where}: {path} holds no tokenizer (a tokenizer.json, or a folder with one or with "
                                  "files transformers loads as a fast tokenizer)")


def build_stage_configs(config: RunConfig, work: Path) -> dict:
    """Every stage's config, wired to its place under `work`: the one place sections become stage configs."""
    data_dir, cache = work / "data", config.dump.cache or work / "cache.zarr"
    raw = Path(config.data.raw_dir).resolve() if config.data.raw_dir else work / "raw"
    out = {"raw": raw, "prepare": PrepareConfig(data=raw, out=data_dir, **settings_of(config.data))}
    # a teacher on its own tokenizer: the same raw text, cleaners, splits and seq_len, another tokenizer
    out["teacher_prepare"] = {t.name: PrepareConfig(data=raw, out=work / f"data-{t.name}",
                                                    **(settings_of(config.data) | _tokenizer_settings(t)))
                              for t in config.teachers if own_tokenizer(t)}
    teacher_data = {name: pcfg.out for name, pcfg in out["teacher_prepare"].items()}
    out["teachers"] = {t.name: TeacherConfig(data=teacher_data.get(t.name, data_dir), out=work / "teachers" / t.name,
                                             **settings_of(t)) for t in config.teachers}
    teacher_dirs = tuple(t.out for t in out["teachers"].values())
    out["dump"] = DumpConfig(data=data_dir, teachers=teacher_dirs, out=cache, **settings_of(config.dump))
    s = config.student
    out["students"] = {}
    for seed in config.student_seeds:
        for kind, alpha in (("distilled", s.alpha), ("baseline", 1.0)):
            settings = settings_of(s) | {"alpha": alpha, "train": dataclasses.replace(s.train, seed=seed)}
            out["students"][(kind, seed)] = StudentConfig(cache=cache, data=data_dir, out=work / "students" / f"{kind}-seed{seed}",
                                                          **settings)
    shared = tuple(out["teachers"][t.name].out for t in config.teachers if not own_tokenizer(t))
    models = shared + tuple(c.out for c in out["students"].values())
    # dev: BLiMP and KL / top-1 agreement with the ensemble of the teachers on the data's tokenizer
    # (eval.temperature, eval.combine); test: CE alone. A teacher on its own tokenizer is scored on its own data.
    dev_only = {"dev": {"teachers": shared}, "test": {"blimp": None}}
    out["eval"] = {split: EvalConfig(models=models, data=data_dir, split=split, **(settings_of(config.eval) | dev_only[split]))
                   for split in ("dev", "test")}
    out["teacher_eval"] = {
        name: {split: EvalConfig(models=(out["teachers"][name].out,), data=pcfg.out, split=split,
                                 **(settings_of(config.eval) | {"teachers": ()} | ({"blimp": None} if split == "test" else {})))
               for split in ("dev", "test")}
        for name, pcfg in out["teacher_prepare"].items()}
    return out


def _tokenizer_settings(teacher) -> dict:
    """PrepareConfig's tokenizer keys for a teacher on its own tokenizer: a BPE of tokenizer_vocab_size, or the
    tokenizer at `tokenizer` (vocab_size then unused, left at its default so data.vocab_size does not reach it)."""
    if teacher.tokenizer:
        unused = next(f.default for f in dataclasses.fields(PrepareConfig) if f.name == "vocab_size")
        return {"tokenizer": Path(teacher.tokenizer).expanduser().resolve(), "vocab_size": unused}
    return {"tokenizer": None, "vocab_size": teacher.tokenizer_vocab_size}


def prepare_key(pcfg: PrepareConfig):
    """What a prepare stage's stamp hashes: its config and, for an existing tokenizer, what that tokenizer
    does (tokenizer identity), so a tokenizer replaced at the same path prepares again."""
    from .data.tokenizer import folder_tokenizer_identity

    return pcfg if pcfg.tokenizer is None else (pcfg, folder_tokenizer_identity(pcfg.tokenizer))


class Stages:
    """Stamps: which stage outputs are complete, for which config and which upstream outputs.

    A stage's stamp holds the hash of its config, its inputs (the fingerprints of the stages it reads)
    and, once complete, the fingerprint of its own output: the data's content fingerprint for prepare,
    the cache's creation time for the dump, a fresh id for every other run. So a stage that reruns and
    changes its output redoes every stage after it. The stamp is written before the stage runs
    (`complete: false`), so an interrupted stage resumes only with the same config and inputs."""

    def __init__(self, work: Path, force: tuple[str, ...], progress: ProgressHook):
        self.work, self.force, self.progress = work, tuple(force), progress
        self.seconds: dict[str, float] = {}
        self.fingerprints: dict[str, str] = {}
        self.ran: list[str] = []
        self.reused: list[str] = []

    def forced(self, name: str) -> bool:
        return any(name == f or name.startswith(f + ":") for f in self.force)

    def _inputs(self, after) -> dict[str, str]:
        return {name: self.fingerprints[name] for name in after}

    def _reuse(self, name: str, saved: dict) -> None:
        self.seconds[name] = saved.get("seconds", 0.0)
        self.fingerprints[name] = saved["fingerprint"]
        self.reused.append(name)
        log.info("stage %s: complete, reused", name)

    def _run(self, name: str, stamp: Path, action, record: dict, fingerprint) -> None:
        write_json_atomic(stamp, record | {"complete": False})
        t0 = time.perf_counter()
        log.info("stage %s: running", name)
        action()
        self.seconds[name] = time.perf_counter() - t0
        self.fingerprints[name] = fingerprint() or uuid.uuid4().hex
        self.ran.append(name)
        write_json_atomic(stamp, record | {"complete": True, "seconds": self.seconds[name],
                                           "fingerprint": self.fingerprints[name]})

    def run(self, name: str, output: Path, config_key, action, after=(), fingerprint=lambda: None,
            outdated=lambda: False) -> None:
        """A stage whose output is a folder of this WORK, its stamp inside it; `outdated()` says whether a
        complete output lacks something this run needs (it is then made again, as with --force)."""
        output = Path(output)
        stamp = output / STAMP
        record = {"stage": name, "config_hash": config_hash(config_key), "inputs": self._inputs(after)}
        saved = _read_stamp(stamp)
        same = saved is not None and _same(saved, record)
        redo = self.forced(name) or (same and saved.get("complete") and outdated())
        if same and saved.get("complete") and not redo:
            return self._reuse(name, saved)
        if redo or (saved is not None and not same):  # start over; else resume what is there
            shutil.rmtree(output, ignore_errors=True)
        output.mkdir(parents=True, exist_ok=True)
        self._run(name, stamp, action, record, fingerprint)

    def run_dump(self, dcfg, action, after) -> None:
        """The dump: its cache may be outside WORK (another folder, a bucket) and shared, so its stamp
        stays in WORK and names the cache this WORK made (path and creation time). The cache is replaced
        only when that stamp says this WORK made it, or with --force dump; any other cache is resumed
        when it matches this config and refused by the resume check otherwise. The stamp hashes what can
        change the cache's bytes (DumpConfig.output_settings) and where it reads from: a speed setting
        changed in the TOML (writer_threads) reuses or resumes the cache, never replaces it."""
        out, name = as_location(dcfg.out), "dump"
        stamp = self.work / f"{name}{STAMP}"
        key = dcfg.output_settings() | {"data": str(dcfg.data), "teachers": [str(t) for t in dcfg.teachers]}
        record = {"stage": name, "config_hash": config_hash(key), "inputs": self._inputs(after),
                  "cache": str(dcfg.out)}
        saved, found = _read_stamp(stamp), root_attrs(out)
        # a stamp hashing the whole DumpConfig (speed settings included) names the same config when they agree
        same = saved is not None and (_same(saved, record) or _same(saved, record | {"config_hash": config_hash(dcfg)}))
        made_here = (saved is not None and saved.get("made_here") and saved.get("cache") == str(dcfg.out)
                     and found is not None and found.get("created") == saved.get("created"))
        if same and saved.get("complete") and made_here and not self.forced(name):
            return self._reuse(name, saved)
        if self.forced(name) and out.exists():
            log.warning("--force dump: replacing %s", dcfg.out)
            delete_cache(out)
        elif made_here and not same:
            log.warning("replacing %s (this WORK made it with another config or other inputs)", dcfg.out)
            delete_cache(out)
        resuming_own = same and not saved.get("complete") and saved.get("made_here")  # this WORK's interrupted dump
        record["made_here"] = bool(resuming_own or not out.exists())

        def created() -> str | None:
            record["created"] = (root_attrs(out) or {}).get("created")
            return record["created"]

        self._run(name, stamp, action, record, created)


def _read_stamp(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _same(saved: dict, record: dict) -> bool:
    return saved.get("config_hash") == record["config_hash"] and saved.get("inputs") == record["inputs"]


def stage_names(config: RunConfig) -> list[str]:
    """Every stage of this config, in pipeline order (the names --force takes, or their prefixes)."""
    names = ([] if config.data.raw_dir else ["corpus"]) + ["prepare"]
    names += [f"prepare:{t.name}" for t in config.teachers if own_tokenizer(t)] + [f"teacher:{t.name}" for t in config.teachers]
    names += ["dump"] + [f"student:{kind}:seed{seed}" for seed in config.student_seeds for kind in ("distilled", "baseline")]
    return names + ["eval"]


def check_force(config: RunConfig, force: tuple[str, ...]) -> None:
    names = stage_names(config)
    for f in force:
        if not any(n == f or n.startswith(f + ":") for n in names):
            raise LogitcacheError(f"--force {f}: no such stage (stages: {', '.join(names)}; "
                                  "prepare, teacher and student name them all)")


def run_pipeline(config: RunConfig, work: Path, force: tuple[str, ...] = (), progress: ProgressHook = NULL_PROGRESS) -> dict:
    from .data.corpus import build_demo_corpus
    from .prepare import prepare
    from .report import write_report
    from .train_student import train_student
    from .train_teacher import train_teacher

    check_force(config, force)
    if config.eval.blimp is not None:  # a bad BLiMP record is refused now, not after the models are trained
        from .evaluate import load_blimp

        load_blimp(config.eval.blimp, config.eval.blimp_max_pairs)
    work = Path(work).resolve()  # stage stamps hash paths: `work/demo` and its absolute form are one WORK
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(work / "config.json", to_dict(config))
    stages = Stages(work, force, progress)
    configs = build_stage_configs(config, work)

    raw = configs["raw"]
    upstream: tuple[str, ...] = ()
    if not config.data.raw_dir:
        stages.run("corpus", raw, "demo-corpus-v1", lambda: build_demo_corpus(raw))
        upstream = ("corpus",)
    elif not raw.is_dir():
        raise LogitcacheError(f"data.raw_dir {raw} does not exist")

    prepares = {"prepare": configs["prepare"]} | {f"prepare:{name}": pcfg for name, pcfg in configs["teacher_prepare"].items()}
    # a teacher on its own tokenizer reads the text of the chunks it dumps: data prepared without it is made again
    needs_text = configs["dump"].split if configs["teacher_prepare"] else None
    main = configs["prepare"]
    stages.run("prepare", main.out, prepare_key(main), lambda: prepare(main, resume=True, progress=progress), after=upstream,
               fingerprint=lambda: _data_fingerprint(main.out),
               outdated=lambda: needs_text is not None and _lacks_text(main.out, needs_text))
    for name, pcfg in configs["teacher_prepare"].items():
        stages.run(f"prepare:{name}", pcfg.out, prepare_key(pcfg), lambda pcfg=pcfg: prepare(pcfg, resume=True, progress=progress),
                   after=upstream, fingerprint=lambda pcfg=pcfg: _data_fingerprint(pcfg.out))

    teacher_dirs, teacher_stages = [], tuple(f"teacher:{name}" for name in configs["teachers"])
    for name, tcfg in configs["teachers"].items():
        data_stage = f"prepare:{name}" if name in configs["teacher_prepare"] else "prepare"
        stages.run(f"teacher:{name}", tcfg.out, tcfg, lambda tcfg=tcfg: train_teacher(tcfg, resume=True, progress=progress),
                   after=(data_stage,))
        teacher_dirs.append(tcfg.out)

    dcfg = configs["dump"]
    stages.run_dump(dcfg, lambda: _dump_resuming(dcfg, progress), after=("prepare",) + teacher_stages)

    students: dict[str, list[Path]] = {"distilled": [], "baseline": []}
    student_stages = []
    for (kind, seed), scfg in configs["students"].items():
        stages.run(f"student:{kind}:seed{seed}", scfg.out, scfg,
                   lambda scfg=scfg: train_student(scfg, resume=True, progress=progress), after=("prepare", "dump"))
        students[kind].append(scfg.out)
        student_stages.append(f"student:{kind}:seed{seed}")

    results = run_eval(stages, configs, work / "eval", teacher_dirs,
                       after=tuple(prepares) + teacher_stages + tuple(student_stages), progress=progress)
    return write_report(work, config, teacher_dirs, students, dcfg.out, results, stages.seconds, stages.ran)


def run_eval(stages: Stages, configs: dict, eval_dir: Path, teacher_dirs: list[Path], after: tuple[str, ...],
             progress: ProgressHook) -> dict:
    """The eval stage: every model on dev and test (a teacher on its own tokenizer on its own data), written
    to eval_dir/SPLIT.json in teacher-then-student order; returns {split: that json}."""
    from .evaluate import evaluate

    def do_eval():
        for split, ecfg in configs["eval"].items():
            scored = {m["path"]: m for m in evaluate(ecfg, progress)["models"]}
            for own in configs["teacher_eval"].values():  # a teacher on its own tokenizer, on its own data
                scored |= {m["path"]: m | {"data": str(own[split].data)} for m in evaluate(own[split], progress)["models"]}
            order = [str(p) for p in teacher_dirs] + [str(p) for p in ecfg.models if p not in teacher_dirs]
            write_json_atomic(eval_dir / f"{split}.json", {"models": [scored[path] for path in order]})

    eval_key = (tuple(configs["eval"].values()),
                tuple((name, tuple(own.values())) for name, own in configs["teacher_eval"].items()))
    stages.run("eval", eval_dir, eval_key if configs["teacher_eval"] else eval_key[0], do_eval, after=after)
    return {split: json.loads((eval_dir / f"{split}.json").read_text()) for split in ("dev", "test")}


def _lacks_text(data_dir: Path, split: str) -> bool:
    """Whether a prepared data dir records no text for `split` (data prepared before prepare recorded it)."""
    from .data.prepared import load_data

    lacks = not load_data(data_dir).store.has_text(split)
    if lacks:
        log.warning("%s records no text for split %s (a teacher with a tokenizer of its own reads it): preparing "
                    "it again", data_dir, split)
    return lacks


def _data_fingerprint(data_dir: Path) -> str | None:
    """The content fingerprint prepare recorded (tokenizer and every split's tokens)."""
    report = data_dir / "prepare_report.json"
    return json.loads(report.read_text()).get("fingerprint") if report.exists() else None


def _dump_resuming(dcfg, progress) -> None:
    """Write the cache, or continue the one at `dcfg.out` when it was made with this config; a cache
    made with another config is refused (one line naming it and what differs) and left as it is."""
    from .dump import dump

    try:
        dump(dcfg, resume=as_location(dcfg.out).exists(), progress=progress)
    except ResumeMismatchError as exc:
        what = (f"cache {dcfg.out} was made with another config ({', '.join(exc.differences)})" if exc.differences
                else str(exc))
        raise LogitcacheError(f"{what}; run replaces only a cache its own WORK made: pass --force dump to replace "
                              "it, or --cache (dump.cache) to put this run's cache elsewhere") from None


