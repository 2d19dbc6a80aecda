"""The RKHS MMD independence loss (loss) with its kernels, expected-value and random-feature estimators
(kernels, expected, rff), the kernels' saturation check (saturation) and dependence diagnostics (dependence)."""
