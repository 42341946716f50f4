"""Low-shot evaluation time and accuracy (TODO).

TODO: NOT WRITTEN YET. This benchmark needs the pretraining module and will be written later. It measures
nothing and writes no result file; it exits with an error so that nobody mistakes it for a result.

Planned: the time of vitmsn's low-shot evaluation (features + logistic regression on 1, 2, 5 images
per class) on a small data set, and its accuracy against the numbers of the MSN paper's protocol.
"""

from __future__ import annotations

import sys

MESSAGE = "not written yet: needs the pretraining module"


def main(argv: list[str] | None = None) -> None:
    sys.exit(f"bench/lowshot.py: {MESSAGE}")


if __name__ == "__main__":
    main()
