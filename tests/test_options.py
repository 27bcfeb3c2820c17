"""Every CLI option of every command and every key of run's TOML does something observable.

The settings are enumerated, not listed by hand: the options of every command come from the CLI
(built from the stage dataclasses in logitcache/config.py, plus each command's own options),
and run's TOML keys from its sections (logitcache/run.py). Each must sit in exactly one category:

- EFFECT: a check in this file that changes the setting and asserts what changes (the output's
  bytes or attributes, the steps taken, a refusal that names it);
- ELSEWHERE: a named test in another file that asserts the setting's effect (it must exist and
  mention the setting);
- SPEED_ONLY: the setting changes speed or memory only; its check asserts the output is the same.

A setting in none of them (a new option) or in two fails test_every_setting_is_in_exactly_one_category.
A TOML key derived from a stage config field is the same setting as that field's CLI option:
test_every_derived_toml_key_reaches_its_stage_config checks that `run` passes it on, so its effect
is the CLI entry's. Kept fast: tiny dumps from the session fixtures, results shared per module.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import json
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import typer

from conftest import dump_config, tiny_train
from logitcache.config import RayConfig
from logitcache._settings import field_default
from logitcache.errors import LogitcacheError
from logitcache_cli.app import app

CLI = typer.main.get_command(app)
TESTS = Path(__file__).parent


def cli_settings() -> dict[str, tuple[str, str]]:
    """"command --flag" (or "command ARG") -> (flag, python name) for every parameter of every command."""
    out = {}

    def walk(command, prefix: str):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, f"{prefix}{name} ")
            return
        for p in command.params:
            flag = p.opts[0] if p.param_type_name == "option" else p.name.upper()
            out[f"{prefix.strip()} {flag}"] = (flag, p.name)

    walk(CLI, "")
    return out


def run_only_toml_keys() -> set[str]:
    """"run [section] key" for the keys of run's TOML that no stage config has (run wires them itself)."""
    from logitcache import run

    hints = typing.get_type_hints(run.RunConfig)
    keys = set()
    for f in dataclasses.fields(run.RunConfig):
        section = hints[f.name]
        section = typing.get_args(section)[0] if typing.get_origin(section) is tuple else section
        keys |= {f"run [{f.name}] {g.name}" for g in dataclasses.fields(section) if g.metadata.get("run_only")}
    return keys


# ---------------------------------------------------------------------------------------------------------
# Checks in this file. A dump check compares a tiny dump with one setting changed to the baseline dump.

BASE_DUMP = dict(max_chunks=16)  # 2 blocks of 8 rows, two teachers, top-8, sqrt-u7, T = 2 (conftest.dump_config)
SAMPLED = dict(max_chunks=16, targets="sample", samples=8)
MASSED = dict(max_chunks=16, targets="mass", mass=0.1, max_k=24, temperature=1.0)  # counts 5..13, some capped at 6


@pytest.fixture(scope="module")
def dumped(tmp_path_factory, tiny_data, tiny_teachers):
    """dumped(**overrides) -> (attrs, decoded arrays, stored files) of a tiny dump; each variant made once."""
    from logitcache import open_cache
    from logitcache.dump import dump

    root = tmp_path_factory.mktemp("options")

    @functools.lru_cache(maxsize=None)
    def make(items: tuple):
        overrides = dict(items)
        out = root / f"c{len(list(root.iterdir()))}.zarr"
        dump(dump_config(tiny_data, overrides.pop("teachers", tiny_teachers), out, **overrides))
        reader = open_cache(out)
        files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
                 if p.is_file() and p.name != "zarr.json"}  # zarr.json holds the creation time
        return reader.attrs, list(reader.read(0, len(reader)).arrays().values()), files

    return lambda **overrides: make(tuple(sorted(overrides.items())))


def arrays_differ(a, b) -> bool:
    return any(x.shape != y.shape or not np.array_equal(x, y) for x, y in zip(a, b))


def dump_differs(key: str, value, base=BASE_DUMP):
    def check(dumped):
        base_attrs, base_arrays, _ = dumped(**base)
        attrs, arrays, _ = dumped(**(base | {key: value}))
        assert arrays_differ(arrays, base_arrays), f"dump {key}={value!r} wrote the same arrays"
        if key in attrs.get("config", {}):
            assert attrs["config"][key] == (list(value) if isinstance(value, tuple) else value)
    return check


def dump_same(key: str, value):
    def check(dumped):
        _, base_arrays, base_files = dumped(**BASE_DUMP)
        _, arrays, files = dumped(**(BASE_DUMP | {key: value}))
        assert not arrays_differ(arrays, base_arrays) and files == base_files, f"dump {key}={value!r} changed the output"
    return check


def check_block_rows(dumped):
    """block_rows sets the storage chunk (the committed block): other files, the same decoded rows."""
    attrs, arrays, files = dumped(**BASE_DUMP)
    attrs4, arrays4, files4 = dumped(**(BASE_DUMP | {"block_rows": 4}))
    assert len(files4) > len(files) and attrs4["config"]["block_rows"] == 4
    assert not arrays_differ(arrays, arrays4)


