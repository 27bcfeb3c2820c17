"""`run`'s dump stage hashes the settings that can change the cache's bytes: a speed setting changed in the
TOML reuses the cache this WORK made, an output setting replaces it."""
import json

from conftest import dump_config
from logitcache._settings import config_hash
from logitcache.progress import NULL_PROGRESS
from logitcache.run import STAMP, Stages, _dump_resuming
from logitcache.store.cache import root_attrs


def run_dump_stage(work, tiny_data, tiny_teachers, **overrides) -> Stages:
    dcfg = dump_config(tiny_data, tiny_teachers, work / "cache.zarr", **overrides)
    stages = Stages(work, (), NULL_PROGRESS)
    stages.run_dump(dcfg, lambda: _dump_resuming(dcfg, NULL_PROGRESS), after=())
    return stages


def test_dump_stage_reuses_its_cache_across_speed_settings_and_replaces_it_for_output_settings(
        tmp_path, tiny_data, tiny_teachers):
    work = tmp_path / "work"
    work.mkdir()
    cache = work / "cache.zarr"
    assert run_dump_stage(work, tiny_data, tiny_teachers).ran == ["dump"]
    created = root_attrs(cache)["created"]
    assert run_dump_stage(work, tiny_data, tiny_teachers, writer_threads=1).reused == ["dump"]
    assert root_attrs(cache)["created"] == created  # the same cache, not rewritten
    # a stamp that hashes the whole config (writer_threads included) still names this cache
    stamp_path = work / f"dump{STAMP}"
    stamp = json.loads(stamp_path.read_text())
    stamp["config_hash"] = config_hash(dump_config(tiny_data, tiny_teachers, cache, writer_threads=3))
    stamp_path.write_text(json.dumps(stamp))
    assert run_dump_stage(work, tiny_data, tiny_teachers, writer_threads=3).reused == ["dump"]
    assert run_dump_stage(work, tiny_data, tiny_teachers, batch_size=3).ran == ["dump"]  # this WORK's cache, redone
    assert root_attrs(cache)["created"] != created and root_attrs(cache)["config"]["batch_size"] == 3
