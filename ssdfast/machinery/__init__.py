"""The run's machinery: checkpoint and output files, stop signals, the device and process group, exit codes."""
