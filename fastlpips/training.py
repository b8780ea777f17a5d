"""Training LPIPS' linear layers on BAPPS 2AFC judgments, as lpips' trainer does, and adversarially
(R-LPIPS). REFERENCE.md sections 3 and 5.

* ``Dist2LogitLayer`` / ``BCERankingLoss``: lpips' ranking head (1x1 convs 5 -> 32 -> 32 -> 1 on
  [d0, d1, d0 - d1, d0 / (d1 + .1), d1 / (d0 + .1)], LeakyReLU(0.2), sigmoid) and its BCE against
  the human fraction h; the same parameter names, so lpips' ``*_net_rank.pth`` files load.
* ``Trainer``: lpips' ``Trainer`` API (``initialize``, ``set_input``, ``optimize_parameters``,
  ``clamp_weights``, ``update_learning_rate``, ``save``, ``get_current_errors``, ...), so lpips'
  ``train.py`` / ``test_dataset_model.py`` run with ``import fastlpips as lpips``. Same
  optimization (Adam, betas (beta1, 0.999), the lin weights clamped >= 0 after every step, dropout
  before the lin layers with the global RNG in lpips' order); the reference's trunk features are
  computed once per triplet (``LPIPS.distances``) and no gradient is taken w.r.t. the images.
* ``train_lpips``: the whole run (n epochs + n decay epochs with the learning rate falling linearly
  to 0, as lpips' train.py), with a checkpoint after every epoch (atomic; ``resume=True`` continues
  from it: weights, optimizer, learning rate, epoch and RNG states), progress bars, the lin weights
  saved in lpips' state-dict format (``lpips.LPIPS(model_path=...)`` and ours load them), and under
  torchrun DistributedDataParallel (gloo on CPU, nccl on GPU) with rank 0 writing the files.
* ``ranking_pgd``: the R-LPIPS attack: PGD maximizing the ranking loss on x0, x1, ref, or x0 then
  x1, L_inf or L_2, eps on the images' [-1, 1] scale (8/255 there is 4/255 on [0, 1]).
  ``train_lpips(adversarial=AdversarialConfig(...))`` trains on its examples (R-LPIPS).
"""
from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from . import distributed as D
from . import validation as V
from .attacks.metric_attacks import ascent_direction, project_l2, project_linf
from .bapps import TwoAFCDataset, bapps_loader
from .model import LPIPS
from .nets.weights import check_state, read_state_dict
from .runs import CheckpointError, RunFolder, check_data, data_record, read_log_csv, write_log_csv
from .utils import atomic_save

if TYPE_CHECKING:
    from .classic import DSSIM, L2

__all__ = ["Dist2LogitLayer", "BCERankingLoss", "Trainer", "TrainConfig", "AdversarialConfig", "train_lpips",
           "ranking_pgd", "clamp_lin_weights", "ATTACK_TARGETS", "robust_2afc_table"]

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]


