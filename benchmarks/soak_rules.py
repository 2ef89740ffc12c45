"""What docs/semantics.md promises each kind of soak request: where the soak's verdicts come from.

A *kind* is a request the soak sends (a route of ``benchmarks/soak_app.py``).
For each worker class, ``expected(kind, flavor)`` lists the outcomes the
semantics (docs/semantics.md) allow, each with its bounds:

* ``200``: the request must survive (fast, or long work inside a section within
  its cap, a C call holding the GIL included);
* ``504`` naming the section or ``--timeout``, between the deadline and the
  deadline + ``CANCEL_GRACE`` + ``SLACK`` (a cancelled section, or a request
  ended at ``--timeout`` outside sections);
* ``closed`` (no status): the threaded worker retiring around a thread it
  cannot interrupt, and C code holding the GIL until the arbiter kills.

``ends_worker`` says how the request may legitimately end its worker, as the
arbiter's log tells (``soak.how_it_ended``: ``"aborted"`` by the arbiter at
``--timeout``, the sync worker's hang or gevent's hub blocked outside sections,
or C code holding the GIL past a deadline; ``"aborted, then SIGKILL"``, its
kill at a later look; ``"graceful"``: the threaded worker retiring),
and ``always_ends`` that it must: its worker then dies from just before its
answer (``CLOSED_WITHIN``) to ``DIES_WITHIN`` after it, and that death is
explained only if it ended in one of those ways.  Every other death of a
worker must be explained by a fault the soak injected, in time and in the way
that fault ends a worker (``fault_explains``).

*Collateral*: a request whose worker died of an explained cause while the
request ran may end in ``closed`` or ``truncated`` at the death (a gevent abort
closes its other connections; SIGKILL closes everything, a response half-sent
too), but a worker that stopped gracefully closes only what was still running
when its graceful timeout ran out.  During a graceful stop (``HUP``, ``TTOU``,
``TERM``) it may end in a ``504`` that says so (its section, or request, ran
past the graceful timeout after SIGTERM), from the graceful limit on; when a
gevent worker is aborted, the greenlet that happened to run may get a ``504``
saying that the worker was aborted (``collateral_allowed``).  A ``200`` is
never collateral: a stop does not make a request slower, so a ``200`` meets its
own rule or is wrong.
Never a ``500``, a read timeout, or another status.

*Neighbours*: a request that blocks the gevent hub (Python code, a C call)
stops every other greenlet of its worker, and one holding the GIL (``gil``,
``gil_cap``) stops every other thread of the threaded worker, its guard
included.  A request may end later by as long as such neighbours ran on its
worker while it did (``BLOCKERS``, and the soak measures the overlap), no more.
"""

import re
from dataclasses import dataclass, replace

TIMEOUT = 2.0        # --timeout of every soak server
GRACEFUL = 2.0       # --graceful-timeout (tests/gunicorn_server.py)
CANCEL_GRACE = 1.0   # HEARTWORKER_CANCEL_GRACE (its default)
SLACK = 3.0          # the arbiter's 1 s loop, a loaded 2-core machine
CLIENT_TIMEOUT = 30.0

LONG = 2.5           # long work within its cap: longer than --timeout
CAP = 2.0            # the cap of the sections that pass it
STALL = 1.5          # the stall limit of /stalled, after 3 x 0.3 s of progress
GIL_HOLD = CAP + TIMEOUT + 4   # held past the moment the arbiter kills


