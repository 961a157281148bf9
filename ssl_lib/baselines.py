"""The initialisations that are not a pre-training method, by name (no imports: every layer may read them).

* ``"random"``: no pre-training, torchvision's default initialisation (the "-" row of Wolf et al.
  2023, Table 2);
* ``"imagenet"``: the supervised ImageNet baseline the paper leaves out, a torchvision ResNet
  weights file the user gives the study (``--param imagenet_weights=...``, read by
  :mod:`ssl_lib.inits`). It exists only in a study given such a file, so a study's list of inits
  comes from the study, never from import time.

The method registry (:mod:`ssl_lib.pretrain.registry`) adds the pre-training methods after them
and owns the display order and labels; the paper's stopping rule (:mod:`ssl_lib.reduction`) reads
the methods only.
"""

RANDOM = "random"
IMAGENET = "imagenet"
#: Every baseline init, in display order (before the methods).
BASELINE_INITS = (RANDOM, IMAGENET)
#: Their labels in tables and figures.
BASELINE_LABELS = {RANDOM: "Random", IMAGENET: "ImageNet (supervised)"}