def check_dump_teachers(dumped, tiny_teachers):
    _, two, _ = dumped(**BASE_DUMP)
    _, one, _ = dumped(**(BASE_DUMP | {"teachers": tiny_teachers[:1]}))
    assert arrays_differ(one, two)


def check_dump_device(dumped):
    attrs, _, _ = dumped(**BASE_DUMP)
    assert attrs["device"] == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(LogitcacheError, match="cuda"):
            dumped(**(BASE_DUMP | {"device": "cuda"}))
    else:
        assert dumped(**(BASE_DUMP | {"device": "cuda"}))[0]["device"] == "cuda"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    """trained(**train_overrides) -> (report, metrics rows, final weights) of a 3-step llama-tiny teacher."""
    from logitcache.teachers.models import load_model
    from logitcache.train_teacher import TeacherConfig, train_teacher
    from logitcache.training.loop import read_metrics

    root = tmp_path_factory.mktemp("trained")

    @functools.lru_cache(maxsize=None)
    def make(items: tuple):
        overrides = dict(items)
        out = root / f"t{len(list(root.iterdir()))}"
        train = tiny_train(**({"max_steps": 3} | overrides))
        report = train_teacher(TeacherConfig(data=tiny_data, out=out, preset="llama-tiny", train=train))
        weights = torch.cat([p.detach().flatten() for p in load_model(out).parameters()])
        return report, read_metrics(out), weights

    return lambda **overrides: make(tuple(sorted(overrides.items())))


def train_differs(key: str, value):
    def check(trained):
        _, _, base = trained()
        _, _, weights = trained(**{key: value})
        assert not torch.equal(base, weights), f"training with {key}={value!r} gave the same weights"
    return check


