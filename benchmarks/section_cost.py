"""Section cost: enter+exit of ``long_section`` vs ``contextlib.nullcontext()``, in-process;
and the cost of ``heartworker.progress()``.

    python benchmarks/section_cost.py [--quick] [--versions REF,REF,...]

``--versions`` adds a table of earlier versions beside this checkout's, in the
same process (each git ref's ``heartworker/`` is imported as a package of its
own; the batches of all versions take turns): e.g. ``--versions v0.1.0,main``.

A real ``Registry`` is activated in this process (as a worker does; no guard
thread runs, which does not change the cost of entering and leaving).  Each
case times batches of ``with ...: pass`` with ``time.perf_counter_ns``; the
cases take turns batch by batch, so drift hits them alike.  Per enter+exit:
median and p90 over the batches, loop overhead included (nullcontext shows
how much that is).  The gevent cases run in a child process of this script
(``--gevent-part``), which monkey-patches first as a gevent worker does, and
open 10,000 sections in waiting greenlets.
"""

import sys

GEVENT_PART = "--gevent-part" in sys.argv
if GEVENT_PART:
    from gevent import monkey
    monkey.patch_all()

import contextlib  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
from time import monotonic  # noqa: E402
from time import perf_counter_ns  # noqa: E402

import common  # noqa: E402
import heartworker.heartbeat  # noqa: E402, F401 (active_registry reads these modules)
import heartworker.native  # noqa: E402, F401
import heartworker.registry  # noqa: E402, F401 (active_registry reads it)
from heartworker.section import activate, long_section, progress  # noqa: E402

CAP, SHORTER_CAP, OPEN_GREENLETS = 600, 60, 10_000


class Tmp:
    """Stands in for Gunicorn's WorkerTmp: Heartbeat only uses fileno()."""

    def __init__(self):
        self.fd, self.path = tempfile.mkstemp(prefix="heartworker-bench-")

    def fileno(self):
        return self.fd

    def close(self):
        os.close(self.fd)
        os.unlink(self.path)


@contextlib.contextmanager
def active_registry(owner=None, package=None):
    """A registry activated as a worker's is (of ``package``: a heartworker version)."""
    hw = package or sys.modules["heartworker"]
    tmp = Tmp()
    heartbeat = hw.heartbeat.Heartbeat(tmp)
    try:
        registry = hw.registry.Registry(heartbeat, serving_tid=hw.native.get_ident(),
                                        default_cap=CAP, window=30, owner=owner)
        # As the idle guard leaves it: its next look within a second (a section that
        # ends later does not wake it).
        registry.next_wake = monotonic() + 1.0
        hw.section.activate(registry)
        yield registry
    finally:
        hw.section.activate(None)
        heartbeat.close()
        tmp.close()


def load_version(ref, number):
    """heartworker as of git ``ref``, imported as a package of its own."""
    try:
        archive = subprocess.run(["git", "-C", common.ROOT, "archive", ref, "heartworker"],
                                 capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        common.fail(f"cannot read heartworker/ at {ref!r} with git archive: {exc}")
    dest = tempfile.mkdtemp(prefix="heartworker-bench-")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest)
    alias = f"heartworker_version_{number}"
    os.rename(os.path.join(dest, "heartworker"), os.path.join(dest, alias))
    sys.path.insert(0, dest)
    for module in ("heartbeat", "registry", "native", "section"):
        importlib.import_module(f"{alias}.{module}")
    return sys.modules[alias]


# -- the timed loops: one enter+exit per iteration ------------------------------------
def null_loop(n):
    for _ in range(n):
        with contextlib.nullcontext():
            pass


def section_loop(n, cap=CAP):
    for _ in range(n):
        with long_section("x", cap=cap):
            pass


def no_registry(n):
    registry = sys.modules["heartworker.section"]._active
    activate(None)
    try:
        section_loop(n)
    finally:
        activate(registry)


