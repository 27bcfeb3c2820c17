"""`export`: a student folder that plain transformers (5.x here, 4.51 in the BabyLM pipeline) loads to the
same model, whose tokenizer prepends BOS, readable by everyone, with a model card and no optimizer state or
pickle files."""
import json

import pytest
import torch
import transformers
from typer.testing import CliRunner

from conftest import tiny_train
from logitcache.train_student import StudentConfig, train_student
from logitcache_cli.app import app


def test_export_loads_in_plain_transformers_with_bos(tmp_path, tiny_data, tiny_cache):
    src, dst = tmp_path / "s", tmp_path / "export"
    train_student(StudentConfig(cache=tiny_cache, data=tiny_data, out=src, preset="llama-tiny", train=tiny_train(3)))
    result = CliRunner().invoke(app, ["export", str(src), str(dst)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in dst.iterdir())
    assert names == ["README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json"]  # no checkpoint, optimizer state or pickle
    tokenizer = transformers.AutoTokenizer.from_pretrained(dst)
    model = transformers.AutoModelForCausalLM.from_pretrained(dst)  # no trust_remote_code
    ids = tokenizer("The cat sees a dog.")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == 1 and ids[1:] == tokenizer("The cat sees a dog.", add_special_tokens=False)["input_ids"]
    assert tokenizer("The cat", return_offsets_mapping=True)["offset_mapping"][0] == (0, 0)  # BOS, then the words' offsets
    source = transformers.AutoModelForCausalLM.from_pretrained(src)
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.equal(model(x).logits, source(x).logits)
    card = (dst / "README.md").read_text()
    assert "alpha = 0.5" in card and json.loads((src / "logitcache_config.json").read_text())["preset"] in card
    # refuses to replace what is there, and an unfinished run
    assert CliRunner().invoke(app, ["export", str(src), str(dst)]).exit_code == 2
    (tmp_path / "half").mkdir()
    result = CliRunner().invoke(app, ["export", str(tmp_path / "half"), str(tmp_path / "x")])
    assert result.exit_code == 2 and "not a finished training run" in result.output


def finished_run(folder, model, data):
    """A model folder as train-student leaves it (weights, config, the data's tokenizer, COMPLETE)."""
    from logitcache.data.prepared import load_data, tokenizer_saver

    model.save_pretrained(folder)
    tokenizer_saver(load_data(data))(folder)
    (folder / "COMPLETE").write_text("ok\n")
    return folder


def rope_llama(vocab_size, rope_parameters):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=256, rope_parameters=rope_parameters,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return transformers.AutoModelForCausalLM.from_config(config)


EXPORTED_MODELS = {
    "llama rope_theta 50000": lambda v: rope_llama(v, {"rope_type": "default", "rope_theta": 50000.0}),
    "llama linear rope x2": lambda v: rope_llama(v, {"rope_type": "linear", "rope_theta": 25000.0, "factor": 2.0}),
    "gpt2": lambda v: transformers.AutoModelForCausalLM.from_config(transformers.GPT2Config(
        vocab_size=v, n_positions=256, n_embd=64, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2)),
}


def test_export_config_carries_the_transformers_4_keys_with_the_same_values(tmp_path, tiny_data):
    from logitcache.export import ExportConfig, export

    src = finished_run(tmp_path / "src", EXPORTED_MODELS["llama linear rope x2"](300), tiny_data)
    config = json.loads((export(ExportConfig(src=src, dst=tmp_path / "hf")) / "config.json").read_text())
    assert config["rope_parameters"] == {"rope_type": "linear", "rope_theta": 25000.0, "factor": 2.0}  # 5.x
    assert config["rope_theta"] == 25000.0 and config["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}  # 4.x
    assert config["torch_dtype"] == config["dtype"] == "float32"


def test_export_is_readable_by_everyone_whatever_the_source_modes_and_umask(tmp_path, tiny_data):
    import os
    import stat

    from logitcache.export import ExportConfig, export

    src = finished_run(tmp_path / "src", EXPORTED_MODELS["gpt2"](300), tiny_data)
    for path in src.iterdir():
        path.chmod(0o600)
    old_umask = os.umask(0o077)
    try:
        dst = export(ExportConfig(src=src, dst=tmp_path / "hf"))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in dst.iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes


TRANSFORMERS_4 = ["transformers==4.51.3", "tokenizers==0.21.1", "huggingface-hub==0.30.2", "safetensors==0.5.3"]

LOAD_WITH_4 = """
import json, sys
import torch, transformers
assert transformers.__version__ == "4.51.3", transformers.__version__
folder, text = sys.argv[1], sys.argv[2]
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
model = transformers.AutoModelForCausalLM.from_pretrained(folder)
ids = tokenizer(text)["input_ids"]
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0]
print(json.dumps({"ids": ids, "logits": logits.tolist(), "rope_theta": getattr(model.config, "rope_theta", None),
                  "dtype": str(model.dtype)}))
"""


@pytest.fixture(scope="session")
def transformers_4(request):
    """transformers 4.51 (the BabyLM 2025 pipeline's pin) and its tokenizers/hub/safetensors, installed once with
    --no-deps into the pytest cache; torch and the rest come from this venv."""
    import subprocess
    import sys

    target = request.config.cache.mkdir("transformers-4.51.3")
    if not (target / "transformers" / "__init__.py").is_file():
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                                 *TRANSFORMERS_4], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot install {' '.join(TRANSFORMERS_4)}: {result.stderr.strip().splitlines()[-1:]}")
    return target


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(EXPORTED_MODELS))
def test_transformers_4_reads_the_export_as_transformers_5_does(tmp_path, tiny_data, transformers_4, kind):
    """The export loaded by transformers 4.51 in a subprocess gives the same ids and the same logits as this
    transformers (5.x): a rope_theta or rope scaling 4.x ignored would move every position after the first."""
    import os
    import subprocess
    import sys

    from logitcache.export import ExportConfig, export

    dst = export(ExportConfig(src=finished_run(tmp_path / "src", EXPORTED_MODELS[kind](300), tiny_data), dst=tmp_path / "hf"))
    text = "The cat sees a dog. A bird holds the ball, and my mother finds the big house again today."
    env = dict(os.environ, PYTHONPATH=str(transformers_4))
    result = subprocess.run([sys.executable, "-c", LOAD_WITH_4, str(dst), text], capture_output=True, text=True, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    old = json.loads(result.stdout.strip().splitlines()[-1])
    tokenizer = transformers.AutoTokenizer.from_pretrained(dst)
    model = transformers.AutoModelForCausalLM.from_pretrained(dst)
    ids = tokenizer(text)["input_ids"]
    assert old["ids"] == ids and len(ids) > 20 and old["dtype"] == "torch.float32"
    if kind.startswith("llama"):
        assert old["rope_theta"] == model.config.rope_parameters["rope_theta"] != 10000.0
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    assert torch.allclose(torch.tensor(old["logits"]), logits, atol=1e-5, rtol=0)
