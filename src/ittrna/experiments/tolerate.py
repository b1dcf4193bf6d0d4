"""The evaluator of tolerance methods: test a chip, run a method on its measured map, program the true chip
with the result and measure the test split. The only place where a method's output meets the truth.

A *tuned* file (``.pt``) is an ordinary checkpoint (it loads with :func:`ittrna.models.load_checkpoint`,
giving the tuned weights) plus the deployment (scales, layouts, explicit targets) and the chip it was made
for, so ``evaluate_tuned`` reproduces the reported accuracy on that chip.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import torch
from torch import nn

from ittrna._io import atomic_write
from ittrna.boundary import chip_side, host_side
from ittrna.chip import Chip
from ittrna.config import ChipConfig, RefreshConfig, TestConfig, parse_time
from ittrna.data import Split
from ittrna.errors import FileFormatError, InputError
from ittrna.host import Deployment, MeasuredMap, design_config
from ittrna.mapping import LayerLayout
from ittrna.methods import Context, apply_method, get_method
from ittrna.models import CHECKPOINT_FORMAT, load_checkpoint_payload
from ittrna.nn import deploy
from ittrna.session import ChipSession
from ittrna.training import accuracy

__all__ = ["CALIBRATION_IMAGES", "MethodRun", "calibration_inputs", "check_map_fits", "deployment_mismatch",
           "evaluate_deployment", "evaluate_run", "evaluate_tuned", "load_tuned", "run_method", "save_tuned",
           "tolerate"]


def check_map_fits(measured: MeasuredMap, chip: Chip) -> None:
    """Raise InputError unless ``measured`` is a test result of ``chip`` (same chip id and geometry)."""
    if measured.chip_id != chip.chip_id:
        raise InputError(f"the measured map is of another chip (id {measured.chip_id or '?'}, this chip "
                         f"{chip.chip_id}); make it with `ittrna chip test` on this chip")
    if measured.taken_at > chip.now:
        raise InputError(f"the measured map was taken at {measured.taken_at:g} s on the chip's clock, after the chip's "
                         f"time now ({chip.now:g} s); accepted a map of this chip's past")
    mine = {k: v for k, v in design_config(chip.config).identity_dict().items() if k != "test"}
    if {k: v for k, v in measured.design.identity_dict().items() if k != "test"} != mine:
        raise InputError("the measured map's design config differs from the chip's (e.g. its relaxation or wires "
                         "sections); make the map with `ittrna chip test` on this chip")
    geometry = {n: layer.shape_meta() for n, layer in chip.layers.items()}
    if {n: dict(m) for n, m in measured.meta.items()} != geometry:
        raise InputError("the measured map's layer geometry differs from the chip's")


def deployment_mismatch(chip: Chip, deployment: Deployment) -> str:
    """Where programming ``deployment`` would change ``chip`` (writes, layouts, registers); '' if nowhere.
    An on-device method's deployment must describe the chip as its session left it."""
    for name, layer in chip.layers.items():
        weight = deployment.state_dict.get(f"{name}.weight")
        if weight is None:
            return f"no weight for layer {name!r}"
        scale = deployment.scales.get(name, layer.scale)
        if scale != layer.scale:
            return f"layer {name!r} scale {scale} != {layer.scale}"
        layout = deployment.layouts.get(name) or LayerLayout.identity(layer.grid)
        if not layout.equals(layer.get_layout()):
            return f"layer {name!r} layout differs"
        targets = deployment.targets.get(name) or chip.weight_targets(name, weight, layer.scale)
        issued = chip.count_issued(name, dict(targets))
        if issued:
            return f"layer {name!r} would take {issued} more writes"
        reg = deployment.registers.get(name)
        have = chip.registers(name)
        if (reg is None) != (have is None) or (reg is not None and have is not None and not (
                torch.equal(reg["gain"].float(), have[0].cpu()) and torch.equal(reg["offset"].float(), have[1].cpu()))):
            return f"layer {name!r} registers differ"
    return ""