def nested(n, cap=CAP):
    with long_section("outer", cap=CAP):
        section_loop(n, cap)


def nested_shorter(n):
    nested(n, SHORTER_CAP)


def stall_loop(n):
    for _ in range(n):
        with long_section("x", cap=CAP, stall=SHORTER_CAP):
            pass


def progress_outside(n):
    for _ in range(n):
        progress("step")


def progress_in(n, stall=None):
    with long_section("outer", cap=CAP, stall=stall):
        for _ in range(n):
            progress("step")


def progress_in_stall(n):
    progress_in(n, SHORTER_CAP)


def measure(cases, quick, registries=()):
    """{name: [seconds per op of each batch]}, the cases taking turns batch by batch.

    Between two batches (untimed), each of ``registries`` gets what the guard's
    look does for it in a worker: the sections opened since are filed in its
    deadline heap (versions before the hot path left that to the guard have none).
    """
    batch, batches = (200, 40) if quick else (1000, 400)
    samples = {name: [] for name in cases}
    for _ in range(batches):
        for name, loop in cases.items():
            start = perf_counter_ns()
            loop(batch)
            samples[name].append((perf_counter_ns() - start) / batch / 1000.0)
            for registry in registries:
                if hasattr(registry, "file_fresh"):
                    registry.file_fresh()
    return samples


def sync_cases(quick):
    with active_registry() as registry:
        def heartbeat_write(n):
            for _ in range(n):
                registry.heartbeat.write(1.0)

        return measure({"nullcontext()": null_loop,
                        "long_section, no registry (no-op)": no_registry,
                        "long_section, outermost": section_loop,
                        "long_section, nested (same cap)": nested,
                        "long_section, nested (shorter cap)": nested_shorter,
                        "long_section, outermost, with stall": stall_loop,
                        "progress(), no section open": progress_outside,
                        "progress(), in a section": progress_in,
                        "progress(), in a section with stall": progress_in_stall,
                        "reference: one heartbeat write (os.utime)": heartbeat_write}, quick,
                       [registry])


def version_cases(refs, quick):
    """The sync cases of each version in ``refs`` and of this checkout, batches interleaved."""
    packages = [(ref, load_version(ref, n)) for n, ref in enumerate(refs)]
    packages.append(("this checkout", sys.modules["heartworker"]))
    with contextlib.ExitStack() as stack:
        cases, registries = {"nullcontext()": null_loop}, []
        for label, package in packages:
            registries.append(stack.enter_context(active_registry(package=package)))
            section = package.section.long_section

            def outermost(n, section=section):
                for _ in range(n):
                    with section("x", cap=CAP):
                        pass

            def nested_in(n, section=section):
                with section("outer", cap=CAP):
                    for _ in range(n):
                        with section("x", cap=CAP):
                            pass

            cases[f"{label}: outermost"] = outermost
            cases[f"{label}: nested (same cap)"] = nested_in
        counts = {name: operations(loop) for name, loop in cases.items()}
        return measure(cases, quick, registries), counts


def operations(loop):
    """(bytecodes, Python calls) that one more iteration of ``loop`` runs: counted by a
    tracer (``f_trace_opcodes``), so noise does not touch them.  C calls (``monotonic``,
    ``list.append``) are not counted; each is one bytecode of its caller's."""
    counts = [0, 0]

    def tracer(frame, event, arg):
        frame.f_trace_opcodes = True
        if event == "opcode":
            counts[0] += 1
        elif event == "call":
            counts[1] += 1
        return tracer

    def run(n):
        counts[:] = [0, 0]
        sys.settrace(tracer)
        try:
            loop(n)
        finally:
            sys.settrace(None)
        return list(counts)

    run(2)      # (warm: a first iteration may take a path the others do not)
    one, two = run(1), run(2)
    return two[0] - one[0], two[1] - one[1]


