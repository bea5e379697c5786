"""Distillation of a frozen teacher into a smaller ViT (the DINOv2 paper's recipe, §5).

The teacher is frozen (eval mode, no gradients; its backbone in bf16 on a GPU). The
student learns against the teacher's outputs, through the same loop, data, checkpoints
and config keys as ``dinoret train`` (:func:`dinoret.trainer.train.run`); a spare EMA of
the student is the result, exported as ``student_backbone.pth``. Three methods:

* ``heads``: the DINOv2 objectives (DINO on the class token, iBOT on the patch tokens of
  the two global crops, KoLeo) against the targets of the teacher's own DINO/iBOT heads,
  kept frozen. Needs a teacher with heads: a ``dinoret train`` run or checkpoint.
* ``feature``: cosine distance between the teacher's class and patch tokens and the
  student's, through small projectors to the teacher's width (plus KoLeo). Works with
  any teacher, official checkpoints (which ship no heads) included.
* ``hybrid``: ``feature`` (weighted ``distill.feature_weight``) plus the student's own DINO
  loss on its class tokens, with its EMA as the target (as ``dinoret train`` does with its
  own teacher), on the same crops. The teacher passes on what it knows; the student's own
  objective keeps learning the invariance between views that a small teacher may lack (in
  the README's study the one method whose student beat scratch on every figure). Any
  teacher; the student's head sizes come from the config (or the teacher's run). ``auto``
  picks it for a teacher without heads.

Masking and stochastic depth are off by default (``distill.masking``,
``student.drop_path_rate``): the student sees whole crops and iBOT / the patch loss runs
on every patch of the global crops.
"""
from __future__ import annotations

import copy
import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinoret.core.devices import resolve_device
from dinoret.core.errors import UserError
from dinoret.core.files import file_sha256
from dinoret.core.models import DinoVisionTransformer
from dinoret.trainer import checkpoint
from dinoret.trainer.config import DEFAULTS, make_config, read_config_file
from dinoret.trainer.data import LoadImage
from dinoret.trainer.losses import KoLeoLoss
from dinoret.trainer.ssl import DinoObjective, MetaArch, Student, batch_to, load_pretrained

log = logging.getLogger("dinoret.train")

METHODS = ("auto", "heads", "feature", "hybrid")


def distill_defaults() -> dict:
    """The ``dinoret train`` defaults, a ViT-S student without stochastic depth, and the ``distill`` section."""
    cfg = copy.deepcopy(DEFAULTS)
    cfg["student"].update(arch="vit_small", drop_path_rate=0.0)
    cfg["distill"] = {
        "teacher": "",  # set from --teacher: the file read (a run folder's newest checkpoint, an official model's weights)
        "method": "auto",  # heads | feature | hybrid | auto: heads when the teacher has them, else hybrid
        "masking": False,  # iBOT masking of the student's global crops (off: iBOT on every patch)
        # hybrid: weight of the feature loss (cosine distances, < 1) against the student's own DINO
        # cross-entropy (several nats). 4 beat 1 on UKBench N-S and Oxford 1-NN (README, distillation study).
        "feature_weight": 4.0,
    }
    return cfg


@dataclass
class Teacher:
    """A frozen teacher: backbone, and the DINO/iBOT heads when its source has them."""

    module: Student
    source: str  # the file it was read from
    sha256: str
    name: str
    config: dict | None  # the training config of a dinoret run (head sizes, centering); None for a bare backbone
    loss_state: dict | None  # the run's loss centres

    @property
    def has_heads(self) -> bool:
        return self.module.dino_head is not None


def teacher_file(source: str) -> Path:
    """The file a teacher ``source`` names: a ``dinoret train`` run folder's newest checkpoint,
    the file itself, or an official model's weights (hub cache, else downloaded); absolute, so
    that a run records a file it can find again from any working directory."""
    from dinoret.core.models import MODELS
    from dinoret.core.weights import resolve_weights

    if not source:
        raise UserError("no teacher given: a model name, a weights file or a `dinoret train` run folder", param="teacher")
    path = Path(source).expanduser()
    if path.is_dir():
        found = checkpoint.list_checkpoints(path)
        if not found:
            raise UserError(f"teacher folder {path} holds no dinoret checkpoint (checkpoint_*.pth)")
        return found[-1][1].absolute()
    if path.exists():
        return path.absolute()
    if source not in MODELS:
        raise UserError(f"teacher {source!r} is neither a file, a run folder nor a model name (see `dinoret models`)")
    return resolve_weights(source, None).absolute()


