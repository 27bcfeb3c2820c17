"""`run` end to end on a tiny corpus with tiny presets; the shipped configs parse and build."""
import json
from pathlib import Path

import pytest

from logitcache._settings import to_dict
from logitcache.dump import DumpConfig
from logitcache.teachers.models import count_params, get_preset
from logitcache.run import find_config, load_run_config, run_pipeline
from logitcache.train_student import StudentConfig
from logitcache.train_teacher import TeacherConfig

REPO = Path(__file__).resolve().parents[1]

TINY = """
[data]
raw_dir = "{raw}"
vocab_size = 300
seq_len = 32

[[teachers]]
name = "llama"
arch = "llama"
preset = "llama-tiny"
[teachers.train]
lr = 3e-3
batch_size = 8
max_steps = 10
warmup_steps = 2
val_chunks = 16
device = "cpu"

[[teachers]]
name = "gpt2"
arch = "gpt2"
preset = "gpt2-tiny"
[teachers.train]
lr = 3e-3
batch_size = 8
max_steps = 10
warmup_steps = 2
val_chunks = 16
device = "cpu"

[dump]
top_k = 8
temperature = 1.0
block_rows = 8
max_chunks = 32

[student]
preset = "llama-tiny"
alpha = 0.5
seeds = [0, 1]
[student.train]
lr = 3e-3
batch_size = 8
max_steps = 6
warmup_steps = 2
val_chunks = 16
device = "cpu"

[eval]
max_chunks = 16
blimp = "{blimp}"
blimp_max_pairs = 5
"""


def test_run_end_to_end_and_rerun_skips(tmp_path, tiny_raw, monkeypatch):
    from test_evaluate import blimp_dir

    config_path = tmp_path / "tiny.toml"
    config_path.write_text(TINY.format(raw=tiny_raw, blimp=blimp_dir(tmp_path)))
    work = tmp_path / "work"
    report = run_pipeline(load_run_config(config_path), work)
    saved = json.loads((work / "report.json").read_text())
    assert saved["teachers"][0]["name"] == "llama" and {"path", "params", "dev_ce", "test_ce"} <= set(saved["teachers"][0])
    for kind in ("distilled", "baseline"):
        assert {"path", "params", "dev_ce", "test_ce", "blimp"} <= set(saved["students"][kind])
        assert len(saved["students"][kind]["seeds"]) == 2
    assert {"path", "bytes_per_token", "bytes_on_disk", "full_logit_bytes"} <= set(saved["cache"])
    assert set(saved["stages"]) >= {"prepare", "teacher:llama", "teacher:gpt2", "dump", "eval"}
    markdown = (work / "report.md").read_text()
    assert "student, distilled from the cache" in markdown and "![student_curves]" in markdown
    assert (work / "student_curves.png").stat().st_size > 10_000
    assert json.loads((work / "config.json").read_text())["dump"]["top_k"] == 8
    # a second run finds every stage complete: nothing is retrained or rewritten
    weights = work / "teachers" / "llama" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    cache_mtime = (work / "cache.zarr" / "topk_ids" / "c" / "0" / "0" / "0").stat().st_mtime_ns
    monkeypatch.chdir(tmp_path)  # the same WORK given as a relative path is the same WORK
    again = run_pipeline(load_run_config(config_path), Path("work"))
    assert weights.stat().st_mtime_ns == mtime
    assert (work / "cache.zarr" / "topk_ids" / "c" / "0" / "0" / "0").stat().st_mtime_ns == cache_mtime
    assert again["students"]["distilled"]["dev_ce"] == report["students"]["distilled"]["dev_ce"]
    # --force redoes one stage
    run_pipeline(load_run_config(config_path), work, force=("teacher:llama",))
    assert weights.stat().st_mtime_ns != mtime


def test_demo_config_is_the_default_and_builds():
    config = load_run_config(None)
    assert config.data.raw_dir == "" and len(config.teachers) == 2


