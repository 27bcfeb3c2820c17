"""One definition per setting: every stage config field is a CLI option and a key of run's TOML,
with the same default in all three places; `run --set` overrides any of them."""
import dataclasses
import re
import typing
from pathlib import Path

import pytest
import typer

from logitcache._settings import field_default
from logitcache.errors import LogitcacheError
from logitcache.run import RunConfig, load_run_config, build_stage_configs
from logitcache.config import (CacheSizeConfig, DumpConfig, EvalConfig, ExportConfig, ExportTargetsConfig, PlanConfig,
                               PrepareConfig, ProbDtype,
                               StudentConfig, TeacherConfig, TrainConfig, choices)
from logitcache.store import PROB_CODES, PROB_DTYPES
from logitcache_cli.app import app

CLI = typer.main.get_command(app)
# (config class, CLI command path, run's TOML section)
STAGES = [
    (PrepareConfig, ["prepare"], "data"),
    (TeacherConfig, ["train-teacher"], "teachers"),
    (DumpConfig, ["dump"], "dump"),
    (StudentConfig, ["train-student"], "student"),
    (EvalConfig, ["eval"], "eval"),
    (CacheSizeConfig, ["bench", "cache-size"], None),
    (ExportConfig, ["export"], None),
    (ExportTargetsConfig, ["export-targets"], None),
    (PlanConfig, ["plan"], None),
]
MINIMAL_TOML = '[[teachers]]\nname = "a"\n'  # every other key at its default