def check_epochs(trained, tiny_data):
    from logitcache.data.prepared import load_data

    rows = load_data(tiny_data).store.split("train").shape[0]
    report, _, _ = trained(max_steps=0, epochs=1)
    assert report.steps == rows // 8  # batch_size 8 (tiny_train)
    assert trained(max_steps=0, epochs=2)[0].steps == 2 * (rows // 8)


def check_max_steps(trained):
    assert trained()[0].steps == 3 and trained(max_steps=2)[0].steps == 2


def check_eval_every(trained):
    val_steps = lambda rows: [r["step"] for r in rows if "val_ce" in r]  # noqa: E731
    assert val_steps(trained(eval_every=1)[1]) != val_steps(trained()[1])


def check_val_chunks(trained):
    tokens = lambda rows: [r.get("val_tokens") for r in rows if "val_ce" in r]  # noqa: E731
    a, b = trained()[1], trained(val_chunks=4)[1]
    assert [r["val_ce"] for r in a if "val_ce" in r] != [r["val_ce"] for r in b if "val_ce" in r] or tokens(a) != tokens(b)


def check_grad_accum_same(trained):
    """grad_accum splits the same global batch into micro-batches: memory, not the result (fp32 sums in
    another order: equal to ~1e-6)."""
    _, a, wa = trained()
    _, b, wb = trained(grad_accum=2)
    assert torch.allclose(wa, wb, atol=1e-5)
    assert [round(r["ce"], 4) for r in a if "ce" in r] == [round(r["ce"], 4) for r in b if "ce" in r]


def check_prefetch_same(tiny_cache):
    """prefetch_blocks: how far the loader decodes ahead; the batches are the same."""
    from logitcache.runtime.device import DistEnv
    from logitcache.training.loader import CacheRows
    from logitcache.store import CacheReader

    def rows(prefetch):
        source = CacheRows(CacheReader(tiny_cache), seed=1, buffer_rows=12, prefetch_blocks=prefetch)
        return [b["input_ids"].numpy().copy() for b in source.batches(0, 0, 8, DistEnv())]

    assert all(np.array_equal(x, y) for x, y in zip(rows(1), rows(4)))


def check_shuffle_buffer(tiny_cache):
    from logitcache.runtime.device import DistEnv
    from logitcache.training.loader import CacheRows
    from logitcache.store import CacheReader

    def order(buffer):
        source = CacheRows(CacheReader(tiny_cache), seed=1, buffer_rows=buffer)
        return np.concatenate([b["input_ids"].numpy() for b in source.batches(0, 0, 8, DistEnv())])

    assert not np.array_equal(order(8), order(32))


def check_kl_reduction(tiny_cache):
    from logitcache import open_cache
    from logitcache.teachers.models import build_model, get_preset
    from logitcache.train_student import DistillObjective

    cached = open_cache(tiny_cache).read(0, 4)
    tokens, ids, probs = cached.tokens, cached.ids, cached.probs
    batch = {"input_ids": torch.from_numpy(tokens), "topk_ids": torch.from_numpy(ids), "topk_probs": torch.from_numpy(probs)}
    student = build_model(get_preset("llama-tiny"), 300, seed=1)
    with torch.no_grad():
        token = DistillObjective(0.5, 2.0, "bucket", "token", "topk")(student, batch)[1]["kl"]
        paper = DistillObjective(0.5, 2.0, "bucket", "paper", "topk")(student, batch)[1]["kl"]
    assert paper.item() == pytest.approx(token.item() * tokens.shape[1], rel=1e-4)  # sum / B vs mean over B * T


@pytest.fixture(scope="module")
def evaluated(tiny_data, tiny_teachers):
    from logitcache.evaluate import EvalConfig, evaluate

    @functools.lru_cache(maxsize=None)
    def make(items: tuple):
        config = EvalConfig(models=tiny_teachers[:1], data=tiny_data, device="cpu", **({"max_chunks": 8} | dict(items)))
        return evaluate(config)

    return lambda **overrides: make(tuple(sorted(overrides.items())))


def first_model(payload) -> dict:
    models = payload["models"]
    return models[0] if isinstance(models, list) else next(iter(models.values()))


def check_eval_batch_size_same(evaluated):
    a, b = first_model(evaluated()), first_model(evaluated(batch_size=3))
    assert a["ce"] == pytest.approx(b["ce"], abs=1e-5)


def check_eval_max_chunks(evaluated):
    assert first_model(evaluated())["tokens"] != first_model(evaluated(max_chunks=4))["tokens"]


def check_eval_teacher_settings(evaluated, tiny_teachers):
    """--teacher adds the agreement and KL; --temperature and --combine change the KL."""
    with_teachers = dict(teachers=tiny_teachers)
    base = first_model(evaluated(**with_teachers))
    assert "teacher_kl" in base and "teacher_kl" not in first_model(evaluated())
    assert first_model(evaluated(**with_teachers, temperature=2.0))["teacher_kl"] != base["teacher_kl"]
    assert first_model(evaluated(**with_teachers, combine="mean-probs"))["teacher_kl"] != base["teacher_kl"]


def check_copy_workers_same(tiny_cache, tmp_path):
    from logitcache.store.copy import copy_cache

    outs = []
    for workers in (1, 4):
        out = tmp_path / f"w{workers}.zarr"
        copy_cache(tiny_cache, out, workers=workers)
        outs.append({str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert outs[0] == outs[1]


# setting -> check (a function of fixtures, by parameter name)
EFFECT = {
    "dump --top-k": dump_differs("top_k", 4),
    "dump --temperature": dump_differs("temperature", 1.0),
    "dump --combine": dump_differs("combine", "mean-probs"),
    "dump --prob-dtype": dump_differs("prob_dtype", "float16"),
    "dump --targets": dump_differs("targets", "sample"),
    "dump --samples": dump_differs("samples", 4, base=SAMPLED),
    "dump --proposal-temperature": dump_differs("proposal_temperature", 2.0, base=SAMPLED),
    "dump --seed": dump_differs("seed", 1, base=SAMPLED),
    "dump --mass": dump_differs("mass", 0.2, base=MASSED),
    "dump --max-k": dump_differs("max_k", 6, base=MASSED),
    "dump --block-rows": check_block_rows,
    "dump --max-chunks": dump_differs("max_chunks", 8),
    "dump --row-selection": dump_differs("row_selection", "first"),
    "dump --split": dump_differs("split", "dev"),
    "dump --precision": dump_differs("precision", "bf16"),
    "dump --teacher": check_dump_teachers,
    "dump --device": check_dump_device,
    "train-teacher --lr": train_differs("lr", 1e-3),
    "train-teacher --batch-size": train_differs("batch_size", 4),
    "train-teacher --warmup-steps": train_differs("warmup_steps", 0),
    "train-teacher --weight-decay": train_differs("weight_decay", 0.5),
    "train-teacher --seed": train_differs("seed", 1),
    "train-teacher --epochs": check_epochs,
    "train-teacher --max-steps": check_max_steps,
    "train-teacher --eval-every": check_eval_every,
    "train-teacher --val-chunks": check_val_chunks,
    "train-student --shuffle-buffer": check_shuffle_buffer,
    "train-student --kl-reduction": check_kl_reduction,
    "eval --max-chunks": check_eval_max_chunks,
    "eval --teacher": check_eval_teacher_settings,
    "eval --temperature": check_eval_teacher_settings,
    "eval --combine": check_eval_teacher_settings,
}

# Speed or memory only: the check asserts the output is the same with the setting changed.
SPEED_ONLY = {
    "dump --writer-threads": dump_same("writer_threads", 1),  # threads beside the teachers; each block's bytes its own
    "dump --batch-size": dump_same("batch_size", 8),  # rows per forward (on CPU the same bytes here; GPUs pick kernels by shape)
    "dump --logit-budget-mb": dump_same("logit_budget_mb", 1),  # row slices of the (rows, T, V) buffers
    "train-teacher --grad-accum": check_grad_accum_same,  # micro-batches of the same global batch
    "train-student --prefetch-blocks": check_prefetch_same,  # blocks decoded ahead
    "eval --batch-size": check_eval_batch_size_same,  # chunks per forward
    "copy --workers": check_copy_workers_same,  # blocks in flight
}

# setting -> "file::test" asserting its effect. train-student's TrainConfig options are the same fields
# and the same loop (fit) as train-teacher's: their effect is the train-teacher entry's, and
# test_student_options_reach_the_loop checks that train-student passes them on.
ELSEWHERE = {
    "prepare --out": "test_cli.py::test_prepare_writes_json",
    "prepare --data": "test_cli.py::test_prepare_writes_json",
    "prepare --train": "test_inputs.py::test_prepare_from_jsonl_with_a_pretrained_tokenizer_from_the_cli",
    "prepare --dev": "test_inputs.py::test_prepare_from_jsonl_with_a_pretrained_tokenizer_from_the_cli",
    "prepare --test": "test_inputs.py::test_prepare_from_jsonl_with_a_pretrained_tokenizer_from_the_cli",
    "prepare --babylm-track": ("test_prepare.py::test_babylm_layout_takes_the_track_and_its_dev_and_test", "100M"),  # 10M read, 100M not
    "prepare --source-field": "test_inputs.py::test_source_field_picks_the_cleaner",
    "prepare --tokenizer": "test_inputs.py::test_prepare_from_jsonl_with_a_pretrained_tokenizer_from_the_cli",
    "prepare --vocab-size": "test_cli.py::test_prepare_writes_json",
    "prepare --seq-len": "test_cli.py::test_prepare_writes_json",
    "prepare --overwrite": "test_cli.py::test_prepare_writes_json",
    "prepare --json": "test_cli.py::test_prepare_writes_json",
    "train-teacher --data": "test_train_teacher.py::test_loss_falls_and_model_loads_in_plain_transformers",
    "train-teacher --out": "test_train_teacher.py::test_loss_falls_and_model_loads_in_plain_transformers",
    "train-teacher --arch": "test_train_teacher.py::test_preset_arch_mismatch_is_refused",
    "train-teacher --preset": "test_train_teacher.py::test_preset_arch_mismatch_is_refused",
    "train-teacher --vocab-size": "test_train_teacher.py::test_vocabulary_mismatch_is_refused",
    "train-teacher --checkpoint-every": "test_train_teacher.py::test_resume_gives_the_same_weights_and_losses",
    "train-teacher --device": "test_cli.py::test_dump_train_student_and_eval_from_the_cli",
    "train-teacher --precision": "test_precision.py::test_bf16_student_training_on_cpu_differs_from_fp32",
    "train-teacher --tensorboard": "test_train_teacher.py::test_tensorboard_events_hold_the_logged_metrics",
    "train-teacher --resume": "test_train_teacher.py::test_resume_gives_the_same_weights_and_losses",
    "dump --data": "test_cli.py::test_dump_train_student_and_eval_from_the_cli",
    "dump --out": "test_cli.py::test_dump_train_student_and_eval_from_the_cli",
    "dump --resume": "test_dump.py::test_resumed_dump_equals_single_shot_after_a_write_failure",
    "dump --overwrite": "test_distributed.py::test_torchrun_dump_overwrite_three_times_leaves_a_complete_cache",
    "dump --storage-option": "test_remote.py::test_unreachable_endpoint_and_bad_options_are_one_line",
    "dump --engine": "test_dump_ray.py::test_without_ray_the_engine_is_refused_in_one_line",
    "dump --ray-address": "test_dump_ray.py::test_the_driver_killed_mid_run_then_the_same_command_finishes",
    "dump --workers": "test_dump_ray.py::test_the_driver_killed_mid_run_then_the_same_command_finishes",
    "inspect CACHE": "test_cli.py::test_inspect_and_verify_json_to_stdout",
    "inspect --json": "test_cli.py::test_inspect_and_verify_json_to_stdout",
    "inspect --storage-option": "test_remote.py::test_unreachable_endpoint_and_bad_options_are_one_line",
    "verify CACHE": "test_cli.py::test_inspect_and_verify_json_to_stdout",
    "verify --json": "test_cli.py::test_inspect_and_verify_json_to_stdout",
    "verify --storage-option": "test_remote.py::test_unreachable_endpoint_and_bad_options_are_one_line",
    "copy SRC": "test_remote.py::test_copy_both_ways_is_exact_resumable_and_refuses_another_cache",
    "copy DST": "test_remote.py::test_copy_both_ways_is_exact_resumable_and_refuses_another_cache",
    "copy --allow-incomplete": "test_cli.py::test_copy_of_an_incomplete_cache_is_refused_unless_allowed",
    "copy --json": "test_remote.py::test_copy_both_ways_is_exact_resumable_and_refuses_another_cache",
    "copy --storage-option": "test_remote.py::test_unreachable_endpoint_and_bad_options_are_one_line",
    "train-student --cache": "test_train_student.py::test_student_trains_from_the_cache_and_logs_ce_and_kl",
    "train-student --data": "test_train_student.py::test_cache_from_other_data_is_refused",
    "train-student --out": "test_train_student.py::test_saved_config_holds_the_resolved_temperature",
    "train-student --preset": "test_train_student.py::test_student_trains_from_the_cache_and_logs_ce_and_kl",
    "train-student --init-from": "test_tokenizer.py::test_init_from_refuses_a_model_with_another_tokenizer",
    "train-student --alpha": "test_train_student.py::test_student_trains_from_the_cache_and_logs_ce_and_kl",
    "train-student --temperature": "test_train_student.py::test_other_temperature_needs_retemper",
    "train-student --retemper": "test_train_student.py::test_other_temperature_needs_retemper",
    "train-student --tail": ("test_train_student.py::test_tail_renormalize_on_sampled_targets_renormalises_over_the_drawn_ids", "renormalize"),
    "train-student --online-teacher": "test_train_student.py::test_online_teacher_at_another_temperature_needs_no_retemper",
    "train-student --skip-bad-blocks": "test_train_student.py::test_bad_blocks_with_grad_accum_skip_whole_steps_never_nan",
    "train-student --allow-eval-split": "test_train_student.py::test_cache_of_the_dev_split_is_refused_unless_asked",
    "train-student --resume": "test_train_student.py::test_student_resume_matches_uninterrupted",
    "train-student --storage-option": "test_remote.py::test_unreachable_endpoint_and_bad_options_are_one_line",
    "eval MODELS": "test_evaluate.py::test_eval_json_has_every_field",
    "eval --data": "test_evaluate.py::test_eval_json_has_every_field",
    "eval --split": "test_evaluate.py::test_validation_and_eval_share_one_path",
    "eval --blimp": "test_evaluate.py::test_eval_json_has_every_field",
    "eval --device": "test_cli.py::test_dump_train_student_and_eval_from_the_cli",
    "eval --json": "test_cli.py::test_dump_train_student_and_eval_from_the_cli",
    "eval --storage-option": "test_remote.py::test_unreachable_endpoint_and_bad_options_are_one_line",
    "export SRC": "test_export.py::test_export_is_readable_by_everyone_whatever_the_source_modes_and_umask",
    "export DST": "test_export.py::test_export_is_readable_by_everyone_whatever_the_source_modes_and_umask",
    "run --out": ("test_run.py::test_run_refuses_a_cache_it_did_not_make_and_leaves_it", "run_cli("),  # run_cli passes --out
    "run --config": "test_remote.py::test_run_with_the_cache_in_a_bucket",
    "run --set": "test_run.py::test_run_refuses_a_cache_it_did_not_make_and_leaves_it",
    "run --cache": "test_run.py::test_two_works_sharing_one_local_cache_never_delete_each_others",
    "run --storage-option": "test_remote.py::test_unreachable_endpoint_and_bad_options_are_one_line",
    "run --force": "test_run.py::test_a_stage_that_reruns_redoes_every_later_stage",
    "bench cache-size --data": "test_evaluate.py::test_cache_size_rows",
    "bench cache-size --teacher": "test_evaluate.py::test_cache_size_rows",
    "bench cache-size --out": "test_evaluate.py::test_cache_size_rows",
    "bench cache-size --k": "test_evaluate.py::test_cache_size_rows",
    "bench cache-size --prob-dtype": "test_evaluate.py::test_cache_size_rows",
    "bench cache-size --samples": "test_evaluate.py::test_cache_size_rows",
    "bench cache-size --chunks": "test_evaluate.py::test_cache_size_rows",
    "bench cache-size --temperature": "test_evaluate.py::test_cache_size_rows",
    "bench cache-size --mass": "test_mass_targets.py::test_cache_size_sweeps_mass_targets_beside_top_k_with_two_student_seeds",
    "bench cache-size --max-k": "test_mass_targets.py::test_cache_size_sweeps_mass_targets_beside_top_k_with_two_student_seeds",
    "bench cache-size --student-seeds": "test_mass_targets.py::test_cache_size_sweeps_mass_targets_beside_top_k_with_two_student_seeds",
    "run [data] raw_dir": ("test_run.py::test_run_end_to_end_and_rerun_skips", "tiny_raw"),  # the TOML's raw_dir
    "run [teachers] name": "test_config.py::test_run_set_overrides_any_field",
    "run [student] seeds": "test_run.py::test_train_seed_beside_student_seeds_is_refused_by_name",
    "run [dump] cache": "test_run.py::test_two_works_sharing_one_s3_cache_never_delete_each_others",
    "run [teachers] tokenizer_vocab_size": ("test_run_mixed.py::test_teacher_trains_on_its_own_data_with_its_own_tokenizer", "mixed_toml("),
    "run [teachers] tokenizer": "test_run_mixed.py::test_teacher_on_an_existing_tokenizer_reads_the_same_documents",
}

SPEED_ONLY |= {
    # ray's resource reservations for each worker: where a worker runs, not what it computes
    "dump --gpus-per-worker": dump_same("ray", RayConfig(gpus_per_worker=1.0)),
    "dump --cpus-per-worker": dump_same("ray", RayConfig(cpus_per_worker=2.0)),
}


@pytest.fixture(scope="module")
def sized(tmp_path_factory, tiny_data, tiny_teachers):
    """sized(**overrides) -> the single top-4 row of a tiny `bench cache-size` (a 2-step student on it)."""
    from logitcache.bench import CacheSizeConfig, cache_size

    root = tmp_path_factory.mktemp("sized")

    @functools.lru_cache(maxsize=None)
    def make(items: tuple):
        settings = dict(ks=(4,), chunks=16, train_steps=2, student_preset="llama-tiny", student_batch_size=8) | dict(items)
        out = root / f"b{len(list(root.iterdir()))}"
        return cache_size(CacheSizeConfig(data=tiny_data, teachers=tiny_teachers, out=out, **settings))["rows"][0]

    return lambda **overrides: make(tuple(sorted(overrides.items())))


def bench_differs(key: str, value, field: str = "student_ce"):
    def check(sized):
        assert sized()[field] != sized(**{key: value})[field], f"bench cache-size {key}={value!r}: same {field}"
    return check


def check_bench_json(tiny_data, tiny_teachers, tmp_path):
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["bench", "cache-size", "--data", str(tiny_data), "--teacher", str(tiny_teachers[0]),
                                      "--out", str(tmp_path / "b"), "--k", "4", "--chunks", "8", "--json", "-"])
    assert result.exit_code == 0, result.output
    assert [r["k"] for r in json.loads(result.stdout)["rows"]] == [4]


def check_export_overwrite(tiny_teachers, tmp_path):
    from typer.testing import CliRunner

    dst = tmp_path / "exported"
    invoke = lambda *a: CliRunner().invoke(app, ["export", str(tiny_teachers[0]), str(dst), *a])  # noqa: E731
    assert invoke().exit_code == 0
    refused = invoke()
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert invoke("--overwrite").exit_code == 0


def check_blimp_max_pairs(evaluated, tmp_path):
    records = [{"sentence_good": "The cat sees a dog.", "sentence_bad": "The cat see a dog.", "UID": "agreement",
                "linguistics_term": "s-v_agreement"}] * 5
    blimp = tmp_path / "blimp"
    blimp.mkdir()
    (blimp / "agreement.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    scored = lambda **o: first_model(evaluated(blimp=blimp, **o))["blimp"]["by_paradigm"]["agreement"]  # noqa: E731
    assert scored().get("pairs", 5) == 5 and scored(blimp_max_pairs=2)["pairs"] == 2


EFFECT |= {
    "bench cache-size --train-steps": bench_differs("train_steps", 0),
    "bench cache-size --student-preset": bench_differs("student_preset", "gpt2-tiny"),
    "bench cache-size --student-batch-size": bench_differs("student_batch_size", 4),
    "bench cache-size --student-lr": bench_differs("student_lr", 1e-4),
    "bench cache-size --alpha": bench_differs("alpha", 0.0),
    "bench cache-size --seed": bench_differs("seed", 1),
    "bench cache-size --combine": bench_differs("combine", "mean-probs", field="kl"),
    "bench cache-size --json": check_bench_json,
    "export --overwrite": check_export_overwrite,
    "eval --blimp-max-pairs": check_blimp_max_pairs,
}
ELSEWHERE["train-student --loss-chunk-tokens"] = \
    "test_fused_head.py::test_training_parity_fused_head_against_full_logits"  # the same training within 1e-5
ELSEWHERE.update({f"export-targets {name}": ("test_integrations.py::test_the_axolotl_export_reads_back_as_the_cache_and_"
                                              "gives_logitcaches_loss", "exported(cache")  # the helper passes all three
                  for name in ("CACHE", "OUT", "--format")})
ELSEWHERE.update({f"export-targets {name}": "test_integrations.py::test_the_export_refuses_sampled_targets_keeps_what_"
                  "is_there_and_overwrites_on_request" for name in ("--overwrite", "--max-rows")})
ELSEWHERE |= {
    "train-teacher --activation-checkpointing":
        "test_parallel.py::test_train_student_with_activation_checkpointing_follows_the_same_losses",
    "train-teacher --fsdp": "test_parallel.py::test_fsdp_without_torchrun_is_refused",
    **{f"plan --{name}": "test_plan.py::test_plan_command" for name in
       ("preset", "vocab-size", "seq-len", "batch-size", "world-size", "gpu-memory", "json")},
    **{f"plan --{name}": "test_plan.py::test_plan_command_passes_every_setting" for name in
       ("init-from", "grad-accum", "fsdp", "activation-checkpointing", "precision", "device", "top-k",
        "loss-chunk-tokens")},
}
ELSEWHERE["dump --min-coverage"] = "test_cross_tokenizer.py::test_a_lossy_teacher_tokenizer_is_refused_below_min_coverage"
ELSEWHERE["dump --teacher-weights"] = "test_cross_tokenizer.py::test_teacher_weights_weigh_the_aligned_teachers"
ELSEWHERE["bench cache-size --storage-option"] = "test_remote.py::test_unreachable_endpoint_and_bad_options_are_one_line"

SLOW = {k for k in EFFECT if k.startswith("bench cache-size") and k != "bench cache-size --json"}


def cli_run(*args):
    from typer.testing import CliRunner

    return CliRunner().invoke(app, [str(a) for a in args])


def check_text_field(tiny_data, tmp_path):
    """--text-field names the JSONL key that holds the text: another key is refused by name, the right one read."""
    for split in ("train", "dev"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"body": f"The cat sees a dog {i}."}) + "\n"
                                                         for i in range(40)))
    common = ["prepare", "--train", tmp_path / "train.jsonl", "--dev", tmp_path / "dev.jsonl", "--tokenizer",
              Path(tiny_data) / "tokenizer.json", "--seq-len", 8]
    refused = cli_run(*common, "--out", tmp_path / "a")
    assert refused.exit_code == 2 and "text" in refused.output
    assert cli_run(*common, "--out", tmp_path / "b", "--text-field", "body").exit_code == 0


