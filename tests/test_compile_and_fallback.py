"""torch.compile traces the ops without graph breaks; without the extension the references run."""

import os
import subprocess
import sys

import pytest
import torch

from muonext import ops
from muonext.optim import KELLER


def _muon_update(param, grad, buf, out):
    ops.muon_momentum_([buf], [grad], [out], 0.95, True)
    update = ops.newton_schulz(out, [KELLER] * 5, 1e-7)
    ops.muon_apply_([param], [update], [0.02], [0.1], [1.5])
    flat = ops.pack([param, buf], torch.bfloat16)
    ops.unpack_(flat, [out, grad.clone()])
    return flat


@pytest.mark.skipif(not ops.has_kernel("newton_schulz", "cpu"), reason="extension not built")
def test_compiled_update_has_no_graph_break_and_matches_eager():
    torch.manual_seed(0)
    args = [torch.randn(24, 40), torch.randn(24, 40), torch.randn(24, 40), torch.empty(24, 40, dtype=torch.bfloat16)]
    eager_args = [a.clone() for a in args]
    compiled = torch.compile(_muon_update, backend="aot_eager", fullgraph=True)  # fullgraph: a break raises
    out = compiled(*args)
    expected = _muon_update(*eager_args)
    assert torch.equal(out, expected)
    for a, b in zip(args, eager_args):
        assert torch.equal(a, b)


def test_without_extension_the_reference_runs_with_one_warning():
    code = (
        "import sys, warnings\n"
        "sys.modules['muonext._C'] = None\n"  # makes `import muonext._C` fail like a missing build
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import muonext, muonext.ops as ops, torch\n"
        "    from muonext.optim import Muon\n"
        "    p = torch.nn.Parameter(torch.randn(8, 6)); p.grad = torch.randn(8, 6)\n"
        "    Muon([p]).step(); Muon([p]).step()\n"
        "msgs = [str(x.message) for x in w if 'extension could not be loaded' in str(x.message)]\n"
        "assert not muonext.HAS_EXT and len(msgs) == 1, msgs\n"
        "assert not ops.has_kernel('newton_schulz', 'cpu')\n"
        "print('ok')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_compiled_optimizer_step_breaks_only_outside_the_ops():
    from muonext.optim import Muon

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    opt = Muon(model.parameters(), lr=0.01)
    model(torch.randn(4, 16)).sum().backward()
    explanation = torch._dynamo.explain(opt.step)()
    reasons = [str(b.reason) for b in explanation.break_reasons]
    traced = {str(n.target) for g in explanation.graphs for n in g.graph.nodes if "muonext" in str(n.target)}
    assert {"muonext.muon_momentum_", "muonext.newton_schulz_grouped", "muonext.muon_apply_"} <= traced, traced
    assert not [r for r in reasons if "muonext" in r], reasons  # breaks only at host syncs (.item())