CALIBRATION_IMAGES = 512
"""The ADC full scale is calibrated on the first this-many validation images (never on the test data)."""


def calibration_inputs(config: ChipConfig, load_val: Callable[[], Split]) -> torch.Tensor | None:
    """The ADC calibration inputs for a chip of ``config``: the first :data:`CALIBRATION_IMAGES` validation
    images, or None for a chip without ADCs (``load_val`` is then not called). The one place of the rule:
    ``tolerate``, ``ittrna evaluate`` and the sweeps all call this, so ``evaluate`` reproduces ``tolerate``."""
    if config.mapping.adc_bits is None:
        return None
    return load_val().x[:CALIBRATION_IMAGES]


def evaluate_tuned(model: nn.Module, meta: Mapping[str, Any], deployment: Deployment, chip: Chip, data: Split,
                   load_val: Callable[[], Split], *, where: str = "the tuned file", time: float = 0.0) -> float:
    """Accuracy of a tuned file (``model``, ``meta``, ``deployment`` from :func:`load_tuned`) on ``chip``.

    An off-device result is programmed onto the fabricated chip it was tuned for; an on-device result lives
    on the programmed chip that :func:`tolerate` returned (its deployment is that chip's state).

    Raises:
        InputError: the chip is another one than the file was tuned for, or an on-device result is given the
            fabricated chip instead of the programmed one.
    """
    if chip.chip_id != meta.get("tuned_for_chip"):
        raise InputError(f"{where} was tuned for another chip than the one given")
    if meta.get("ondevice") and all(layer.scale == 0.0 for layer in chip):
        raise InputError(f"{where} is an on-device result: it lives on the programmed chip that `tolerate` saved "
                         "(--chip-out), not on the fabricated chip file")
    return evaluate_deployment(model, chip, deployment, data, calibration_inputs(chip.config, load_val), time=time)


def evaluate_deployment(model: nn.Module, chip: Chip, deployment: Deployment, data: Split,
                        calibration: torch.Tensor | None = None, *, time: float = 0.0,
                        compensation: Sequence[str] = (), reference_images: torch.Tensor | None = None,
                        report: dict[str, Any] | None = None, refresh: RefreshConfig | None = None,
                        measured: MeasuredMap | None = None, compensation_images: int | None = None,
                        seed: int = 0) -> float:
    """Program ``deployment`` onto ``chip`` (in place) and return the accuracy on ``data`` ``time`` seconds
    later (ADCs, if any, calibrated on ``calibration`` inputs right after programming, see
    :func:`ittrna.nn.deploy`; then the chip waits ``time``, its cells relaxing; the read-noise stream restarted,
    so the same chip state gives the same accuracy).

    ``compensation`` (names of :data:`ittrna.methods.compensate.COMPENSATIONS`): zero-write steps the host runs
    at ``time`` through a session with no write budget, from a reference it read on ``reference_images``
    (training images; the first ``compensation_images`` of them if given) right after programming; their
    counts go into ``report``.

    ``refresh`` (:class:`~ittrna.config.RefreshConfig`): at ``time``, before any compensation, the
    host rewrites the cells it ranks worst from ``measured`` (the chip's map) and the importance on
    ``reference_images``, within the refresh's own write budget; its counts go into ``report``."""
    time = parse_time(time, "time")
    tuned = copy.deepcopy(model)
    tuned.load_state_dict(deployment.state_dict)
    chip.program_deployment(deployment)
    chip.restart_reads()  # the same read-noise draws for every evaluation of this state
    analog = deploy(tuned, chip, program=False, calibration=calibration)
    if not compensation and refresh is None:
        if time:
            chip.wait(time)
        return accuracy(analog, data)
    from ittrna.methods.compensate import check_steps, compensate, take_reference
    from ittrna.methods.refresh import full_writes
    from ittrna.methods.refresh import refresh as run_refresh

    steps = check_steps(compensation)
    if reference_images is None:
        raise InputError("compensation and refresh need reference images (training images read right after "
                         "programming)")
    if refresh is not None and measured is None:
        raise InputError("a refresh needs the chip's measured map")
    host_map = measured.for_method() if refresh is not None and measured is not None else None
    budget = math.floor(refresh.budget * full_writes(host_map, deployment)) if refresh and host_map else 0
    written = chip.writes_issued
    session = ChipSession(chip, model, write_budget=budget)
    session.adopt(deployment)
    host = copy.deepcopy(tuned)  # the host's copy of the deployed network (digital state)
    with host_side():  # the host's steps: the chip only through the session (ittrna.boundary)
        reference = take_reference(session, host, reference_images[:compensation_images]) if steps else None
        if time:
            with chip_side():
                chip.wait(time)
        refreshed = None
        if refresh is not None and host_map is not None:
            refreshed = run_refresh(session, host, host_map, deployment, refresh, time, reference_images, seed)
        after_refresh = session.counts()["writes_issued"]
        done = compensate(session, host, steps, reference) if steps else None
    session.close()
    assert session.counts()["writes_issued"] == after_refresh <= budget  # compensation writes nothing
    analog = deploy(host, chip, program=False)  # the registers are on the chip; the statistics in host
    chip.restart_reads()
    if report is not None:
        if steps:
            assert reference is not None and done is not None
            report.update(compensation=list(steps), compensation_forward_passes=reference.forward_passes
                          + int(done["forward_passes"]),
                          compensation_writes=chip.writes_issued - written - after_refresh,
                          compensation_report=done)
        if refreshed is not None and refresh is not None:
            report.update(refresh=dataclasses.asdict(refresh), refresh_writes=int(refreshed["refresh_writes"]),
                          refresh_full_writes=int(refreshed["refresh_full_writes"]), refresh_report=refreshed)
    return accuracy(analog, data)


