"""The CLI through typer's CliRunner: every command listed, bad input = one line + exit code 2."""
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from logitcache.store import block_chunk_path
from logitcache_cli.app import app

runner = CliRunner()
COMMANDS = ["corpus", "prepare", "train-teacher", "dump", "inspect", "verify", "copy", "train-student", "eval", "plan", "export",
            "export-targets", "bench", "run"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    for needle in needles:
        assert needle in text, text


def test_help_lists_every_command():
    import typer

    assert sorted(typer.main.get_command(app).commands) == sorted(COMMANDS)
    result = invoke("--help")
    assert result.exit_code == 0
    listed = {line.strip("│ ").split()[0] for line in result.output.splitlines() if line.startswith("│ ") and line.strip("│ ")}
    assert set(COMMANDS) <= listed, listed
    for command in COMMANDS:
        assert invoke(command, "--help").exit_code == 0, command


def test_long_error_stays_one_line_when_piped(tmp_path):
    """CliRunner is not a terminal: rich would wrap at 80 columns; the error must stay one line."""
    missing = tmp_path / ("a-very-long-folder-name-" * 6) / "data"
    result = invoke("prepare", "--data", missing, "--out", tmp_path / "d")
    assert_one_line_error(result, str(missing))


def test_inspect_and_verify_json_to_stdout(tiny_cache, copy_of):
    result = runner.invoke(app, ["inspect", str(tiny_cache), "--json", "-"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    assert payload["n_blocks"] == 5 and payload["attrs"]["k"] == 8 and payload["bytes_per_token"] > 0
    assert "bytes/token" in result.stderr  # the table went to stderr
    result = runner.invoke(app, ["verify", str(tiny_cache), "--json", "-"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"path": str(tiny_cache), "ok": True, "n_blocks": 5, "bad_blocks": 0, "problems": []}
    broken = copy_of(tiny_cache)
    block_chunk_path(broken, "topk_probs", 2).unlink()
    result = runner.invoke(app, ["verify", str(broken), "--json", "-"])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert not payload["ok"] and payload["bad_blocks"] == 1 and payload["problems"][0].startswith("block 2")
    assert not (Path.cwd() / "-").exists()


def test_json_to_a_file_named_by_path(tmp_path, tiny_cache):
    result = invoke("verify", tiny_cache, "--json", tmp_path / "v.json")
    assert result.exit_code == 0 and json.loads((tmp_path / "v.json").read_text())["ok"] is True


def test_prepare_writes_json(tmp_path, tiny_raw):
    result = invoke("prepare", "--data", tiny_raw, "--out", tmp_path / "d", "--vocab-size", 300, "--seq-len", 32,
                    "--json", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "p.json").read_text())
    assert payload["vocab_size"] == 300 and payload["splits"]["train"]["chunks"] > 0
    # a second prepare into the same dir is refused without --overwrite, and leaves it intact
    before = (tmp_path / "d" / "tokenizer.json").read_bytes()
    assert_one_line_error(invoke("prepare", "--data", tiny_raw, "--out", tmp_path / "d"), "--overwrite")
    assert (tmp_path / "d" / "tokenizer.json").read_bytes() == before


BAD_INPUTS = [
    (["prepare", "--data", "/no/such/dir", "--out", "{tmp}/d"], "does not exist"),
    (["prepare", "--data", "{raw}", "--out", "{tmp}/d", "--vocab-size", "0"], "vocab_size"),
    (["train-teacher", "--data", "/no/such/data", "--arch", "llama", "--preset", "llama-tiny", "--out", "{tmp}/t"], "does not exist"),
    (["train-teacher", "--data", "{data}", "--arch", "llama", "--preset", "nope", "--out", "{tmp}/t"], "unknown preset"),
    (["train-teacher", "--data", "{data}", "--arch", "llama", "--preset", "llama-tiny", "--out", "{tmp}/t", "--batch-size", "0"], "batch_size"),
    (["train-teacher", "--data", "{data}", "--arch", "llama", "--preset", "llama-tiny", "--out", "{tmp}/t", "--vocab-size", "16000"], "vocabulary"),
    (["dump", "--data", "{data}", "--teacher", "{t0}", "--out", "{tmp}/c.zarr", "--top-k", "0"], "top_k"),
    (["dump", "--data", "{data}", "--teacher", "{t0}", "--out", "{tmp}/c.zarr", "--top-k", "100000"], "larger than the vocabulary"),
    (["dump", "--data", "{data}", "--teacher", "{t0}", "--out", "{tmp}/c.zarr", "--temperature", "-1"], "temperature"),
    (["dump", "--data", "{data}", "--teacher", "{tmp}", "--out", "{tmp}/c.zarr"], "not a Hugging Face model"),
    (["dump", "--data", "{data}", "--teacher", "{t0}", "--out", "{cache}"], "already exists"),
    (["inspect", "{tmp}/missing.zarr"], "no cache"),
    (["verify", "{tmp}"], "not a Zarr"),
    (["train-student", "--cache", "{cache}", "--data", "{data}", "--out", "{tmp}/s", "--alpha", "-0.5"], "alpha"),
    (["train-student", "--cache", "{cache}", "--data", "{data}", "--out", "{tmp}/s", "--preset", "llama-tiny", "--temperature", "3"], "--retemper"),
    (["train-student", "--cache", "{tmp}/missing.zarr", "--data", "{data}", "--out", "{tmp}/s"], "no cache"),
    (["eval", "{tmp}/nomodel", "--data", "{data}"], "not a Hugging Face model"),
    (["eval", "{t0}", "--data", "{data}", "--blimp", "{tmp}"], "BLiMP"),
    (["run", "--config", "{tmp}/missing.toml", "--out", "{tmp}/w"], "does not exist"),
    (["run", "--config", "{badkey}", "--out", "{tmp}/w"], "student.alfa"),
    (["run", "--config", "{badtype}", "--out", "{tmp}/w"], "dump.top_k"),
    (["run", "--config", "{good}", "--out", "{tmp}/w", "--set", "dump.top_k=0"], "top_k"),
    (["run", "--config", "{good}", "--out", "{tmp}/w", "--set", "teachers.b.preset=x"], "no teacher named 'b'"),
    (["train-student", "--cache", "{cache}", "--data", "{data}", "--out", "{tmp}/s", "--tail", "drop"], "drop"),
    (["bench", "cache-size", "--data", "{data}", "--teacher", "{t0}", "--out", "{tmp}/b", "--k", "1,x"], "--k"),
]


@pytest.mark.parametrize("args,needle", BAD_INPUTS, ids=[f"{a[0]}-{n}" for a, n in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_raw, tiny_data, tiny_teachers, tiny_cache, args, needle):
    badkey = tmp_path / "badkey.toml"
    badkey.write_text('[[teachers]]\nname = "a"\narch = "llama"\npreset = "llama-tiny"\n[student]\nalfa = 0.5\n')
    badtype = tmp_path / "badtype.toml"
    badtype.write_text('[[teachers]]\nname = "a"\narch = "llama"\npreset = "llama-tiny"\n[dump]\ntop_k = "many"\n')
    good = tmp_path / "good.toml"
    good.write_text('[[teachers]]\nname = "a"\narch = "llama"\npreset = "llama-tiny"\n')
    values = dict(tmp=tmp_path, raw=tiny_raw, data=tiny_data, t0=tiny_teachers[0], cache=tiny_cache, badkey=badkey,
                  badtype=badtype, good=good)
    result = invoke(*[a.format(**values) for a in args])
    assert_one_line_error(result, needle)


def test_inspect_and_verify(tiny_cache, copy_of):
    result = invoke("inspect", tiny_cache)
    assert result.exit_code == 0 and "bytes/token" in result.output and "cumsum" in result.output
    assert invoke("verify", tiny_cache).exit_code == 0
    broken = copy_of(tiny_cache)
    block_chunk_path(broken, "topk_ids", 3).unlink()
    result = invoke("verify", broken)
    assert result.exit_code == 1 and "block 3" in result.output


def test_dump_train_student_and_eval_from_the_cli(tmp_path, tiny_data, tiny_teachers):
    cache = tmp_path / "c.zarr"
    result = invoke("dump", "--data", tiny_data, "--teacher", tiny_teachers[0], "--teacher", tiny_teachers[1], "--out", cache,
                    "--top-k", 4, "--max-chunks", 16, "--block-rows", 8, "--device", "cpu")
    assert result.exit_code == 0, result.output
    result = invoke("train-student", "--cache", cache, "--data", tiny_data, "--out", tmp_path / "s", "--preset", "llama-tiny",
                    "--max-steps", 3, "--batch-size", 4, "--val-chunks", 8, "--device", "cpu")
    assert result.exit_code == 0, result.output
    result = invoke("eval", tmp_path / "s", tiny_teachers[0], "--data", tiny_data, "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "e.json").read_text())
    assert [m["path"] for m in payload["models"]] == [str(tmp_path / "s"), str(tiny_teachers[0])]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_checkpoint_is_refused_and_left_alone(tmp_path, tiny_data, damage):
    """A checkpoint changed after writing (a flipped byte, a cut-off copy) must not load silently."""
    out = tmp_path / "t"
    args = ["train-teacher", "--data", tiny_data, "--arch", "llama", "--preset", "llama-tiny", "--out", out,
            "--max-steps", "2", "--batch-size", "4", "--checkpoint-every", "1", "--device", "cpu"]
    assert invoke(*args).exit_code == 0
    state = out / "checkpoint" / "state.pt"
    blob = bytearray(state.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0x01
    else:
        blob = blob[: len(blob) - 100]
    state.write_bytes(bytes(blob))
    assert_one_line_error(invoke(*args, "--resume"), "checkpoint", "delete it")
    assert state.read_bytes() == bytes(blob)


def test_verify_result_line_is_not_wrapped(tiny_cache, tmp_path):
    """The `OK <long path>: ...` line stays one line when stdout is not a terminal (rich would wrap it)."""
    import shutil

    long = tmp_path / ("a-long-folder-name-" * 5) / "cache.zarr"
    shutil.copytree(tiny_cache, long)
    result = runner.invoke(app, ["verify", str(long)])
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert result.exit_code == 0 and len(lines) == 1 and lines[0].startswith(f"OK {long}:"), lines


@pytest.fixture(scope="module")
def sampled_cache(tmp_path_factory, tiny_data, tiny_teachers):
    from conftest import dump_config
    from logitcache.dump import dump

    out = tmp_path_factory.mktemp("sampled") / "cache.zarr"
    dump(dump_config(tiny_data, tiny_teachers, out, targets="sample", samples=8, max_chunks=16))
    return out


def test_verify_refuses_a_non_finite_sample_weight(sampled_cache, copy_of):
    """A weight float16 stored as inf, under a valid checksum: only the value check can find it."""
    from logitcache.store import CacheStore
    from logitcache.store.cache import block_checksum

    assert invoke("verify", sampled_cache).exit_code == 0
    broken = copy_of(sampled_cache)
    store = CacheStore(broken, mode="r+")
    stored = store.read_checked_block(1)
    weights = stored[3].copy()  # (rows, T, N) float16
    weights[0, 3, 0] = np.float16(np.inf)
    stored[3] = weights
    store.write_stored_block(1, stored, block_checksum(stored))
    result = invoke("verify", broken, "--json", "-")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["problems"] == [
        "block 1: non-finite sample weight (a weight count/N * p/q above float16's 65504 is stored as inf)"]


def test_a_sharp_proposal_overflows_float16_weights_and_dump_refuses(tmp_path, tiny_data, tiny_teachers, monkeypatch):
    """At --proposal-temperature < 1 a weight count/N * p/q grows without bound; over 2M positions of
    p = (0.6, 0.4) at proposal temperature 1/30 the rare draws of the 0.4 id weigh ~1e5, which float16
    stores as inf. dump refuses such a block in one line (exit 2) instead of writing it."""
    import torch

    import logitcache.teachers.ensemble as ensemble_module
    from logitcache.store.writers import check_weights_fit
    from logitcache.teachers.targets import sample_targets

    probs = torch.tensor([0.6, 0.4]).expand(1, 2_000_000, 2)
    _, _, weights = sample_targets(probs, 1, 1 / 30, torch.Generator().manual_seed(0))
    assert weights.max() > 65504
    with np.errstate(over="ignore"):
        assert not np.isfinite(weights.numpy().astype(np.float16)).all()
    with pytest.raises(Exception, match="raise --proposal-temperature"):
        check_weights_fit(0, weights.numpy())
    check_weights_fit(0, np.clip(weights.numpy(), 0, 65504))  # what float16 holds passes

    # in a dump: the same scale of weight (a real draw's weights, at most 1, times 1e6) in the second batch's block
    real = ensemble_module.sample_targets  # what Ensemble.batch_targets draws with
    calls = []

    def heavy(*args, **kwargs):
        ids, p, w = real(*args, **kwargs)
        calls.append(1)
        return ids, p, w * 1e6 if len(calls) == 3 else w

    monkeypatch.setattr(ensemble_module, "sample_targets", heavy)
    out = tmp_path / "c.zarr"
    result = invoke("dump", "--data", tiny_data, "--teacher", tiny_teachers[0], "--out", out, "--targets", "sample",
                    "--samples", 8, "--max-chunks", 16, "--block-rows", 8, "--batch-size", 4, "--device", "cpu")
    assert_one_line_error(result, "block 1: a sample weight", "raise --proposal-temperature")
    from logitcache.store import CacheStore

    assert not CacheStore(out).done_mask()[1]  # the block was not committed


def tree_bytes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_copy_of_an_incomplete_cache_is_refused_unless_allowed(tiny_cache, copy_of, tmp_path, tiny_data):
    """An unfinished source: refused in one line (exit 2) before the destination is touched, whether it is
    absent or holds an earlier copy; with --allow-incomplete the done blocks are copied, the output says
    the copy is incomplete, and the copy stays incomplete (train-student refuses it)."""
    partial = copy_of(tiny_cache)
    block_chunk_path(partial, "done", 2).unlink()
    fresh = tmp_path / "fresh.zarr"
    assert_one_line_error(invoke("copy", partial, fresh), "incomplete", "1 of 5 blocks", "block 2", "--allow-incomplete")
    assert not fresh.exists()
    earlier = tmp_path / "earlier.zarr"
    assert invoke("copy", tiny_cache, earlier).exit_code == 0  # the same cache, complete, already there
    before = tree_bytes(earlier)
    assert_one_line_error(invoke("copy", partial, earlier), "incomplete")
    assert tree_bytes(earlier) == before

    result = invoke("copy", partial, fresh, "--allow-incomplete", "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["blocks_copied"], report["blocks_missing"]) == (4, 1)
    assert "incomplete: 1 of 5 blocks are not done in the source" in result.stderr
    from logitcache.store import CacheStore

    assert CacheStore(fresh).done_mask().tolist() == [True, True, False, True, True]
    result = invoke("train-student", "--cache", fresh, "--data", tiny_data, "--out", tmp_path / "s",
                    "--preset", "llama-tiny", "--device", "cpu", "--max-steps", 1)
    assert_one_line_error(result, "incomplete")


def test_copy_of_a_data_dir_with_a_corrupt_chunk_is_refused(tiny_data, tmp_path):
    """A token chunk changed after prepare (its crc32c no longer matches): copy names the chunk as verify
    does, exits 1 and writes nothing; the sound data dir copies to the same bytes."""
    import shutil

    import zarr

    broken = tmp_path / "broken"
    shutil.copytree(tiny_data, broken)
    array = zarr.open_array(str(broken / "tokens.zarr" / "train"), mode="r+")
    array[0, 0] = (int(array[0, 0]) + 1) % 300
    dst = tmp_path / "dst"
    result = invoke("copy", broken, dst)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "FAIL split 'train' chunk 0" in result.output and "checksum mismatch" in result.output
    assert "fails verify: nothing copied" in result.output
    assert not dst.exists()
    assert invoke("copy", tiny_data, dst).exit_code == 0
    assert tree_bytes(dst) == tree_bytes(tiny_data)


def test_copy_of_a_data_dir_resumes_its_own_partial_copy_and_refuses_other_files(tiny_data, tmp_path):
    """A destination holding part of this data dir's files (any of them, tokenizer.json or not) resumes to
    the source's bytes; one holding another tokenizer.json or a user's file is refused in one line (exit 2)
    and left as it was."""
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(tiny_data, partial)
    (partial / "tokens.zarr" / "zarr.json").unlink()  # the root lands last
    (partial / "tokenizer.json").unlink()  # copied in parallel: a chunk can land before it
    assert invoke("copy", tiny_data, partial).exit_code == 0
    assert tree_bytes(partial) == tree_bytes(tiny_data)

    for name, data in [("tokenizer.json", b'{"model": "another"}'), ("notes.txt", b"mine")]:
        other = tmp_path / name
        other.mkdir()
        (other / name).write_bytes(data)
        before = tree_bytes(other)
        assert_one_line_error(invoke("copy", tiny_data, other), str(other), "not a partial copy", name)
        assert tree_bytes(other) == before


def test_copy_refuses_a_destination_holding_a_symbolic_link(tiny_data, tiny_cache, copy_of, tmp_path):
    """A link inside the destination (an empty folder but for `tokens.zarr` -> elsewhere; a partial cache
    copy whose array folder is a link) would have the copy written where it points: refused in one line
    (exit 2), nothing written there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "tokens.zarr").symlink_to(elsewhere)
    assert_one_line_error(invoke("copy", tiny_data, dst), str(dst / "tokens.zarr"), "symbolic link")
    assert list(elsewhere.iterdir()) == []

    partial = copy_of(tiny_cache)
    block_chunk_path(partial, "done", 2).unlink()
    moved = tmp_path / "moved"
    (partial / "topk_probs").rename(moved)
    (partial / "topk_probs").symlink_to(moved)
    before = tree_bytes(moved)
    assert_one_line_error(invoke("copy", tiny_cache, partial), str(partial / "topk_probs"), "symbolic link")
    assert tree_bytes(moved) == before


@pytest.mark.parametrize("error,needles", [
    (OSError(28, "No space left on device", "/full/disk/c.zarr"), ("No space left on device", "/full/disk/c.zarr")),
    (OSError(39, "Directory not empty", "/a/b"), ("Directory not empty", "/a/b")),
    (OSError(28, "No space left on device"), ("No space left on device",)),
])
def test_an_os_error_is_one_line_naming_the_path(tiny_data, tmp_path, monkeypatch, error, needles):
    """A disk full or a folder that will not go (an OSError, not a bug) is one line and exit code 2."""
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr("logitcache.store.copy.copy_data_dir", fail)
    assert_one_line_error(invoke("copy", tiny_data, tmp_path / "dst"), *needles)


def test_paths_and_decode_recipes_print_as_text_not_rich_markup(tmp_path, tiny_data, tiny_teachers, monkeypatch):
    """A cache folder named with Rich's closing tag `[/x]` is printed by the dump's summary and by inspect, and
    the mass recipe `mass_ids[b][:sum(c)]` (which Rich would read as a [b] bold tag) prints verbatim."""
    from rich.console import Console

    from logitcache.store import open_cache

    monkeypatch.setattr("logitcache_cli.common.out_console", Console(width=2000))  # no folding inside a cell
    out = tmp_path / "runs[/x]" / "[bold]mass.zarr"
    result = invoke("dump", "--data", tiny_data, "--teacher", tiny_teachers[0], "--out", out, "--device", "cpu",
                    "--max-chunks", 8, "--block-rows", 8, "--targets", "mass", "--max-k", 5)
    assert result.exit_code == 0, result.output

    def unwrapped(text):  # a title longer than its table wraps onto lines of its own
        return "".join(text.split())

    assert unwrapped(f"cache {out}") in unwrapped(result.output)
    result = invoke("inspect", out)
    assert result.exit_code == 0, result.output
    recipes = open_cache(out).attrs["encodings"]
    assert "mass_ids[b][:sum(c)]" in recipes["mass_ids"]
    assert unwrapped(f"cache {out}") in unwrapped(result.output)
    for recipe in recipes.values():
        assert recipe in result.output, recipe