def check_corpus_demo_out(tmp_path):
    assert cli_run("corpus", "demo", "--out", tmp_path / "raw").exit_code == 0
    assert any((tmp_path / "raw").rglob("*.train"))


def check_run_data(tmp_path):
    """run --data sets data.raw_dir: a folder that is not there is refused, naming it."""
    result = cli_run("run", "--out", tmp_path / "w", "--data", tmp_path / "no-such-raw")
    assert result.exit_code == 2 and "no-such-raw" in result.output


def check_train_overwrite(tiny_data, tiny_cache, tmp_path):
    """train-teacher and train-student refuse a non-empty --out without --overwrite, and replace it with it."""
    teacher = ["train-teacher", "--data", tiny_data, "--preset", "llama-tiny", "--out", tmp_path / "t", "--max-steps", 1,
               "--batch-size", 4, "--val-chunks", 4, "--device", "cpu"]
    student = ["train-student", "--cache", tiny_cache, "--data", tiny_data, "--preset", "llama-tiny", "--out",
               tmp_path / "s", "--max-steps", 1, "--batch-size", 4, "--val-chunks", 4, "--device", "cpu"]
    for args in (teacher, student):
        assert cli_run(*args).exit_code == 0
        refused = cli_run(*args)
        assert refused.exit_code == 2 and "--overwrite" in refused.output
        assert cli_run(*args, "--overwrite").exit_code == 0


