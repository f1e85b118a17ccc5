"""Local emulators of the PBS Pro, Torque and LSF command-line tools.

The commands keep their state in a directory (``$IPPHPC_EMU_STATE``) and run
every job element as a real local process, started by a small scheduler
daemon (:mod:`ipphpc_emu.daemon`) that each submitting command starts on
demand and that exits by itself once nothing is left to run.
"""