def test_paper_config_parses_and_builds_every_stage():
    config = load_run_config(REPO / "configs" / "babylm-paper.toml")
    work = Path("/tmp/paper-work")
    expected = {"gpt2": 705e6, "llama": 360e6}
    for section in config.teachers:
        TeacherConfig(data=work / "data", out=work / section.name, arch=section.arch, preset=section.preset,
                      train=section.train)
        params = count_params(get_preset(section.preset), config.data.vocab_size)
        assert abs(params - expected[section.name]) / expected[section.name] < 0.02
    d = config.dump
    DumpConfig(data=work / "data", teachers=(work / "gpt2", work / "llama"), out=work / "cache.zarr", top_k=d.top_k,
               temperature=d.temperature, combine=d.combine, prob_dtype=d.prob_dtype)
    StudentConfig(cache=work / "cache.zarr", data=work / "data", out=work / "s", preset=config.student.preset,
                  alpha=config.student.alpha, kl_reduction=config.student.kl_reduction, train=config.student.train)
    assert abs(count_params(get_preset(config.student.preset), 16000) - 58e6) / 58e6 < 0.02
    assert config.dump.temperature == 2.0 and config.student.alpha == 0.5 and config.student.train.epochs == 6
    assert to_dict(config)["data"]["vocab_size"] == 16000


# ---- helpers for the stage-stamp tests: one seed, the CLI where the exit code matters ----------------

def tiny_config(tmp_path: Path, raw: Path) -> Path:
    from test_evaluate import blimp_dir

    path = tmp_path / "tiny.toml"
    if not path.exists():
        path.write_text(TINY.format(raw=raw, blimp=blimp_dir(tmp_path)).replace("seeds = [0, 1]", "seeds = [0]"))
    return path


def run_cli(config: Path, work: Path, *args):
    from typer.testing import CliRunner

    from logitcache_cli.app import app

    return CliRunner().invoke(app, ["run", "--config", str(config), "--out", str(work), *map(str, args)])


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def test_run_refuses_a_cache_it_did_not_make_and_leaves_it(tmp_path, tiny_raw, tiny_data, tiny_teachers):
    """A hand-run k = 8 dump where `run` puts its cache, then `run` with top_k = 4 on the same path:
    one line naming the cache and the setting, exit 2, every byte kept; --force dump replaces it."""
    from conftest import dump_config
    from logitcache.dump import dump
    from logitcache.store.cache import root_attrs

    cache = tmp_path / "cache.zarr"
    dump(dump_config(tiny_data, tiny_teachers, cache, top_k=8))
    before = files(cache)
    config, work = tiny_config(tmp_path, tiny_raw), tmp_path / "work"
    result = run_cli(config, work, "--cache", cache, "--set", "dump.top_k=4")
    assert result.exit_code == 2, result.output
    [line] = error_lines(result)
    assert str(cache) in line and "top_k: 8 in the cache, 4 here" in line and "--force dump" in line
    assert files(cache) == before
    result = run_cli(config, work, "--cache", cache, "--set", "dump.top_k=4", "--force", "dump")
    assert result.exit_code == 0, result.output
    assert root_attrs(cache)["k"] == 4


def test_run_replaces_its_own_cache_when_the_dump_config_changes(tmp_path, tiny_raw):
    from logitcache.store.cache import root_attrs

    config, work = tiny_config(tmp_path, tiny_raw), tmp_path / "work"
    run_pipeline(load_run_config(config), work)
    report = run_pipeline(load_run_config(config, ("dump.top_k=4",)), work)
    assert root_attrs(work / "cache.zarr")["k"] == 4 and "dump" in report["stages_ran"]


