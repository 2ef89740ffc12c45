"""Where was it stuck?  Stacks for the guard's log lines.

:func:`format_stack` formats a frame's stack with ``traceback``.  For the
case where no Python code can run (C code holding the GIL when the arbiter
kills), see ``aftermath.py``: ``faulthandler`` dumps from C there.
"""

import traceback


def format_stack(frame, limit=60):
    if frame is None:
        return "  (no Python frame)\n"
    return "".join(traceback.format_stack(frame, limit=limit))