@dataclass(frozen=True)
class Expect:
    outcome: str                 # "200", "504" or "closed"
    lo: float = 0.0              # seconds, at least, from sending to the answer
    hi: float = CLIENT_TIMEOUT   # seconds, at most, from the app's start to the answer
    names: str = ""              # a 504's body names this
    ends_worker: tuple = ()      # how it may end its worker (``how_it_ended``'s words)
    always_ends: bool = False    # ... and it must
    lo_from_app: bool = False    # ``lo`` counts from the app's start, not from the send
    second_look: bool = False    # only if the arbiter looked again right after its SIGABRT
    worker_clock: bool = False   # ``lo``/``hi`` bound the time the 504 says its worker took
    #                              (and ``hi`` the client's from the app's start, ...)
    began_known: bool = True     # (... unless the request may never have reached the app)

    def allows(self, outcome, since_sent, since_began, body):
        """``since_sent``: from the client's send; ``since_began``: from its worker's start
        of the app (later: a request may wait in the listen queue, and be read).  A
        section's deadline counts from the app's start (``lo_from_app``); --timeout
        from Gunicorn's, which comes a little before it.  With ``worker_clock``, the
        bounds hold for the time the worker measured (its 504 says ``N s elapsed``),
        which the client's time must cover."""
        if outcome != self.outcome or self.names not in body:
            return False
        if self.worker_clock:
            took = re.search(r"(\d+\.\d+) s elapsed", body)
            if self.began_known and not self.lo - NEAR_CLOCKS <= since_began <= self.hi:
                return False
            return took is not None and self.lo <= float(took.group(1)) <= min(
                self.hi, since_sent + NEAR_CLOCKS)
        since = since_began if self.lo_from_app else since_sent
        return self.lo <= since and since_began <= self.hi

    def __str__(self):
        named = f" naming {self.names!r}" if self.names else ""
        return f"{self.outcome}{named} in {self.lo:.1f}-{self.hi:.1f} s"


CANCEL_WITHIN = 1.0  # from a deadline to the client's 504 (measured: under 0.1 s)
NEAR_CLOCKS = 0.05   # the worker's clock and the client's: the same clock, read apart


def cancelled(deadline, name, why="ran past its cap"):
    """The section cancelled at its deadline, the worker alive: not the backstop's abort.

    Judged by its worker's clock too: the guard acted within ``CANCEL_WITHIN`` of
    the deadline (the 504 says how long the section had run).  A starved machine
    delivers the 504 later (1.4 s, beside two CPU hogs and the load, for one the
    guard sent on time): the soak counts the time it kept every process from
    running as time the request was stopped (``soak.Starvation``)."""
    return Expect("504", deadline, deadline + CANCEL_WITHIN, f"{name}' {why}",
                  lo_from_app=True, worker_clock=True)


def cancelled_at_timeout(worker_clock=False):
    """The threaded worker cancels a request thread past --timeout outside sections: it lives.

    ``worker_clock``: at --timeout as its worker measured it, however long the
    request waited before (see ``KINDS["fast"]``)."""
    return Expect("504", TIMEOUT, TIMEOUT + CANCEL_WITHIN, "--timeout",
                  worker_clock=worker_clock, began_known=not worker_clock)


ABORTED = ("aborted", "aborted, then SIGKILL")   # the arbiter's abort (its SIGKILL if late)


def aborted_by_the_arbiter():
    """The arbiter's abort at --timeout: a 504, or a connection closed by its early SIGKILL.

    The arbiter looks for stale workers again at every signal it gets (a
    worker's exit, a signal the soak sends it): if one comes right after its
    SIGABRT, the SIGKILL may come before the worker has run its SIGABRT
    handler (see docs/operating.md, Limits).  Stock Gunicorn does the same.  So a
    closed connection needs such a second look (``second_look``) and a SIGKILL.
    Times count from the last heartbeat, up to --timeout / 2 before the
    request began.
    """
    return [Expect("504", TIMEOUT / 2, TIMEOUT + CANCEL_GRACE + SLACK, "--timeout",
                   ends_worker=ABORTED, always_ends=True),
            Expect("closed", TIMEOUT / 2, TIMEOUT + 1 + SLACK, ends_worker=ABORTED[1:],
                   always_ends=True, second_look=True)]


def retired(deadline):
    """The threaded worker retires: the connection closes when it exits, after its graceful wait."""
    return Expect("closed", deadline + CANCEL_GRACE,
                  deadline + CANCEL_GRACE + GRACEFUL + SLACK, ends_worker=("graceful",),
                  always_ends=True)


