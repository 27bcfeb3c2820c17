"""Any Hugging Face causal LM as a teacher: the cached targets equal the model's own forward.

Eight architectures built from configs (random init, no download), four of them post-processing or
scaling their logits after the head (Gemma-2 soft-capping, Granite's logits_scaling, Cohere's
logit_scale) or tying them; vocabularies padded past the tokenizer's. Each dump (float32, T = 1 and
2) equals an independent top-k of `model(x).logits` over the tokenizer's ids, for both combine modes.
"""
import shutil

import numpy as np
import pytest
import torch
import transformers

from conftest import dump_config
from logitcache import open_cache
from logitcache.teachers.combines import COMBINES
from logitcache.data.prepared import load_data
from logitcache.dump import dump
from logitcache.teachers.ensemble import Ensemble, fast_head_is_exact
from logitcache.errors import LogitcacheError
from logitcache.data.tokenizer import load_tokenizer, tokenizer_identity

PADDED_VOCAB = 320  # the data's tokenizer has 300 ids; hub checkpoints pad their embeddings like this
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, vocab_size=PADDED_VOCAB)
ARCHS = {
    "llama": lambda: transformers.LlamaConfig(**SMALL),
    "gpt2": lambda: transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=PADDED_VOCAB),
    "qwen2": lambda: transformers.Qwen2Config(**SMALL),
    "mistral": lambda: transformers.MistralConfig(**SMALL),
    "gemma2": lambda: transformers.Gemma2Config(**SMALL, head_dim=8, final_logit_softcapping=0.5),
    "granite": lambda: transformers.GraniteConfig(**SMALL, logits_scaling=0.125),
    "cohere": lambda: transformers.CohereConfig(**SMALL, logit_scale=4.0),
    "phi3": lambda: transformers.Phi3Config(**SMALL, pad_token_id=0),
}



@pytest.fixture(scope="module")
def teacher_dirs(tmp_path_factory, tiny_data):
    """Each architecture saved as a model folder with the data's tokenizer (re-saved by transformers)."""
    root = tmp_path_factory.mktemp("hf_teachers")
    dirs = {}
    for i, (name, make) in enumerate(ARCHS.items()):
        torch.manual_seed(100 + i)
        model = transformers.AutoModelForCausalLM.from_config(make())
        with torch.no_grad():  # make the heads matter: large logits, so capping and scaling change the targets
            for p in model.parameters():
                p.mul_(4.0)
        model.save_pretrained(root / name)
        tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tiny_data / "tokenizer.json"))
        tokenizer.save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


