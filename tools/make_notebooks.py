"""Write every notebook template in notebooks/ and the book's _toc.yml (``make notebooks``).

The templates come from :mod:`ssl_lib.templates`: the chapters that are not per method, and the
pre-training chapter once per registered method (its text from the method's ``MethodSpec``).
Cell ids are stable, so a regenerated template differs from the committed one only where its text
does. ``--check`` writes nothing and exits 1 if a committed file differs from what is generated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ssl_lib.atomic import atomic_write  # noqa: E402
from ssl_lib.templates import notebook_text, templates, toc_text  # noqa: E402


def generated() -> dict[str, str]:
    """File (relative to the repository) -> the content ``make notebooks`` writes."""
    files = {name: notebook_text(nb) for name, nb in templates().items()}
    files["_toc.yml"] = toc_text([n for n in files if "_pretrain_" in n])
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed file differs")
    args = ap.parse_args(argv)
    stale = [name for name, text in generated().items()
             if not (ROOT / name).is_file() or (ROOT / name).read_text() != text]
    if args.check:
        print("\n".join(f"differs from the generator: {n}" for n in stale) or "all templates are as generated")
        return 1 if stale else 0
    for name in stale:
        atomic_write(ROOT / name, generated()[name])
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