def load_teacher(source: str) -> Teacher:
    """The frozen teacher named by ``source`` (see :func:`teacher_file`): with its DINO/iBOT
    heads when it is a dinoret training checkpoint, a bare backbone otherwise."""
    from dinoret.core.models import MODELS
    from dinoret.core.weights import infer_config, load_state_strict, read_checkpoint

    path = teacher_file(source)
    try:  # memory-mapped: a bare backbone is read again below, which then costs nothing
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format torch file: read_checkpoint below says what is wrong with it
        state = None
    sha = file_sha256(path)
    if isinstance(state, dict) and state.get("dinoret") == "train" and "config" in state:
        run_cfg = state["config"]
        final = state[state.get("final", "teacher")]
        module = Student.from_config(run_cfg, heads=any(k.startswith("dino_head.") for k in final))
        keys = set(module.state_dict())
        module.load_state_dict({k: v for k, v in final.items() if k in keys}, strict=True)
        centres = {k: state[k] for k in ("dino_center", "ibot_center") if k in state}
        teacher = Teacher(module, str(path), sha, state.get("backbone_name", "custom"), run_cfg, centres or None)
    else:
        name, cfg, sd = read_checkpoint(path)
        if cfg is None:
            inferred_name, cfg = infer_config(sd)
            name = name or (source if source in MODELS else inferred_name)
        backbone = DinoVisionTransformer(cfg)
        load_state_strict(backbone, sd, str(path))
        teacher = Teacher(Student(backbone), str(path), sha, name or "custom", None, None)
    teacher.module.eval().requires_grad_(False)
    return teacher


def resolve_method(cfg: dict, teacher: Teacher) -> str:
    method = cfg["distill"]["method"]
    if method not in METHODS:
        raise UserError(f"distill.method must be one of {', '.join(METHODS)}, not {method!r}")
    if method == "auto":
        return "heads" if teacher.has_heads else "hybrid"
    if method == "heads" and not teacher.has_heads:
        raise UserError(f"the teacher {teacher.source} has no DINO/iBOT heads (official checkpoints ship none): "
                        "use the hybrid or feature method, or a teacher from `dinoret train`", param="method")
    if cfg["distill"]["masking"] and method != "heads":
        raise UserError(f"distill.masking applies to the heads method only (the {method} method runs on every patch)",
                        param="method")
    return method


def teacher_defaults(teacher: Teacher) -> dict:
    """Config values the student must share with a teacher that has heads: head sizes and centering."""
    if teacher.config is None:
        return {}
    return {"dino": copy.deepcopy(teacher.config["dino"]), "ibot": copy.deepcopy(teacher.config["ibot"]),
            "train": {"centering": teacher.config["train"]["centering"]}}


def check_compatible(cfg: dict, teacher: Teacher, method: str) -> None:
    """One-line errors for a student that cannot learn from this teacher."""
    t_patch = teacher.module.backbone.patch_size
    if cfg["student"]["patch_size"] != t_patch:
        raise UserError(f"the teacher's patch size is {t_patch} and the student's {cfg['student']['patch_size']}: "
                        f"patch tokens must match one to one (set student.patch_size={t_patch})")
    if method != "heads":
        return
    for section, key in (("dino", "head_n_prototypes"), ("ibot", "head_n_prototypes"), ("ibot", "separate_head")):
        if cfg[section][key] != teacher.config[section][key]:
            raise UserError(f"{section}.{key} is {cfg[section][key]!r} but the teacher's heads have "
                            f"{teacher.config[section][key]!r}: the student predicts the teacher's prototypes")
    if cfg["ibot"]["loss_weight"] > 0 and teacher.config["ibot"]["loss_weight"] <= 0:
        raise UserError("the teacher was trained without iBOT (no patch head output): set ibot.loss_weight=0")


class FeatureObjective(nn.Module):
    """Cosine distance of projected student tokens to the teacher's, plus KoLeo.

    Class tokens: each global crop against the teacher's view of the same crop, each local
    crop against both global crops. Patch tokens: every patch of the global crops against
    the teacher's patch at the same place.
    """

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.cfg = cfg
        self.koleo_loss = KoLeoLoss()

    @staticmethod
    def _cosine_distance(a: Tensor, b: Tensor) -> Tensor:
        return (1 - F.cosine_similarity(a.float(), b.float(), dim=-1)).mean()

    def forward(self, s: dict, t_cls: Tensor, t_patch: Tensor, n_local: int) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        pairs = [self._cosine_distance(s["global_cls_proj"], t_cls)] * 2  # weighted as the two crops it holds
        for local in (s["local_cls_proj"].chunk(n_local) if n_local else []):
            pairs += [self._cosine_distance(local, t) for t in t_cls.chunk(2)]
        cls = torch.stack(pairs).mean()
        patch = self._cosine_distance(s["global_patch_proj"], t_patch)
        losses = {"feature_cls_loss": cls, "feature_patch_loss": patch}
        total = cfg["dino"]["loss_weight"] * cls + cfg["ibot"]["loss_weight"] * patch
        if cfg["dino"]["koleo_loss_weight"] > 0:
            koleo = cfg["dino"]["koleo_loss_weight"] * sum(self.koleo_loss(p) for p in s["global_cls"].chunk(2))
            losses["koleo_loss"] = koleo / 2
            total = total + koleo
        return total, losses

    def loss_state(self) -> dict:
        return {}

    def load_loss_state(self, state: dict) -> None:
        pass


