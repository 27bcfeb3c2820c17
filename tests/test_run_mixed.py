"""`run` with teachers on tokenizers of their own: the [[teachers]] keys tokenizer_vocab_size and tokenizer,
each such teacher's data dir (the same documents, its tokenizer), its folder's tokenizer, and the stage
stamps that rerun what depends on it. These tests stop the pipeline at the dump (monkeypatched), so they
hold whatever the dump does with such teachers."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from logitcache.errors import LogitcacheError
from logitcache.run import load_run_config, run_pipeline, build_stage_configs, stage_names
from test_run import TINY

TEACHER_VOCAB = 280  # the data's BPE has 300 ids (TINY)


def blimp_of(tmp_path: Path) -> Path:
    """tmp_path/blimp with a few BLiMP pairs (made once): run checks BLiMP before any stage."""
    from test_evaluate import blimp_dir

    return tmp_path / "blimp" if (tmp_path / "blimp").is_dir() else blimp_dir(tmp_path)


def mixed_toml(raw: Path, blimp: Path, gpt2_keys: str = f"tokenizer_vocab_size = {TEACHER_VOCAB}",
               extra_teacher: str = "") -> str:
    text = TINY.format(raw=raw, blimp=blimp).replace("seeds = [0, 1]", "seeds = [0]")
    text = text.replace('preset = "gpt2-tiny"\n', f'preset = "gpt2-tiny"\n{gpt2_keys}\n')
    text = text.replace("[dump]\n", '[dump]\ncombine = "mean-probs"\n')
    return text.replace("[dump]\n", extra_teacher + "[dump]\n") if extra_teacher else text


def write_config(tmp_path: Path, text: str, name: str = "mixed.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


class StoppedAtDump(Exception):
    pass


@pytest.fixture
def stop_at_dump(monkeypatch):
    """The pipeline up to (and into) the dump stage, whatever the dump does with these teachers."""
    def stop(dcfg, progress):
        raise StoppedAtDump(dcfg)

    monkeypatch.setattr("logitcache.run._dump_resuming", stop)


def run_until_dump(config: Path, work: Path, *overrides, force=()):
    with pytest.raises(StoppedAtDump):
        run_pipeline(load_run_config(config, overrides), work, force=force)


def stamp(path: Path) -> dict:
    return json.loads(path.read_text())


def other_tokenizer(folder: Path, lines: list[str], vocab_size: int) -> Path:
    """A byte-level BPE that is not the data's (another size), with <s> in its template, as an existing
    tokenizer.json a user would point `tokenizer` at."""
    from logitcache.prepare import with_bos_template
    from logitcache.data.tokenizer import train_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    with_bos_template(train_tokenizer(lines, vocab_size)).save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def documents(data_dir: Path) -> list[str]:
    """The train split's documents decoded from the stored tokens: the stream cut at every BOS, each piece
    without its BOS/EOS decoded alone; the last piece (cut by chunking) dropped."""
    from logitcache.data.prepared import load_data
    from logitcache.data.tokenizer import load_tokenizer

    data = load_data(data_dir)
    tokenizer, bos, eos = load_tokenizer(data.tokenizer_path), data.special_ids["bos"], data.special_ids["eos"]
    flat = np.asarray(data.store.split("train")).reshape(-1)
    starts = np.flatnonzero(flat == bos)
    pieces = [flat[a + 1:b] for a, b in zip(starts[:-1], starts[1:])]
    assert all(piece[-1] == eos for piece in pieces)
    return [tokenizer.decode(piece[:-1].tolist()) for piece in pieces]


# ---- the keys -------------------------------------------------------------------------------------

def test_teacher_tokenizer_keys_build_the_teachers_own_prepare(tmp_path, tiny_raw):
    config = load_run_config(write_config(tmp_path, mixed_toml(tiny_raw, blimp_of(tmp_path))))
    configs = build_stage_configs(config, tmp_path / "W")
    own = configs["teacher_prepare"]["gpt2"]
    assert set(configs["teacher_prepare"]) == {"gpt2"}
    assert own.vocab_size == TEACHER_VOCAB and own.tokenizer is None and own.out == tmp_path / "W" / "data-gpt2"
    main = configs["prepare"]
    assert (own.data, own.seq_len, own.babylm_track) == (main.data, main.seq_len, main.babylm_track)
    assert configs["teachers"]["gpt2"].data == own.out and configs["teachers"]["llama"].data == main.out
    assert configs["dump"].data == main.out and all(s.data == main.out for s in configs["students"].values())
    assert "prepare:gpt2" in stage_names(config) and stage_names(config).index("prepare:gpt2") < stage_names(config).index("teacher:gpt2")


def test_teacher_tokenizer_path_is_resolved_and_its_vocab_size_unused(tmp_path, tiny_raw, tiny_data, monkeypatch):
    monkeypatch.chdir(tiny_data.parent)
    config = load_run_config(write_config(tmp_path, mixed_toml(tiny_raw, blimp_of(tmp_path), 'tokenizer = "data/tokenizer.json"')))
    own = build_stage_configs(config, tmp_path / "W")["teacher_prepare"]["gpt2"]
    assert own.tokenizer == tiny_data / "tokenizer.json" and own.tokenizer.is_absolute()
    again = load_run_config(write_config(tmp_path, mixed_toml(tiny_raw, blimp_of(tmp_path), 'tokenizer = "data/tokenizer.json"')),
                            ("data.vocab_size=320",))
    assert build_stage_configs(again, tmp_path / "W")["teacher_prepare"]["gpt2"] == own  # data.vocab_size does not reach it


@pytest.mark.parametrize("keys, message", [
    (f'tokenizer_vocab_size = {TEACHER_VOCAB}\ntokenizer = "x.json"', r"teachers\.gpt2: set tokenizer_vocab_size .* not both"),
    ("tokenizer_vocab_size = 100", r"teachers\.gpt2\.tokenizer_vocab_size must be at least 259 .*got 100"),
    ("tokenizer_vocab_size = -5", r"teachers\.gpt2\.tokenizer_vocab_size must be at least 259 .*got -5"),
    ("tokenizer_vocab_size = 300", r"teachers\.gpt2\.tokenizer_vocab_size = 300 is data\.vocab_size"),
    ('tokenizer_vocab_size = "6000"', r"'teachers\.gpt2\.tokenizer_vocab_size' must be an integer"),
    ('tokenizer = "{missing}"', r"teachers\.gpt2\.tokenizer: .*missing does not exist"),
    ('tokenizer = "{empty}"', r"teachers\.gpt2\.tokenizer: .*empty holds no tokenizer"),
    ('tokenizer = "{junk}"', r"teachers\.gpt2\.tokenizer: .*junk\.json is not a tokenizers JSON file"),
    ('tokenizer_kind = "metaspace"', r"unknown config key 'teachers\.gpt2\.tokenizer_kind'"),
])
def test_bad_teacher_tokenizer_keys_are_refused_by_name(tmp_path, tiny_raw, keys, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no tokenizer here")
    (tmp_path / "junk.json").write_text('{"not": "a tokenizer"}')
    keys = keys.format(missing=tmp_path / "missing", empty=tmp_path / "empty", junk=tmp_path / "junk.json")
    with pytest.raises(LogitcacheError, match=message):
        load_run_config(write_config(tmp_path, mixed_toml(tiny_raw, blimp_of(tmp_path), keys)))


def test_mean_logits_with_a_teacher_on_its_own_tokenizer_is_refused(tmp_path, tiny_raw):
    config = write_config(tmp_path, mixed_toml(tiny_raw, blimp_of(tmp_path)))
    with pytest.raises(LogitcacheError, match=r'dump\.combine = "mean-logits" .* gpt2 .*"mean-probs"'):
        load_run_config(config, ('dump.combine="mean-logits"',))
    # without a teacher on its own tokenizer, mean-logits stays the paper's rule
    assert load_run_config(config, ('dump.combine="mean-logits"', "teachers.gpt2.tokenizer_vocab_size=0"))


def test_shipped_mixed_demo_runs_by_name(tmp_path):
    config = load_run_config(Path("demo-mixed"))
    gpt2, llama = (next(t for t in config.teachers if t.name == n) for n in ("gpt2", "llama"))
    assert gpt2.tokenizer_vocab_size == 6000 and not llama.tokenizer_vocab_size and not llama.tokenizer
    assert config.dump.combine == "mean-probs" and config.data.vocab_size == 8000
    assert load_run_config(Path("demo-mixed.toml")) == config
    demo = load_run_config(None)  # the demo and its mixed variant differ only in those two keys
    assert dataclasses.replace(config.dump, combine=demo.dump.combine) == demo.dump
    assert (config.data, config.student, config.eval) == (demo.data, demo.student, demo.eval)
    assert config.teachers == tuple(dataclasses.replace(t, tokenizer_vocab_size=6000) if t.name == "gpt2" else t
                                    for t in demo.teachers)


# ---- the pipeline up to the dump ----------------------------------------------------------------

def test_teacher_trains_on_its_own_data_with_its_own_tokenizer(tmp_path, tiny_raw, stop_at_dump):
    """WORK/data-gpt2 holds the same documents as WORK/data (decoded from each one's train tokens), in other
    ids; the gpt2 teacher's folder holds that tokenizer (identity unlike the data's) and a model of its
    vocabulary; the llama teacher's folder holds the data's."""
    from logitcache.data.prepared import load_data
    from logitcache.teachers.models import load_model
    from logitcache.data.tokenizer import folder_tokenizer_identity, tokenizer_file_identity

    work = tmp_path / "work"
    run_until_dump(write_config(tmp_path, mixed_toml(tiny_raw, blimp_of(tmp_path))), work)
    main, own = load_data(work / "data"), load_data(work / "data-gpt2")
    assert own.vocab_size <= TEACHER_VOCAB < main.vocab_size
    ours, theirs = documents(work / "data"), documents(work / "data-gpt2")
    n = min(len(ours), len(theirs))
    assert n > 100 and ours[:n] == theirs[:n]
    assert main.store.split("train").shape != own.store.split("train").shape  # other ids for the same text

    gpt2, llama = work / "teachers" / "gpt2", work / "teachers" / "llama"
    assert folder_tokenizer_identity(gpt2) == tokenizer_file_identity(own.tokenizer_path)
    assert folder_tokenizer_identity(gpt2) != tokenizer_file_identity(main.tokenizer_path)
    assert folder_tokenizer_identity(llama) == tokenizer_file_identity(main.tokenizer_path)
    assert load_model(gpt2).config.vocab_size == own.vocab_size
    assert json.loads((gpt2 / "tokenizer_config.json").read_text())["bos_token"] == "<s>"
    assert stamp(gpt2 / ".stage.json")["inputs"] == {"prepare:gpt2": stamp(work / "data-gpt2" / ".stage.json")["fingerprint"]}


def test_teacher_on_an_existing_tokenizer_reads_the_same_documents(tmp_path, tiny_raw, stop_at_dump):
    from conftest import synthetic_lines
    from logitcache.data.tokenizer import folder_tokenizer_identity, tokenizer_file_identity

    path = other_tokenizer(tmp_path / "theirs", synthetic_lines(400, 5), 270)
    work = tmp_path / "work"
    run_until_dump(write_config(tmp_path, mixed_toml(tiny_raw, blimp_of(tmp_path), f'tokenizer = "{path}"')), work)
    ours, theirs = documents(work / "data"), documents(work / "data-gpt2")
    n = min(len(ours), len(theirs))
    assert n > 100 and ours[:n] == theirs[:n]
    assert folder_tokenizer_identity(work / "teachers" / "gpt2") == tokenizer_file_identity(path)
    assert tokenizer_file_identity(path) != tokenizer_file_identity(work / "data" / "tokenizer.json")


def test_the_teachers_prepare_stage_reruns_what_reads_it(tmp_path, tiny_raw, stop_at_dump):
    """A second run reuses prepare:gpt2 and both teachers; another tokenizer_vocab_size reruns prepare:gpt2
    and teacher:gpt2 (new weights), keeps prepare and teacher:llama, and the dump's stamp then names the
    new teacher fingerprint; --force prepare reruns both prepares."""
    config, work = write_config(tmp_path, mixed_toml(tiny_raw, blimp_of(tmp_path))), tmp_path / "work"
    run_until_dump(config, work)
    gpt2_weights, llama_weights = (work / "teachers" / n / "model.safetensors" for n in ("gpt2", "llama"))
    before = {p: p.stat().st_mtime_ns for p in (gpt2_weights, llama_weights, work / "data-gpt2" / "tokenizer.json")}
    dump_inputs = stamp(work / "dump.stage.json")["inputs"]

    run_until_dump(config, work)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert stamp(work / "dump.stage.json")["inputs"] == dump_inputs

    old_prepare = stamp(work / "data-gpt2" / ".stage.json")["fingerprint"]
    run_until_dump(config, work, f"teachers.gpt2.tokenizer_vocab_size={TEACHER_VOCAB + 10}")
    assert stamp(work / "data-gpt2" / ".stage.json")["fingerprint"] != old_prepare
    assert gpt2_weights.stat().st_mtime_ns != before[gpt2_weights]
    assert llama_weights.stat().st_mtime_ns == before[llama_weights]
    inputs = stamp(work / "dump.stage.json")["inputs"]
    assert inputs["teacher:gpt2"] == stamp(work / "teachers" / "gpt2" / ".stage.json")["fingerprint"] != dump_inputs["teacher:gpt2"]
    assert inputs["teacher:llama"] == dump_inputs["teacher:llama"] and inputs["prepare"] == dump_inputs["prepare"]

    data_tokenizer = (work / "data" / "tokenizer.json").stat().st_mtime_ns
    own_tokenizer = (work / "data-gpt2" / "tokenizer.json").stat().st_mtime_ns
    run_until_dump(config, work, f"teachers.gpt2.tokenizer_vocab_size={TEACHER_VOCAB + 10}", force=("prepare",))
    assert (work / "data" / "tokenizer.json").stat().st_mtime_ns != data_tokenizer
    assert (work / "data-gpt2" / "tokenizer.json").stat().st_mtime_ns != own_tokenizer


def test_a_teacher_on_its_own_tokenizer_is_scored_on_its_own_data(tmp_path, tiny_raw, monkeypatch):
    """Through students, eval and the report, the dump made from the teacher on the data's tokenizer alone
    (monkeypatched: these tests hold whatever the dump does with the other one): the gpt2 teacher's CE in
    report.json equals `evaluate` on WORK/data-gpt2 called directly; the students' KL is to llama alone."""
    import dataclasses as dc

    from logitcache import run as run_module
    from logitcache.evaluate import evaluate
    from logitcache.config import EvalConfig

    real = run_module._dump_resuming

    def shared_teachers_only(dcfg, progress):
        real(dc.replace(dcfg, teachers=tuple(t for t in dcfg.teachers if t.name != "gpt2")), progress)

    from test_evaluate import blimp_dir

    monkeypatch.setattr(run_module, "_dump_resuming", shared_teachers_only)
    work = tmp_path / "work"
    report = run_pipeline(load_run_config(write_config(tmp_path, mixed_toml(tiny_raw, blimp_dir(tmp_path)))), work)
    gpt2, llama = work / "teachers" / "gpt2", work / "teachers" / "llama"
    [entry] = [t for t in report["teachers"] if t["name"] == "gpt2"]
    for split in ("dev", "test"):
        direct = evaluate(EvalConfig(models=(gpt2,), data=work / "data-gpt2", split=split, max_chunks=16, device="cpu"))
        [scored] = [m for m in json.loads((work / "eval" / f"{split}.json").read_text())["models"] if m["path"] == str(gpt2)]
        assert scored["data"] == str(work / "data-gpt2") and scored["ce"] == pytest.approx(direct["models"][0]["ce"], rel=1e-6)
        assert entry[f"{split}_ce"] == pytest.approx(direct["models"][0]["ce"], rel=1e-6)
        assert ("blimp" in scored) == (split == "dev")  # BLiMP on its own data too
    student = Path(report["students"]["distilled"]["seeds"][0]["path"])
    alone = evaluate(EvalConfig(models=(student,), data=work / "data", teachers=(llama,), max_chunks=16, device="cpu"))
    assert report["students"]["distilled"]["dev_teacher_kl"] == pytest.approx(alone["models"][0]["teacher_kl"], rel=1e-6)
    assert set(stamp(work / "eval" / ".stage.json")["inputs"]) >= {"prepare", "prepare:gpt2", "teacher:gpt2"}