EFFECT |= {
    "prepare --text-field": check_text_field,
    "corpus demo --out": check_corpus_demo_out,
    "run --data": check_run_data,
    "train-teacher --overwrite": check_train_overwrite,
    "train-student --overwrite": check_train_overwrite,
}


def train_fields() -> list[str]:
    from logitcache.config import TrainConfig

    return [f.name for f in dataclasses.fields(TrainConfig)]


# train-student's TrainConfig options: the train-teacher entry of the same field covers the effect
SHARED_TRAIN = {f"train-student --{name.replace('_', '-')}": f"train-teacher --{name.replace('_', '-')}"
                for name in train_fields()}

CATEGORIES = {"EFFECT": EFFECT, "SPEED_ONLY": SPEED_ONLY, "ELSEWHERE": ELSEWHERE, "SHARED_TRAIN": SHARED_TRAIN}


def test_every_setting_is_in_exactly_one_category():
    settings = set(cli_settings()) | run_only_toml_keys()
    seen: dict[str, list[str]] = {}
    for name, table in CATEGORIES.items():
        for key in table:
            seen.setdefault(key, []).append(name)
    missing = sorted(settings - set(seen))
    assert not missing, f"settings with no check (add each to EFFECT, SPEED_ONLY or ELSEWHERE): {missing}"
    twice = {k: v for k, v in seen.items() if len(v) > 1}
    assert not twice, f"settings in more than one category: {twice}"
    stale = sorted(set(seen) - settings)
    assert not stale, f"entries that name no setting: {stale}"
    assert all(SHARED_TRAIN[k] in EFFECT or SHARED_TRAIN[k] in SPEED_ONLY or SHARED_TRAIN[k] in ELSEWHERE
               for k in SHARED_TRAIN)