def _with(cfg: dict, **values) -> dict:
    """A copy of ``cfg`` with ``section__key=value`` set."""
    out = copy.deepcopy(cfg)
    for name, value in values.items():
        section, key = name.split("__")
        out[section][key] = value
    return out


def own_config(cfg: dict) -> dict:
    """The config of the hybrid student's own heads and loss: DINO on class tokens only (the
    patch tokens learn from the teacher; an own iBOT head on every patch would cost more than
    the small backbone)."""
    return _with(cfg, ibot__loss_weight=0.0)


class HybridObjective(nn.Module):
    """The student's own DINO loss (+ KoLeo) against its EMA's targets, plus
    ``distill.feature_weight`` x the :class:`FeatureObjective` against the frozen teacher."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.weight = cfg["distill"]["feature_weight"]
        self.own = DinoObjective(own_config(cfg))
        self.feature = FeatureObjective(_with(cfg, dino__koleo_loss_weight=0.0))

    def forward(self, s: dict, t_own: Tensor, t_cls: Tensor, t_patch: Tensor, b: dict, n_local: int
                ) -> tuple[Tensor, dict[str, Tensor]]:
        own, losses = self.own(s, t_own, None, b["masks"], b["masks_weight"], n_local)
        feature, feature_losses = self.feature(s, t_cls, t_patch, n_local)
        return own + self.weight * feature, {**losses, **feature_losses}

    def loss_state(self) -> dict:
        return self.own.loss_state()

    def load_loss_state(self, state: dict) -> None:
        self.own.load_loss_state(state)


class DistillMetaArch(MetaArch):
    """Frozen teacher, student, the student's EMA (the result) and the objective."""

    task = "distill"
    final_key = "student_ema"
    export_name = "student_backbone.pth"

    def __init__(self, cfg: dict, teacher: Teacher) -> None:
        super().__init__()
        self.cfg = cfg
        self.method = resolve_method(cfg, teacher)
        check_compatible(cfg, teacher, self.method)
        self.teacher_source = teacher
        s = cfg["student"]
        feature_dim = teacher.module.backbone.embed_dim if self.method in ("feature", "hybrid") else None
        self.student = Student.from_config(own_config(cfg) if self.method == "hybrid" else cfg, s["drop_path_rate"],
                                           s["drop_path_uniform"], heads=self.method in ("heads", "hybrid"),
                                           feature_dim=feature_dim)
        if s["pretrained_weights"]:
            load_pretrained(self.student.backbone, s["pretrained_weights"])
        if not (cfg["distill"]["masking"] and self.method == "heads"):
            # Never masked: no gradient, hence no optimizer state (a resume needs all or none).
            self.student.backbone.mask_token.requires_grad_(False)
        self.student_ema = copy.deepcopy(self.student)
        for blk in self.student_ema.backbone.blocks:
            blk.drop_path = 0.0
        self.student_ema.requires_grad_(False)
        self.teacher = teacher.module
        if self.method == "heads":
            self.objective: nn.Module = DinoObjective(cfg)
            if teacher.loss_state and cfg["train"]["centering"] == "centering":
                self.objective.load_loss_state(teacher.loss_state)  # the centres of the teacher's outputs
        elif self.method == "hybrid":
            self.objective = HybridObjective(cfg)
        else:
            self.objective = FeatureObjective(cfg)
        if resolve_device(cfg["train"]["device"]).type == "cuda" and cfg["train"]["precision"] != "fp32":
            self.teacher.to(torch.bfloat16)  # it runs under bf16 autocast anyway; this halves its memory

    @property
    def ema(self) -> Student:
        return self.student_ema

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher, self.student_ema]

    def saved_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "student_ema": self.student_ema}

    def checkpoint_extra(self) -> dict:
        t = self.teacher_source
        return {"teacher_source": t.source, "teacher_sha256": t.sha256, "teacher_name": t.name,
                "distill_method": self.method}

    def _all_patches(self, b: dict) -> None:
        """Without masking, iBOT runs on every patch of both global crops, each image weighted 1."""
        n_crops = b["global_crops"].shape[0]
        n_patches = b["masks"].shape[1]
        b["masks"] = torch.ones(n_crops, n_patches, dtype=torch.bool, device=b["masks"].device)
        b["mask_indices"] = torch.arange(n_crops * n_patches, device=b["masks"].device)
        b["masks_weight"] = torch.full((n_crops * n_patches,), 1.0 / n_patches, device=b["masks"].device)
        b["n_masked_patches"] = torch.full((1,), n_crops * n_patches, dtype=torch.long, device=b["masks"].device)

    def forward_backward(self, batch: dict, teacher_temp: float, autocast: AbstractContextManager | None = None
                         ) -> dict[str, Tensor]:
        autocast = autocast or nullcontext()
        b = batch_to(batch, next(self.student_ema.parameters()).device)
        n_local = self.cfg["crops"]["local_crops_number"]
        local_crops = b["local_crops"] if n_local else None
        masking = self.cfg["distill"]["masking"] and self.method == "heads"
        if not masking:
            self._all_patches(b)
        with torch.no_grad(), autocast:
            if self.method == "heads":
                t = self.teacher(b["global_crops"].to(_dtype(self.teacher)), mask_indices=b["mask_indices"])
            else:
                t = self.teacher.backbone.forward_features(b["global_crops"].to(_dtype(self.teacher)))
        if self.method == "heads":
            t_dino, t_ibot = self.objective.targets(t, teacher_temp, b["n_masked_patches"])
            with autocast:
                s = self.student(b["global_crops"], local_crops, b["masks"] if masking else None, b["mask_indices"])
            total, losses = self.objective(s, t_dino, t_ibot, b["masks"], b["masks_weight"], n_local)
        elif self.method == "hybrid":
            with torch.no_grad(), autocast:
                e = self.student_ema(b["global_crops"], projections=False)
            if hasattr(self.student_ema, "reshard"):  # FSDP keeps the root unsharded after forward; no backward follows
                self.student_ema.reshard()
            t_own, _ = self.objective.own.targets(e, teacher_temp, b["n_masked_patches"])
            with autocast:
                s = self.student(b["global_crops"], local_crops)
            total, losses = self.objective(s, t_own, t["x_norm_clstoken"], t["x_norm_patchtokens"], b, n_local)
        else:
            with autocast:
                s = self.student(b["global_crops"], local_crops)
            total, losses = self.objective(s, t["x_norm_clstoken"], t["x_norm_patchtokens"], n_local)
        total.backward()
        losses["total_loss"] = total.detach()
        return {k: v.detach() for k, v in losses.items()}


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.backbone.parameters()).dtype


