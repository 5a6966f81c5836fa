"""scaleforecast: forecast a training run's final loss while it trains.

The core (this package) holds the LR-annealing law, the fitter, the online forecaster, the detectors and the
readers. It depends on numpy, scipy and pydantic only: importing it never imports torch.
"""

from scaleforecast.results import FitStatus, Forecast, ForecastPoint, LawParams

__version__ = "0.1.0"

__all__ = ["FitStatus", "Forecast", "ForecastPoint", "LawParams", "__version__"]
