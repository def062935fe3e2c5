"""A part of a split ``cpp_standalone`` evaluation: ``python -m biosim.split_child JOB`` (:mod:`biosim.split_run`).

Its own module because it needs :func:`biosim.backends._simulate`, and :mod:`biosim.backends` calls
:mod:`biosim.split_run`: the child sits above both, so no import goes in a circle.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any

from .backends import _simulate
from .results import SimulationResult
from .split_run import _BACKEND, _copy_build, _wait_for_build
from .standalone_build import project_directory


def _child(job_path: Path) -> int:
    """One part, in this process."""
    import brian2 as b2

    job = pickle.loads(job_path.read_bytes())
    out = Path(job["result"])
    try:
        for name, value in job["prefs"].items():
            try:
                b2.prefs[name] = value
            except Exception:  # noqa: BLE001, S112  (a preference this Brian2 does not know)
                continue

        def before_compile(build_path: Path) -> None:  # this part's project is written by now
            _wait_for_build(job)
            _copy_build(Path(job["source"]), build_path)

        with project_directory(_BACKEND) as (directory, reused):
            result = _simulate(
                _BACKEND, directory, reused, job["params"], job["weights"], job["trials"],
                record_v=job["record_v"], record_readout=job["record_readout"], progress=False,
                before_compile=before_compile,
            )  # fmt: skip
        payload: Any = result
    except BaseException as error:  # noqa: BLE001  (reported to the parent, which raises)
        import traceback

        payload = RuntimeError(f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
    temporary = out.with_name(out.name + ".tmp")
    temporary.write_bytes(pickle.dumps(payload))
    os.replace(temporary, out)
    return 0 if isinstance(payload, SimulationResult) else 1


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
