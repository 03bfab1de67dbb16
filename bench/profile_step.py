"""Where a training step's time goes: torch's profiler over the forward pass (with the codec's loss), the
backward pass and the optimiser step, each apart, operator by operator.

    python bench/profile_step.py               # EvoPose2D-S, 256x192, batch 32, train.py's CPU defaults
    python bench/profile_step.py --model evopose2d_s --size 64x48 --variant channels_last --top 12

Each phase prints its median wall time per step and the operators taking most of its own time (self CPU
time, averaged over the profiled steps), split by input shapes so that depthwise, pointwise and transposed
convolutions show apart. The workload is ``model_speed.py``'s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from common import machine
from model_speed import OPTIONS, Workload
from torch.profiler import ProfilerActivity, profile, record_function

PHASES = ("forward", "backward", "optimiser")


def phase_calls(work: Workload) -> dict[str, Callable[[], None]]:
    """Each phase as a call (the backward pass takes the loss the forward pass left)."""
    state: dict[str, torch.Tensor] = {}

    def forward() -> None:
        state["loss"] = work.forward()

    def backward() -> None:
        work.backward(state.pop("loss"))

    return {"forward": forward, "backward": backward, "optimiser": work.update}


def phase_of(event) -> str | None:
    """The phase an operator ran in: the name of its outermost enclosing range (on the CPU, the backward pass
    runs in the thread that called it, under that range)."""
    while event.cpu_parent is not None:
        event = event.cpu_parent
    return event.name if event.name in PHASES else None


def profile_phases(work: Workload, steps: int, top: int) -> None:
    """Run ``steps`` profiled training steps, each phase in its own range; print a table per phase."""
    calls = phase_calls(work)
    wall: dict[str, list[float]] = {phase: [] for phase in PHASES}
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        for _ in range(steps):
            for phase in PHASES:
                start = time.perf_counter()
                with record_function(phase):
                    calls[phase]()
                wall[phase].append(time.perf_counter() - start)
    own: dict[str, dict[tuple[str, str], list[float]]] = {phase: defaultdict(lambda: [0.0, 0]) for phase in PHASES}
    for event in profiler.events():
        phase = phase_of(event)
        if phase is None or event.name == phase:
            continue
        entry = own[phase][(event.name, str(event.input_shapes)[:70])]
        entry[0] += event.self_cpu_time_total
        entry[1] += 1
    total = sum(statistics.median(times) for times in wall.values())
    print(f"\nA step: {total:.3f} s (the profiler's overhead included; shares are of the operators' own time)")
    for phase in PHASES:
        median = statistics.median(wall[phase])
        spent = sum(us for us, _ in own[phase].values())
        print(f"\n## {phase}: {median:.3f} s per step ({median / total:.0%} of the step)\n")
        print("| operator | input shapes | calls per step | own ms per step | share of the phase |")
        print("|---|---|---|---|---|")
        ranked = sorted(own[phase].items(), key=lambda item: item[1][0], reverse=True)[:top]
        for (name, shapes), (us, calls_) in ranked:
            print(f"| {name} | {shapes} | {calls_ / steps:.0f} | {us / 1e3 / steps:.1f} | {us / max(spent, 1):.1%} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="evopose2d_s")
    parser.add_argument("--size", default="256x192", help="HxW")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--variant", default="channels_last+bf16+retain", help=f"fp32, or {', '.join(OPTIONS)} joined by '+'"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=15, help="operators listed per phase")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.variant != "fp32" and not set(args.variant.split("+")) <= set(OPTIONS):
        parser.error(f"--variant: {args.variant!r} is not fp32 or a '+'-joined combination of {', '.join(OPTIONS)}")
    size = tuple(int(v) for v in args.size.lower().split("x"))
    device = torch.device(args.device)
    print(f"# training step profile on {machine()}, device {device}")
    print(f"# {args.model}, {args.size}, batch {args.batch}, {args.variant}: {args.steps} steps after {args.warmup}")
    work = Workload(args.model, size, args.batch, args.variant, device)
    work.net.train()
    for _ in range(args.warmup):
        work.train_step()
    profile_phases(work, args.steps, args.top)


if __name__ == "__main__":
    main()
