"""The work done once per change, replayed as CUDA graphs: the text encoders (a new prompt), the IP-Adapter's image
encoder (a new style picture) and the conditioning cache's refresh (both).

Each of these runs hundreds of small kernels on inputs of fixed shapes, so the host's launches cost more than
the GPU's work: on an H100, eager, a style picture's ViT-H took 16 ms and storing SDXL-Turbo's conditioning
again 12 ms, a hitch of several frames each time (benchmarks/style_switch_probe.py). A `GraphedCall` runs its
function eagerly the first time it sees an input signature (shapes, dtypes, devices and the other arguments),
then captures it; later calls with that signature copy their tensors into the capture's inputs and replay. The
outputs are cloned, so a caller owns what it gets. The captures of the last few signatures are kept (streams of
other shapes sharing a UNet each replay their own).

The function must read and write nothing but its arguments and tensors that stay in place (parameters, buffers
written in place: the conditioning cache keeps one set of stored values per shape), as a captured stream step
must: after changing a module's weights by replacing them, graph it again.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ..errors import first_line
from .graphs import Capture, CudaGraphCapture, Replayable, capturing

logger = logging.getLogger("streamdiff.backends")

_MARK = "_streamdiff_call_graph"  # a module whose forward is a GraphedCall


@dataclass
class _Captured:
    record: Replayable | None  # None: capturing this signature failed, and its calls run eagerly
    inputs: list[Tensor]  # the capture's inputs, in the order of the flattened arguments' tensors
    out: Any


class GraphedCall:
    """`fn` replayed as a CUDA graph per input signature, for the last `signatures` seen (see above). Calls that
    cannot be graphed run eagerly: with autograd on, inputs off CUDA, while another graph is being captured (a
    stream step calling this is captured with it), where capturing their signature failed, and a new signature's
    within hold_captures."""

    def __init__(self, fn: Callable[..., Any], capture: Capture | None = None, *, signatures: int = 4,
                 device_type: str = "cuda"):
        self.fn = fn
        self._capture = capture or CudaGraphCapture(warmup=1)  # one memory pool: the graphs never run at once
        self._signatures = signatures
        self._device_type = device_type  # where inputs must be for a capture (another with a stand-in capture)
        self._captured: OrderedDict[Any, _Captured] = OrderedDict()
        self.captured_last = False  # whether the last call was a new signature's (run eagerly, then captured)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leaves, spec = pytree.tree_flatten((args, kwargs))
        tensors = [leaf for leaf in leaves if isinstance(leaf, Tensor)]
        if not self._graphable(tensors):
            self.captured_last = False
            return self.fn(*args, **kwargs)
        key = (spec, tuple(_signature(leaf) for leaf in leaves))
        captured = self._captured.get(key)
        if captured is None and captures_held():  # captured at a call after hold_captures
            self.captured_last = False
            return self.fn(*args, **kwargs)
        self.captured_last = captured is None
        if captured is None:
            result = self.fn(*args, **kwargs)  # the call itself; it also allocates what the capture will reuse
            self._capture_for(key, leaves, spec)
            return result
        self._captured.move_to_end(key)
        if captured.record is None:
            return self.fn(*args, **kwargs)
        for static, tensor in zip(captured.inputs, tensors):
            static.copy_(tensor)
        captured.record.replay()
        return pytree.tree_map(lambda x: x.clone() if isinstance(x, Tensor) else x, captured.out)

    def clear(self) -> None:
        """Drop every capture (e.g. once what the function writes into was replaced): calls capture anew."""
        self._captured.clear()

    def _graphable(self, tensors: list[Tensor]) -> bool:
        return (bool(tensors) and not torch.is_grad_enabled()
                and all(t.device.type == self._device_type for t in tensors)
                and not capturing())

    def _capture_for(self, key: Any, leaves: list[Any], spec: Any) -> None:
        statics = [leaf.clone() if isinstance(leaf, Tensor) else leaf for leaf in leaves]
        args, kwargs = pytree.tree_unflatten(statics, spec)
        try:
            record, out = self._capture(lambda: self.fn(*args, **kwargs), ())
        except Exception as exc:  # capture refuses some work (host syncs, other threads' allocations): stay eager
            logger.debug("runs eagerly: capturing it failed (%s)", first_line(exc))
            record, out = None, None
        self._captured[key] = _Captured(record, [leaf for leaf in statics if isinstance(leaf, Tensor)], out)
        while len(self._captured) > self._signatures:
            self._captured.popitem(last=False)


_holds: list[object] = []  # one entry per hold_captures block open now, on any thread


@contextmanager
def hold_captures() -> Iterator[None]:
    """Within (on any thread), a call of a signature not captured yet runs eagerly and captures nothing: capturing a
    CUDA graph forbids device synchronisation on every thread, which a compiler running beside the stream needs
    (background.py). Captured signatures replay as before."""
    token = object()
    _holds.append(token)
    try:
        yield
    finally:
        _holds.remove(token)


def captures_held() -> bool:
    """Whether a hold_captures block is open now, on any thread: nothing may be captured meanwhile (the stream's
    own steps neither)."""
    return bool(_holds)


def _signature(leaf: Any) -> Any:
    if isinstance(leaf, Tensor):
        return "tensor", tuple(leaf.shape), leaf.dtype, leaf.device
    return "value", leaf


def graph_in_place(module: nn.Module) -> None:
    """Replay the module's forward as a CUDA graph (GraphedCall); no change for one graphed already."""
    if not is_graphed(module):
        module.__dict__["forward"] = GraphedCall(type(module).forward.__get__(module))
        module.__dict__[_MARK] = True


def ungraph(module: nn.Module) -> None:
    """Undo graph_in_place: the module runs eagerly again."""
    if module.__dict__.pop(_MARK, False):
        module.__dict__.pop("forward", None)


def is_graphed(module: nn.Module) -> bool:
    return bool(module.__dict__.get(_MARK, False))


def graph_encoders(modules: Iterable[nn.Module | None], on: bool) -> int:
    """graph_in_place (on) or ungraph each module given (None: skipped); how many are graphed now."""
    present = [m for m in modules if m is not None]
    for module in present:
        if on:
            graph_in_place(module)
        else:
            ungraph(module)
    return sum(is_graphed(m) for m in present)