def test_two_works_sharing_one_local_cache_never_delete_each_others(tmp_path, tiny_raw):
    """WORK a makes the cache; WORK b (its own teachers, so another config) is refused and a's cache
    kept; b --force dump replaces it; then a is refused in turn and b's cache kept."""
    from logitcache.store.cache import root_attrs

    config, cache = tiny_config(tmp_path, tiny_raw), tmp_path / "shared" / "cache.zarr"
    assert run_cli(config, tmp_path / "a", "--cache", cache).exit_code == 0
    made_by_a = files(cache)
    result = run_cli(config, tmp_path / "b", "--cache", cache)
    assert result.exit_code == 2 and str(cache) in error_lines(result)[0] and "teachers" in error_lines(result)[0]
    assert files(cache) == made_by_a
    assert not list(cache.parent.glob("*.stage.json"))  # the dump's stamps live in each WORK, not beside the cache
    assert run_cli(config, tmp_path / "b", "--cache", cache, "--force", "dump").exit_code == 0
    made_by_b = files(cache)
    assert made_by_b != made_by_a and str(tmp_path / "b") in json.dumps(root_attrs(cache)["teachers"])
    result = run_cli(config, tmp_path / "a", "--cache", cache)
    assert result.exit_code == 2 and str(cache) in error_lines(result)[0]
    assert files(cache) == made_by_b


def test_two_works_sharing_one_s3_cache_never_delete_each_others(s3, tmp_path, tiny_raw):
    from logitcache.store.backends import as_location

    def objects(url):
        location = as_location(url)
        return {key: location.read_bytes(key) for key in location.sizes()}

    config, url = tiny_config(tmp_path, tiny_raw), f"{s3}/shared/cache.zarr"
    assert run_cli(config, tmp_path / "a", "--cache", url).exit_code == 0
    made_by_a = objects(url)
    result = run_cli(config, tmp_path / "b", "--cache", url)
    assert result.exit_code == 2 and url in error_lines(result)[0]
    assert objects(url) == made_by_a
    assert run_cli(config, tmp_path / "b", "--cache", url, "--force", "dump").exit_code == 0
    made_by_b = objects(url)
    assert made_by_b != made_by_a
    result = run_cli(config, tmp_path / "a", "--cache", url)
    assert result.exit_code == 2 and url in error_lines(result)[0]
    assert objects(url) == made_by_b


def test_a_stage_that_reruns_redoes_every_later_stage(tmp_path):
    """New raw text and --force prepare: teachers, dump, students and eval all rerun; the same text
    again prepares identical data (same fingerprint), so nothing after prepare reruns; --force dump
    keeps the teachers and redoes the students and eval. report.md names what ran and what was reused."""
    from conftest import synthetic_lines, write_tiny_corpus

    raw = write_tiny_corpus(tmp_path / "raw")
    config, work = tiny_config(tmp_path, raw), tmp_path / "work"
    later = ["teacher:llama", "teacher:gpt2", "dump", "student:distilled:seed0", "student:baseline:seed0", "eval"]
    run_pipeline(load_run_config(config), work)
    weights = work / "teachers" / "llama" / "model.safetensors"
    old_weights = weights.read_bytes()
    (raw / "stories.train").write_text("\n".join(synthetic_lines(600, 99)) + "\n")
    report = run_pipeline(load_run_config(config), work, force=("prepare",))
    assert report["stages_ran"] == ["prepare"] + later and report["stages_reused"] == []
    assert weights.read_bytes() != old_weights
    markdown = (work / "report.md").read_text()
    assert "| teacher:llama | ran |" in markdown and "| prepare | ran |" in markdown

    report = run_pipeline(load_run_config(config), work, force=("prepare",))
    assert report["stages_ran"] == ["prepare"] and set(report["stages_reused"]) == set(later)
    assert "| dump | reused |" in (work / "report.md").read_text()

    report = run_pipeline(load_run_config(config), work, force=("dump",))
    assert report["stages_ran"] == ["dump", "student:distilled:seed0", "student:baseline:seed0", "eval"]
    assert set(report["stages_reused"]) == {"prepare", "teacher:llama", "teacher:gpt2"}


def test_force_names_an_existing_stage(tmp_path, tiny_raw):
    from logitcache.errors import LogitcacheError

    with pytest.raises(LogitcacheError, match="--force teachers: no such stage"):
        run_pipeline(load_run_config(tiny_config(tmp_path, tiny_raw)), tmp_path / "work", force=("teachers",))


