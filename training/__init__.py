"""Build, import and export the classifiers Triton serves; every export is checked for parity."""