def tolerate(
    model: nn.Module,
    chip: Chip,
    method: str,
    *,
    train: Split,
    val: Split,
    test: Split,
    settings: Mapping[str, Any] | None = None,
    measured: MeasuredMap | None = None,
    test_seed: int = 0,
    test_config: TestConfig | None = None,
    seed: int = 0,
    progress: bool = False,
    device: str = "cpu",
    time: float = 0.0,
    compensation: Sequence[str] = (),
    compensation_images: int = 256,
    refresh: RefreshConfig | None = None,
) -> tuple[dict[str, Any], Deployment]:
    """Run ``method`` for ``chip`` and evaluate it on the test split.

    ``chip`` must be as fabricated (never programmed). An off-device method's deployment is programmed once,
    so the result is reproducible from the chip file. An on-device method works on ``chip`` itself through a
    :class:`~ittrna.session.ChipSession` (budget and iteration limit from its settings ``write_budget`` and
    ``iterations``); its deployment then describes the chip's final state, so programming it again issues no
    writes (``evaluation_writes``) and the programmed chip reproduces the result. The accuracy before the
    method is measured on a copy. Without ``measured`` the chip is tested here, with ``test_config`` if given
    (else its own config's test section; the chip is not changed).
    ``device`` is where the method computes (e.g. ``cuda``); chips and evaluation stay on the CPU. ``time``
    (seconds, :func:`ittrna.config.parse_time`) is when both accuracies are measured after programming: the
    chip waits that long first, its cells relaxing (``relaxation``); the method runs at time 0.
    ``compensation`` (names of :data:`ittrna.methods.compensate.COMPENSATIONS`): zero-write steps the host runs
    on the method's result at ``time``, from a reference read right after programming on
    ``compensation_images`` training images (drawn with ``seed``); ``chip_accuracy_before`` stays without them.
    ``refresh`` (:class:`~ittrna.config.RefreshConfig`): at ``time``, before the compensation, the
    host rewrites the cells it ranks worst from the measured map, within ``refresh.budget`` of the writes of
    re-programming the whole chip (importance on ``refresh.images`` of the same training images); its writes
    are ``refresh_writes``, apart from ``writes`` (the method's and the programming's).

    Returns:
        (result, deployment). ``result`` holds ``method``, ``ideal_accuracy``, ``chip_accuracy_before``,
        ``chip_accuracy``, ``writes`` (issued), ``seconds`` (the method's run), the evaluator-only wear
        figures, on-device ``iterations`` and chip ``forward_passes`` and the method's report.
    """
    _check_later(time, compensation, compensation_images, refresh)  # before any work
    run = run_method(model, chip, method, train=train, val=val, settings=settings, measured=measured,
                     test_seed=test_seed, test_config=test_config, seed=seed, progress=progress, device=device)
    result = evaluate_run(model, run, train=train, test=test, time=time, compensation=compensation,
                          compensation_images=compensation_images, refresh=refresh, seed=seed)
    return result, run.deployment


