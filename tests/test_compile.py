"""torch.compile of the network (``model.compile``): one graph per mode, and training through
Lightning with it.

On the CPU the compiler's code generation is replaced by ``aot_eager`` (dynamo's tracing and
AOT autograd's forward and backward graphs, run by eager kernels): what the tests check is
what crackseg controls, that the network traces whole and trains as it does uncompiled;
inductor's kernels for it are checked on a GPU (tests/test_gpu.py, benchmarks/gpu_check.py).
"""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_module import TINY_NET, fit_tiny, tiny_module
from torch._dynamo.utils import counters

from crackseg.models.module_settings import SpeedSettings
from crackseg.models.segdecnet import SegDecNet


@pytest.mark.parametrize("full_resolution", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_network_traces_into_one_graph_in_training_and_in_evaluation(full_resolution, layout):
    """A graph break splits the compiled network in pieces run one after the other from
    Python: under CUDA graphs (model.compile=reduce-overhead) each piece is its own graph."""
    net = SegDecNet(**TINY_NET, full_resolution=full_resolution).to(memory_format=layout)
    images = torch.rand(2, 3, 64, 128).contiguous(memory_format=layout)
    trained = torch._dynamo.explain(net)(images)
    with torch.no_grad():
        evaluated = torch._dynamo.explain(net.eval())(images)
    for explained in (trained, evaluated):
        reasons = [b.reason.splitlines()[0] for b in explained.break_reasons]
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), reasons


def test_model_compile_trains_through_lightning_as_the_eager_network_does(monkeypatch):
    torch.manual_seed(0)  # fit_tiny's seed: its untrained network
    initial = flat_weights(tiny_module())
    eager_loss, eager = fit_tiny(SpeedSettings(compile=None))
    compile_ = torch.compile

    def traced_only(model, *, mode=None, **options):  # noqa: ANN001, ANN202
        assert mode == "reduce-overhead"  # model.compile's mode reaches torch.compile
        return compile_(model, backend="aot_eager", **options)

    monkeypatch.setattr(torch, "compile", traced_only)
    torch._dynamo.reset()
    counters.clear()
    compiled_loss, compiled = fit_tiny(SpeedSettings(compile="reduce-overhead"))
    # one graph for training, one for validation (inference mode): it ran compiled, whole
    assert counters["stats"]["unique_graphs"] == 2
    # The same training within float32's noise, not bit for bit. Traced, FeatureNorm is the
    # formula, not the batch-norm kernels; activations differ by about 1e-6, and a
    # pre-activation that close to 0 falls on the other side of a ReLU in one of the two.
    # On an AMD EPYC one did, at the first of the four steps: the last losses 1.7e-4 apart,
    # the four steps' weight updates 6 % apart (in norm).
    assert compiled_loss == pytest.approx(eager_loss, rel=2e-3)
    # compiled in place: the checkpoint's keys are the eager network's, and its weights
    # are the ones trained
    assert list(compiled.state_dict()) == list(eager.state_dict())
    eager_update = flat_weights(eager) - initial
    assert (flat_weights(compiled) - initial - eager_update).norm() < 0.2 * eager_update.norm()


def flat_weights(module: torch.nn.Module) -> torch.Tensor:
    """All of ``module``'s state, flattened into one float64 vector."""
    return torch.cat([t.detach().double().flatten() for t in module.state_dict().values()])
