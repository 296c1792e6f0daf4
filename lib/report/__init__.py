"""askshift.lib.report: markdown reports, plots and the words that go with the numbers."""
