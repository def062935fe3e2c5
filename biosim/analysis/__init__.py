"""Analysis of multi-trial results: rates, spectra, weights, rasters."""

from .rates import population_rates
from .spectra import GammaPeak, gamma_peak, population_spectrum
from .weight_stats import WeightStats, weight_stats

__all__ = ["population_rates", "population_spectrum", "gamma_peak", "GammaPeak", "weight_stats", "WeightStats"]