# C code holding the GIL past its cap: the arbiter kills between the cap and the cap +
# --timeout (the standing vouch is any value in [deadline - timeout, deadline]), + its
# 1 s loop, + 1 s more if SIGABRT's handler cannot run before its SIGKILL.  Under gevent and
# in the threaded worker, the standing vouch covers it up to the latest deadline that
# any greenlet or thread has open (a neighbour's section: NEIGHBOUR_CAP).  If the call
# returns first, the section ends on its own (200) or is cancelled (504), and the
# arbiter's SIGABRT, if it was sent, still ends the worker.
NEIGHBOUR_CAP = 10.0       # the cap of /long, /cpu and /gil


def gil_past_cap(latest_deadline):
    end = latest_deadline + TIMEOUT + 2 + SLACK
    return [Expect("closed", CAP, end, ends_worker=ABORTED, always_ends=True),
            Expect("200", CAP, end, ends_worker=ABORTED),
            Expect("504", CAP, end, "soak gil", ends_worker=ABORTED)]


def held_past_its_vouch(cap):
    """A C call within its cap that its worker died holding (the app journals each call
    that returns: this one never did), however it got that long (a starved machine
    stretched 2.5 s of CPU to over 13 s, beside two CPU hogs and the load), was ended
    by the arbiter's abort, as for ``gil_cap``: not before its cap (the standing vouch
    holds to it), and by cap + --timeout, the arbiter's loop and the slack."""
    end = cap + TIMEOUT + 1 + SLACK
    return [Expect("closed", cap, end, ends_worker=ABORTED, always_ends=True, lo_from_app=True),
            Expect("504", cap, end, "soak gil", ends_worker=ABORTED, lo_from_app=True)]


def stretched(held):
    """Seconds a busy machine stretched a ``gil`` request's C call (``held`` long) past its
    planned ``LONG``: counted as time the request was stopped (a C call gets less of a
    core on a busy machine: 2.5 s took 10.8 s once, past its cap, while the test suite
    ran beside the soak).  Only a hold that ended before the arbiter must have killed its
    worker (the cap + --timeout + the arbiter's 1 s loop) counts: a longer one answered
    by the same worker means the worker outlived its vouch."""
    if held > NEIGHBOUR_CAP + TIMEOUT + 1:
        return 0.0
    return max(0.0, held - LONG)


SURVIVES = Expect("200", hi=1 + SLACK)
SURVIVES_LONG = Expect("200", LONG, LONG + SLACK)      # (under NEIGHBOUR_CAP: never past the cap)
SURVIVES_GIL = Expect("200", hi=NEIGHBOUR_CAP)          # a C call's length is only about LONG