def leaf_fields(cls, prefix=()):
    """(dotted path, field) for every non-config field, nested configs flattened."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaf_fields(hints[f.name], prefix + (f.name,))
        else:
            yield prefix + (f.name,), f


def owner(cls, path):
    """The config class that holds the last field of `path`."""
    for part in path[:-1]:
        cls = typing.get_type_hints(cls)[part]
    return cls


def cli_params(path) -> dict:
    command = CLI
    for name in path:
        command = command.commands[name]
    return {p.name: p for p in command.params}


@pytest.mark.parametrize("cls,command,section", STAGES, ids=[s[0].__name__ for s in STAGES])
def test_every_field_is_a_cli_option_and_a_toml_key_with_one_default(tmp_path, cls, command, section):
    params = cli_params(command)
    config_path = tmp_path / "c.toml"
    config_path.write_text(MINIMAL_TOML)
    run_config = load_run_config(config_path)
    checked_cli = checked_toml = 0
    for path, f in leaf_fields(cls):
        default = field_default(f)
        param = params.get("__".join(path))
        assert param is not None, f"{cls.__name__}.{'.'.join(path)} has no CLI option in {' '.join(command)}"
        assert param.param_type_name == "argument" or f.metadata.get("flag") or \
            param.opts == ["--" + path[-1].replace("_", "-")], (path, param.opts)
        if default is dataclasses.MISSING:
            assert param.required, path
        elif isinstance(default, tuple) and typing.get_args(typing.get_type_hints(owner(cls, path))[path[-1]])[0] is not Path:
            assert param.default == ",".join(map(str, default)), path  # comma-separated list option
        elif isinstance(default, tuple):  # a repeatable path option
            assert param.default == (list(default) or None), path
        else:
            assert param.default == default, (path, param.default, default)
        checked_cli += 1
        if section is None or not f.metadata.get("in_run", True):
            continue
        node = getattr(run_config, section)
        node = node[0] if isinstance(node, tuple) else node
        for part in path:
            assert hasattr(node, part), f"run's [{section}] has no key {'.'.join(path)}"
            node = getattr(node, part)
        assert node == default, (section, path, node, default)
        checked_toml += 1
    assert checked_cli >= 2 and (section is None or checked_toml >= 2)


def test_choices_are_listed_and_match_the_codecs():
    assert set(choices(ProbDtype)) == set(PROB_DTYPES)
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["dump", "--help"], env={"COLUMNS": "250"})
    assert "|".join(choices(ProbDtype)) in result.output  # --help lists the choices
    result = CliRunner().invoke(app, ["dump", "--data", "d", "--teacher", "t", "--out", "o", "--prob-dtype", "int4"])
    assert result.exit_code == 2 and "int4" in result.output


def test_registries_give_the_choices_and_describe_each_once():
    """Combine, ProbDtype and Arch come from their registries; the help names every combine mode with its
    description, and every code name once."""
    from logitcache.teachers.combines import COMBINES
    from logitcache.teachers.presets import ARCHS
    from logitcache.config import Arch, Combine

    assert choices(Combine) == tuple(COMBINES) and choices(ProbDtype) == tuple(PROB_CODES)
    assert choices(Arch) == tuple(ARCHS)
    fields = {f.name: f.metadata["help"] for f in dataclasses.fields(DumpConfig)}
    for mode in COMBINES.values():
        assert fields["combine"].count(mode.help) == 1
    for name in PROB_CODES:
        assert re.findall(rf"(?<![\w-]){re.escape(name)}(?![\w-])", fields["prob_dtype"]) == [name]


def test_run_sections_expose_what_run_could_not_express_before(tmp_path):
    """dump: proposal_temperature, row_selection, seed, device, precision; student: temperature, retemper,
    shuffle_buffer, skip_bad_blocks — each settable from TOML and reaching the stage config."""
    config_path = tmp_path / "c.toml"
    config_path.write_text(MINIMAL_TOML + '[dump]\nproposal_temperature = 1.5\nrow_selection = "first"\nseed = 3\n'
                           'device = "cpu"\nprecision = "fp32"\n[student]\ntemperature = 2.0\nretemper = true\n'
                           'shuffle_buffer = 64\nskip_bad_blocks = true\n')
    configs = build_stage_configs(load_run_config(config_path), tmp_path / "w")
    d = configs["dump"]
    assert (d.proposal_temperature, d.row_selection, d.seed, d.device, d.precision) == (1.5, "first", 3, "cpu", "fp32")
    s = configs["students"][("distilled", 0)]
    assert (s.temperature, s.retemper, s.shuffle_buffer, s.skip_bad_blocks) == (2.0, True, 64, True)
    assert configs["students"][("baseline", 0)].alpha == 1.0


def test_run_set_overrides_any_field(tmp_path):
    config_path = tmp_path / "c.toml"
    config_path.write_text(MINIMAL_TOML + '[[teachers]]\nname = "gpt2"\narch = "gpt2"\npreset = "gpt2-small"\n')
    config = load_run_config(config_path, ("student.train.max_steps=20", "dump.top_k=64", "teachers.gpt2.preset=gpt2-tiny",
                                           "teachers.a.train.lr=0.001", "dump.prob_dtype=float16", "student.seeds=[1, 2]",
                                           'eval.blimp="/x/blimp"'))
    assert config.student.train.max_steps == 20 and config.dump.top_k == 64
    assert [t.preset for t in config.teachers] == ["llama-small", "gpt2-tiny"]
    assert config.teachers[0].train.lr == 0.001 and config.dump.prob_dtype == "float16"
    assert config.student_seeds == (1, 2) and config.eval.blimp == Path("/x/blimp")


@pytest.mark.parametrize("override,needle", [
    ("dump.top_kk=3", "dump.top_kk"), ("dump.top_k=many", "dump.top_k"), ("teachers.nope.preset=x", "no teacher named"),
    ("dump.prob_dtype=int4", "prob_dtype"), ("nokey", "KEY=VALUE"), ("student.train.lr=-1", "lr"),
])
def test_run_set_refuses_bad_overrides(tmp_path, override, needle):
    config_path = tmp_path / "c.toml"
    config_path.write_text(MINIMAL_TOML)
    with pytest.raises(LogitcacheError, match=needle):
        load_run_config(config_path, (override,))


def test_unknown_toml_key_is_refused_by_name(tmp_path):
    config_path = tmp_path / "c.toml"
    config_path.write_text(MINIMAL_TOML + "[dump]\ntemprature = 2.0\n")
    with pytest.raises(LogitcacheError, match="unknown config key 'dump.temprature'"):
        load_run_config(config_path)


def test_shipped_configs_load(tmp_path):
    for name in ("demo.toml", "babylm-paper.toml"):
        config = load_run_config(Path(__file__).parents[1] / "configs" / name)
        assert isinstance(config, RunConfig)


def test_train_defaults_are_one_set():
    """The library's TrainConfig is what train-teacher, train-student and run all default to."""
    defaults = {f.name: field_default(f) for f in dataclasses.fields(TrainConfig)}
    for command in (["train-teacher"], ["train-student"]):
        params = cli_params(command)
        for name, value in defaults.items():
            assert params[f"train__{name}"].default == value, (command, name)
    assert TeacherConfig(data=Path("d"), out=Path("o")).train == TrainConfig()


