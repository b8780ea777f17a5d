"""Perceptual Adversarial Training (Laidlaw et al. section 5; REFERENCE.md section 6), with
perceptual-advex's ``adv_train.py`` recipe:

per batch: model.eval(); adversarial examples from each training attack (Fast-LPA self- or
AlexNet-bounded, optionally mixed with narrow attacks), only for the inputs classified correctly
when ``only_attack_correct``; model.train(); cross-entropy on the adversarial batch (the attacks'
examples concatenated, or one random attack per batch, or the per-example maximum loss), gradient
values clipped, SGD step. SGD momentum 0.9, weight decay, the learning rate ramped linearly over
the first ``warmup_epochs`` (per step, as there) then multiplied by 0.1 at each epoch of
``lr_drops``.

``train_pat(model, train_dataset, out_dir, config)``:

* runs in one process, or under ``torchrun`` with DistributedDataParallel (gloo on CPU, nccl on
  GPU) unchanged: ``batch_size`` is the GLOBAL batch, split across processes; every random draw
  (data order, augmentation, attack starts, the attack choice) is made for the global batch from
  the step's seed and each process takes its rows, so 1 and N processes compute the same
  gradients for per-example models (BatchNorm sees each process's share of the batch: DDP's
  semantics; ``sync_batchnorm=True`` converts it on CUDA, where torch supports it);
* writes ``checkpoint.pt`` (atomic) at the end of every epoch and every ``checkpoint_every``
  steps: weights, optimizer, position (epoch and step), configuration and every process's RNG
  state; ``resume=True`` continues from it bit-identically (mid-epoch included: the epoch's batch
  order is a function of the seed and the epoch), ``model.pt`` (the weights) and ``log.csv``
  (per epoch: learning rate, loss, clean and adversarial training accuracy per attack, and the
  validation accuracies when a validation set is given);
* shows a tqdm progress bar per epoch on rank 0 and logs through ``logging``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import distributed as D
from . import validation as V
from .attacks.distances import ClassifierFeatureDistance
from .attacks.narrow import trades_loss
from .attacks.perceptual import LagrangePerceptualAttack
from .attacks.threat import draw_noise
from .nets.weights import check_state, read_state_dict
from .robust import make_attack, parse_attack_spec
from .runs import CheckpointError, RunFolder, check_data, data_record, read_log_csv, write_log_csv
from .utils import CheckedDataLoader, channels_last, file_sha256, takes_channels_last

__all__ = ["PATConfig", "train_pat", "learning_rate", "step_seed", "read_model_folder", "load_classifier", "PAT_FILES"]

PAT_FILES = ("checkpoint.pt", "model.pt", "model.json", "log.csv")

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]


@dataclass
class PATConfig:
    """The CIFAR-10 recipe of the paper by default (100 epochs, lr 0.1 with a 5-epoch warm-up,
    x0.1 at 75 and 90, weight decay 2e-4, gradient values clipped at 1, self-bounded Fast-LPA
    with bound 0.5 and 10 iterations)."""

    attacks: Tuple[str, ...] = ("fast-lpa:self=0.5",)
    attack_iterations: Optional[int] = None  # None: each attack's default (Fast-LPA 10)
    # 'all' (concatenate every attack's examples), 'random' (one per batch), 'max' (per-example max loss)
    mix: str = "all"
    only_attack_correct: bool = False
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    warmup_epochs: int = 5
    lr_drops: Tuple[int, ...] = (75, 90)
    clip_grad: Optional[float] = 1.0
    augment: bool = True  # random crop (4-pixel zero padding) and horizontal flip
    feature_layers: Optional[Tuple[str, ...]] = None  # self-bounded distance layers (default layer1..layer4)
    seed: int = 0
    workers: int = 0
    checkpoint_every: int = 0  # steps; 0: at the end of every epoch only
    sync_batchnorm: bool = False
    # 'ce': cross-entropy on the attacks' examples (PAT, AT); 'trades': TRADES (Zhang et al. 2019),
    # CE on the clean batch + beta KL(p(x) || p(x')) against its own KL attack (the 'trades' spec)
    objective: str = "ce"
    beta: float = 6.0


def _check_config(cfg: PATConfig) -> None:
    for name in ("epochs", "batch_size"):
        v = getattr(cfg, name)
        V.check_positive_int(v, f"PATConfig.{name}")
    for name in ("warmup_epochs", "checkpoint_every", "workers"):
        v = getattr(cfg, name)
        V.check_positive_int(v, f"PATConfig.{name}", minimum=0)
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"PATConfig.lr must be a finite number > 0, got {cfg.lr!r}")
    if cfg.clip_grad is not None and not (math.isfinite(cfg.clip_grad) and cfg.clip_grad > 0):
        raise ValueError(f"PATConfig.clip_grad must be > 0 or None, got {cfg.clip_grad!r}")
    if cfg.objective not in ("ce", "trades"):
        raise ValueError(f"PATConfig.objective must be 'ce' or 'trades', got {cfg.objective!r}")
    V.check_nonnegative(cfg.beta, "PATConfig.beta")
    if cfg.mix not in ("all", "random", "max"):
        raise ValueError(f"PATConfig.mix must be 'all', 'random' or 'max', got {cfg.mix!r}")
    if isinstance(cfg.attacks, str):
        raise ValueError("PATConfig.attacks must be a sequence of attack specs, e.g. ('fast-lpa:self=0.5',)")
    if not len(cfg.attacks):
        raise ValueError("PATConfig.attacks is empty: give attack specs, e.g. ('fast-lpa:self=0.5',), or ('none',) "
                         "for clean training")
    for a in cfg.attacks:
        parse_attack_spec(a)  # raises naming the bad spec
    if cfg.objective == "trades" and [parse_attack_spec(a).name for a in cfg.attacks] != ["trades"]:
        raise ValueError(f"PATConfig.objective 'trades' trains against TRADES' own KL attack: give attacks="
                         f"('trades=0.031',) (its L_inf bound), not {tuple(cfg.attacks)}")
    if cfg.batch_size % D.world_size():
        raise ValueError(f"PATConfig.batch_size {cfg.batch_size} (the global batch) must be divisible by the "
                         f"{D.world_size()} processes")


def learning_rate(cfg: PATConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """perceptual-advex's schedule (0-based epoch and global step): ``lr`` x 0.1 per passed drop;
    during the first ``warmup_epochs`` (when lr >= 0.1, as there) (step + 1) / (warmup steps) lr."""
    if epoch < cfg.warmup_epochs and cfg.lr >= 0.1:
        return (step + 1) / (cfg.warmup_epochs * steps_per_epoch) * cfg.lr
    return cfg.lr * 0.1 ** sum(epoch >= d for d in cfg.lr_drops)


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """The seed of the random draws of global step ``step`` (independent of the process count);
    ``stream`` 1 is the data order of epoch ``step``."""
    return int(np.random.SeedSequence([seed, stream, step]).generate_state(1)[0])


class _Batches(torch.utils.data.Sampler):
    """This process's rows of each global batch of an epoch (a permutation seeded by the seed and
    the epoch, full global batches only), from batch ``skip`` on."""

    def __init__(self, n: int, global_batch: int, seed: int, epoch: int, skip: int = 0) -> None:
        self.n, self.global_batch, self.seed, self.epoch, self.skip = n, global_batch, seed, epoch, skip

    def __len__(self) -> int:
        return self.n // self.global_batch - self.skip

    def __iter__(self):
        seed = step_seed(self.seed, self.epoch, stream=1)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))
        r, w = D.rank(), D.world_size()
        for b in range(self.skip, self.n // self.global_batch):
            yield perm[b * self.global_batch + r:(b + 1) * self.global_batch:w].tolist()


def _augment_batch(x: torch.Tensor, draws: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                   pad: int = 4) -> torch.Tensor:
    """Random crops of the zero-padded images at offsets (dy, dx), mirrored where ``flip``: one
    gather for the batch (rows dy + i, columns dx + j, or dx + w - 1 - j when mirrored), returned
    channels_last."""
    flip, dy, dx = (d.to(x.device) for d in draws)
    h, w = x.shape[2:]
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (N, H + 2 pad, W + 2 pad, C)
    i = torch.arange(h, device=x.device)
    j = torch.arange(w, device=x.device)
    rows = dy.long()[:, None] + i  # (N, h)
    cols = dx.long()[:, None] + torch.where(flip.bool()[:, None], w - 1 - j, j)  # (N, w)
    n = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return padded[n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def train_pat(model: nn.Module, train_dataset, out_dir: PathLike, config: Optional[PATConfig] = None, *,
              val_dataset=None, val_attacks: Sequence[str] = (), val_examples: int = 500,
              init: Optional[PathLike] = None, metadata: Optional[dict] = None,
              device: Union[str, torch.device, None] = None, resume: bool = False, overwrite: bool = False,
              allow_other_data: bool = False, stop_after_steps: Optional[int] = None,
              progress: Optional[bool] = True) -> nn.Module:
    """Train ``model`` (images in [0, 1] -> logits (N, classes)) with PAT on ``train_dataset``
    ((image, label) pairs, e.g. ``ImageFolder``) and return it (in eval mode). ``val_dataset``:
    clean accuracy and accuracy under ``val_attacks`` (specs) on its first ``val_examples``
    examples after every epoch. ``stop_after_steps``: return after that many global steps in total
    (a checkpoint is written there; ``resume=True`` continues). ``init``: start from these weights
    (a state dict file, e.g. another run's ``model.pt``; loaded strictly, pickle-free).

    The run folder (``runs.RunFolder``): ``checkpoint.pt`` first, then ``model.pt``, then (with
    ``metadata``, a JSON-able dict describing the model, e.g. the CLI's architecture and classes)
    ``model.json`` holding the metadata and ``model.pt``'s sha256, so ``read_model_folder`` can tell
    weights and description of different runs apart; then ``log.csv``, rewritten from the rows the
    checkpoint holds. A folder holding a run is refused unless ``resume`` or ``overwrite``; resuming
    on other data (folder, example count) or with other metadata is refused unless
    ``allow_other_data`` (data only)."""
    from tqdm import tqdm

    cfg = config or PATConfig()
    cfg.attacks, cfg.lr_drops = tuple(cfg.attacks), tuple(cfg.lr_drops)
    if cfg.feature_layers is not None:
        cfg.feature_layers = tuple(cfg.feature_layers)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    D.init_from_env(dev)
    _check_config(cfg)
    out = Path(out_dir)
    run = RunFolder(out, PAT_FILES, kind="PAT")
    run.prepare(resume=resume, overwrite=overwrite)
    ckpt_path = run.checkpoint
    if metadata is not None:
        try:
            metadata = json.loads(json.dumps(metadata))  # as it will read back
        except (TypeError, ValueError) as e:
            raise ValueError(f"metadata must be JSON-serializable: {e}") from None
        if not isinstance(metadata, dict) or "weights_sha256" in metadata:
            raise ValueError("metadata must be a dict without the key 'weights_sha256' (train_pat adds it)")
    n = len(train_dataset)
    if n < cfg.batch_size:
        raise ValueError(f"the training set has {n} examples, fewer than one batch of {cfg.batch_size}")
    num_classes = getattr(train_dataset, "num_classes", None)
    steps_per_epoch = n // cfg.batch_size
    world, rank = D.world_size(), D.rank()
    local = cfg.batch_size // world

    torch.manual_seed(cfg.seed)
    net = model.to(dev)
    if init is not None:
        init_state = read_state_dict(init, "initial weights")
        check_state(net, init_state, f"initial weights {init}")
        net.load_state_dict(init_state)
    if cfg.sync_batchnorm and D.is_distributed():
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    epoch, step_in_epoch = 0, 0
    resumed_stats: Optional[Dict[str, List[float]]] = None
    log_rows: List[dict] = []
    data = data_record([train_dataset.root] if isinstance(getattr(train_dataset, "root", None), (str, os.PathLike))
                       else [], n)

    def derived():
        files: List[Tuple[str, Callable[[str], None]]] = [("model.pt", lambda tmp: torch.save(net.state_dict(), tmp))]
        if metadata is not None:
            meta = metadata

            def write_json(tmp: str) -> None:
                Path(tmp).write_text(json.dumps(dict(meta, weights_sha256=file_sha256(out / "model.pt")), indent=1)
                                     + "\n")

            files.append(("model.json", write_json))
        return files + ([("log.csv", write_log_csv(log_rows))] if log_rows else [])

    if resume:
        state = run.load(("model", "optimizer", "epoch", "step_in_epoch", "config", "rng", "stats"))
        mine = {k: v for k, v in asdict(cfg).items() if k not in ("workers", "checkpoint_every")}
        saved = {k: v for k, v in state["config"].items() if k not in ("workers", "checkpoint_every")}
        saved = {"objective": "ce", "beta": 6.0, **saved}  # checkpoints from before the TRADES objective
        if {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()} != mine:
            raise ValueError(f"{ckpt_path} was written with another configuration ({saved}); this run has {mine}")
        saved_meta = state.get("metadata")
        if saved_meta is None and (out / "model.json").is_file():  # a checkpoint of an older fastlpips
            try:
                saved_meta = {k: v for k, v in json.loads((out / "model.json").read_text()).items()
                              if k != "weights_sha256"}
            except (ValueError, UnicodeDecodeError, AttributeError):
                saved_meta = None
        if metadata is not None and saved_meta is not None and saved_meta != metadata:
            raise ValueError(f"{ckpt_path} describes another model ({saved_meta}); this run has {metadata}")
        metadata = metadata if metadata is not None else saved_meta  # an API resume keeps the CLI's model.json
        check_data(state.get("data"), data, ckpt_path, allow_other_data)
        try:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"PAT checkpoint {ckpt_path} does not fit this model: "
                                  f"{str(e).splitlines()[0]}") from None
        epoch, step_in_epoch = state["epoch"], state["step_in_epoch"]
        resumed_stats = state["stats"][rank] if step_in_epoch else None
        log_rows = list(state["log"]) if "log" in state else read_log_csv(out / "log.csv", epoch)
        if len(state["rng"]) != world:
            raise ValueError(f"{ckpt_path} holds {len(state['rng'])} process(es)' RNG states; this run has {world}")
        torch.set_rng_state(state["rng"][rank])
        if D.is_main():
            run.write_derived(derived())  # a kill after the checkpoint can leave them one save behind
    # TRADES passes the clean and the adversarial batch through the model separately (BatchNorm
    # statistics of each, as the authors'), inside one forward call (one DDP forward per backward)
    trained: nn.Module = _Halves(net) if cfg.objective == "trades" else net
    if D.is_distributed():
        trained = nn.parallel.DistributedDataParallel(trained, device_ids=[dev.index] if dev.type == "cuda" else None)
    distances: dict = {}
    attacks = [make_attack(a, net, iterations=cfg.attack_iterations, layers=cfg.feature_layers, distances=distances)
               for a in cfg.attacks]
    for d in distances.values():
        d.to(dev)
    for a in attacks:
        if hasattr(a, "measure"):
            setattr(a, "measure", False)  # training needs no final distance pass
    names = [a.name for a in attacks]
    # a self-bounded LPA's reference features come from the clean pass the trainer makes anyway
    reuse = [isinstance(a, LagrangePerceptualAttack) and isinstance(a.distance, ClassifierFeatureDistance)
             and a.distance.model is net for a in attacks]
    own = cast(Optional[ClassifierFeatureDistance], next((a.distance for a, r in zip(attacks, reuse) if r), None))

    def save(epoch_: int, step_: int, stats_: Optional[dict] = None) -> None:
        rngs = D.gather_objects(torch.get_rng_state())
        partial = D.gather_objects(stats_)  # the epoch's statistics so far (mid-epoch checkpoints)
        if D.is_main():
            run.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch_,
                      "step_in_epoch": step_, "config": asdict(cfg), "rng": rngs, "stats": partial, "data": data,
                      "metadata": metadata, "log": log_rows}, derived())
        D.barrier()

    global_step = epoch * steps_per_epoch + step_in_epoch
    layout_ok: Optional[bool] = None
    disable = True if (progress is False or not D.is_main()) else (None if progress is None else False)
    while epoch < cfg.epochs:
        sampler = _Batches(n, cfg.batch_size, cfg.seed, epoch, skip=step_in_epoch)
        loader = CheckedDataLoader(train_dataset, batch_sampler=sampler, num_workers=cfg.workers,
                                             pin_memory=dev.type == "cuda")
        stats: Dict[str, List[float]] = resumed_stats or {"loss": [], "clean": [], **{k: [] for k in names}}
        resumed_stats = None
        lr = learning_rate(cfg, epoch, max(global_step - 1, 0), steps_per_epoch)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=disable, leave=False,
                   initial=step_in_epoch, total=steps_per_epoch)
        for x, y in bar:
            x, y = x.to(dev, non_blocking=True), torch.as_tensor(y).to(dev)
            V.check_unit_images(x, "training images", why=V.ATTACK_BOX)
            V.check_labels(y, x.shape[0], num_classes, "training labels")
            g = torch.Generator().manual_seed(step_seed(cfg.seed, global_step))
            rows = slice(rank, cfg.batch_size, world)
            if cfg.augment:
                draws = (torch.rand(cfg.batch_size, generator=g) < 0.5,
                         torch.randint(0, 9, (cfg.batch_size,), generator=g),
                         torch.randint(0, 9, (cfg.batch_size,), generator=g))
                x = _augment_batch(x, (draws[0][rows], draws[1][rows], draws[2][rows]))
            if layout_ok is None:  # once: can the model take channels_last batches (a .view of a map cannot)?
                layout_ok = takes_channels_last(net, x)
            # the convolutions' fast layout (attacks and update alike), or the standard one for a model
            # that cannot take it (the augmentation's gather returns channels_last); values unchanged
            x = channels_last(x) if layout_ok else x.contiguous()
            noises = [draw_noise(a.noise_kind, (cfg.batch_size,) + tuple(x.shape[1:]), generator=g, dtype=x.dtype)
                      for a in attacks]
            pick = int(torch.randint(len(attacks), (1,), generator=g)) if attacks else 0
            lr = learning_rate(cfg, epoch, global_step, steps_per_epoch)
            for group in opt.param_groups:
                group["lr"] = lr

            net.eval()
            with torch.no_grad():
                fx, logits = own.features_and_logits(x) if own is not None else (None, net(x))
            V.check_logits(logits, x.shape[0], "model(images)")
            if int(y.max()) >= logits.shape[1]:
                raise ValueError(f"training labels lie in [{int(y.min())}, {int(y.max())}] but model(images) has "
                                 f"{logits.shape[1]} outputs (classes); the dataset has "
                                 f"{num_classes if num_classes is not None else 'more'} classes")
            clean_ok = logits.argmax(1) == y
            to_attack = clean_ok if cfg.only_attack_correct else torch.ones_like(clean_ok)
            chosen = [pick] if cfg.mix == "random" else range(len(attacks))
            advs = []
            for k in chosen:
                adv = x.clone()
                if bool(to_attack.any()):
                    noise = noises[k]
                    z = noise[rows].to(dev) if noise is not None else None
                    kw: Dict[str, Any] = {}
                    if reuse[k]:
                        assert fx is not None  # reuse[k]: `own` is set and gave the clean features
                        kw = {"reference": fx[to_attack]}
                    adv[to_attack] = attacks[k](x[to_attack], y[to_attack],
                                                noise=z[to_attack] if z is not None else None, **kw)
                advs.append(adv)
            if not advs:
                advs = [x]
            net.train()
            if cfg.objective == "trades":
                clean_logits, out_logits = trained(torch.cat([x, advs[0]])).chunk(2)
                loss = trades_loss(clean_logits, out_logits, y, cfg.beta)
                ys = y
            else:
                out_logits = trained(torch.cat(advs))
                ys = y.repeat(len(advs))
                per = F.cross_entropy(out_logits, ys, reduction="none")
                loss = per.view(len(advs), -1).amax(0).mean() if cfg.mix == "max" else per.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad is not None:
                nn.utils.clip_grad_value_(net.parameters(), cfg.clip_grad)
            opt.step()

            with torch.no_grad():
                stats["loss"].append(float(loss))
                stats["clean"].append(float(clean_ok.float().mean()))
                right = (out_logits.argmax(1) == ys).view(len(advs), -1).float().mean(1)
                for j, k in enumerate(chosen):
                    stats[names[k]].append(float(right[j]))
            bar.set_postfix(loss=f"{np.mean(stats['loss']):.3f}", clean=f"{np.mean(stats['clean']):.3f}")
            global_step += 1
            step_in_epoch += 1
            if stop_after_steps is not None and global_step >= stop_after_steps:
                save(epoch, step_in_epoch, stats)
                return net.eval()
            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0 and step_in_epoch < steps_per_epoch:
                save(epoch, step_in_epoch, stats)
        epoch, step_in_epoch = epoch + 1, 0
        row = _epoch_row(epoch, lr, stats, names)
        if val_dataset is not None:
            from .robust import evaluate_robustness

            res = evaluate_robustness(net, val_dataset, list(val_attacks), batch_size=local * world, device=dev,
                                      max_examples=val_examples, progress=False, seed=cfg.seed)
            row.update({f"val_{k}": v for k, v in res.accuracy().items()})
            net.train()
        log_rows.append(row)
        save(epoch, 0)
        if D.is_main():
            log.info("epoch %d/%d: %s", epoch, cfg.epochs, ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                                   if k != "epoch"))
    return net.eval()


class _Halves(nn.Module):
    """``net`` applied to each half of the batch separately (TRADES' clean and adversarial passes)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(h) for h in x.chunk(2)])


def _epoch_row(epoch: int, lr: float, stats: Dict[str, List[float]], names: Sequence[str]) -> dict:
    """The epoch's means over every process's batches (equal batch counts per process)."""
    gathered = D.gather_objects(stats)
    mean = {k: float(np.mean([v for s in gathered for v in s[k]])) if any(s[k] for s in gathered) else math.nan
            for k in stats}
    row = {"epoch": epoch, "lr": lr, "loss": mean["loss"], "train_clean": mean["clean"]}
    row.update({f"train_{k}": mean[k] for k in names})
    return row


def read_model_folder(folder: PathLike):
    """``(metadata, state_dict)`` of a folder written by ``train_pat(metadata=...)`` (``fastlpips
    pat-train``): ``model.json`` and ``model.pt``, checked to belong together (the sha256 that
    ``model.json`` records is ``model.pt``'s) and read pickle-free. Errors name the file and the
    problem: missing files, malformed JSON, weights of another run."""
    d = Path(folder)
    meta_path, weights = d / "model.json", d / "model.pt"
    for f in (meta_path, weights):
        if not f.is_file():
            raise FileNotFoundError(f"{f} does not exist (a folder written by fastlpips pat-train holds model.json "
                                    "and model.pt)")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} holds a JSON {type(meta).__name__}, not an object")
    digest = meta.get("weights_sha256")
    if digest is None:
        warnings.warn(f"{meta_path} does not record model.pt's sha256 (written by an older fastlpips): "
                      "that the two files belong together was not checked", RuntimeWarning, stacklevel=2)
    elif digest != file_sha256(weights):
        raise ValueError(f"{weights} is not the model {meta_path} describes (its sha256 differs from the one "
                         "recorded): the folder mixes two runs; rerun or resume pat-train there")
    return meta, read_state_dict(weights, "model file")


def load_classifier(folder: PathLike, device: Union[str, torch.device] = "cpu"):
    """``(model, metadata)`` of a folder written by ``fastlpips pat-train``: ``model.json`` checked
    field by field (architecture, normalization, classes, image size, attacks), ``model.pt`` read
    pickle-free (``read_model_folder``) and loaded strictly into the architecture it names; the
    model in eval mode on ``device``. Errors (FileNotFoundError, ValueError, RuntimeError) name the
    file and the field."""
    from .nets.classifiers import ARCHS, NORMS, build_classifier
    from .nets.weights import check_state

    meta, state = read_model_folder(folder)
    where = Path(folder) / "model.json"
    expected = {"arch": f"one of {', '.join(ARCHS)}", "norm": f"one of {', '.join(NORMS)}",
                "classes": "a list of two or more class names", "size": "null or an image side >= 1",
                "attacks": "a list of attack specs"}
    checks = {"arch": lambda v: v in ARCHS, "norm": lambda v: v in NORMS,
              "classes": lambda v: isinstance(v, list) and len(v) >= 2 and all(isinstance(c, str) for c in v),
              "size": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
              "attacks": lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v)}
    for key, ok in checks.items():
        if key not in meta:
            raise ValueError(f"{where} lacks {key!r} ({expected[key]}); it was not written by fastlpips pat-train")
        if not ok(meta[key]):
            raise ValueError(f"{where}: {key} must be {expected[key]}, got {meta[key]!r}")
    model = build_classifier(meta["arch"], len(meta["classes"]), meta["norm"])
    check_state(model, state, f"model file {Path(folder) / 'model.pt'}")
    model.load_state_dict(state)
    return model.to(device).eval(), meta
