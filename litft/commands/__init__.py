"""litft commands beyond fit/validate/test/predict: one module each (see litft/cli.py)."""