# kind: (path, weight in the deck, {flavor: [allowed outcomes]}); flavors are
# "sync", "gevent" and "gthread"; a kind a flavor does not list is not sent to it.
KINDS = {
    "fast": ("/fast", 10, {
        "sync": [SURVIVES], "gevent": [SURVIVES], "gthread": [SURVIVES]}),
    "long": (f"/long?s={LONG}&cap={NEIGHBOUR_CAP}", 2, {
        "sync": [SURVIVES_LONG], "gevent": [SURVIVES_LONG], "gthread": [SURVIVES_LONG]}),
    "cpu": (f"/cpu?s={LONG}&cap={NEIGHBOUR_CAP}", 2, {
        "sync": [SURVIVES_LONG], "gevent": [SURVIVES_LONG], "gthread": [SURVIVES_LONG]}),
    "gil": (f"/gil?s={LONG}&cap={NEIGHBOUR_CAP}", 1, {     # (a C call's length is only about LONG)
        "sync": [SURVIVES_GIL], "gevent": [SURVIVES_GIL], "gthread": [SURVIVES_GIL]}),
    "cap_wait": (f"/cap_wait?cap={CAP}", 1, {
        "sync": [cancelled(CAP, "soak cap_wait")],
        "gevent": [cancelled(CAP, "soak cap_wait")],
        "gthread": [retired(CAP)]}),          # a thread in time.sleep cannot be interrupted
    "cap_busy": (f"/cap_busy?cap={CAP}", 1, {
        "sync": [cancelled(CAP, "soak cap_busy")],
        "gevent": [cancelled(CAP, "soak cap_busy")],
        "gthread": [cancelled(CAP, "soak cap_busy")]}),
    "stalled": (f"/stalled?s={STALL}&cap=30", 1, {
        "sync": [cancelled(0.9 + STALL, "soak stalled", "made no progress")],
        "gevent": [cancelled(0.9 + STALL, "soak stalled", "made no progress")],
        "gthread": [cancelled(0.9 + STALL, "soak stalled", "made no progress")]}),
    "hang_busy": ("/hang_busy", 1, {
        "sync": aborted_by_the_arbiter(),     # as stock
        "gevent": aborted_by_the_arbiter(),   # the hub blocked outside sections
        "gthread": [cancelled_at_timeout()]}),   # in its thread: the worker lives
    "hang_wait": ("/hang_wait", 1, {
        "sync": aborted_by_the_arbiter(),
        # gevent: a greenlet that waits outside sections is never ended (stock): not sent.
        "gthread": [retired(TIMEOUT)]}),
    "gil_cap": (f"/gil?s={GIL_HOLD}&cap={CAP}&at_least=1", 1, {
        "sync": gil_past_cap(CAP),
        "gevent": gil_past_cap(NEIGHBOUR_CAP),
        "gthread": gil_past_cap(NEIGHBOUR_CAP)}),
}

COLLATERAL_WITHIN = GRACEFUL + 1   # the death may follow a graceful stop's answer by this much
DIES_WITHIN = 2.0                  # a request that ends its worker: from its answer to the exit
CLOSED_WITHIN = 1.0                # a connection a death closes: from the death to the client
#                                    (the load's clients share the soak's GIL: one saw a
#                                    close 0.64 s after the watcher saw the worker gone)
FAULT_KILLS_WITHIN = {"KILL": 1.0, "TERM": GRACEFUL + SLACK, "TTOU": GRACEFUL + SLACK,
                      "HUP": GRACEFUL + SLACK}


FAULT_ENDS = {"KILL": ("SIGKILL", "aborted, then SIGKILL"),
              "TERM": ("graceful", "code 1") + ABORTED}
FAULT_ENDS["HUP"] = FAULT_ENDS["TTOU"] = FAULT_ENDS["TERM"]


GIL_KINDS = ("gil", "gil_cap")   # C code holding the GIL: no Python signal handler runs
STUCK_IN_THREADS = tuple(kind for kind, (_, _, allowed) in KINDS.items()
                         if any(e.ends_worker == ("graceful",) for e in allowed.get("gthread", ())))


def fault_explains(fault, how, sent_at, died_at, delayed=0.0, stuck=False):
    """Does a fault sent at ``sent_at`` explain a worker's death at ``died_at``?

    ``delayed``: how long C code held the GIL in that worker meanwhile (its
    SIGTERM handler, and so its graceful stop, waits for the GIL), and how long
    the machine ran nothing (a starved worker's exit outlasts --timeout); ``stuck``:
    a threaded worker ran a request that no cancellation ends
    (``STUCK_IN_THREADS``) meanwhile.  Only these keep a graceful stop past
    --timeout, so only they let it end in an abort.

    ``how`` the worker ended (``soak.how_it_ended``): HUP, TTOU and TERM make
    it stop gracefully ("graceful": it exits by itself), or be aborted on the
    way: by heartworker's guard at the graceful limit ("code 1"), or by the
    arbiter when the stop outlasts --timeout without a heartbeat (a C call
    holding the GIL; Gunicorn's graceful wait, which does not notify), then
    SIGKILLed if a thread it cannot end keeps it alive.  KILL leaves it killed
    by SIGKILL, whoever aborted it before.
    """
    if how not in FAULT_ENDS[fault] or fault != "KILL" and how != "graceful" and not (
            delayed > 0 or stuck):
        return False
    return sent_at <= died_at <= sent_at + FAULT_KILLS_WITHIN[fault] + (
        0.0 if fault == "KILL" else delayed)


