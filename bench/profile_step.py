"""Where a training step's time goes: torch's profiler over the forward pass (with the codec's loss), the
backward pass and the optimiser step, each apart, operator by operator; or, with ``--by-layer``, each kind of
layer's forward and backward pass timed by module hooks, without the profiler.

    python bench/profile_step.py               # EvoPose2D-S, 256x192, batch 32, train.py's CPU defaults
    python bench/profile_step.py --model evopose2d_s --size 64x48 --variant channels_last --top 12
    python bench/profile_step.py --by-layer    # the same step, layer kind by layer kind

Each phase prints its median wall time per step and the operators taking most of its own time (self CPU
time, averaged over the profiled steps), split by input shapes so that depthwise, pointwise and transposed
convolutions show apart. The profiler's own cost falls unevenly: here it inflated large memory-bound operators
(swish and batch norm backward, copies of [32, 128, 128, 96] activations) 3-4x, so ``--by-layer`` times the
same step with hooks only, for figures that add up to the step. The workload is ``model_speed.py``'s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from common import machine
from model_speed import OPTIONS, Workload
from torch import nn
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


def layer_kind(module: nn.Module) -> str:
    """A leaf module's class and, for a convolution, its kernel, stride, channels and whether it is depthwise."""
    if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        return type(module).__name__
    depthwise = module.groups > 1 and module.groups == module.in_channels
    return (
        f"{type(module).__name__} {'x'.join(map(str, module.kernel_size))} stride {module.stride[0]}"
        f" {module.in_channels}->{module.out_channels}{' depthwise' if depthwise else ''}"
    )


def profile_layers(work: Workload, steps: int, top: int) -> None:
    """Run ``steps`` training steps timing each leaf layer with hooks: its forward pass from its call to its
    return, its backward pass from its output's gradient to its input's. Activations run out of place while
    timed (a hook cannot follow an in-place output; swish in place is 1.00-1.02x, BENCHMARKS.md)."""
    forward: dict[str, float] = defaultdict(float)
    backward: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    called: dict[nn.Module, float] = {}  # when each layer's forward pass began
    gradient_arrived: dict[nn.Module, float] = {}  # when each layer's backward pass began

    def before(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        called[module] = time.perf_counter()
        x = inputs[0] if inputs else None
        if torch.is_tensor(x) and x.requires_grad:
            x.register_hook(lambda _, m=module: _add_since(backward, layer_kind(m), gradient_arrived.pop(m, None)))

    def after(module: nn.Module, _: tuple[Any, ...], output: Any) -> None:
        forward[layer_kind(module)] += time.perf_counter() - called.pop(module)
        if torch.is_tensor(output) and output.requires_grad:
            output.register_hook(lambda _, m=module: gradient_arrived.__setitem__(m, time.perf_counter()))

    layers = [m for m in work.net.modules() if not list(m.children()) and not isinstance(m, nn.Identity)]
    for module in layers:
        count[layer_kind(module)] += 1
        if getattr(module, "inplace", False):
            module.inplace = False
        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)
    start = time.perf_counter()
    for _ in range(steps):
        work.train_step()
    step = (time.perf_counter() - start) / steps
    print(f"\nA step: {step:.3f} s; its layers: forward {sum(forward.values()) / steps:.3f} s, backward "
          f"{sum(backward.values()) / steps:.3f} s (the rest: loss, functional operations between layers, the "
          f"optimiser)\n")  # fmt: skip
    print("| layer | layers | forward ms per step | backward ms per step | share of the step |")
    print("|---|---|---|---|---|")
    ranked = sorted(count, key=lambda kind: forward[kind] + backward[kind], reverse=True)[:top]
    for kind in ranked:
        ms_forward, ms_backward = forward[kind] / steps * 1e3, backward[kind] / steps * 1e3
        share = (ms_forward + ms_backward) / 1e3 / step
        print(f"| {kind} | {count[kind]} | {ms_forward:.1f} | {ms_backward:.1f} | {share:.1%} |")


def _add_since(totals: dict[str, float], kind: str, since: float | None) -> None:
    if since is not None:
        totals[kind] += time.perf_counter() - since


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
    parser.add_argument("--by-layer", action="store_true", help="time each kind of layer with hooks, not operators")
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
    (profile_layers if args.by_layer else profile_phases)(work, args.steps, args.top)


if __name__ == "__main__":
    main()
