"""askshift.lib.robustness: metrics, the accuracy-on-the-line fit, effective robustness and its intervals, zoo results."""