def distill(files: Sequence[str] | None, load_image: LoadImage, output_dir: str | Path, teacher: str | None = None,
            config_files: Sequence[str | Path] = (), overrides: Sequence[str] = (), resume: bool = False,
            stop_after: int | None = None, progress: bool = True) -> dict:
    """Distil ``teacher`` into the student of the config (or continue a run); returns a summary
    as :func:`dinoret.trainer.train.train` does. ``teacher``: see :func:`load_teacher`; on
    ``resume`` the run's own teacher (which must not have changed) unless given again."""
    from dinoret.trainer.train import run

    output_dir = Path(output_dir)
    saved = output_dir / "config.yaml"
    if resume and not checkpoint.list_checkpoints(output_dir):
        raise UserError(f"no checkpoint in {output_dir} to resume from")
    if resume and saved.is_file():
        # The exact file the run started with (a run folder's newest checkpoint may be newer now).
        recorded = read_config_file(saved).get("distill", {}).get("teacher", "")
        if teacher and teacher_file(teacher).resolve() != Path(recorded).resolve():
            raise UserError(f"the run in {output_dir} distils {recorded}, not {teacher}")
        teacher = recorded
    frozen = load_teacher(teacher or "")
    defaults = distill_defaults()
    for section, values in teacher_defaults(frozen).items():
        defaults[section].update(values)
    defaults["distill"]["teacher"] = frozen.source

    def build(cfg: dict, state: dict | None) -> DistillMetaArch:
        if state is not None:
            if state.get("teacher_sha256") != frozen.sha256:
                raise UserError(f"the teacher file {frozen.source} changed since the run started (sha256 differs): "
                                "the run cannot continue as it began")
            # The method the run chose (``auto``'s rule may have changed since), and the
            # defaults of distill keys added after the run began.
            cfg["distill"]["method"] = state.get("distill_method", cfg["distill"]["method"])
            for key, value in distill_defaults()["distill"].items():
                cfg["distill"].setdefault(key, value)
        return DistillMetaArch(cfg, frozen)

    return run("distill", build, files, load_image, output_dir, config_files, overrides, resume, stop_after,
               progress, defaults=defaults)


def make_distill_config(config_files: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                        base: dict | None = None) -> dict:
    """A distillation config: :func:`distill_defaults`, then files, then ``key=value`` overrides."""
    return make_config(config_files, overrides, base=base if base is not None else distill_defaults())


__all__ = ["DistillMetaArch", "HybridObjective", "Teacher", "distill", "distill_defaults", "load_teacher", "make_distill_config",
           "teacher_file"]
