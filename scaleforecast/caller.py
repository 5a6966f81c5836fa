"""Where a warning of the plugin points: at the first frame outside it; and that it never raises.

A warning raised deep inside a training session (a planner, the monitor's guard) pointing at that line tells a
user nothing; pointing at the first frame outside the plugin shows the line of their loop that called it, and
under a trainer, past the framework's frames that ran the callback, their ``trainer.fit(...)`` line (a warning
pointing at ``lightning/pytorch/trainer/call.py`` cannot be filtered by the user's module).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

__all__ = ["user_stacklevel", "warn_user"]

log = logging.getLogger("scaleforecast")

# the plugin's packages: the core, and the adapters installed as its subpackages (wherever they lie on disk)
_PACKAGES = ("scaleforecast", "scaleforecast.callbacks", "scaleforecast.integrations")
# the frameworks that run the callbacks: the user's line is the first frame past them too
_FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "accelerate", "torch")


def _plugin_dirs(names: tuple[str, ...] = _PACKAGES) -> tuple[str, ...]:
    dirs = []
    for name in names:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            dirs.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    return tuple(dirs)


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` made by the function that calls this one, such that the
    warning points at the first frame outside the plugin (1 when that function is itself outside it)."""
    roots = _plugin_dirs()
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(roots):
        frame = frame.f_back
        level += 1
    # past a framework's frames, when a frame of the user's own follows them
    outer, up = frame, level
    frameworks = _plugin_dirs(_FRAMEWORKS)
    while (
        frameworks
        and outer.f_back is not None
        and os.path.abspath(outer.f_code.co_filename).startswith(frameworks)
    ):
        outer = outer.f_back
        up += 1
    return up if not os.path.abspath(outer.f_code.co_filename).startswith(frameworks) else level


def warn_user(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """Warn with ``message`` at the first frame outside the plugin (:func:`user_stacklevel`). Where warnings
    are errors (``python -W error``, pytest's ``filterwarnings = error``) the message is logged instead: a
    notice of the plugin must never end the training it watches."""
    try:
        warnings.warn(message, category, stacklevel=user_stacklevel())
    except Warning:
        log.warning("%s", message)
