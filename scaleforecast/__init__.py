"""scaleforecast: forecast a training run's final loss while it trains.

The core (this package) holds the LR-annealing law, the fitter, the online forecaster, the detectors and the
readers. It depends on numpy, scipy and pydantic only: importing it never imports torch. The framework
adapters live in :mod:`scaleforecast.callbacks`, the bridges to TensorBoard, torch.distributed and sweep
engines in :mod:`scaleforecast.integrations`.

>>> import scaleforecast as sf
>>> fc = sf.OnlineForecaster("cosine:peak=1e-3,warmup=100,total=2000")
>>> fc.total_steps
2000
"""

from scaleforecast.advice import AdviceConfig, ScheduleAdvice, ScheduleAdvisor
from scaleforecast.decision import StopDecision, SweepStopper, decide_stop
from scaleforecast.detectors import (
    DriftDetector,
    GradNormDetector,
    HealthConfig,
    HealthMonitor,
    NonFiniteDetector,
    SpikeDetector,
    StagnationDetector,
)
from scaleforecast.events import Event, TrainingHealthError
from scaleforecast.fitting import FitConfig, FitResult, Observations, fit
from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster
from scaleforecast.monitor import RunMonitor, StopConfig
from scaleforecast.priors import AnnealingPrior, prior_from
from scaleforecast.results import FitStatus, Forecast, ForecastPoint, LawParams
from scaleforecast.schedules import as_lrs, parse_schedule

__version__ = "0.1.0"

__all__ = [
    "AdviceConfig",
    "AnnealingPrior",
    "DriftDetector",
    "Event",
    "FitConfig",
    "FitResult",
    "FitStatus",
    "Forecast",
    "ForecastPoint",
    "ForecasterConfig",
    "GradNormDetector",
    "HealthConfig",
    "HealthMonitor",
    "LawParams",
    "NonFiniteDetector",
    "Observations",
    "OnlineForecaster",
    "RunMonitor",
    "ScheduleAdvice",
    "ScheduleAdvisor",
    "SpikeDetector",
    "StagnationDetector",
    "StopConfig",
    "StopDecision",
    "SweepStopper",
    "TrainingHealthError",
    "__version__",
    "as_lrs",
    "decide_stop",
    "fit",
    "parse_schedule",
    "prior_from",
]
