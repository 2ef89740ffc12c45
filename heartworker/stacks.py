"""Where was it stuck?  Stacks for the guard's log lines.

:func:`format_stack` formats a frame's stack with ``traceback``, or the
frames of a suspended asyncio task (a list: a suspended coroutine's frame has
no ``f_back``; see ``tasks.py``).  For the
case where no Python code can run (C code holding the GIL when the arbiter
kills), see ``aftermath.py``: ``faulthandler`` dumps from C there.
"""

import traceback


def format_stack(frame, limit=60):
    if frame is None or frame == []:
        return "  (no Python frame)\n"
    if isinstance(frame, list):     # outermost first, each where it awaits
        summary = traceback.StackSummary.extract(((f, f.f_lineno) for f in frame[-limit:]))
        return "".join(summary.format())
    return "".join(traceback.format_stack(frame, limit=limit))