# ---- end to end: the dump with a teacher on its own tokenizer --------------------------------------

def test_mixed_run_goes_through_dump_students_and_eval_from_the_cli(tmp_path, tiny_raw):
    """`logitcache run` with llama on the data's tokenizer and gpt2 on a larger BPE of its own (so some
    of the data's positions fall inside a gpt2 token): exit 0, the cache names gpt2's own tokenizer
    (its folder's) and its coverage, every position has llama's target and gpt2's where it aligns
    (teacher_count = 1 + aligned, its mean 1 + the recorded coverage), the students train from it, and
    a second run reuses every stage."""
    from test_evaluate import blimp_dir
    from test_run import run_cli

    from logitcache.store.cache import root_attrs
    from logitcache.store.reader import open_cache
    from logitcache.data.tokenizer import folder_tokenizer_identity

    config = write_config(tmp_path, mixed_toml(tiny_raw, blimp_dir(tmp_path), "tokenizer_vocab_size = 330"))
    work = tmp_path / "work"
    result = run_cli(config, work)
    assert result.exit_code == 0, result.output
    report = json.loads((work / "report.json").read_text())
    assert report["stages_ran"] == ["prepare", "prepare:gpt2", "teacher:llama", "teacher:gpt2", "dump",
                                    "student:distilled:seed0", "student:baseline:seed0", "eval"]
    attrs = root_attrs(work / "cache.zarr")
    [gpt2] = [t for t in attrs["teachers"] if t["path"].endswith("gpt2")]
    assert gpt2["tokenizer"] == "own" and gpt2["vocab_size"] > 300
    assert gpt2["tokenizer_identity"] == folder_tokenizer_identity(work / "teachers" / "gpt2")
    [coverage] = attrs["coverage"]
    assert coverage["teacher"] == "gpt2" and 0.5 < coverage["positions"] < 1.0 and coverage["chunks"] == 32
    counts = open_cache(work / "cache.zarr").read(0, 32).teacher_count  # (32, T)
    assert set(np.unique(counts)) == {1, 2}
    assert counts.mean() - 1 == pytest.approx(coverage["positions"], abs=1e-5)
    for kind in ("distilled", "baseline"):
        assert np.isfinite(report["students"][kind]["dev_ce"]) and "dev_teacher_kl" in report["students"][kind]
    assert run_cli(config, work).exit_code == 0
    again = json.loads((work / "report.json").read_text())
    assert again["stages_ran"] == [] and again["students"] == report["students"]


def test_data_without_its_text_is_prepared_again_for_a_teacher_on_its_own_tokenizer(tmp_path, tiny_raw, stop_at_dump):
    """WORK/data whose tokens.zarr records no text (prepared before prepare recorded it) is prepared again
    when a teacher has a tokenizer of its own (that teacher's dump reads the text); the same text gives the
    same fingerprint, so the teachers are reused."""
    import shutil

    from logitcache.data.prepared import load_data

    config, work = write_config(tmp_path, mixed_toml(tiny_raw, blimp_of(tmp_path))), tmp_path / "work"
    run_until_dump(config, work)
    weights = work / "teachers" / "llama" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    shutil.rmtree(work / "data" / "tokens.zarr" / "text")
    assert not load_data(work / "data").store.has_text("train")
    run_until_dump(config, work)
    assert load_data(work / "data").store.has_text("train")
    assert weights.stat().st_mtime_ns == before
