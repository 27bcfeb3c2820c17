"""`train-student`: distillation from the cache with the shared loop; no teacher in memory.

Loss = alpha * CE + (1 - alpha) * T^2 * KL(teacher || student) (training/losses/); CE and KL are logged
separately. `online_teachers` computes the same targets on the fly at full vocabulary: the
reference that offline training is measured against.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from ._settings import to_dict
from .config import StudentConfig  # noqa: F401  (re-exported)
from .data.prepared import check_cache_matches, load_data, tokenizer_saver
from .errors import LogitcacheError
from .files import check_output, prepare_output
from .progress import NULL_PROGRESS, ProgressHook
from .store import CacheReader
from .teachers.ensemble import Ensemble, load_teachers
from .teachers.models import build_model, get_preset
from .runtime import device as D
from .training.loop import TrainReport, check_parallel, fit
from .training.losses import dense_kl, distill_loss, fused_next_token_ce, target_mask  # noqa: F401 (re-exported)
from .training.losses.linear import Head, check_head, hidden_states_of, linear_head

log = logging.getLogger(__name__)


class DistillObjective:
    """alpha * CE + (1 - alpha) * KL against cached sparse targets (top-k + tail, mass or sampled), through
    `distill_loss`: from the final hidden states and the head in chunks of `chunk_tokens` tokens (the fused
    head loss; -1: automatic) where the student's head is exact for it, else (or with chunk_tokens 0) from
    the logits."""

    def __init__(self, alpha: float, temperature: float, tail: str, reduction: str, targets: str,
                 retemper_from: float | None = None, chunk_tokens: int = -1):
        self.options = dict(alpha=alpha, temperature=temperature, tail=tail, reduction=reduction, targets=targets,
                            retemper_from=retemper_from)
        self.chunk_tokens = chunk_tokens
        self.head: Head | None = None
        self.fused = chunk_tokens != 0  # until the first batch shows the head cannot be fused

    def _fusable_head(self, model, input_ids) -> Head | None:
        head, why = linear_head(getattr(model, "module", model))  # DDP keeps the model as .module
        if head is not None:
            why = check_head(model, head, input_ids)
        if why:
            log.warning("the student's loss is computed from its full logits (--loss-chunk-tokens 0): the fused "
                        "head loss cannot reproduce its head exactly: %s", why)
            return None
        return head

    def __call__(self, model, batch):
        input_ids = batch["input_ids"]
        if self.fused and self.head is None:
            self.head = self._fusable_head(model, input_ids)
            self.fused = self.head is not None
        if self.fused:
            with hidden_states_of(self.head.module) as got:
                model(input_ids=input_ids)  # the model's own forward, ending at its head
            loss, kl, ce = distill_loss(batch, hidden=got["hidden"], head_weight=got["weight"], head_bias=got["bias"],
                                        logit_scale=self.head.logit_scale, logit_softcap=self.head.logit_softcap,
                                        chunk_tokens=max(0, self.chunk_tokens), **self.options)
        else:
            logits = model(input_ids=input_ids).logits  # (B, T, V)
            loss, kl, ce = distill_loss(batch, logits=logits, **self.options)
        return loss, ({"ce": ce} if kl is None else {"ce": ce, "kl": kl})


class OnlineObjective:
    """The reference: the same loss with full-vocabulary targets from teachers held in memory."""

    def __init__(self, ensemble: Ensemble, alpha: float, reduction: str):
        self.ensemble, self.alpha, self.reduction = ensemble, alpha, reduction

    def __call__(self, model, batch):
        input_ids = batch["input_ids"]
        logits = model(input_ids=input_ids).logits
        ce = fused_next_token_ce(logits, input_ids)
        teacher_probs = self.ensemble.probs(input_ids)  # (B, T, V)
        kl = dense_kl(logits, teacher_probs, self.ensemble.temperature, self.reduction)
        return self.alpha * ce + (1.0 - self.alpha) * kl, {"ce": ce.detach(), "kl": kl.detach()}


def student_model(config: StudentConfig, data):
    """The student: `--init-from` a model folder (its weights), a folder or file with only a config.json (a
    random init of that config), else the preset. Its vocabulary must cover the data's tokenizer."""
    if config.init_from is None:
        return build_model(get_preset(config.preset), data.vocab_size, seed=config.train.seed, specials=data.special_ids)
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .teachers.models import load_model

    path = Path(config.init_from)
    config_file = path if path.is_file() else path / "config.json"
    if not config_file.is_file():
        raise LogitcacheError(f"--init-from {path}: no config.json there")
    folder = config_file.parent
    has_weights = path.is_dir() and (any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin")))
    if has_weights:
        model = load_model(folder)
        model.train()
    else:
        try:
            raw = json.loads(config_file.read_text())
            hf_config = AutoConfig.for_model(raw.pop("model_type"), **raw)
        except (json.JSONDecodeError, KeyError, ValueError) as exc:
            raise LogitcacheError(f"--init-from {config_file}: not a transformers config ({exc})") from None
        torch.manual_seed(config.train.seed)
        model = AutoModelForCausalLM.from_config(hf_config)
    if has_weights:  # trained weights: their ids must mean what the data's ids mean
        from .data.tokenizer import check_model_tokenizer

        check_model_tokenizer(folder, int(model.config.vocab_size), data, f"--init-from {path}")
    elif int(model.config.vocab_size) < data.vocab_size:
        raise LogitcacheError(f"--init-from {path}: vocabulary {model.config.vocab_size} is smaller than the data's "
                              f"tokenizer ({data.vocab_size})")
    log.info("student from %s (%s, %s)", path, model.config.model_type, "weights" if has_weights else "random init")
    return model


def train_student(config: StudentConfig, resume: bool = False, overwrite: bool = False,
                  progress: ProgressHook = NULL_PROGRESS) -> TrainReport:
    """Distil a student from the cache into `config.out`; an `out` holding something is refused unless
    `resume` (continue its checkpoint) or `overwrite` (replaced once the data and the cache have been checked)."""
    from .training.loader import CacheRows

    check_output(config.out, resume, overwrite)
    check_parallel(config.train)
    data = load_data(config.data)
    reader = CacheReader(config.cache, require_complete=True)
    check_cache_matches(reader, data)
    split = reader.attrs.get("split", "train")
    if split != "train" and not config.allow_eval_split:
        raise LogitcacheError(f"cache {config.cache} was dumped from the '{split}' split: the student would train on "
                              "the text it is evaluated on; pass --allow-eval-split if that is what you want")
    t_cache = float(reader.attrs["temperature"])
    temperature = config.temperature or t_cache
    online = bool(config.online_teachers)
    retemper_from = None
    # online mode computes the teachers' distribution at any T exactly: only cached targets need --retemper
    if abs(temperature - t_cache) > 1e-9 and not online:
        if not config.retemper:
            raise LogitcacheError(
                f"--temperature {temperature} differs from the cache's {t_cache}; pass --retemper to renormalise "
                "p^(T_cache/T) over the kept ids (approximate), or dump a cache at this temperature")
        if reader.attrs.get("targets") == "sample":
            raise LogitcacheError("--retemper is not defined for sampled targets")
        retemper_from = t_cache
    env = D.dist_env()
    device = D.pick_device(config.train.device, env)
    if online:
        models, _ = load_teachers(list(config.online_teachers), device, data)
        ensemble = Ensemble(models, reader.attrs["combine"], temperature, device,
                            D.autocast_for(device, config.train.precision), vocab_size=data.vocab_size)
        objective = OnlineObjective(ensemble, config.alpha, config.kl_reduction)
    else:
        objective = DistillObjective(config.alpha, temperature, config.tail, config.kl_reduction,
                                     reader.attrs.get("targets", "topk"), retemper_from, config.loss_chunk_tokens)
    source = CacheRows(
        reader, seed=config.train.seed, buffer_rows=config.shuffle_buffer,
        targets=config.alpha < 1.0 and not online, skip_bad_blocks=config.skip_bad_blocks,
        prefetch_blocks=config.prefetch_blocks, pin=device.type == "cuda",
        # a remote block is a round trip: one fetch in flight per block ahead hides it
        workers=config.prefetch_blocks if reader.store.location.is_remote else 2,
    )
    model = student_model(config, data)
    resolved = dataclasses.replace(config, temperature=temperature)  # saved as used, never as "0: the cache's"
    run_config = to_dict(resolved) | {"data_fingerprint": data.fingerprint, "stage": "train-student",
                                    "cache_created": reader.attrs.get("created")}
    prepare_output(config.out, resume, overwrite)
    report = fit(model, source, objective, config.train, config.out, data.validation_rows("dev", config.train.val_chunks),
                 run_config, resume=resume, progress=progress, save_extra=tokenizer_saver(data))
    if source.skipped_blocks:
        log.warning("skipped %d bad block(s): %s", len(source.skipped_blocks), sorted(source.skipped_blocks))
    report.skipped_blocks = sorted(source.skipped_blocks)
    return report
