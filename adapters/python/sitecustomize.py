"""fakehub time-warp shim, loaded by Python's `site` module at interpreter start.

Launch an unmodified app with

    PYTHONPATH=/path/to/adapters/python FAKEHUB_CLOCK_FILE=/path/to/clock.json python3 app.py

and it sees fakehub's virtual clock (see fakehub_clock.py and README.md).  Without
FAKEHUB_CLOCK_FILE nothing is imported or patched.

Because this file shadows any other `sitecustomize` further down sys.path (Debian and Ubuntu ship
one in /usr/lib/python3.X), that one is run afterwards, so the interpreter behaves as it would
without this directory on the path.
"""

import os
import sys


def _install_fakehub_clock():
    path = os.environ.get("FAKEHUB_CLOCK_FILE")
    if not path:
        return
    try:
        import fakehub_clock

        fakehub_clock.install(path)
    except Exception:
        import traceback

        sys.stderr.write("fakehub_clock: could not install the time-warp shim; real time is used\n")
        traceback.print_exc()


def _run_shadowed_sitecustomize():
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception:
        import traceback

        sys.stderr.write("Error in sitecustomize (%s):\n" % spec.origin)
        traceback.print_exc()


_install_fakehub_clock()
_run_shadowed_sitecustomize()
del _install_fakehub_clock, _run_shadowed_sitecustomize
