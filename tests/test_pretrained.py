"""The README's "Distil from pretrained teachers" commands, run from the CLI on tiny random-init
models: a pretrained-style tokenizer folder, JSONL text, three teachers of different
architectures with padded vocabularies above 100k, a student from a config-only folder, eval."""
import json

import torch
import transformers
from typer.testing import CliRunner

from test_inputs import documents, write_jsonl
from logitcache import open_cache
from logitcache_cli.app import app


PADDED = 100_352
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=64, vocab_size=PADDED)


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_distil_from_pretrained_teachers_end_to_end(tmp_path, tiny_data):
    from tokenizers import processors

    from logitcache.data.tokenizer import load_tokenizer

    # a tokenizer folder as a hub checkpoint ships it (its template prepends <s>)
    tokenizer = load_tokenizer(tiny_data / "tokenizer.json")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>")
    fast.save_pretrained(tmp_path / "tokenizer")
    teachers = []
    for i, (name, config) in enumerate((("llama", transformers.LlamaConfig(**SMALL)),
                                        ("qwen2", transformers.Qwen2Config(**SMALL)),
                                        ("gemma2", transformers.Gemma2Config(**SMALL, head_dim=8, final_logit_softcapping=1.0)))):
        torch.manual_seed(i)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / name)
        fast.save_pretrained(tmp_path / name)
        teachers.append(tmp_path / name)
    (tmp_path / "student").mkdir()
    transformers.LlamaConfig(**(SMALL | {"hidden_size": 16, "intermediate_size": 32})).save_pretrained(tmp_path / "student")
    train = write_jsonl(tmp_path / "train.jsonl", documents(400, 5))
    dev = write_jsonl(tmp_path / "dev.jsonl", documents(60, 6))
    test = write_jsonl(tmp_path / "test.jsonl", documents(60, 7))

    data, cache = tmp_path / "data", tmp_path / "cache.zarr"
    invoke("prepare", "--tokenizer", tmp_path / "tokenizer", "--train", train, "--dev", dev, "--test", test,
           "--out", data, "--seq-len", 32)
    invoke("dump", "--data", data, *[a for t in teachers for a in ("--teacher", t)], "--out", cache, "--top-k", 16,
           "--temperature", 2.0, "--max-chunks", 32, "--block-rows", 16, "--batch-size", 8, "--device", "cpu")
    attrs = open_cache(cache).attrs
    assert attrs["vocab_size"] == tokenizer.get_vocab_size() < PADDED and [t["vocab_size"] for t in attrs["teachers"]] == [PADDED] * 3
    invoke("train-student", "--cache", cache, "--data", data, "--out", tmp_path / "s", "--init-from",
           tmp_path / "student" / "config.json", "--max-steps", 4, "--batch-size", 8, "--lr", 3e-3, "--warmup-steps", 1,
           "--val-chunks", 8, "--device", "cpu")
    result = invoke("eval", tmp_path / "s", teachers[2], "--data", data, "--teacher", teachers[2], "--temperature", 2.0,
                    "--max-chunks", 8, "--json", "-")
    models = json.loads(result.stdout)["models"]
    assert models[1]["teacher_kl"] < 1e-4  # Gemma-2 (soft-capped) against itself: its own forward, not 2.3 nats
    assert models[0]["teacher_kl"] > models[1]["teacher_kl"]
    # the student folder loads in plain transformers with its tokenizer, BOS/EOS/PAD set; generate works
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "s")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    inputs = tok("the cat sees", return_tensors="pt")
    assert model.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 3