def own_forward(path, tokens: np.ndarray, vocab: int) -> torch.Tensor:
    """The model's own logits over the tokenizer's ids, computed row by row. (N, T, V) float32."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return torch.cat([model(input_ids=torch.from_numpy(row[None].astype(np.int64))).logits[..., :vocab].float()
                          for row in tokens])


# each combine mode's distribution from the teachers' logits / T, each (N, T, V): the independent reference
COMBINE_REFERENCES = {
    "mean-logits": lambda logits: torch.softmax(sum(logits) / len(logits), dim=-1),
    "mean-probs": lambda logits: sum(torch.softmax(z, dim=-1) for z in logits) / len(logits),
}


def test_every_combine_mode_has_a_reference():
    assert set(COMBINE_REFERENCES) == set(COMBINES)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("combine", list(COMBINES))
def test_dump_equals_the_models_own_forward(tmp_path, tiny_data, teacher_dirs, arch, combine):
    temperature, k = 2.0, 8
    teachers = [teacher_dirs[arch], teacher_dirs["llama" if arch != "llama" else "gpt2"]]
    out = tmp_path / "c.zarr"
    dump(dump_config(tiny_data, teachers, out, top_k=k, temperature=temperature, combine=combine,
                     prob_dtype="float32", max_chunks=8, block_rows=8))
    cached = open_cache(out).read(0, 8)
    tokens, ids, probs = cached.tokens, cached.ids, cached.probs
    vocab = load_data(tiny_data).vocab_size
    logits = [own_forward(t, tokens, vocab) / temperature for t in teachers]  # each (N, T, V)
    expected = COMBINE_REFERENCES[combine](logits)
    top_p, top_i = expected.topk(k, dim=-1)
    assert np.allclose(probs, top_p.numpy(), atol=1e-5)
    # ids equal wherever the k-th and (k+1)-th probabilities are not tied
    assert (ids == top_i.numpy()).mean() > 0.999
    assert ids.max() < vocab  # padded ids never appear


@pytest.mark.parametrize("arch", list(ARCHS))
def test_fast_head_only_where_exact(tiny_data, teacher_dirs, arch):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(teacher_dirs[arch])).eval()
    fast = fast_head_is_exact(model, 300, torch.device("cpu"))
    assert fast == (arch in {"llama", "gpt2", "qwen2", "mistral", "phi3"})  # not gemma2, granite, cohere
    ensemble = Ensemble([model], "mean-logits", 1.0, torch.device("cpu"), vocab_size=300)
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        own = torch.softmax(model(input_ids=ids).logits[..., :300].float(), -1)
    assert torch.allclose(ensemble.probs(ids), own, atol=1e-6)


def test_logit_budget_bounds_the_buffers_and_keeps_the_targets(tiny_data, teacher_dirs):
    models = [transformers.AutoModelForCausalLM.from_pretrained(str(teacher_dirs[a])).eval() for a in ("llama", "gemma2")]
    ids = torch.randint(0, 300, (6, 16))
    whole = Ensemble(models, "mean-logits", 2.0, torch.device("cpu"), vocab_size=300)
    sliced = Ensemble(models, "mean-logits", 2.0, torch.device("cpu"), vocab_size=300, logit_budget=2 * 4 * 16 * 300 * 2)
    assert sliced.rows_per_pass(16) == 2
    a, b = whole.topk(ids, 8), sliced.topk(ids, 8)
    assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1], atol=1e-7)
    assert max(buf.shape[0] for buf in sliced._buffers.values()) == 2  # never more than 2 rows of (T, V) buffers
    # mean-logits over fast heads accumulates inside the GEMMs: one buffer, so twice the rows in the same budget
    fast = [transformers.AutoModelForCausalLM.from_pretrained(str(teacher_dirs[a])).eval() for a in ("llama", "gpt2")]
    one_buffer = Ensemble(fast, "mean-logits", 2.0, torch.device("cpu"), vocab_size=300, logit_budget=2 * 4 * 16 * 300 * 2)
    assert one_buffer.rows_per_pass(16) == 4
    one_buffer.topk(ids, 8)
    assert list(one_buffer._buffers) == ["acc"]


@pytest.mark.parametrize("combine", list(COMBINES))
def test_logit_budget_splits_the_full_distributions_too(teacher_dirs, combine):
    """Ensemble.probs (sampled dumps, eval's teacher KL, online students) runs in the same row slices as topk:
    the work buffers never hold more rows than the budget allows, and the result equals the unsplit one."""
    models = [transformers.AutoModelForCausalLM.from_pretrained(str(teacher_dirs[a])).eval() for a in ("llama", "granite")]
    ids = torch.randint(0, 300, (5, 16))
    whole = Ensemble(models, combine, 2.0, torch.device("cpu"), vocab_size=300)
    sliced = Ensemble(models, combine, 2.0, torch.device("cpu"), vocab_size=300, logit_budget=2 * 4 * 16 * 300 * 2)
    assert whole.rows_per_pass(16) >= 5 and sliced.rows_per_pass(16) == 2
    expected, got = whole.probs(ids), sliced.probs(ids)  # (5, 16, 300) each; sliced: rows 0-1, 2-3, 4
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-7)
    assert max(buf.shape[0] for buf in sliced._buffers.values()) <= 2
    assert max(buf.shape[0] for buf in whole._buffers.values()) == 5


@pytest.mark.parametrize("vocab,k", [(300, 8), (2000, 32), (4000, 64), (2000, 1999), (8000, 32), (5, 5)])
def test_topk_decreasing_equals_torch_topk(vocab, k):
    """Both selection paths (numpy's argpartition where k * 64 > V on CPU, torch's topk elsewhere) give
    torch.topk's values and, where values are distinct, its ids, decreasing; rows of exact ties give the
    same values."""
    from logitcache.teachers.ensemble import topk_decreasing

    torch.manual_seed(vocab + k)
    x = torch.randn(3, 130, vocab) * 4  # 390 rows: several threads' parts
    values, ids = topk_decreasing(x, k)
    expected_values, expected_ids = x.topk(k, dim=-1)
    assert values.shape == ids.shape == (3, 130, k) and ids.dtype == torch.int64
    assert torch.equal(values, expected_values)
    assert torch.equal(torch.gather(x, -1, ids), values)
    distinct = (expected_values[..., 1:] != expected_values[..., :-1]).all(-1)  # (3, 130)
    assert torch.equal(ids[distinct], expected_ids[distinct])
    ties = torch.zeros(2, 4, vocab)  # every value equal: any k ids, all distinct
    values, ids = topk_decreasing(ties, k)
    assert torch.equal(values, torch.zeros(2, 4, k)) and all(len(set(r.tolist())) == k for r in ids.reshape(-1, k))


def test_resaved_tokenizer_is_the_same_and_a_different_one_is_refused(tmp_path, tiny_data, tiny_raw, teacher_dirs):
    data_tok = load_tokenizer(tiny_data / "tokenizer.json")
    compact = tmp_path / "compact.json"  # written by transformers, then re-saved without indentation: other bytes
    load_tokenizer(teacher_dirs["llama"] / "tokenizer.json").save(str(compact), pretty=False)
    resaved = load_tokenizer(compact)
    assert (tiny_data / "tokenizer.json").read_bytes() != compact.read_bytes()
    assert tokenizer_identity(resaved) == tokenizer_identity(data_tok)
    # a tokenizer trained on other text: refused before any work
    from logitcache.data.tokenizer import train_tokenizer

    other = train_tokenizer(["completely different words here"] * 50, 300)
    bad = tmp_path / "bad"
    shutil.copytree(teacher_dirs["llama"], bad)
    other.save(str(bad / "tokenizer.json"))
    with pytest.raises(LogitcacheError, match="different tokenizer"):
        dump(dump_config(tiny_data, [bad], tmp_path / "c.zarr", max_chunks=8))
    assert not (tmp_path / "c.zarr").exists()
    from typer.testing import CliRunner

    from logitcache_cli.app import app

    result = CliRunner().invoke(app, ["dump", "--data", str(tiny_data), "--teacher", str(bad), "--out",
                                      str(tmp_path / "c.zarr"), "--device", "cpu"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "different tokenizer" in lines[0], result.output
    result = CliRunner().invoke(app, ["dump", "--data", str(tiny_data), "--teacher", str(teacher_dirs["llama"]),
                                      "--out", str(tmp_path / "ok.zarr"), "--max-chunks", "8", "--device", "cpu"])
    assert result.exit_code == 0, result.output  # the re-saved tokenizer is accepted


def test_teacher_without_tokenizer_is_checked_by_vocabulary_only(tmp_path, tiny_data, teacher_dirs, caplog):
    bare = tmp_path / "bare"
    shutil.copytree(teacher_dirs["qwen2"], bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    with caplog.at_level("WARNING"):
        dump(dump_config(tiny_data, [bare], tmp_path / "c.zarr", max_chunks=8))
    assert "no tokenizer" in caplog.text
    small = tmp_path / "small"
    transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**(SMALL | {"vocab_size": 200}))).save_pretrained(small)
    with pytest.raises(LogitcacheError, match="smaller than the data's"):
        dump(dump_config(tiny_data, [small], tmp_path / "c2.zarr", max_chunks=8))


def test_describing_teachers_reads_no_weights_and_gives_the_same_infos(teacher_dirs, tiny_data):
    """load_teachers(weights=False), as the Ray driver describes the cache: the architecture on the meta
    device (nothing allocated), and the same infos (params, sha256, vocabulary, tokenizer) as a full load."""
    import torch

    from logitcache.data.prepared import load_data
    from logitcache.teachers.ensemble import load_teachers

    data, dirs = load_data(tiny_data), list(teacher_dirs.values())  # every architecture
    full_models, full = load_teachers(dirs, torch.device("cpu"), data, own_tokenizers=True)
    meta_models, meta = load_teachers(dirs, torch.device("cpu"), data, own_tokenizers=True, weights=False)
    assert meta == full
    assert all(p.device.type == "meta" for m in meta_models for p in m.parameters())
    assert all(p.device.type == "cpu" for m in full_models for p in m.parameters())
