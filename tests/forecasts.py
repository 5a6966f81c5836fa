"""One-point forecasts of the final loss, as the stop rules, the sweep stoppers and the sweep engines read them."""

from __future__ import annotations

from scaleforecast.results import FitStatus, Forecast, ForecastPoint, StopFeatures


def one_point(
    loss: float,
    std: float,
    status: FitStatus = FitStatus.OK,
    final_step: int = 1000,
    *,
    fitted_at_step: int = 100,
    n_points: int = 20,
    heard_at: int | None = None,
) -> Forecast:
    """The forecast ``loss +- std`` of the loss at ``final_step``. With ``heard_at``, the one fitted at that step
    as the run monitor hands it to its listeners: with the run's stop features (a linear decay to zero, a run
    whose forecasts passed their own backtest)."""
    point = ForecastPoint(step=final_step, loss=loss, lower=loss - std, upper=loss + std, std=std)
    features = None
    if heard_at is not None:
        f = heard_at / final_step
        features = StopFeatures(
            fraction=f, decay_seen=f, decay_ahead=1 - f, backtest=0.005, backtest_worst=0.005,
            rel_std=std / loss, noise=0.002, points=heard_at, total_steps=final_step,
        )  # fmt: skip
        fitted_at_step = n_points = heard_at
    return Forecast(
        law="tissue",
        level=0.8,
        fitted_at_step=fitted_at_step,
        final_step=final_step,
        points=[point],
        params=None,
        n_points=n_points,
        status=status,
        stop_features=features,
    )