BAD_NUMBERS = (float("inf"), float("-inf"), float("nan"))


def config_dataclasses() -> list[type]:
    """Every config dataclass: config.py's (stage configs, TrainConfig) and run's TOML sections."""
    import logitcache.config as config_module
    import logitcache.run as run_module

    found = {v for module in (config_module, run_module) for v in vars(module).values()
             if isinstance(v, type) and dataclasses.is_dataclass(v)}
    return sorted(found, key=lambda c: c.__name__)


def placeholder(annotation):
    """A value of a required field's type that its class accepts (paths are not opened when a config is built)."""
    if typing.get_origin(annotation) is tuple:
        return (placeholder(typing.get_args(annotation)[0]),)
    return Path("p") if annotation is Path else "p"


def float_settings() -> list[tuple[type, str]]:
    """(class, field) for every float (or tuple of floats) field of every config dataclass, from the annotations."""
    out = []
    for cls in config_dataclasses():
        for f in dataclasses.fields(cls):
            annotation = typing.get_type_hints(cls)[f.name]
            if float in (annotation, *typing.get_args(annotation)):
                out.append((cls, f.name))
    return out


def test_the_float_settings_are_found():
    """The derivation below sees the settings a user sets most (not a list to keep in step: a floor)."""
    names = {(cls.__name__, name) for cls, name in float_settings()}
    assert {("DumpConfig", "temperature"), ("DumpConfig", "teacher_weights"), ("TrainConfig", "lr"),
            ("DumpSection", "temperature"), ("CacheSizeConfig", "masses")} <= names and len(names) >= 20


