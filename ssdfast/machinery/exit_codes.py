"""Exit codes of the tools (README "Stop and resume" lists them); every tool returns one of these.

eval, detect and export use EXIT_DONE and EXIT_ERROR; train uses them all.
"""

EXIT_DONE = 0
EXIT_ERROR = 1  # a user error or an output that could not be written (one `error:` line)
EXIT_NON_FINITE = 2  # the loss became NaN/inf; last.pt is the one before
EXIT_PEER_LOST = 3  # another rank died or hung past --dist-timeout; last.pt is intact
EXIT_STOPPED = 75  # stopped by SIGTERM/SIGINT/SIGUSR1 after writing last.pt (75 = EX_TEMPFAIL: "try again")
EXIT_ABORTED = 130  # a second Ctrl-C: stopped at once, last.pt is the previous one
