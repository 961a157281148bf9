"""The explanation methods of the Grad-CAM step: a registry, name -> how to compute the maps.

Wolf et al. 2023 (Figure 4) explain their fine-tuned models with Grad-CAM only. A gradient map
can miss what a model uses, so the study runs more than one method on the same models and
images and measures whether they agree:

- four **class activation maps** from ``pytorch-grad-cam`` at the same target layer: Grad-CAM
  (Selvaraju et al. 2017), Grad-CAM++ (Chattopadhay et al. 2018), LayerCAM (Jiang et al. 2021)
  and HiResCAM (Draelos & Carin 2020). They differ only in how the activations ``A`` and the
  gradients ``G`` of the explained class's score at that layer are combined, so one forward and
  one backward pass serve them all (:func:`cam_maps`; the maps equal those of separate library
  calls);
- **occlusion sensitivity** (Zeiler & Fergus 2014) through MONAI's
  ``monai.visualize.OcclusionSensitivity``: a square of ``size`` pixels, filled with a constant,
  slides over the image in steps of ``stride``; a pixel's value is how much the softmax
  probability of the explained class drops, on average over the squares covering it
  (:func:`occlusion_maps`). It asks the model, not its gradients, and costs one forward pass per
  position.

:data:`EXPLAINERS` maps a name to an :class:`Explainer`; a new CAM of ``pytorch-grad-cam`` is one
entry (``cam=`` its class name), any other method one entry with a function
``fn(model, x, targets, **settings) -> maps``. Every map is float32 ``(N, H, W)`` in ``[0, 1]``:
negative evidence clipped to 0, then min-max scaled per image (an all-zero map stays zero: a
constant map, left out of the statistics and counted).

Shapes: ``x`` normalised float ``(N, 3, H, W)``; ``targets`` int ``(N,)`` (the explained class).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .heatmap_stats import ExplainError

__all__ = ["CAM_NAMES", "EXPLAINERS", "Explainer", "cam_maps", "explainer_label", "get_explainer",
           "occlusion_maps", "occlusion_positions", "scale_maps"]


@dataclass(frozen=True)
class Explainer:
    """One explanation method. ``kind``: ``"cam"`` (a ``pytorch_grad_cam`` class, named by ``cam``,
    reading the target layer: all CAMs share one backward pass) or ``"perturbation"`` (``fn``
    asks the model about changed inputs; no target layer)."""

    name: str
    label: str
    kind: str
    cam: str = ""
    fn: Callable | None = None
    reference: str = ""


def scale_maps(maps: np.ndarray) -> np.ndarray:
    """float ``(N, H, W)`` -> float32 in ``[0, 1]``: negatives clipped to 0, then each map min-max
    scaled (a map with no positive value, or a constant one, becomes all zero)."""
    m = np.maximum(np.nan_to_num(np.asarray(maps, np.float64), nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    flat = m.reshape(len(m), -1)
    if flat.size == 0:
        return m.astype(np.float32)
    lo, hi = flat.min(1), flat.max(1)
    span = hi - lo
    out = np.zeros_like(flat)
    ok = span > 1e-12
    out[ok] = (flat[ok] - lo[ok, None]) / span[ok, None]
    return out.reshape(m.shape).astype(np.float32)


def cam_maps(model: torch.nn.Module, x: torch.Tensor, targets: np.ndarray | None, layer: torch.nn.Module,
             names: Sequence[str]) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """The class activation maps ``names`` (entries of :data:`EXPLAINERS` of kind ``"cam"``) of one
    batch ``x`` at ``layer``: one forward and backward pass through ``pytorch_grad_cam.GradCAM``,
    then each other CAM class computes its map from the same activations and gradients with the
    library's own methods. ``targets``: the class explained per image (None: the predicted one).

    Returns ``({name: float32 (N, H, W) in [0, 1]}, logits (N, C))``. The model's mode is left in
    eval (the library sets it); the caller restores it.
    """
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    names = list(names)
    for n in names:
        if get_explainer(n).kind != "cam":
            raise ExplainError(f"{n!r} is not a class activation map (kinds: {_kinds()})")
    tb = None if targets is None else [ClassifierOutputTarget(int(c)) for c in targets]
    out: dict[str, np.ndarray] = {}
    with pytorch_grad_cam.GradCAM(model=model, target_layers=[layer]) as base:
        grad_cam = base(input_tensor=x, targets=tb)  # the forward and backward pass
        logits = base.outputs.detach().float().cpu()
        if tb is None:
            tb = [ClassifierOutputTarget(int(c)) for c in logits.argmax(1).tolist()]
        for n in names:
            cls_name = get_explainer(n).cam
            if cls_name == "GradCAM":
                out[n] = grad_cam
                continue
            other = getattr(pytorch_grad_cam, cls_name)(model=model, target_layers=[layer])
            own = other.activations_and_grads
            own.release()  # its hooks are not needed: it reads the pass above
            other.activations_and_grads = base.activations_and_grads
            try:
                out[n] = other.aggregate_multi_layers(other.compute_cam_per_layer(x, tb, False))
            finally:
                other.activations_and_grads = own  # its __del__ releases its own, not the shared one
    return {n: scale_maps(m) for n, m in out.items()}, logits


def occlusion_positions(side: int, size: int, stride: int) -> int:
    """How many square positions per axis MONAI's sliding window visits (the last one ends at the
    border): ``ceil((side - size) / stride) + 1``."""
    return int(np.ceil(max(side - size, 0) / stride)) + 1


def occlusion_maps(model: torch.nn.Module, x: torch.Tensor, targets: np.ndarray, *, size: int, stride: int,
                   fill: float, batch_size: int = 64) -> np.ndarray:
    """Occlusion sensitivity of ``model`` for the classes ``targets`` on the normalised batch ``x``
    ``(N, 3, H, W)``, through ``monai.visualize.OcclusionSensitivity``.

    A ``size`` x ``size`` square filled with ``fill`` (in the normalised units of ``x``) visits the
    image in steps of ``stride`` pixels (MONAI's ``overlap = 1 - stride/size``; the last square ends
    at the border); each visit is one forward pass, ``batch_size`` of them at a time. The map is the
    drop of the softmax probability of the target class, ``p(x) - p(x occluded)``, averaged over the
    squares covering a pixel, then scaled as every map here (:func:`scale_maps`): where hiding the
    image lowers the probability most is 1. float32 ``(N, H, W)``.
    """
    from monai.visualize import OcclusionSensitivity

    n, _, h, w = x.shape
    if not 1 <= size <= min(h, w):
        raise ExplainError(f"occlusion: square of {size} px does not fit the {h} x {w} px images")
    if not 1 <= stride <= size:
        raise ExplainError(f"occlusion: stride {stride} px must lie in [1, size = {size}]")
    targets = np.asarray(targets, np.int64)
    if targets.shape != (n,):
        raise ExplainError(f"occlusion: expected {n} target classes, got shape {targets.shape}")
    # MONAI's window step is int(size * (1 - overlap)); the small excess keeps float rounding from
    # turning a step of `stride` into stride - 1
    overlap = max(0.0, 1.0 - (stride + 1e-3) / size)
    occ = OcclusionSensitivity(model, mask_size=size, n_batch=batch_size, verbose=False, mode=float(fill),
                               overlap=overlap, activate=lambda out: out.float().softmax(1))
    device = next(model.parameters()).device
    drops = np.zeros((n, h, w), np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            # MONAI 1.6 indexes tensors with lists, which torch 2.x warns about on every square
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
            for i in range(n):
                xi = x[i:i + 1].to(device)
                p = model(xi).float().softmax(1)[0, targets[i]].item()
                occ_map, _ = occ(xi)  # (1, classes, H, W): probabilities with the square over each pixel
                drops[i] = p - torch.as_tensor(occ_map)[0, targets[i]].float().cpu().numpy()
    finally:
        model.train(was_training)
    return scale_maps(drops)


#: The explanation methods by name (display order). A new CAM of pytorch-grad-cam: one entry with
#: ``cam=`` its class; another method: one entry with ``kind="perturbation"`` and ``fn``.
EXPLAINERS: dict[str, Explainer] = {
    "gradcam": Explainer("gradcam", "Grad-CAM", "cam", cam="GradCAM", reference="Selvaraju et al. 2017"),
    "gradcam++": Explainer("gradcam++", "Grad-CAM++", "cam", cam="GradCAMPlusPlus",
                           reference="Chattopadhay et al. 2018"),
    "layercam": Explainer("layercam", "LayerCAM", "cam", cam="LayerCAM", reference="Jiang et al. 2021"),
    "hirescam": Explainer("hirescam", "HiResCAM", "cam", cam="HiResCAM", reference="Draelos & Carin 2020"),
    "occlusion": Explainer("occlusion", "occlusion", "perturbation", fn=occlusion_maps,
                           reference="Zeiler & Fergus 2014"),
}

#: The registered class activation maps, in order.
CAM_NAMES = tuple(n for n, e in EXPLAINERS.items() if e.kind == "cam")


def _kinds() -> Mapping[str, str]:
    return {n: e.kind for n, e in EXPLAINERS.items()}


def get_explainer(name: str) -> Explainer:
    """The registered explainer ``name``; an unknown name is an :class:`ExplainError` naming the choices."""
    if name not in EXPLAINERS:
        raise ExplainError(f"unknown explanation method {name!r}; choose from {tuple(EXPLAINERS)}")
    return EXPLAINERS[name]


def explainer_label(name: str) -> str:
    """The display label of an explainer (the name itself if unknown)."""
    return EXPLAINERS[name].label if name in EXPLAINERS else name