@pytest.mark.parametrize("cls,name", float_settings(), ids=[f"{c.__name__}.{n}" for c, n in float_settings()])
def test_every_float_setting_refuses_infinity_and_nan(cls, name):
    hints = typing.get_type_hints(cls)
    required = {f.name: placeholder(hints[f.name]) for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    cls(**required)  # the placeholders make a valid config: what is refused below is the number
    is_tuple = typing.get_origin(hints[name]) is tuple
    for bad in BAD_NUMBERS:
        with pytest.raises(LogitcacheError, match=rf"^{name} must be a finite number, got {bad}$"):
            cls(**required, **{name: (1.0, bad) if is_tuple else bad})


def test_a_numpy_float32_setting_is_checked_finite():
    """np.float32 is not a Python float (np.float64 is): a sweep's np.float32 infinity is refused all the same."""
    import numpy as np

    from logitcache.config import DumpConfig

    for bad in (np.float32("inf"), np.float32("-inf")):
        with pytest.raises(LogitcacheError, match=r"^temperature must be a finite number, got -?inf$"):
            DumpConfig(data="d", teachers=("t",), out="o", temperature=bad)
        with pytest.raises(LogitcacheError, match=r"^teacher_weights must be a finite number, got -?inf$"):
            DumpConfig(data="d", teachers=("t", "u"), out="o", teacher_weights=(1.0, bad))


def cli_float_cases():
    from logitcache_cli.options import cli_fields

    for cls, command, _ in STAGES:
        for f in cli_fields(cls):
            annotation = f.annotation
            if float in (annotation, *typing.get_args(annotation)):
                yield command, f


@pytest.mark.parametrize("command,field", list(cli_float_cases()),
                         ids=[f"{' '.join(c)} {f.flag}" for c, f in cli_float_cases()])
def test_every_float_option_refuses_infinity_and_nan_in_one_line(command, field):
    from typer.testing import CliRunner

    from logitcache_cli.app import app
    from logitcache_cli.options import cli_fields

    owner_cls = next(cls for cls, c, _ in STAGES if c == command)
    args = list(command)
    for f in cli_fields(owner_cls):  # the required options, with values that pass until the config is checked
        if f.default is dataclasses.MISSING:
            args += ["p"] if f.argument else [f.flag, "p"]
    for bad in ("inf", "nan", "-inf"):
        value = f"1,{bad}" if field.kind == "csv" else bad
        result = CliRunner().invoke(app, args + [field.flag, value])
        assert result.exit_code == 2, (args, result.output)
        assert result.output.splitlines() == [f"error: {field.path[-1]} must be a finite number, got {float(bad)}"]


def run_float_keys():
    """Every float key of run's TOML, as a dotted --set key ("teachers.a." addresses the teacher named a)."""
    from logitcache.run import RunConfig

    hints = typing.get_type_hints(RunConfig)
    for section in ("data", "teachers", "dump", "student", "eval"):
        cls = hints[section]
        cls = typing.get_args(cls)[0] if typing.get_origin(cls) is tuple else cls
        prefix = "teachers.a" if section == "teachers" else section
        for path, f in leaf_fields(cls):
            annotation = typing.get_type_hints(owner(cls, path))[path[-1]]
            if float in (annotation, *typing.get_args(annotation)):
                yield prefix, path, typing.get_origin(annotation) is tuple


@pytest.mark.parametrize("prefix,path,is_tuple", list(run_float_keys()),
                         ids=[f"{p}.{'.'.join(q)}" for p, q, _ in run_float_keys()])
def test_every_float_key_of_run_refuses_infinity_and_nan_from_set_and_toml(tmp_path, prefix, path, is_tuple):
    key = f"{prefix}.{'.'.join(path)}"
    for bad in ("inf", "-inf", "nan"):
        value = f"[1.0, {bad}]" if is_tuple else bad
        config_path = tmp_path / "c.toml"
        config_path.write_text(MINIMAL_TOML)
        with pytest.raises(LogitcacheError, match=rf"config key '{re.escape(key)}' must be a finite number"):
            load_run_config(config_path, (f"{key}={value}",))
        # the same number written in the TOML file (a dotted key: in the [[teachers]] table, or at the top)
        line = f"{'.'.join(path) if prefix == 'teachers.a' else key} = {value}\n"
        config_path.write_text(MINIMAL_TOML + line if prefix == "teachers.a" else line + MINIMAL_TOML)
        with pytest.raises(LogitcacheError, match=rf"config key '{re.escape(key)}' must be a finite number"):
            load_run_config(config_path)


@pytest.mark.parametrize("setting,value,needle", [("temperature", 0.0, "temperature must be positive"),
                                                  ("student_lr", -1e-3, "student_lr must be positive"),
                                                  ("alpha", 1.5, r"alpha must be in \[0, 1\]"),
                                                  ("student_batch_size", 0, "student_batch_size must be positive")])
def test_cache_size_checks_its_student_and_temperature_settings(setting, value, needle):
    with pytest.raises(LogitcacheError, match=needle):
        CacheSizeConfig(data="d", teachers=(Path("t"),), out=Path("o"), **{setting: value})
