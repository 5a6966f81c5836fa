"""TensorBoard output for the adapters: the sink lives in the core (:mod:`scaleforecast.tensorboard_sink`),
beside the readers, because the ``watch`` sidecar writes through it too; this is the adapters' import path."""

from scaleforecast.tensorboard_sink import (
    ADVICE_CHARTS,
    COMPARE_TAG,
    STATUS_TEXT,
    TensorBoardSink,
    draw_snapshot,
    forecast_layout,
    render_rgb,
    status_text,
)

__all__ = [
    "ADVICE_CHARTS",
    "COMPARE_TAG",
    "STATUS_TEXT",
    "TensorBoardSink",
    "draw_snapshot",
    "forecast_layout",
    "render_rgb",
    "status_text",
]
