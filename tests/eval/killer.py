"""A verifier for the Ray test: the first call on KILL_QUESTION (in any process) kills the
process it runs in, as a crashed engine actor would die; every other call scores steps."""

import os

KILL_QUESTION = "What is 6 times 9?"


def verify(question, steps):
    marker = os.environ.get("PONDER_TEST_KILL_MARKER")
    if marker and question == KILL_QUESTION:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            os._exit(1)
    return [0.5 + 0.1 * (len(s) % 5) for s in steps]