def test_function_source(where: str) -> str:
    file, name = where.split("::")
    source = (TESTS / file).read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(source, node)
    raise AssertionError(f"{where}: no such test")


test_function_source.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("key", sorted(ELSEWHERE))
def test_elsewhere_names_a_test_that_uses_the_setting(key):
    flag, name = cli_settings().get(key, (None, key.split()[-1]))
    where = ELSEWHERE[key]
    if isinstance(where, tuple):  # (test, the text by which that test sets the setting: a helper, a layout)
        assert where[1] in test_function_source(where[0]), f"{where[0]} does not use {where[1]}"
        return
    source = test_function_source(where)
    field = name.split("__")[-1]
    needles = [f'"{flag}"', f"{field}=", f'"{field}"', f"{field} =", f"'{field}'"] if flag else [field]
    if flag and flag.isupper():  # a positional argument: the test passes it to the command
        needles = ["invoke(", "evaluate(", "export(", "copy_cache(", "(\"copy\"", "inspect", "verify"]
    assert any(n in source for n in needles), f"{ELSEWHERE[key]} does not mention {key}"


def run_check(check, request, tmp_path):
    """Call a check with the fixtures its parameters name."""
    import inspect

    kwargs = {}
    for name in inspect.signature(check).parameters:
        kwargs[name] = tmp_path if name == "tmp_path" else request.getfixturevalue(name)
    check(**kwargs)


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k for k in sorted(EFFECT)])
def test_setting_has_its_effect(key, request, tmp_path):
    run_check(EFFECT[key], request, tmp_path)


