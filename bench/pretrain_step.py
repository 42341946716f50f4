"""MSN pretraining step time: vitmsn against lightly's MSN (TODO).

TODO: NOT WRITTEN YET. This benchmark needs the pretraining module and will be written later. It measures
nothing and writes no result file; it exits with an error so that nobody mistakes it for a result.

Planned: one MSN training step (anchor views with token dropping, target views, EMA update, prototypes,
ME-MAX) per second and peak memory, vitmsn against lightly's MSN implementation
(``pip install ".[bench]"`` installs lightly), on the same backbone and batch.
"""

from __future__ import annotations

import sys

MESSAGE = "not written yet: needs the pretraining module"


def main(argv: list[str] | None = None) -> None:
    sys.exit(f"bench/pretrain_step.py: {MESSAGE}")


if __name__ == "__main__":
    main()
