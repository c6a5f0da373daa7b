from litft.signals import record_early

record_early()  # inside a SLURM job step: a preemption signal during the imports below is kept, not fatal

from litft.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
