"""`export`: a student folder that plain transformers loads, whose tokenizer prepends BOS, with a model
card and no optimizer state or pickle files."""
import json

import torch
import transformers
from typer.testing import CliRunner

from conftest import tiny_train
from logitcache.student import StudentConfig, train_student
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
