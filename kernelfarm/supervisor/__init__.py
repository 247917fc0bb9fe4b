"""The supervisor process: owns the kernels and the slot table, serves the control API."""
