"""An example handler module: what ``--import`` loads (``--import wqsim.example_tasks``).

Your own module looks the same: it registers kinds on wqsim's default registry
when it is imported. Name it to the commands that need its kinds::

    wqsim work --import myapp.tasks             # the workers run them
    wqsim run --import myapp.tasks --kind ...   # the seed scenario with your kind
    WQSIM_IMPORTS=myapp.tasks wqsim work        # the same, from the environment

The CLI imports the module before it forks the workers; a forked worker
inherits the registry, so each has the kind without importing anything.
"""

from __future__ import annotations

import hashlib

import wqsim


@wqsim.register("checksum", timeout_s=60)
def checksum(task: wqsim.Task) -> dict[str, object]:
    """CPU-bound work, where ``sleep`` only waits: SHA-256 applied ``rounds`` times
    (default 1,000) to the payload's ``text`` (default: the task's id)."""
    text = task.payload.get("text", task.id)
    rounds = task.payload.get("rounds", 1000)
    if not isinstance(text, str):
        raise ValueError(f"checksum needs text to be a string (got {text!r})")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= 1_000_000:
        raise ValueError(f"checksum needs rounds to be an integer from 1 to 1,000,000 (got {rounds!r})")
    digest = text.encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return {"sha256": digest.hex(), "rounds": rounds}