@pytest.mark.parametrize("key", sorted(SPEED_ONLY))
def test_speed_setting_keeps_the_output(key, request, tmp_path):
    run_check(SPEED_ONLY[key], request, tmp_path)


def test_student_options_reach_the_loop(tmp_path, tiny_data, tiny_cache):
    """train-student hands its TrainConfig to the same loop as train-teacher: every field, set away from
    its default, is what the saved config records (the loop's effect of each: the train-teacher checks)."""
    from logitcache.config import TrainConfig
    from logitcache.train_student import StudentConfig, train_student

    train = tiny_train(2, lr=1e-3, grad_accum=2, epochs=3, warmup_steps=1, weight_decay=0.2, eval_every=1,
                       checkpoint_every=1, val_chunks=8, seed=5, precision="fp32", tensorboard=True,
                       activation_checkpointing=True)
    changed = [f.name for f in dataclasses.fields(TrainConfig) if getattr(train, f.name) != field_default(f)]
    # fsdp needs torchrun and two ranks: tests/test_parallel.py runs it
    assert set(changed) | {"device"} == set(train_fields()) - {"fsdp"}
    out = tmp_path / "s"
    report = train_student(StudentConfig(cache=tiny_cache, data=tiny_data, out=out, preset="llama-tiny", train=train))
    saved = json.loads((out / "logitcache_config.json").read_text())["train"]
    assert saved == dataclasses.asdict(train)
    assert report.steps == 2 and (out / "tensorboard").is_dir()


