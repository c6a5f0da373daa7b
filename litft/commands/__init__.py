"""litft's extra commands: one module each (add_arguments, run; no Trainer), registered in litft/cli.py."""