def _check_later(time: float | str, compensation: Sequence[str], compensation_images: int,
                 refresh: RefreshConfig | None) -> tuple[float, tuple[str, ...]]:
    """(seconds, compensation steps in order); one-line errors for bad values."""
    from ittrna.methods.compensate import check_steps

    seconds = parse_time(time, "time")
    steps = check_steps(compensation) if compensation else ()
    if steps and (isinstance(compensation_images, bool) or not isinstance(compensation_images, int)
                  or not 16 <= compensation_images <= 100_000):
        raise InputError(f"compensation_images = {compensation_images!r}; accepted an integer in [16, 100000]")
    if refresh is not None and not isinstance(refresh, RefreshConfig):
        raise InputError(f"refresh = {refresh!r}; accepted a RefreshConfig or None")
    return seconds, steps


@dataclass
class MethodRun:
    """A method's run for one chip, before any evaluation (:func:`run_method`): what :func:`evaluate_run`
    needs to measure it at any time, with any compensation or refresh, as often as asked."""

    method: str
    version: int
    chip: Chip
    """The chip after the method: as fabricated (off-device) or as the session left it (on-device)."""
    fabricated: Chip
    """A copy of the chip as fabricated (the accuracy before the method is measured on copies of it)."""
    deployment: Deployment
    measured: MeasuredMap
    calibration: torch.Tensor | None
    seconds: float
    counts: dict[str, int]
    issued_by_method: int


def run_method(model: nn.Module, chip: Chip, method: str, *, train: Split, val: Split,
               settings: Mapping[str, Any] | None = None, measured: MeasuredMap | None = None, test_seed: int = 0,
               test_config: TestConfig | None = None, seed: int = 0, progress: bool = False,
               device: str = "cpu") -> MethodRun:
    """The first half of :func:`tolerate`: test the chip (unless ``measured`` is given), run ``method`` on the
    map (on-device: on ``chip`` through a session) and return the run. Arguments as :func:`tolerate`'s."""
    spec = get_method(method)
    if any(layer.scale != 0.0 for layer in chip):
        raise InputError("the chip has been programmed already; start from the fabricated chip file")
    cfg = spec.make_config(settings)
    if measured is None:
        measured = chip.test(seed=test_seed, test=test_config)
    check_map_fits(measured, chip)
    try:
        chip.check_model(model)
    except InputError as exc:
        raise InputError(f"the chip does not fit the model: {exc}") from None
    calibration = calibration_inputs(chip.config, lambda: val)
    fabricated = copy.deepcopy(chip)
    t0 = perf_counter()
    ctx = Context(train, val, seed=seed, progress=progress, device=device)
    session = None
    if spec.kind == "on-device":
        session = ChipSession(chip, model, write_budget=getattr(cfg, "write_budget", None),
                              max_iterations=getattr(cfg, "iterations", None), calibration=calibration)
    deployment = apply_method(method, model, measured, ctx, cfg, session=session)
    seconds = perf_counter() - t0
    if session is not None:
        session.close()
        mismatch = deployment_mismatch(chip, deployment)
        if mismatch:  # reprogramming would write outside the session's budget: a method bug
            raise RuntimeError(f"on-device method {method!r} returned a deployment that is not the chip's state "
                               f"({mismatch})")
    counts = session.counts() if session is not None else {"iterations": 0, "forward_passes": 0, "images": 0,
                                                            "ondevice_writes": 0}
    return MethodRun(method, spec.version, chip, fabricated, deployment, measured, calibration, seconds,
                     dict(counts), chip.writes_issued)


