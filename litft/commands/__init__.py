"""litft's extra commands: one module each (add_arguments, run, NEEDS_TRAINER), registered in litft/cli.py."""
