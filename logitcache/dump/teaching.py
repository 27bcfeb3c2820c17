"""Loading what computes a dump's blocks, the same for every engine: the selected rows, the teachers'
ensemble (checked against the data), the cache's layout and attributes."""
from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np
import torch

from .._settings import check
from ..config import DumpConfig
from ..data.prepared import load_data, selected_indices
from ..store import CacheLayout
from ..teachers.ensemble import Ensemble, load_teachers
from ..runtime import device as D
from .lifecycle import cache_attrs


def select_rows(split_rows: np.ndarray, config: DumpConfig) -> np.ndarray:
    """The chunks a dump caches (N, T), in order: the rows data/prepared.selected_indices names."""
    if not config.max_chunks:
        return split_rows  # all of them: no copy
    return split_rows[selected_indices(split_rows.shape[0], config.max_chunks, config.row_selection)]


@dataclass
class Teaching:
    """What computing a dump's blocks takes, the same for every engine: the selected rows (N, T), the
    ensemble on its device (None when only the attributes are wanted), the layout and the attributes."""
    rows: np.ndarray
    ensemble: Ensemble | None
    layout: CacheLayout
    attrs: dict


def load_teaching(config: DumpConfig, device: torch.device, with_ensemble: bool = True) -> Teaching:
    """Load the data and the teachers (checked against the data) and describe the cache they make on
    `device` (cache_attrs: the device type and precision, so a writer of another is refused by the resume
    check). Every engine's writers call this, so their blocks and attributes are the same. Without the
    ensemble (a Ray driver) the teachers are described from their architectures on the meta device."""
    data = load_data(config.data)
    rows = select_rows(data.store.split(config.split), config)
    check(rows.shape[0] > 0, f"split '{config.split}' has no chunks")
    models, infos = load_teachers(list(config.teachers), device, data, own_tokenizers=True, weights=with_ensemble)
    check(config.width <= data.vocab_size, f"{'max_k' if config.targets == 'mass' else 'top_k'} {config.width} is "
                                           f"larger than the vocabulary ({data.vocab_size})")
    cross = None  # teachers with tokenizers of their own, or --teacher-weight: teachers/cross.py
    if config.teacher_weights or any(info.get("tokenizer") == "own" for info in infos):
        from ..teachers.cross import CrossTeaching

        cross = CrossTeaching(config, data, rows, models, infos)  # refuses low coverage before anything is written
    ensemble = None
    if with_ensemble and cross is not None:
        ensemble = cross.ensemble(config, models, device, data.vocab_size)
    elif with_ensemble:
        ensemble = Ensemble(models, config.combine, config.temperature, device,
                            D.autocast_for(device, config.precision), vocab_size=data.vocab_size,
                            logit_budget=config.logit_budget_mb << 20)
    counted = cross is not None and bool(cross.coverage)
    layout = CacheLayout(rows.shape[0], data.seq_len, config.width, data.vocab_size, config.block_rows,
                         config.prob_dtype, with_weights=config.targets == "sample", with_teacher_count=counted,
                         ragged=config.targets == "mass")
    attrs = cache_attrs(config, data, infos, rows.shape[0], device)
    if counted:
        attrs["coverage"] = cross.coverage
    attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    return Teaching(rows, ensemble, layout, attrs)