class Dist2LogitLayer(nn.Module):
    """lpips' ranking head: (d0, d1) (N, 1, 1, 1) -> the probability that humans prefer p1."""

    def __init__(self, chn_mid: int = 32, use_sigmoid: bool = True) -> None:
        super().__init__()
        layers: List[nn.Module] = [nn.Conv2d(5, chn_mid, 1, bias=True), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(chn_mid, chn_mid, 1, bias=True), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(chn_mid, 1, 1, bias=True)]
        if use_sigmoid:
            layers.append(nn.Sigmoid())
        self.model = nn.Sequential(*layers)

    def forward(self, d0: torch.Tensor, d1: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
        return self.model(torch.cat((d0, d1, d0 - d1, d0 / (d1 + eps), d1 / (d0 + eps)), dim=1))


class BCERankingLoss(nn.Module):
    """BCE between the ranking head's output and the human fraction; ``judge`` in [-1, 1] as lpips
    passes it (``2 h - 1``)."""

    def __init__(self, chn_mid: int = 32) -> None:
        super().__init__()
        self.net = Dist2LogitLayer(chn_mid=chn_mid)
        self.loss = nn.BCELoss()

    def forward(self, d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> torch.Tensor:
        for t, name in ((d0, "d0"), (d1, "d1"), (judge, "judge")):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if d0.shape != d1.shape or d0.dim() != 4 or d0.shape[1] != 1:
            raise ValueError(f"d0 and d1 must be distances of one shape (N, 1, H, W), e.g. (N, 1, 1, 1), got "
                             f"{tuple(d0.shape)} and {tuple(d1.shape)}")
        if judge.numel() not in (d0.shape[0], d0.numel()):
            raise ValueError(f"judge must hold one value per pair ({d0.shape[0]}), got shape {tuple(judge.shape)}")
        if judge.numel() and judge.device.type == "cpu":  # on a GPU: BCELoss' own target check (no sync here)
            lo, hi = (float(v) for v in torch.aminmax(judge.detach()))
            if not (-1.0 <= lo and hi <= 1.0):  # NaN fails too
                raise ValueError(f"judge must lie in [-1, 1] (2 h - 1 for the fraction h of people preferring p1, "
                                 f"as lpips passes it), got values in [{lo:g}, {hi:g}]")
        shape = d0.shape if judge.numel() == d0.numel() else (d0.shape[0], 1, 1, 1)
        per = ((judge.reshape(shape).to(d0.dtype) + 1.0) / 2.0).expand_as(d0)
        self.logit = self.net(d0, d1)
        return self.loss(self.logit, per)


def clamp_lin_weights(net: nn.Module) -> None:
    """lpips' ``clamp_weights``: every 1x1 convolution's weight of ``net`` clamped to >= 0 (the lin
    layers; with a tuned SqueezeNet trunk also its 1x1 convolutions, exactly as lpips does)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
                m.weight.clamp_(min=0)


# -- the R-LPIPS attack ------------------------------------------------------------------------------
ATTACK_TARGETS = ("x0", "x1", "ref", "x0_x1")


def ranking_pgd(model: LPIPS, rank: Union[BCERankingLoss, str, None], ref: torch.Tensor, p0: torch.Tensor,
                p1: torch.Tensor, judge: torch.Tensor, *, eps: float, norm: str = "linf", target: str = "x0",
                steps: int = 10, step_size: Optional[float] = None) -> Dict[str, torch.Tensor]:
    """PGD on 2AFC triplets against an LPIPS model: ``target`` ('x0' = p0, 'x1' = p1, 'ref', or
    'x0_x1': p0, then p1 with p0 fixed) moves within an L_inf or L_2 ball of radius ``eps`` on the
    images' [-1, 1] scale (R-LPIPS' convention; 8/255 there is 4/255 on [0, 1]), images kept in [-1, 1].

    The objective maximized, by ``rank``:
    * a ``BCERankingLoss``: its ranking loss against the humans (R-LPIPS training: the head being
      trained);
    * ``'fresh'``: the ranking loss of a newly initialized head at every step, as the R-LPIPS
      authors' evaluation code does (seeded per step, so reproducible);
    * None: the 2AFC margin ``(d0 - d1)(1 - 2h)``, which grows exactly when the metric's choice moves
      against the humans' (the attack that lowers the 2AFC score; ``robust_2afc_table``'s default).
    Steps are ``step_size * sign(grad)`` (L_inf) or along the normalized gradient (L_2), default
    2.5 eps / steps; the authors' rule is ``step_size=1e4`` (a jump to the ball's corner).
    Returns {'ref', 'p0', 'p1'} with the attacked image(s) replaced (detached); the model's and the
    head's parameters get no gradient."""
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if target not in ATTACK_TARGETS:
        raise ValueError(f"target must be one of {ATTACK_TARGETS}, got {target!r}")
    if not (rank is None or rank == "fresh" or isinstance(rank, BCERankingLoss)):
        raise ValueError(f"rank must be a BCERankingLoss, 'fresh' or None, got {rank!r}")
    steps = V.check_positive_int(steps, "steps")
    eps = V.check_nonnegative(eps, "eps")
    if step_size is not None:
        step_size = V.check_number(step_size, "step_size", low=0, low_open=True)
    for t, name in ((ref, "ref"), (p0, "p0"), (p1, "p1")):
        V.check_image(t, name, allow_empty=False)
        V.check_finite(t, name)
    if not (ref.shape == p0.shape == p1.shape):
        raise ValueError(f"ref, p0 and p1 must have one shape, got {tuple(ref.shape)}, {tuple(p0.shape)} and "
                         f"{tuple(p1.shape)}")
    V.check_fraction_values(judge, "judge (the fraction of people preferring p1)")
    if not isinstance(judge, torch.Tensor) or judge.numel() != ref.shape[0]:
        raise ValueError(f"judge must be a tensor of one value per triplet ({ref.shape[0]}), got "
                         f"{tuple(judge.shape) if isinstance(judge, torch.Tensor) else type(judge).__name__}")
    step = step_size if step_size is not None else 2.5 * eps / steps
    images = {"ref": ref.detach(), "p0": p0.detach(), "p1": p1.detach()}
    h = judge.detach().reshape(-1, 1, 1, 1).to(ref.dtype)
    names = {"x0": ["p0"], "x1": ["p1"], "ref": ["ref"], "x0_x1": ["p0", "p1"]}[target]
    if eps == 0:
        return images
    trained = rank if isinstance(rank, BCERankingLoss) else None  # the head being trained, if any
    params = [p for p in list(model.parameters()) + (list(trained.parameters()) if trained is not None else [])
              if p.requires_grad]
    for p in params:
        p.requires_grad_(False)

    def objective(d0, d1, k):
        if rank is None:
            return ((d0 - d1) * (1 - 2 * h)).sum()
        head = trained if trained is not None else _fresh_head(k, ref.device)
        return head(d0, d1, h * 2 - 1)

    project = project_linf if norm == "linf" else project_l2
    try:
        for name in names:
            x = images[name]
            a = x.clone()
            for k in range(steps):
                a.requires_grad_(True)
                parts = dict(images, **{name: a})
                with torch.enable_grad():  # also when called under no_grad (e.g. while scoring)
                    d0, d1 = model.distances(parts["ref"], [parts["p0"], parts["p1"]])
                    (g,) = torch.autograd.grad(objective(d0, d1, k), a)
                with torch.no_grad():  # LPIPS' [-1, 1] box
                    a = project(x, a + step * ascent_direction(g, norm), eps, (-1.0, 1.0))
            images[name] = a.detach()
    finally:
        for p in params:
            p.requires_grad_(True)
    return images


