"""GraphedCall's bookkeeping on the CPU, with a stand-in capture whose record reruns the captured call on the
capture's own inputs (real CUDA graphs of the encoders and the conditioning refresh: tests/backends/test_cuda.py)."""

from __future__ import annotations

import pytest
import torch
from torch.utils import _pytree as pytree

from streamdiff.backends import call_graph
from streamdiff.backends.call_graph import GraphedCall


class Rerun:
    """Stands in for a CUDA graph: it records the step's output tensors, and a replay runs the step again (on the
    inputs captured, which GraphedCall refills) and writes the new values into those same tensors."""

    captures = 0

    def __init__(self, step):
        self.step = step
        self.out = None

    def replay(self) -> None:
        fresh = self.step()
        pytree.tree_map(lambda old, new: old.copy_(new), self.out, fresh)

    @classmethod
    def capture(cls, step, state):
        cls.captures += 1
        record = cls(step)
        record.out = step()
        return record, record.out


class Failing:
    @staticmethod
    def capture(step, state):
        raise RuntimeError("operation not permitted when stream is capturing")


def graphed(fn, capture=Rerun.capture) -> GraphedCall:
    return GraphedCall(fn, capture, device_type="cpu")


def test_replays_take_the_new_inputs_and_hand_out_their_own_outputs():
    read = []

    def fn(x, *, scale):
        read.append(x.data_ptr())
        return {"sum": x * scale, "pair": (x + 1, x.sum())}

    call, captures = graphed(fn), Rerun.captures
    x = torch.arange(6.0).view(2, 3)
    with torch.no_grad():
        first = call(x, scale=2.0)
        assert call.captured_last and Rerun.captures == captures + 1
        second = call(x + 10, scale=2.0)
        assert not call.captured_last and Rerun.captures == captures + 1
        third = call(x - 3, scale=2.0)
    torch.testing.assert_close(first["sum"], x * 2)
    torch.testing.assert_close(second["sum"], (x + 10) * 2)  # the caller's own: the third replay left it
    torch.testing.assert_close(second["pair"][1], (x + 10).sum())
    torch.testing.assert_close(third["pair"][0], x - 2)
    torch.testing.assert_close(third["sum"], (x - 3) * 2)
    assert read[0] == x.data_ptr() and len(set(read[1:])) == 1 and read[1] != x.data_ptr()  # the capture's inputs


@pytest.mark.parametrize("change", ["shape", "dtype", "argument"])
def test_each_signature_is_captured_once_and_the_least_recent_gives_way(change):
    call = GraphedCall(lambda x, scale: x * scale, Rerun.capture, signatures=2, device_type="cpu")
    x = torch.ones(2, 3)
    other = {"shape": (torch.ones(4, 3), 2.0), "dtype": (torch.ones(2, 3, dtype=torch.float64), 2.0),
             "argument": (x, 3.0)}[change]
    with torch.no_grad():
        call(x, 2.0)
        captures = Rerun.captures
        torch.testing.assert_close(call(*other), other[0] * other[1])
        assert call.captured_last and Rerun.captures == captures + 1
        torch.testing.assert_close(call(x + 1, 2.0), (x + 1) * 2)  # the first signature's capture replays
        assert not call.captured_last and Rerun.captures == captures + 1
        torch.testing.assert_close(call(torch.ones(5), 2.0), torch.full((5,), 2.0))  # a third: `other` gives way
        assert call.captured_last and Rerun.captures == captures + 2
        torch.testing.assert_close(call(x - 1, 2.0), (x - 1) * 2)
        assert not call.captured_last
        torch.testing.assert_close(call(*other), other[0] * other[1])
        assert call.captured_last and Rerun.captures == captures + 3


def test_calls_with_autograd_or_inputs_elsewhere_run_eagerly():
    call, x = GraphedCall(lambda x: x * 2, Rerun.capture, device_type="cuda"), torch.ones(3)
    captures = Rerun.captures
    with torch.no_grad():
        torch.testing.assert_close(call(x), x * 2)  # a CPU tensor: not for a CUDA graph
    cpu = graphed(lambda x: x * 2)
    torch.testing.assert_close(cpu(x), x * 2)  # autograd on: a graph could not be differentiated
    assert Rerun.captures == captures and not cpu.captured_last


def test_a_signature_that_fails_to_capture_runs_eagerly():
    calls = []
    call = graphed(lambda x: calls.append(1) or x + 1, Failing.capture)
    with torch.no_grad():
        for k in range(3):
            torch.testing.assert_close(call(torch.full((2,), float(k))), torch.full((2,), k + 1.0))
    assert len(calls) == 3


def test_a_graphed_module_computes_as_before_and_can_be_ungraphed():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    inputs = [torch.randn(3, 4) for _ in range(3)]
    with torch.no_grad():
        expected = [module(x) for x in inputs]
        assert call_graph.graph_encoders([module, None], on=True) == 1
        assert isinstance(module.forward, GraphedCall)
        call_graph.graph_in_place(module)  # again: the same GraphedCall
        forward = module.forward
        forward._capture, forward._device_type = Rerun.capture, "cpu"
        got = [module(x) for x in inputs]
        assert module.forward is forward and not forward.captured_last
        assert call_graph.graph_encoders([module], on=False) == 0 and not call_graph.is_graphed(module)
        assert "forward" not in module.__dict__
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_within_hold_captures_a_new_signature_runs_eagerly_and_is_captured_at_a_later_call():
    call = graphed(lambda x: x * 2)
    x = torch.ones(2, 3)
    with torch.no_grad():
        call(x)
        captures = Rerun.captures
        with call_graph.hold_captures():
            torch.testing.assert_close(call(x + 1), (x + 1) * 2)  # captured before: replays
            torch.testing.assert_close(call(torch.ones(4)), torch.full((4,), 2.0))
            assert not call.captured_last and Rerun.captures == captures
            torch.testing.assert_close(call(torch.ones(4) * 3), torch.full((4,), 6.0))
            assert Rerun.captures == captures
        torch.testing.assert_close(call(torch.ones(4)), torch.full((4,), 2.0))
        assert call.captured_last and Rerun.captures == captures + 1