def test_train_seed_beside_student_seeds_is_refused_by_name(tmp_path, tiny_raw):
    from logitcache.errors import LogitcacheError

    config = tiny_config(tmp_path, tiny_raw)
    with pytest.raises(LogitcacheError, match=r"student\.train\.seed .*student\.seeds"):
        load_run_config(config, ("student.train.seed=7",))
    assert load_run_config(config, ("student.seeds=[]", "student.train.seed=7")).student_seeds == (7,)


def test_run_scores_every_model_against_the_teachers_at_eval_temperature(tmp_path, tiny_raw):
    """eval.temperature and eval.combine reach `eval`: dev.json holds each model's KL and top-1 agreement
    with the teachers' ensemble, equal to `evaluate` called with the teacher dirs directly."""
    from logitcache.evaluate import evaluate
    from logitcache.config import EvalConfig

    config, work = tiny_config(tmp_path, tiny_raw), tmp_path / "work"
    run_pipeline(load_run_config(config), work)
    at_1 = json.loads((work / "eval" / "dev.json").read_text())["models"]
    report = run_pipeline(load_run_config(config, ("eval.temperature=2.0", "eval.combine='mean-probs'")), work)
    assert report["stages_ran"] == ["eval"]
    at_2 = json.loads((work / "eval" / "dev.json").read_text())["models"]
    teachers = (work / "teachers" / "llama", work / "teachers" / "gpt2")
    direct = evaluate(EvalConfig(models=tuple(Path(m["path"]) for m in at_2), data=work / "data", teachers=teachers,
                                 temperature=2.0, combine="mean-probs", max_chunks=16, device="cpu"))["models"]
    for ran, alone, before in zip(at_2, direct, at_1):
        assert ran["teacher_kl"] == pytest.approx(alone["teacher_kl"], rel=1e-6)
        assert ran["teacher_top1_agreement"] == pytest.approx(alone["teacher_top1_agreement"])
        assert ran["teacher_kl"] != before["teacher_kl"]
    assert "teacher_kl" not in json.loads((work / "eval" / "test.json").read_text())["models"][0]
    assert report["students"]["distilled"]["dev_teacher_kl"] == pytest.approx(at_2[2]["teacher_kl"])


def test_run_without_out_works_in_a_dir_named_after_its_config(tmp_path, monkeypatch):
    """No --out: work/<config name>, so `run --config demo-mixed` never restages the demo's work/demo."""
    from typer.testing import CliRunner

    from logitcache_cli.app import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.toml").write_text(find_config(None).read_text())
    for config in ("demo-mixed", "mine.toml"):  # a raw dir that is not there stops the run after WORK/config.json
        result = CliRunner().invoke(app, ["run", "--config", config, "--data", str(tmp_path / "absent")])
        assert result.exit_code == 2 and "does not exist" in result.output, result.output
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["demo-mixed", "mine"]
    mixed = json.loads((tmp_path / "work" / "demo-mixed" / "config.json").read_text())
    assert mixed == to_dict(load_run_config(Path("demo-mixed"), (f'data.raw_dir="{tmp_path / "absent"}"',)))


def test_force_dump_refuses_to_replace_a_folder_that_is_not_a_cache(tmp_path, tiny_raw):
    """`run --set dump.cache=DIR --force dump` where DIR holds a file of the user's: one line naming it,
    exit 2, the file kept (a cache only replaces a cache)."""
    config, work, folder = tiny_config(tmp_path, tiny_raw), tmp_path / "work", tmp_path / "mine"
    folder.mkdir()
    (folder / "results.csv").write_text("a,b\n")
    result = run_cli(config, work, "--set", f'dump.cache="{folder}"', "--force", "dump")
    assert result.exit_code == 2, result.output
    [line] = error_lines(result)
    assert str(folder) in line and "results.csv" in line and "not replaced" in line
    assert files(folder) == {"results.csv": b"a,b\n"}
