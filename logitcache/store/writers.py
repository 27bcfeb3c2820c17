"""Which device kinds wrote a cache's blocks: a list in the attributes of the `done` array.

The root attributes fix one compute precision per cache (`precision`, checked by every writer before
its first block: dump.load_teaching, dump.check_resumable), so precisions never mix. Device kinds may
mix (a Ray cluster of several GPU models, CPU workers beside GPU ones); each writer adds its kind to
`done/zarr.json`'s attributes ("writers": [{"device", "precision", "torch"}], sorted) before it commits
a block, so a reader can tell which kinds a cache's bytes came from (docs/architecture.md, "Determinism
across devices"). Writers of the same kind write the same list, so a cache written by one process and one
written by many workers of one kind hold the same bytes. The list lives outside the root attributes, which
the resume check and `copy` compare whole, and `copy` takes it verbatim with the metadata.
"""
from __future__ import annotations

import json

WRITERS_KEY = "writers"
DONE_METADATA = "done/zarr.json"


def device_kind(device, precision: str) -> dict:
    """A writer's kind: the device model (cpu, or cuda:<GPU name>), the precision and the torch build."""
    import torch

    name = device.type
    if device.type == "cuda":
        name = f"cuda:{torch.cuda.get_device_name(device)}"
    return {"device": name, "precision": precision, "torch": torch.__version__}


def writers_of(store) -> list[dict]:
    """The writer kinds recorded in a cache (a CacheStore); [] for a cache written before the record."""
    raw = store.location.read_bytes(DONE_METADATA)
    try:
        return list(json.loads(raw).get("attributes", {}).get(WRITERS_KEY, [])) if raw else []
    except (ValueError, AttributeError):
        return []


def record_writer(store, kind: dict) -> bool:
    """Add `kind` to the cache's writer list unless it is there; True when it wrote. A read, then (only for
    a kind not yet listed) one atomic rewrite of `done/zarr.json`; two new kinds starting at the same moment
    can drop one, so Ray workers call this again before every block and the driver once at the end."""
    raw = store.location.read_bytes(DONE_METADATA)
    document = json.loads(raw)
    attributes = document.setdefault("attributes", {})
    listed = attributes.get(WRITERS_KEY, [])
    if kind in listed:
        return False
    attributes[WRITERS_KEY] = sorted(listed + [kind], key=lambda k: json.dumps(k, sort_keys=True))
    store.location.write_bytes(DONE_METADATA, json.dumps(document, indent=2).encode())
    return True
