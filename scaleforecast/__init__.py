"""scaleforecast: forecast a training run's final loss while it trains.

The core (this package) holds the LR-annealing law, the fitter, the online forecaster, the detectors and the
readers. It depends on numpy, scipy and pydantic only: importing it never imports torch.
"""

from scaleforecast.decision import StopDecision, decide_stop
from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster
from scaleforecast.results import FitStatus, Forecast, ForecastPoint, LawParams
from scaleforecast.schedules import as_lrs, parse_schedule

__version__ = "0.1.0"

__all__ = [
    "FitStatus",
    "Forecast",
    "ForecastPoint",
    "ForecasterConfig",
    "LawParams",
    "OnlineForecaster",
    "StopDecision",
    "__version__",
    "as_lrs",
    "decide_stop",
    "parse_schedule",
]