def evaluate_run(model: nn.Module, run: MethodRun, *, train: Split, test: Split, time: float | str = 0.0,
                 compensation: Sequence[str] = (), compensation_images: int = 256,
                 refresh: RefreshConfig | None = None, seed: int = 0, in_place: bool = True) -> dict[str, Any]:
    """The second half of :func:`tolerate`: measure a method's run on the test split ``time`` after
    programming, with the compensation and refresh asked for (arguments as :func:`tolerate`'s). With
    ``in_place`` (and no time, compensation or refresh) the run's chip is programmed itself; otherwise a copy
    is, so one run can be measured again (a sweep's time axis runs each method once)."""
    time, compensation = _check_later(time, compensation, compensation_images, refresh)
    deployment, calibration = run.deployment, run.calibration
    before_chip = copy.deepcopy(run.fabricated)
    before_model = deploy(model, before_chip, calibration=calibration)
    if time:
        before_chip.wait(time)
    before = accuracy(before_model, test)
    chip = run.chip if in_place else copy.deepcopy(run.chip)
    later: dict[str, Any] = {}
    ref_images = None
    if compensation or refresh is not None:
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed ^ 0x434F4D50))
        ref_images = train.x[pick[:max(compensation_images, refresh.images if refresh is not None else 0)]]
    if time or compensation or refresh is not None:  # the chip (a saved programmed chip) stays as programmed:
        chip.program_deployment(deployment)  # its wear is the programming's; the later steps act on a copy
        wear, issued = chip.write_stats(), chip.writes_issued
        after = evaluate_deployment(model, copy.deepcopy(chip) if in_place else chip, deployment, test, calibration,
                                    time=time, compensation=compensation, reference_images=ref_images, report=later,
                                    refresh=refresh, measured=run.measured, compensation_images=compensation_images,
                                    seed=seed)
    else:
        after = evaluate_deployment(model, chip, deployment, test, calibration)
        wear, issued = chip.write_stats(), chip.writes_issued
    counts = run.counts
    return {
        "method": run.method,
        "version": run.version,
        "ideal_accuracy": accuracy(model, test),
        "chip_accuracy_before": before,
        "chip_accuracy": after,
        "writes": wear["writes_issued"],
        "seconds": run.seconds,
        **{k: v for k, v in wear.items() if k != "writes_issued"},
        "iterations": counts["iterations"],
        "forward_passes": counts["forward_passes"],
        "ondevice_writes": counts["ondevice_writes"],
        "evaluation_writes": issued - run.issued_by_method,
        "time": time,
        **later,
        "report": deployment.report,
    }


def save_tuned(path: str | Path, model: nn.Module, meta: Mapping[str, Any], deployment: Deployment,
               chip_id: str) -> None:
    """Write a tuned file: a checkpoint of the tuned weights plus the deployment for chip ``chip_id``."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "meta": {**dict(meta), "tuned_for_chip": chip_id, "method": deployment.report.get("method")},
        "state_dict": {k: v.detach().cpu().clone() for k, v in deployment.state_dict.items()},
        "deployment": deployment.to_payload(),
    }
    atomic_write(path, lambda p: torch.save(payload, p))


def load_tuned(path: str | Path) -> tuple[nn.Module, dict[str, Any], Deployment | None]:
    """(model with the tuned weights, meta, deployment) of a tuned file; deployment None for a plain
    checkpoint."""
    model, meta, payload = load_checkpoint_payload(path)
    if "deployment" not in payload:
        return model, meta, None
    try:
        deployment = Deployment.from_payload(model.state_dict(), payload["deployment"])
    except FileFormatError as exc:
        raise FileFormatError(f"{path}: {exc}") from None
    return model, meta, deployment
