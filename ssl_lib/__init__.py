"""ssl_lib: self-supervised pre-training of CNNs on CT slices and its evaluation.

Reproduces and extends Wolf et al. 2023, "Self-supervised pre-training with contrastive and
masked autoencoder methods for dealing with small datasets in deep learning for medical imaging"
(Scientific Reports 13, 20260).

Data flows one way: sources -> :mod:`ssl_lib.data` (slice store) -> :mod:`ssl_lib.pretrain`
-> :mod:`ssl_lib.finetune` -> :mod:`ssl_lib.explain` -> :mod:`ssl_lib.report` -> the book.
"""

__version__ = "0.1.0"

from .console import quiet_libraries as _quiet_libraries

_quiet_libraries()  # no plotting libraries' deprecation notices on the book's pages (ssl_lib.console)