def _fresh_head(seed: int, device) -> BCERankingLoss:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = BCERankingLoss()
    return head.to(device).requires_grad_(False)


def ranking_accuracy(d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> np.ndarray:
    """lpips' training accuracy per triplet: h where the metric picks p1 (d1 < d0), else 1 - h."""
    d1_lt_d0 = (d1 < d0).cpu().numpy().flatten()
    judge_per = judge.cpu().numpy().flatten()
    return d1_lt_d0 * judge_per + (1 - d1_lt_d0) * (1 - judge_per)


# -- lpips' Trainer API ------------------------------------------------------------------------------
class Trainer:
    """lpips' ``Trainer`` (lpips/trainer.py) with the same methods and attributes. Differences:
    ``use_gpu=True`` without CUDA raises instead of crashing later, there is no DataParallel
    (multi-GPU training: ``train_lpips`` under torchrun), the reference's features are computed
    once per triplet, and ``set_input`` does not make the images require gradients."""

    net: Union[LPIPS, L2, DSSIM]  # set by initialize
    save_dir: str  # lpips' attribute for load_network / save_done: set by the caller (lpips never sets it either)

    def name(self) -> str:
        return self.model_name

    def initialize(self, model: str = "lpips", net: str = "alex", colorspace: str = "Lab", pnet_rand: bool = False,
                   pnet_tune: bool = False, model_path: Optional[PathLike] = None, use_gpu: bool = True,
                   printNet: bool = False, spatial: bool = False, is_train: bool = False, lr: float = 0.0001,
                   beta1: float = 0.5, version: str = "0.1", gpu_ids: Sequence[int] = (0,)) -> None:
        if use_gpu and not torch.cuda.is_available():
            raise ValueError("Trainer.initialize(use_gpu=True) but CUDA is not available here; pass use_gpu=False")
        self.use_gpu, self.gpu_ids = use_gpu, list(gpu_ids)
        self.device = torch.device(f"cuda:{self.gpu_ids[0]}") if use_gpu else torch.device("cpu")
        self.model, self.is_train, self.spatial = model, is_train, spatial
        self.model_name = f"{model} [{net}]"
        if model == "lpips":
            self.net = LPIPS(pretrained=not is_train, net=net, version=version, lpips=True, spatial=spatial,
                             pnet_rand=pnet_rand, pnet_tune=pnet_tune, use_dropout=True, model_path=model_path,
                             eval_mode=False, verbose=False)
        elif model == "baseline":
            self.net = LPIPS(pnet_rand=pnet_rand, net=net, lpips=False, verbose=False)
        elif model in ("L2", "l2", "DSSIM", "dssim", "SSIM", "ssim"):
            from .classic import DSSIM, L2

            cls = L2 if model.lower() == "l2" else DSSIM
            self.net = cls(use_gpu=use_gpu, colorspace=colorspace)
            self.model_name = "L2" if cls is L2 else "SSIM"
        else:
            raise ValueError(f"Model [{model}] not recognized.")
        self.parameters = list(self.net.parameters())
        if is_train:
            self.rankLoss = BCERankingLoss()
            self.parameters += list(self.rankLoss.net.parameters())
            self.lr = self.old_lr = lr
            self.optimizer_net = torch.optim.Adam(self.parameters, lr=lr, betas=(beta1, 0.999))
            self.rankLoss.to(self.device)
        else:
            self.net.eval()
        self.net.to(self.device)
        if printNet:
            n = sum(p.numel() for p in self.net.parameters())
            log.info("Network %s: %d parameters", self.net, n)

    def _need(self, *steps: str) -> None:
        """Methods called before what they need: a clear error instead of a missing attribute."""
        if "initialize" in steps and not hasattr(self, "net"):
            raise RuntimeError("Trainer: call initialize(...) first")
        if "train" in steps and not getattr(self, "is_train", False):
            raise RuntimeError("Trainer: this needs initialize(..., is_train=True) (an optimizer and a ranking head)")
        if "set_input" in steps and not hasattr(self, "var_ref"):
            raise RuntimeError("Trainer: call set_input(batch) first")
        if "step" in steps and not hasattr(self, "loss_total"):
            raise RuntimeError("Trainer: no training step yet; call optimize_parameters() first")

    def forward(self, in0: torch.Tensor, in1: torch.Tensor, retPerLayer: bool = False):
        self._need("initialize")
        return self.net.forward(in0, in1, retPerLayer=retPerLayer)

    def optimize_parameters(self) -> None:
        self._need("initialize", "train", "set_input")
        self.forward_train()
        self.optimizer_net.zero_grad()
        self.backward_train()
        self.optimizer_net.step()
        self.clamp_weights()

    def clamp_weights(self) -> None:
        self._need("initialize")
        clamp_lin_weights(self.net)

    def set_input(self, data: dict) -> None:
        self._need("initialize")
        if not isinstance(data, Mapping) or any(k not in data for k in ("ref", "p0", "p1", "judge")):
            keys = f" with {sorted(data)}" if isinstance(data, Mapping) else ""
            raise ValueError("set_input needs a 2AFC batch: a dict with 'ref', 'p0', 'p1' and 'judge' "
                             f"(got {type(data).__name__}{keys})")
        V.check_fraction_values(data["judge"], "judge (the fraction of people preferring p1)")
        self.input_ref, self.input_p0, self.input_p1 = (data[k].to(self.device) for k in ("ref", "p0", "p1"))
        self.input_judge = data["judge"].to(self.device)
        self.image_paths = data.get("ref_path")
        # lpips names (Variable wrappers there); no gradient w.r.t. the images is needed
        self.var_ref, self.var_p0, self.var_p1 = self.input_ref, self.input_p0, self.input_p1

    def forward_train(self) -> torch.Tensor:
        self._need("initialize", "train", "set_input")
        # an L2 / DSSIM net has no distances: training needs LPIPS (AttributeError otherwise, as before)
        self.d0, self.d1 = self.net.distances(self.var_ref, [self.var_p0, self.var_p1])  # type: ignore[operator]
        self.acc_r = self.compute_accuracy(self.d0, self.d1, self.input_judge)
        self.var_judge = (1.0 * self.input_judge).view(self.d0.size())
        self.loss_total = self.rankLoss(self.d0, self.d1, self.var_judge * 2.0 - 1.0)
        return self.loss_total

    def backward_train(self) -> None:
        self._need("step")
        torch.mean(self.loss_total).backward()

    def compute_accuracy(self, d0, d1, judge) -> np.ndarray:
        return ranking_accuracy(d0, d1, judge)

    def get_current_errors(self) -> "OrderedDict[str, float]":
        self._need("step")
        return OrderedDict([("loss_total", float(np.mean(self.loss_total.detach().cpu().numpy()))),
                            ("acc_r", float(np.mean(self.acc_r)))])

    def get_current_visuals(self) -> "OrderedDict[str, np.ndarray]":
        self._need("set_input")
        from .utils import tensor2im

        zoom = max(1, int(round(256 / self.var_ref.shape[2])))
        return OrderedDict((k, tensor2im(v).repeat(zoom, 0).repeat(zoom, 1))
                           for k, v in (("ref", self.var_ref), ("p0", self.var_p0), ("p1", self.var_p1)))

    def save(self, path: PathLike, label: str) -> None:
        self._need("initialize", "train")
        self.save_network(self.net, path, "", label)
        self.save_network(self.rankLoss.net, path, "rank", label)

    def save_network(self, network: nn.Module, path: PathLike, network_label: str, epoch_label: str) -> None:
        atomic_save(network.state_dict(), os.path.join(path, f"{epoch_label}_net_{network_label}.pth"))

    def load_network(self, network: nn.Module, network_label: str, epoch_label: str) -> None:
        path = os.path.join(self.save_dir, f"{epoch_label}_net_{network_label}.pth")
        log.info("Loading network from %s", path)
        state = read_state_dict(path, "network file")
        check_state(network, state, f"network file {path}")
        network.load_state_dict(state)

    def update_learning_rate(self, nepoch_decay: int) -> None:
        self._need("initialize", "train")
        V.check_positive_int(nepoch_decay, "nepoch_decay")
        lr = self.old_lr - self.lr / nepoch_decay
        for group in self.optimizer_net.param_groups:
            group["lr"] = lr
        log.info("update lr decay: %f -> %f", self.old_lr, lr)
        self.old_lr = lr

    def get_image_paths(self):
        return self.image_paths

    def save_done(self, flag: bool = False) -> None:
        np.save(os.path.join(self.save_dir, "done_flag"), flag)
        np.savetxt(os.path.join(self.save_dir, "done_flag"), [flag], fmt="%i")


# -- the training run ----------------------------------------------------------------------------------
@dataclass
class AdversarialConfig:
    """R-LPIPS training: each batch is replaced by ``ranking_pgd``'s examples (``target`` x0, x1, ref
    or x0_x1; eps on the [-1, 1] scale; the paper's L_inf training: 8/255, 50 steps)."""

    eps: float = 8 / 255
    norm: str = "linf"
    target: str = "x0"
    steps: int = 50
    step_size: Optional[float] = None


@dataclass
class TrainConfig:
    """lpips' train.py defaults: alex, v0.1, batch 50, 5 + 5 epochs, Adam lr 1e-4 betas (0.5, 0.999)."""

    net: str = "alex"
    version: str = "0.1"
    epochs: int = 5
    decay_epochs: int = 5
    batch_size: int = 50
    lr: float = 1e-4
    beta1: float = 0.5
    tune_trunk: bool = False
    from_scratch: bool = False  # a random trunk (lpips' --from_scratch)
    init: Optional[str] = None  # start from these lin weights (an lpips state dict) instead of random ones
    seed: int = 0
    workers: int = 0
    adversarial: Optional[AdversarialConfig] = None


def _init_model(cfg: TrainConfig, device: torch.device):
    torch.manual_seed(cfg.seed)
    net = LPIPS(pretrained=cfg.init is not None, net=cfg.net, version=cfg.version, pnet_rand=cfg.from_scratch,
                pnet_tune=cfg.tune_trunk, use_dropout=True, model_path=cfg.init, eval_mode=False, verbose=False)
    rank = BCERankingLoss()
    return net.to(device), rank.to(device)


class _RankingObjective(nn.Module):
    """The loss of one batch as one module (what DistributedDataParallel wraps)."""

    def __init__(self, net: LPIPS, rank: BCERankingLoss) -> None:
        super().__init__()
        self.net, self.rank = net, rank

    def forward(self, ref, p0, p1, judge):
        d0, d1 = self.net.distances(ref, [p0, p1])
        return self.rank(d0, d1, judge.view(d0.shape) * 2.0 - 1.0), d0, d1


def _lr(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate during ``epoch`` (1-based) under lpips' train.py: it lowers the rate by
    lr / n_decay at the end of every epoch after the first n, so epochs 1..n+1 run at lr and epoch
    n + 1 + k at lr (1 - k / n_decay)."""
    if cfg.decay_epochs == 0:
        return cfg.lr
    return cfg.lr - max(0, epoch - 1 - cfg.epochs) * cfg.lr / cfg.decay_epochs


def _check_config(cfg: TrainConfig) -> None:
    for name in ("epochs", "decay_epochs"):
        v = getattr(cfg, name)
        V.check_positive_int(v, f"TrainConfig.{name}", minimum=0)
    if cfg.epochs + cfg.decay_epochs < 1:
        raise ValueError("TrainConfig: epochs + decay_epochs must be >= 1")
    V.check_positive_int(cfg.batch_size, "TrainConfig.batch_size")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"TrainConfig.lr must be a finite number > 0, got {cfg.lr!r}")
    if cfg.adversarial is not None and cfg.adversarial.target not in ATTACK_TARGETS:
        raise ValueError(f"AdversarialConfig.target must be one of {ATTACK_TARGETS}, got {cfg.adversarial.target!r}")


TRAIN_FILES = ("checkpoint.pt", "latest_net_.pth", "latest_net_rank.pth", "log.csv")
_LOG_FORMATS = {"lr": ".8g", "loss": ".6f", "acc": ".6f"}


def train_lpips(train_roots, out_dir: PathLike, config: Optional[TrainConfig] = None, *,
                device: Union[str, torch.device, None] = None, resume: bool = False, overwrite: bool = False,
                allow_other_data: bool = False, stop_after: Optional[int] = None,
                progress: Optional[bool] = True) -> LPIPS:
    """Train the lin layers on 2AFC split folder(s) ``train_roots``; files in ``out_dir``:

    * ``checkpoint.pt`` after every epoch (atomic): weights, ranking head, optimizer, epoch, config,
      every rank's RNG state, the data folders and item count, and the log rows; ``resume=True``
      continues from it (a killed run loses at most the epoch in progress) and gives the weights an
      uninterrupted run gives; other data than the checkpoint's is refused unless
      ``allow_other_data``;
    * ``latest_net_.pth`` / ``latest_net_rank.pth``: lpips' Trainer.save files (the LPIPS state
      dict, loadable with ``lpips.LPIPS(model_path=...)`` and ``fastlpips.LPIPS(model_path=...)``);
    * ``log.csv``: epoch, learning rate, mean loss and training 2AFC accuracy, rewritten whole from
      the checkpoint's rows after each checkpoint (and on resume).

    A folder that holds a run is refused unless ``resume`` or ``overwrite`` (the old files stay
    until the first new checkpoint replaces them). ``stop_after``: return after that many epochs in
    total (to split a run; resume later). Under torchrun each process trains on its share of every
    batch (DistributedDataParallel; ``batch_size`` is per process) and rank 0 writes the files.
    """
    from tqdm import tqdm


    cfg = config or TrainConfig()
    _check_config(cfg)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    D.init_from_env(dev)
    out = Path(out_dir)
    run = RunFolder(out, TRAIN_FILES, kind="LPIPS training")
    run.prepare(resume=resume, overwrite=overwrite)
    dataset = TwoAFCDataset(train_roots)
    data = data_record(dataset.roots, len(dataset))
    net, rank = _init_model(cfg, dev)
    params = [p for p in list(net.parameters()) + list(rank.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, 0.999))
    start = 1
    rows: List[dict] = []

    def derived():
        return [("latest_net_.pth", lambda tmp: torch.save(net.state_dict(), tmp)),
                ("latest_net_rank.pth", lambda tmp: torch.save(rank.net.state_dict(), tmp))] + (
                    [("log.csv", write_log_csv(rows, _LOG_FORMATS))] if rows else [])

    if resume:
        state = run.load(("net", "rank", "optimizer", "epoch", "config", "rng"))
        ckpt_path = run.checkpoint
        saved = dict(state["config"], adversarial=None)
        mine = dict(asdict(cfg), adversarial=None)
        if {k: v for k, v in saved.items() if k != "workers"} != {k: v for k, v in mine.items() if k != "workers"}:
            raise ValueError(f"{ckpt_path} was written with another configuration ({saved}); this run has {mine}")
        check_data(state.get("data"), data, ckpt_path, allow_other_data)
        try:
            net.load_state_dict(state["net"])
            rank.load_state_dict(state["rank"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"LPIPS training checkpoint {ckpt_path} does not fit this model: "
                                  f"{str(e).splitlines()[0]}") from None
        start = state["epoch"] + 1
        rows = list(state["log"]) if "log" in state else read_log_csv(out / "log.csv", state["epoch"])
        rng = state["rng"]
        if len(rng) != D.world_size():
            raise ValueError(f"{ckpt_path} holds {len(rng)} process(es)' RNG states; this run has {D.world_size()}")
        torch.set_rng_state(rng[D.rank()])
        if D.is_main():
            run.write_derived(derived())  # a kill after the checkpoint can leave them one save behind
    objective = _RankingObjective(net, rank)
    model: nn.Module = objective
    if D.is_distributed():
        model = nn.parallel.DistributedDataParallel(objective, device_ids=[dev.index] if dev.type == "cuda" else None)
    loader = bapps_loader(dataset, cfg.batch_size, shuffle=True, workers=cfg.workers, device=dev, seed=cfg.seed)
    total = cfg.epochs + cfg.decay_epochs
    last = total if stop_after is None else min(total, stop_after)
    for epoch in range(start, last + 1):
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, epoch)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        else:
            loader.generator.manual_seed(cfg.seed * 1000 + epoch)
        losses, accs = [], []
        disable = True if (progress is False or not D.is_main()) else (None if progress is None else False)
        for batch in tqdm(loader, desc=f"epoch {epoch}/{total}", unit="batch", disable=disable, leave=False):
            ref, p0, p1 = (batch[k].to(dev, non_blocking=True) for k in ("ref", "p0", "p1"))
            judge = batch["judge"].to(dev)
            if cfg.adversarial is not None:
                a = cfg.adversarial
                adv = ranking_pgd(net, rank, ref, p0, p1, judge, eps=a.eps, norm=a.norm, target=a.target,
                                  steps=a.steps, step_size=a.step_size)
                ref, p0, p1 = adv["ref"], adv["p0"], adv["p1"]
            loss, d0, d1 = model(ref, p0, p1, judge)
            opt.zero_grad()
            loss.backward()
            opt.step()
            clamp_lin_weights(net)
            losses.append(float(loss.detach()))
            accs.append(float(np.mean(ranking_accuracy(d0.detach(), d1.detach(), judge))))
        rngs = D.gather_objects(torch.get_rng_state())
        stats = D.gather_objects((losses, accs))
        if D.is_main():
            all_losses = [v for s in stats for v in s[0]]
            all_accs = [v for s in stats for v in s[1]]
            rows.append({"epoch": epoch, "lr": float(opt.param_groups[0]["lr"]), "loss": float(np.mean(all_losses)),
                         "acc": float(np.mean(all_accs))})
            run.save({"net": net.state_dict(), "rank": rank.state_dict(), "optimizer": opt.state_dict(),
                      "epoch": epoch, "config": asdict(cfg), "rng": rngs, "data": data, "log": rows}, derived())
            log.info("epoch %d/%d: loss %.4f, 2AFC accuracy %.4f", epoch, total, np.mean(all_losses), np.mean(all_accs))
        D.barrier()
    return net


def robust_2afc_table(models: Dict[str, LPIPS], roots, *, eps_linf: float = 8 / 255, eps_l2: float = 1.0,
                      targets: Sequence[str] = ("x0", "x1", "ref"), steps: int = 10,
                      step_size: Optional[float] = None, batch_size: int = 50, device=None,
                      progress: Optional[bool] = True, objective: Optional[str] = None) -> List[dict]:
    """R-LPIPS Table 1's layout: for each model (e.g. {'LPIPS': natural, 'R-LPIPS': robust}) the
    2AFC score of ``roots`` (all splits together) without attack and under L_inf / L_2
    ``ranking_pgd`` on each target (eps on the [-1, 1] scale). ``objective``: None (the 2AFC
    margin, default) or 'fresh' (the authors' re-initialized ranking head). Rows: {'model',
    'attack', 'target', 'eps', '2afc'}."""
    if objective not in (None, "fresh"):
        raise ValueError(f"objective must be None (the 2AFC margin) or 'fresh', got {objective!r}")
    from .scoring import make_distance, score_2afc

    rows = []
    for name, model in models.items():
        model = model.eval()
        dist = make_distance(model=model, device=device)
        clean = score_2afc(dist, roots, batch_size=batch_size, device=device, progress=progress)
        rows.append({"model": name, "attack": "none", "target": "-", "eps": 0.0, "2afc": clean.score})
        for norm, eps in (("linf", eps_linf), ("l2", eps_l2)):
            for target in targets:
                def attack(ref, p0, p1, judge, norm=norm, eps=eps, target=target):
                    adv = ranking_pgd(model, objective, ref, p0, p1, judge, eps=eps, norm=norm, target=target,
                                      steps=steps, step_size=step_size)
                    return adv["ref"], adv["p0"], adv["p1"]
                r = score_2afc(dist, roots, batch_size=batch_size, device=device, progress=progress, attack=attack)
                rows.append({"model": name, "attack": norm, "target": target, "eps": eps, "2afc": r.score})
    return rows
