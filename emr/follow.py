"""Follow a run's steps on a cluster: state changes, a progress line per stage, the cost estimate.

Cost = instance-hours x (EC2 price for the instance's market + EMR price) from conf/emr.yaml. With
the cluster's instance list (``list_instances``: type, market, start and end times) the hours are
the instances' own; before instances are listed (or where the API lists none) the estimate uses
the requested fleet capacities priced at the dearest type of each fleet over the cluster's
lifetime, and says so.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

from emr.config import EmrConfig, Fleet, Price
from emr.steps import STEP_NAME

DONE_STEP = {"COMPLETED"}
BAD_STEP = {"FAILED", "CANCELLED", "INTERRUPTED"}
ENDED_CLUSTER = {"TERMINATED", "TERMINATED_WITH_ERRORS"}


class RunFailed(RuntimeError):
    """A stage failed, was cancelled, or the cluster ended before the run finished."""


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def instance_cost(instances: list[dict], pricing: dict[str, Price], now: datetime) -> tuple[float, float]:
    """``(usd, instance_hours)`` from ``list_instances`` entries (InstanceType, Market, Status.Timeline)."""
    usd = hours = 0.0
    for inst in instances:
        timeline = inst.get("Status", {}).get("Timeline", {})
        start = timeline.get("CreationDateTime")
        if start is None:
            continue
        end = timeline.get("EndDateTime") or now
        h = (end - start).total_seconds() / 3600.0
        price = pricing[inst["InstanceType"]]
        ec2 = price.ec2_spot if inst.get("Market") == "SPOT" else price.ec2_on_demand
        usd += h * (ec2 + price.emr)
        hours += h
    return usd, hours


def capacity_cost(fleets: dict[str, Fleet], pricing: dict[str, Price], seconds: float) -> tuple[float, float]:
    """``(usd, instance_hours)`` for the requested capacities over ``seconds``: an upper bound
    (each fleet priced at its dearest instance type)."""
    h = seconds / 3600.0
    usd = hours = 0.0
    for fleet in fleets.values():
        prices = [pricing[t] for t in fleet.instance_types]
        od = max(p.ec2_on_demand + p.emr for p in prices)
        spot = max(p.ec2_spot + p.emr for p in prices)
        usd += h * (fleet.on_demand * od + fleet.spot * spot)
        hours += h * (fleet.on_demand + fleet.spot)
    return usd, hours


def estimate_cost(emr, cluster_id: str, cfg: EmrConfig, cluster: dict, now: datetime) -> str:
    """One line: estimated USD, instance-hours and how they were counted."""
    instances, marker = [], None
    while True:
        kw = {"ClusterId": cluster_id, **({"Marker": marker} if marker else {})}
        page = emr.list_instances(**kw)
        instances += page.get("Instances", [])
        marker = page.get("Marker")
        if not marker:
            break
    if instances:
        usd, hours = instance_cost(instances, cfg.pricing, now)
        how = f"{len(instances)} instances as listed by EMR"
    else:
        timeline = cluster["Status"]["Timeline"]
        end = timeline.get("EndDateTime") or now
        usd, hours = capacity_cost(cfg.fleets, cfg.pricing, (end - timeline["CreationDateTime"]).total_seconds())
        how = "requested fleet capacity at the dearest listed type (upper bound; no instances listed)"
    return f"estimated cost ${usd:.2f} for {hours:.2f} instance-hours ({how}; prices from conf/emr.yaml)"


def run_steps(emr, cluster_id: str, run_id: str) -> list[dict]:
    """The run's steps on the cluster, in stage order (from their ``lensinj:<run_id>:i/n:`` names)."""
    steps, marker = [], None
    while True:
        page = emr.list_steps(ClusterId=cluster_id, **({"Marker": marker} if marker else {}))
        steps += page["Steps"]
        marker = page.get("Marker")
        if not marker:
            break
    mine = []
    for s in steps:
        m = STEP_NAME.match(s["Name"])
        if m and m["run_id"] == run_id:
            mine.append((int(m["index"]), s))
    return [s for _, s in sorted(mine, key=lambda t: t[0])]


def latest_run_id(emr, cluster_id: str) -> str:
    """The run id of the most recently added lensinj step on the cluster."""
    page = emr.list_steps(ClusterId=cluster_id)  # newest first
    for s in page["Steps"]:
        m = STEP_NAME.match(s["Name"])
        if m:
            return m["run_id"]
    raise RunFailed(f"cluster {cluster_id} has no lensinj steps to follow")


def failure_message(emr, cluster_id: str, step: dict, index: int, total: int, module: str) -> str:
    detail = emr.describe_step(ClusterId=cluster_id, StepId=step["Id"])["Step"]["Status"]
    fd = detail.get("FailureDetails") or {}
    why = "; ".join(x for x in (fd.get("Reason"), fd.get("Message")) if x) or "EMR gave no failure details"
    log = fd.get("LogFile") or f"<log uri>/{cluster_id}/steps/{step['Id']}/stderr.gz"
    return (f"stage {index}/{total} {module} (step {step['Id']}) {detail['State']}: {why}. "
            f"Driver log: {log}")