def collateral_allowed(kind, flavor, outcome, body, graceful, aborted):
    """May a request of ``kind`` end in ``outcome`` because its worker died (see *Collateral*)?

    ``graceful``: it ended while a graceful stop (HUP, TTOU, TERM, a
    retirement) reached its graceful limit; ``aborted``: its worker was
    aborted (the arbiter's, the guard's).  The caller checks the timing.
    """
    if outcome in ("closed", "truncated"):
        return True
    if outcome == "504":
        route = path(kind).split("?")[0]
        return graceful and "ran past the graceful timeout after SIGTERM" in body and (
            f"section 'soak {route[1:]}'" in body or f"'GET {route}'" in body) or \
            aborted and flavor == "gevent" and \
            body.startswith("Gateway Timeout: the worker was aborted: ")
    return False


def path(kind):
    return KINDS[kind][0]


def kinds_for(flavor):
    """{kind: weight} of the kinds sent to ``flavor``'s worker."""
    return {kind: weight for kind, (_, weight, allowed) in KINDS.items() if flavor in allowed}


def survived_by(flavor):
    """{kind: weight} of the kinds whose every documented end leaves ``flavor``'s worker alive."""
    return {kind: weight for kind, weight in kinds_for(flavor).items()
            if not any(e.ends_worker for e in KINDS[kind][2][flavor])}


# The kinds that stop a worker's other requests while they run (see *Neighbours*): the
# sync worker runs one request at a time.
BLOCKERS = {"sync": (),
            "gevent": ("cpu", "gil", "cap_busy", "stalled", "hang_busy", "gil_cap"),
            "gthread": ("gil", "gil_cap")}


def expected(kind, flavor, blocked=0.0, reached_app=True, returned=True):
    """The outcomes allowed, for a request that neighbours stopped for ``blocked`` seconds.

    Stopped long enough, a request may pass its deadline: a section within its
    cap when it ran alone is then cancelled at its cap (a cap is wall-clock
    time), and in the threaded worker a fast request kept from the GIL past
    --timeout is cancelled, that worker's rule outside sections.  So is one that
    never reached the app (``reached_app``: no journal line), that the machine kept
    in Gunicorn's hands for --timeout (a wait for a free thread, the GIL, the CPU):
    judged by its worker's clock.  A ``gil`` request whose C call never
    ``returned`` may have been ended by the arbiter (``held_past_its_vouch``).
    """
    allowed = KINDS[kind][2][flavor]
    if kind == "gil" and not returned:
        allowed = allowed + held_past_its_vouch(NEIGHBOUR_CAP)
    if kind == "fast" and flavor == "gthread" and not reached_app:
        allowed = allowed + [cancelled_at_timeout(worker_clock=True)]
    if not blocked:
        return allowed
    if kind in ("long", "cpu", "gil") and LONG + blocked >= NEIGHBOUR_CAP - CANCEL_WITHIN:
        allowed = allowed + [cancelled(NEIGHBOUR_CAP, f"soak {kind}")]
    if kind == "fast" and flavor == "gthread" and blocked >= TIMEOUT - CANCEL_WITHIN:
        allowed = allowed + [cancelled_at_timeout()]
    return [replace(e, hi=min(e.hi + blocked, CLIENT_TIMEOUT)) for e in allowed]


def verdict(kind, flavor, outcome, since_sent, since_began, body, blocked=0.0,
            reached_app=True, returned=True):
    """The Expect this answer fulfils, or None: an unexpected outcome (unless collateral)."""
    for expect in expected(kind, flavor, blocked, reached_app, returned):
        if expect.allows(outcome, since_sent, since_began, body):
            return expect
    return None