# a value away from the default for each derived TOML key, where default + 1 (or the other choice) is refused
TOML_VALUES = {("teachers", "arch"): None, ("teachers", "preset"): "llama-tiny", ("dump", "engine"): None,
               ("dump", "ray.address"): "auto", ("dump", "ray.workers"): "2", ("eval", "blimp"): "/x/blimp",
               ("data", "tokenizer"): "/x/tokenizer.json", ("data", "source_field"): "source",
               ("student", "init_from"): "/x/model", ("student", "preset"): "llama-tiny",
               ("teachers", "train.grad_accum"): 2, ("student", "train.grad_accum"): 2, ("dump", "mass"): 0.5}


def other_value(f, annotation, default):
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return next(a for a in args if a != default)
    if annotation is bool:
        return not default
    if annotation is int:
        return default + 1
    if annotation is float:
        return default + 0.5
    return None


def test_every_derived_toml_key_reaches_its_stage_config(tmp_path):
    """Each key of run's TOML that a stage config defines, set away from its default with --set, is the
    value of that field in the stage config run builds (so the CLI entry's check is the key's too)."""
    from logitcache.run import RunConfig, load_run_config, build_stage_configs

    config_path = tmp_path / "c.toml"
    config_path.write_text('[[teachers]]\nname = "a"\n')
    hints = typing.get_type_hints(RunConfig)
    checked = 0
    for section_field in dataclasses.fields(RunConfig):
        section = hints[section_field.name]
        section = typing.get_args(section)[0] if typing.get_origin(section) is tuple else section
        for path, f, annotation in leaf_settings(section):
            if f.metadata.get("run_only"):
                continue
            dotted = ".".join(path)
            value = TOML_VALUES.get((section_field.name, dotted), other_value(f, annotation, field_default(f)))
            if value is None:
                continue  # a choice with one legal value here (arch needs its preset), covered by its CLI entry
            prefix = "teachers.a" if section_field.name == "teachers" else section_field.name
            literal = json.dumps(value)
            built = build_stage_configs(load_run_config(config_path, (f"{prefix}.{dotted}={literal}",)), tmp_path / "w")
            target = {"data": built["prepare"], "teachers": built["teachers"].get("a"), "dump": built["dump"],
                      "student": next(iter(built["students"].values())), "eval": built["eval"]["dev"]}[section_field.name]
            node = target
            for part in path:
                node = getattr(node, part)
            assert (str(node) if isinstance(node, Path) else node) == value, (section_field.name, dotted, node, value)
            checked += 1
    assert checked > 40


def leaf_settings(cls, prefix=()):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaf_settings(hints[f.name], prefix + (f.name,))
        else:
            yield prefix + (f.name,), f, hints[f.name]