def gevent_cases(quick):
    """Run in the monkey-patched child: with 1 section open, then with 10,000 more."""
    import gevent
    import gevent.event
    import greenlet

    cases = {"nullcontext()": null_loop, "long_section, outermost": section_loop,
             "long_section, nested (same cap)": nested}
    with active_registry(owner=greenlet.getcurrent) as registry:
        results = {f"{name} [1 open]": s
                   for name, s in measure(cases, quick, [registry]).items()}
        release = gevent.event.Event()

        def waiting():
            with long_section("waiting", cap=CAP):
                release.wait()

        greenlets = [gevent.spawn(waiting) for _ in range(OPEN_GREENLETS)]
        while registry.open < OPEN_GREENLETS:
            gevent.sleep(0)
        results.update({f"{name} [10,000 open]": s
                        for name, s in measure(cases, quick, [registry]).items()})
        if registry.open != OPEN_GREENLETS:
            common.fail(f"expected {OPEN_GREENLETS} open sections, found {registry.open}")
        release.set()
        gevent.joinall(greenlets, raise_error=True)
    return results


def run_gevent_part(quick):
    cmd = [sys.executable, os.path.abspath(__file__), "--gevent-part"] + (["--quick"] * quick)
    return json.loads(common.run_command(cmd, timeout=600))


def run(args):
    if args.versions:
        samples, counts = version_cases(args.versions.split(","), args.quick)
        base = common.median(samples["nullcontext()"])
        null_ops = counts["nullcontext()"]
        rows = [[name, f"{common.median(v):.3f}", f"{common.percentile(v, 90):.3f}",
                 f"{common.median(v) - base:+.3f}",
                 f"{counts[name][0] - null_ops[0]:+d}", f"{counts[name][1] - null_ops[1]:+d}"]
                for name, v in samples.items()]
        print(f"# {len(samples['nullcontext()'])} batches per case, all versions in one "
              f"process; times in microseconds per enter+exit; bytecodes and Python calls "
              f"per enter+exit over nullcontext's (counted: no noise)")
        common.table(["version: case", "median us", "p90 us", "vs nullcontext us",
                      "bytecodes", "calls"], rows)
        print()
    rows = []
    results = [("sync", sync_cases(args.quick)), ("gevent", run_gevent_part(args.quick))]
    for process, samples in results:
        base = common.median(samples["nullcontext()"] if process == "sync"
                             else samples["nullcontext() [1 open]"])
        for name, values in samples.items():
            med = common.median(values)
            target, ok = target_of(name, med - base, samples)
            rows.append([process, name, f"{med:.3f}", f"{common.percentile(values, 90):.3f}",
                         f"{med - base:+.3f}", target, ok])
    print(f"# {len(next(iter(results[0][1].values())))} batches per case; "
          f"cap {CAP} s, shorter cap and stall {SHORTER_CAP} s; times in microseconds per "
          f"enter+exit (per call for progress())")
    common.table(["process", "case", "median us", "p90 us", "vs nullcontext us",
                  "target", "result"], rows)


def target_of(name, over, samples):
    """The goal of a case, and whether ``over`` (its median over nullcontext) meets it."""
    if "10,000 open" in name and "long_section" in name:
        base = common.median(samples["nullcontext() [1 open]"])
        one = common.median(samples[name.replace("10,000 open", "1 open")]) - base
        return f"no growth (1 open: {one:+.3f})", common.verdict(over <= one * 1.10 + 0.05)
    if "outermost" in name and "no registry" not in name:
        return "<= 2 us over", common.verdict(over <= 2.0)
    return "", ""


def configure(parser):
    parser.add_argument("--gevent-part", action="store_true", help="internal: the gevent child")
    parser.add_argument("--versions", metavar="REF,REF",
                        help="also measure these git refs' heartworker, in this process")


if __name__ == "__main__":
    if GEVENT_PART:
        print(json.dumps(gevent_cases("--quick" in sys.argv)))
    else:
        common.main(run, "Section cost: long_section enter+exit vs contextlib.nullcontext()",
                    configure=configure)

