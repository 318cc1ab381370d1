"""A memory plan on paper: per-rank bytes of a sharded Moonlight run, computed from shapes alone.

    python -m muonext.train.plan --preset moonlight-16b-a3b --dp-shard 64 --ep 8 --seq-len 8192 \\
        --micro-batch 1 --device-gb 80

The model is built on the meta device (nothing is allocated) and every parameter is sized the way
`muonext.parallel` shards it: FSDP2 pads dim 0 to a multiple of the shard group (torch.chunk sizes,
each rank holding the largest chunk); routed experts are split over `ep` first, then FSDP-sharded over
dp_shard/ep. Per rank:

    parameters   fp32 shards (FSDP2 keeps the master weights in fp32)
    gradients    fp32 shards, the same sizes
    optimizer    Muon: one momentum buffer per matrix; AdamW part: two moments (+ a step scalar)
    activations  what autograd saves in one micro-batch's forward (see `activation_bytes`)
    transient    the largest unit's gathered parameters and gradients (FSDP2 prefetches one unit
                 ahead) and Newton–Schulz's workspace on the biggest matrix a rank owns

The activation formula itemises the tensors our layers save for backward, and is checked against
`measure_activation_bytes` (saved-tensor hooks on a real forward) on the debug and tiny presets in
the tests. It assumes balanced expert loads, the grouped/looped expert path (not the CPU padded bmm)
and, for attention, either the math kernel that saves the (T × T) probabilities (what CPU runs for
MLA's unequal q/v head dims) or a memory-efficient kernel that saves q, k, v, output and one
log-sum-exp per row (what GPUs run); the GPU variant cannot be measured here.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch

from ..models import MoonlightConfig, MoonlightForCausalLM
from ..optim.routing import is_muon_param
from ..optim.shapes import matrix_shape
from ..parallel.mesh import ParallelDims

__all__ = ["MemoryPlan", "activation_bytes", "measure_activation_bytes", "plan_memory"]

GiB = 2**30


@dataclass(frozen=True)
class MemoryPlan:
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    transient: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.transient

    def rows(self) -> list[tuple[str, int]]:
        return [
            ("parameters", self.parameters),
            ("gradients", self.gradients),
            ("optimizer state", self.optimizer),
            ("activations", self.activations),
            ("transient (gathers, NS)", self.transient),
            ("total", self.total),
        ]


def _local_numel(name: str, shape: tuple[int, ...], dims: ParallelDims) -> int:
    """Elements of this parameter one rank holds (FSDP2's padded shard)."""
    rest = math.prod(shape[1:])
    if ".mlp.experts." in name:  # (E, out, in): E/ep experts here, then FSDP over dp_shard / ep
        return -(-(shape[0] // dims.ep) // (dims.dp_shard // dims.ep)) * rest
    return -(-shape[0] // dims.dp_shard) * rest


def _unit_of(name: str) -> str:
    """The FSDP unit a parameter is gathered with (`parallelize_moonlight`'s units)."""
    if name.startswith("model.layers."):
        layer = ".".join(name.split(".")[:3])
        return layer + (".mlp.experts" if ".mlp.experts." in name else "")
    if "embed_tokens" in name:
        return "embed"
    return "norm+head"


def plan_memory(
    config: MoonlightConfig,
    dims: ParallelDims,
    seq_len: int,
    micro_batch: int,
    *,
    precision: str = "bf16",
    activation_checkpointing: bool = False,
    attention: str = "efficient",
    ns_dtype_bytes: int = 2,
) -> MemoryPlan:
    with torch.device("meta"):
        model = MoonlightForCausalLM(config)
    params = grads = optim = 0
    units: dict[str, int] = {}
    biggest_matrix = 0
    for name, p in model.named_parameters():
        n = _local_numel(name, tuple(p.shape), dims)
        params += 4 * n
        grads += 4 * n
        muon = is_muon_param(name, p) and "embed_tokens" not in name
        optim += 4 * n * (1 if muon else 2) + (0 if muon else 4)
        units[_unit_of(name)] = units.get(_unit_of(name), 0) + p.numel() // (
            dims.ep if ".mlp.experts." in name else 1
        )
        if muon and ".mlp.experts." not in name:
            _, rows, cols = matrix_shape(tuple(p.shape))
            biggest_matrix = max(biggest_matrix, rows * cols)
    compute_bytes = 2 if precision == "bf16" else 4
    gathered = sorted(units.values(), reverse=True)[:2]  # the unit in use and the one prefetched
    transient = sum(gathered) * compute_bytes + gathered[0] * 4 + 4 * biggest_matrix * ns_dtype_bytes
    acts = activation_bytes(
        config,
        micro_batch,
        seq_len,
        precision=precision,
        attention=attention,
        checkpointing=activation_checkpointing,
    )
    return MemoryPlan(params, grads, optim, acts, transient)


def activation_bytes(
    config: MoonlightConfig,
    batch: int,
    seq_len: int,
    *,
    precision: str = "fp32",
    attention: str = "math",
    checkpointing: bool = False,
    recompute: bool = True,
) -> int:
    """Bytes autograd keeps for backward after one training forward of `batch` × `seq_len` tokens.

    Legend: N tokens, M = N·K expert assignments, D hidden, H heads, Qd/V q-k/v head dims, r kv
    rank, R rope dim, rq q rank, I dense and Is shared-expert intermediate, Ie expert intermediate,
    E experts, Vv vocabulary. `a` is the compute dtype's size, 4 bytes fp32 numbers and 8 int64.
    With expert parallelism a rank's experts see about M rows either way (balanced loads). With
    `checkpointing` each layer keeps only its input, and (`recompute`) one layer's activations live
    again while backward recomputes it.
    """
    c = config
    a = 2 if precision == "bf16" else 4
    N, B, T = batch * seq_len, batch, seq_len
    D, H, Qd, V, r, R = (
        c.hidden_size,
        c.num_attention_heads,
        c.qk_head_dim,
        c.v_head_dim,
        c.kv_lora_rank,
        c.qk_rope_head_dim,
    )
    K, E = c.num_experts_per_tok, c.n_routed_experts
    M = N * K

    def norm(d: int) -> int:
        """RMSNorm and its output as the next linear's input. fp32: input, 1/rms, x̂; bf16: the fp32
        upcast and 1/rms, and the bf16 x̂."""
        return (3 * a * N * d + 4 * N) if a == 4 else (4 * N * d + 4 * N + 2 * a * N * d)

    def swiglu(rows: int, inner: int) -> int:
        """gate and up outputs, silu(gate), their product (the down projection's input)."""
        return 4 * a * rows * inner

    att = norm(D)
    if c.q_lora_rank is not None:
        att += norm(c.q_lora_rank)
    # kv_a_layernorm (fp32: kv_a's whole output, 1/rms, x̂; bf16: upcast, 1/rms, x̂) and the latent
    att += (a * N * (r + R) if a == 4 else 4 * N * r) + 4 * N + a * N * r + a * N * (r + R)
    if attention == "math":  # CPU: q, k, v and the probabilities, in fp32 whatever the inputs
        att += 4 * (2 * N * H * Qd + N * H * V + B * H * T * T)
    else:
        att += a * N * H * (2 * Qd + 2 * V) + 4 * N * H  # q, k, v, output, log-sum-exp
    att += a * N * H * V  # o_proj input

    dense = norm(D) + swiglu(N, c.intermediate_size)
    router = 4 * N * E + 8 * N * K + 4 * N + 4 * N * K  # sigmoid scores, top-k ids, sum, weights
    if a == 2:
        router += 4 * N * D + 4 * E * D  # the router runs in fp32: its input and weight are upcast
    dispatch = 8 * M + a * M * D  # sort order, gathered rows
    combine = 8 * M + a * M * D + a * N * K * D + a * N * K  # order, expert outputs, (N, K, D) and weights
    moe = norm(D) + router + dispatch + swiglu(M, c.moe_intermediate_size) + combine
    if c.n_shared_experts:
        moe += swiglu(N, c.moe_intermediate_size * c.n_shared_experts)

    moe_layers = sum(c.is_moe_layer(i) for i in range(c.num_hidden_layers))
    dense_layers = c.num_hidden_layers - moe_layers
    # token ids and labels, the rope tables, the final norm, the fp32 log-softmax of the logits
    head = 16 * N + a * N * R + norm(D) + 4 * N * c.vocab_size + 4
    if not checkpointing:
        return dense_layers * (att + dense) + moe_layers * (att + moe) + head
    stored = c.num_hidden_layers * a * N * D + head
    return stored + (max(att + dense, att + moe if moe_layers else 0) if recompute else 0)


def measure_activation_bytes(model: torch.nn.Module, input_ids: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves in one training forward (each storage once, parameters and
    their casts excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and not (t.requires_grad and t.is_leaf):
            seen.setdefault(ptr, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids, labels=input_ids)
    del out
    return sum(seen.values())


def main(argv: list[str] | None = None) -> MemoryPlan:
    from .config import PRESETS

    parser = argparse.ArgumentParser(prog="python -m muonext.train.plan", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="moonlight-16b-a3b", choices=MoonlightConfig.presets())
    parser.add_argument("--dp-replicate", type=int, default=1)
    parser.add_argument("--dp-shard", type=int, required=True)
    parser.add_argument("--ep", type=int, default=1)
    parser.add_argument("--seq-len", type=int, required=True)
    parser.add_argument("--micro-batch", type=int, default=1, help="sequences per rank per micro-batch")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=PRESETS.get(parser.parse_known_args(argv)[0].preset, {}).get("precision", "fp32"),
    )
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument(
        "--attention",
        choices=("efficient", "math"),
        default="efficient",
        help="efficient: GPU kernels saving O(T) per row; math: the (T × T) probabilities (CPU)",
    )
    parser.add_argument("--device-gb", type=float, default=80.0, help="device memory in GiB")
    args = parser.parse_args(argv)
    dims = ParallelDims(args.dp_replicate, args.dp_shard, args.ep)
    config = MoonlightConfig.preset(args.preset)
    plan = plan_memory(
        config,
        dims,
        args.seq_len,
        args.micro_batch,
        precision=args.precision,
        activation_checkpointing=args.activation_checkpointing,
        attention=args.attention,
    )
    with torch.device("meta"):
        total = MoonlightForCausalLM(config).num_parameters()
    print(
        f"{args.preset}: {total / 1e9:.2f} B parameters; {dims.world_size} ranks (dp_replicate "
        f"{dims.dp_replicate} × dp_shard {dims.dp_shard}, ep {dims.ep}); micro-batch {args.micro_batch} × "
        f"{args.seq_len} tokens, {args.precision}, activation checkpointing "
        f"{'on' if args.activation_checkpointing else 'off'}, {args.attention} attention"
    )
    for label, value in plan.rows():
        print(f"  {label:<26} {value / GiB:9.2f} GiB")
    verdict = "fits" if plan.total <= args.device_gb * GiB else "does NOT fit"
    print(f"  {verdict} in {args.device_gb:g} GiB per device ({plan.total / (args.device_gb * GiB):.0%})")
    return plan


if __name__ == "__main__":
    main()