class _Progress:
    """What :func:`follow` has printed so far: step states, stage start times, the last line's time."""

    def __init__(self, out, clock):
        self.out, self.clock = out, clock
        self.start = self.last_line = clock()
        self.seen: dict[str, str] = {}
        self.started: dict[str, float] = {}
        self.cluster_state: str | None = None

    def cluster(self, state: str, cluster_id: str) -> None:
        if state != self.cluster_state:
            self.out(f"cluster {cluster_id}: {self.cluster_state or 'new'} -> {state}")
            self.cluster_state = state

    def steps(self, steps: list[dict], heartbeat_seconds: float) -> tuple[int, tuple | None]:
        """Print state changes (then a line per stage) or, when quiet for long, a heartbeat;
        return ``(stages done, (step, index, module) of the first failed one or None)``."""
        total, changed, failed = len(steps), False, None
        for i, step in enumerate(steps, start=1):
            state, module = step["Status"]["State"], STEP_NAME.match(step["Name"])["module"]
            if self.seen.get(step["Id"]) != state:
                self.out(f"stage {i}/{total} {module}: {self.seen.get(step['Id'], 'new')} -> {state}")
                self.seen[step["Id"]] = state
                changed = True
                if state == "RUNNING":
                    self.started[step["Id"]] = self.clock()
            if state in BAD_STEP and failed is None:
                failed = (step, i, module)
        done = sum(s["Status"]["State"] in DONE_STEP for s in steps)
        if changed:
            self._table(steps, done)
        elif self.clock() - self.last_line >= heartbeat_seconds:
            self._heartbeat(steps, done)
        return done, failed

    def _table(self, steps: list[dict], done: int) -> None:
        total = len(steps)
        for i, step in enumerate(steps, start=1):
            state, module = step["Status"]["State"], STEP_NAME.match(step["Name"])["module"]
            took = (f" {_hms(self.clock() - self.started[step['Id']])}"
                    if state == "RUNNING" and step["Id"] in self.started else "")
            self.out(f"  [{i}/{total}] {module:<34} {state}{took}")
        self.out(f"  progress: {done}/{total} stages done, {_hms(self.clock() - self.start)} elapsed")
        self.last_line = self.clock()

    def _heartbeat(self, steps: list[dict], done: int) -> None:
        total = len(steps)
        for i, step in enumerate(steps, start=1):
            if step["Status"]["State"] == "RUNNING":
                module = STEP_NAME.match(step["Name"])["module"]
                self.out(f"  [{i}/{total}] {module} RUNNING "
                         f"{_hms(self.clock() - self.started.get(step['Id'], self.start))}; "
                         f"{done}/{total} stages done, {_hms(self.clock() - self.start)} elapsed")
        self.last_line = self.clock()


def _summary(emr, cluster_id: str, run_id: str, cfg: EmrConfig, outputs: list[str | None],
             steps: list[dict], out) -> dict:
    now = datetime.now(timezone.utc)
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    created = min(s["Status"]["Timeline"]["CreationDateTime"] for s in steps)
    ended = max(s["Status"]["Timeline"].get("EndDateTime") or now for s in steps)
    # Wall time of the run: from its steps' submission (cluster start included) to the last step's end.
    summary = {"cluster_id": cluster_id, "run_id": run_id, "wall_seconds": (ended - created).total_seconds(),
               "outputs": [o for o in outputs if o],
               "cost": estimate_cost(emr, cluster_id, cfg, cluster, now)}
    out(f"run {run_id} done: {len(steps)}/{len(steps)} stages in {_hms(summary['wall_seconds'])}")
    for o in summary["outputs"]:
        out(f"  output: {o}")
    out(f"  {summary['cost']}")
    return summary


def follow(emr, cluster_id: str, run_id: str, cfg: EmrConfig, outputs: list[str | None], *,
           poll_seconds: float, sleep=time.sleep, out=print, clock=time.monotonic,
           heartbeat_seconds: float = 300.0) -> dict:
    """Poll until every step of ``run_id`` completed; print state changes and a progress line per
    stage at each change. Return a summary dict; raise :class:`RunFailed` naming the failed stage.

    ``sleep``/``clock`` are injectable so tests can drive EMR state between polls.
    """
    progress = _Progress(out, clock)
    while True:
        steps = run_steps(emr, cluster_id, run_id)
        if not steps:
            raise RunFailed(f"cluster {cluster_id} has no steps of run {run_id}")
        cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
        state = cluster["Status"]["State"]
        progress.cluster(state, cluster_id)
        done, failed = progress.steps(steps, heartbeat_seconds)
        if failed is not None:
            step, i, module = failed
            raise RunFailed(failure_message(emr, cluster_id, step, i, len(steps), module))
        if done == len(steps):
            return _summary(emr, cluster_id, run_id, cfg, outputs, steps, out)
        if state in ENDED_CLUSTER:
            reason = cluster["Status"].get("StateChangeReason", {})
            raise RunFailed(f"cluster {cluster_id} {state} before the run finished: "
                            f"{reason.get('Code', '')} {reason.get('Message', '')}".strip())
        sleep(poll_seconds)
