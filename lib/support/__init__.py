"""askshift.lib.support: density ratios (cross-fitting, calibration, epsilon), the domain classifier, a known-answer mixture."""
