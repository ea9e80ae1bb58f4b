"""Mamba-3 (SISO and MIMO): the chunked SSM and its step against a float64 recurrence written from
the paper's equations and against mamba_ssm's own references, decoding against the full forward,
and the mixer and language model against mamba_ssm's own Mamba3 modules, both ways."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mamba_ssm_reference import mamba3_on_cpu, reference_config
from seqarena.models import Mamba, MambaConfig, build_model, from_pretrained
from seqarena.models.mamba3 import Mamba3Mixer, heavy_tail
from seqarena.ops import mamba3_chunk_scan_torch, mamba3_state_update_torch

VOCAB = 61


def recurrence(inputs: dict, initial=None):
    """The SSM step by step, in float64, from the paper's equations (arXiv 2603.15569, section 3):
    the exponential-trapezoidal rule, the cumulative rotary angle on B and C, MIMO's rank sums."""
    q, k, x, adt, dt, trap = (inputs[n].double() for n in ("q", "k", "x", "adt", "dt", "trap"))
    batch, length, rank, groups, n = q.shape
    heads, p = x.shape[2:]
    per_group = heads // groups
    angles = inputs["angles"].double()
    ones = torch.ones(heads, rank, p, dtype=torch.float64)
    mimo_x = ones if inputs.get("mimo_x") is None else inputs["mimo_x"].double()
    mimo_z = ones if inputs.get("mimo_z") is None else inputs["mimo_z"].double()
    pairwise = inputs.get("rotate_pairwise", True)
    theta, S, k_prev, x_prev = (
        (
            torch.zeros(batch, heads, angles.shape[-1]),
            torch.zeros(batch, heads, p, n),
            torch.zeros(batch, rank, heads, n),
            torch.zeros(batch, heads, p),
        )
        if initial is None
        else initial
    )
    theta, S, k_prev, x_prev = (t.double().clone() for t in (theta, S, k_prev, x_prev))
    out = torch.zeros(batch, length, rank, heads, p, dtype=torch.float64)
    for bi in range(batch):
        for h in range(heads):
            g = h // per_group
            for t in range(length):
                lam = torch.sigmoid(trap[bi, h, t])
                alpha = torch.exp(adt[bi, h, t])
                theta[bi, h] = theta[bi, h] + math.pi * torch.tanh(angles[bi, t, h]) * dt[bi, h, t]
                qs, ks = [], []
                for r in range(rank):
                    qr = q[bi, t, r, g] + inputs["q_bias"][h, r].double()
                    kr = k[bi, t, r, g] + inputs["k_bias"][h, r].double()
                    for i, angle in enumerate(theta[bi, h]):
                        a, b = (2 * i, 2 * i + 1) if pairwise else (i, i + n // 2)
                        c, s = torch.cos(angle), torch.sin(angle)
                        qr[a], qr[b] = qr[a] * c - qr[b] * s, qr[a] * s + qr[b] * c
                        kr[a], kr[b] = kr[a] * c - kr[b] * s, kr[a] * s + kr[b] * c
                    qs.append(qr)
                    ks.append(kr)
                before = sum(torch.outer(x_prev[bi, h] * mimo_x[h, r], k_prev[bi, r, h]) for r in range(rank))
                now = sum(torch.outer(x[bi, t, h] * mimo_x[h, r], ks[r]) for r in range(rank))
                S[bi, h] = (
                    alpha * S[bi, h] + (1 - lam) * dt[bi, h, t] * alpha * before + lam * dt[bi, h, t] * now
                )
                for r in range(rank):
                    v = x[bi, t, h] * mimo_x[h, r]
                    y = S[bi, h] @ qs[r] + inputs["D"][h].double() * v
                    if inputs.get("z") is not None:
                        y = y * F.silu(inputs["z"][bi, t, h].double() * mimo_z[h, r])
                    out[bi, t, r, h] = y
                    k_prev[bi, r, h] = ks[r]
                x_prev[bi, h] = x[bi, t, h]
    return out, (torch.remainder(theta, 2 * math.pi), S, k_prev, x_prev)


def random_inputs(batch=2, length=13, rank=1, groups=2, heads=4, n=8, p=4, angles=2, mimo=False, gated=True):
    torch.manual_seed(0)
    dt = F.softplus(torch.randn(batch, heads, length) - 1)
    inputs = dict(
        q=torch.randn(batch, length, rank, groups, n),
        k=torch.randn(batch, length, rank, groups, n),
        x=torch.randn(batch, length, heads, p),
        adt=-torch.rand(batch, heads, length) * dt,
        dt=dt,
        trap=torch.randn(batch, heads, length),
        q_bias=torch.randn(heads, rank, n),
        k_bias=torch.randn(heads, rank, n),
        angles=torch.randn(batch, length, heads, angles) * 3,
        D=torch.randn(heads),
        z=torch.randn(batch, length, heads, p) if gated else None,
        mimo_x=torch.randn(heads, rank, p) if mimo else None,
        mimo_z=torch.randn(heads, rank, p) if mimo else None,
        rotate_pairwise=not mimo,
    )
    return {key: value.double() if torch.is_tensor(value) else value for key, value in inputs.items()}


def random_states(inputs):
    batch, _, rank, _, n = inputs["q"].shape
    heads, p = inputs["x"].shape[2:]
    angles = inputs["angles"].shape[-1]
    angle = torch.rand(batch, heads, angles, dtype=torch.float64) * 6
    return (
        angle,
        torch.randn(batch, heads, p, n).double(),
        torch.randn(batch, rank, heads, n).double(),
        torch.randn(batch, heads, p).double(),
    )


CASES = {
    "siso": dict(),
    "siso-ungated": dict(gated=False),
    "mimo": dict(rank=3, mimo=True),
    "mimo-half-the-state-rotated": dict(rank=2, mimo=True, n=16, angles=4),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunk", [4, 5, 16])
def test_chunked_form_and_step_equal_the_recurrence(case, chunk):
    """From zero and from given states, at lengths no multiple of the chunk: every output and state."""
    inputs = random_inputs(**CASES[case])
    for initial in (None, random_states(inputs)):
        want, want_states = recurrence(inputs, initial)
        got, states = mamba3_chunk_scan_torch(
            **inputs, chunk_size=chunk, initial_states=initial, return_final_states=True
        )
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        for ours, theirs in zip(states, want_states, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
        held = [t.clone() for t in (initial or want_states)]  # any states, overwritten below
        if initial is None:
            held = [torch.zeros_like(t) for t in held]
        steps = []
        for t in range(inputs["x"].shape[1]):
            step = {
                key: value[:, t] if key in ("q", "k", "x", "z", "angles") and value is not None else value
                for key, value in inputs.items()
            }
            for key in ("adt", "dt", "trap"):
                step[key] = inputs[key][..., t]
            steps.append(mamba3_state_update_torch(held, **step))
        torch.testing.assert_close(torch.stack(steps, 1), want, rtol=1e-10, atol=1e-10)
        for ours, theirs in zip(held, want_states, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_gradients_of_the_chunked_form_equal_finite_differences():
    """Every input's gradient, MIMO and from given states, against torch's numerical gradcheck."""
    inputs = random_inputs(batch=1, length=7, rank=2, groups=1, heads=2, n=4, p=2, angles=1, mimo=True)
    initial = random_states(inputs)
    names = [k for k, v in inputs.items() if torch.is_tensor(v)]

    def chunked(*tensors):
        given = dict(zip(names, tensors, strict=True)) | {"rotate_pairwise": False}
        return mamba3_chunk_scan_torch(**given, chunk_size=3, initial_states=initial)

    assert torch.autograd.gradcheck(chunked, [inputs[k].requires_grad_() for k in names])


def test_against_mamba_ssms_own_references():
    """mamba_ssm's SISO chunk and step references (tests/ops/triton/test_mamba3_siso.py) and its
    MIMO step and chunk references (tests/ops/tilelang/test_mamba3_mimo.py), at the pinned tag.
    Its chunk references sum the angles in float32, hence the looser tolerances there."""
    siso, mimo = (
        random_inputs(length=37, n=16, angles=4),
        random_inputs(length=32, rank=3, mimo=True, n=16, angles=4),
    )
    initial = random_states(siso)
    with mamba3_on_cpu() as ref:
        args = [
            siso[k][:, :, 0] if k in ("q", "k") else siso[k] for k in ("q", "k", "x", "adt", "dt", "trap")
        ]
        biases = [siso["q_bias"][:, 0], siso["k_bias"][:, 0], siso["angles"], siso["D"], siso["z"]]
        states = (initial[0], initial[1], initial[2][:, 0], initial[3])
        chunk_ref, _ = ref.siso.mamba3_siso_fwd_ref(
            *args, *biases, Initial_States=states, chunk_size=16, dtype=torch.float64
        )
        step_ref, _ = ref.siso.mamba3_siso_step_ref(*args, *biases, Input_States=states)
        mimo_args = [mimo[k] for k in ("q", "k", "x", "adt", "dt", "trap", "q_bias", "k_bias", "angles")]
        mimo_o = torch.randn(4, 3, 4, dtype=torch.float64)
        pairwise_ref, _ = ref.mimo.mamba3_MIMO_step_ref(
            *mimo_args, mimo["mimo_x"], mimo_o, D=mimo["D"], Z=mimo["z"], MIMO_Z=mimo["mimo_z"]
        )
        kernel_ref = ref.mimo.mamba3_MIMO_chunk_ref  # the kernel's pairs (i, i + N/2), cumulative angles in
        chunks = mimo["adt"].unflatten(-1, (-1, 8)).cumsum(-1)
        angles = ref.mimo.apply_angle_dt_reference(mimo["angles"], mimo["dt"].transpose(1, 2))
        aligned_ref, _, _ = kernel_ref(
            mimo["q"],
            mimo["k"],
            mimo["x"],
            mimo["q_bias"],
            mimo["k_bias"],
            mimo["mimo_x"],
            mimo_o,
            mimo["z"],
            mimo["mimo_z"],
            angles,
            chunks.flatten(-2),
            (chunks[..., -1:] - chunks).flatten(-2),
            mimo["dt"],
            mimo["trap"],
            mimo["D"],
            chunk_size=8,
            rotary_dim_divisor=4,
            dtype=torch.float64,
        )
    ours = mamba3_chunk_scan_torch(**siso, chunk_size=16, initial_states=initial)[:, :, 0]
    torch.testing.assert_close(ours, chunk_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, step_ref, rtol=1e-5, atol=1e-5)  # its step keeps the state in float32
    contract = "blrhp,hrp->blhp"
    ours = torch.einsum(
        contract, mamba3_chunk_scan_torch(**mimo | {"rotate_pairwise": True}, chunk_size=8), mimo_o
    )
    torch.testing.assert_close(ours, pairwise_ref, rtol=1e-10, atol=1e-10)
    ours = torch.einsum(contract, mamba3_chunk_scan_torch(**mimo, chunk_size=8), mimo_o)
    torch.testing.assert_close(ours, aligned_ref, rtol=1e-4, atol=1e-4)  # its angles' sums are float32


MIXERS = {
    "siso": dict(),
    "siso-outproj-norm": dict(is_outproj_norm=True),
    "siso-grouped-full-rope": dict(ngroups=2, rope_fraction=1.0),
    "mimo": dict(is_mimo=True, mimo_rank=2, chunk_size=8),
    "mimo-outproj-norm": dict(is_mimo=True, mimo_rank=2, is_outproj_norm=True, chunk_size=8),
}


@pytest.mark.parametrize("version, activation", [("2.3.2.post1", "softplus"), ("main", "heavy_tail")])
@pytest.mark.parametrize("case", MIXERS)
def test_the_mixer_equals_mamba_ssms_mamba3(case, version, activation):
    """mamba_ssm's Mamba3 module, its kernels run by its references: our mixer with its weights
    (strict) gives its outputs, and its own initialisation has our parameters' names and shapes."""
    shape = dict(d_state=16, expand=2, headdim=16, chunk_size=16) | MIXERS[case]
    torch.manual_seed(0)
    with mamba3_on_cpu() as ref, torch.no_grad():
        module = ref.Mamba3 if version == "2.3.2.post1" else ref.Mamba3Main
        extra = {} if version == "2.3.2.post1" else {"fuse_pregate_headwise_norm": False}
        theirs = module(64, **shape, **extra).eval()
        ours = Mamba3Mixer(
            64, **MambaConfig(ssm_cfg={"layer": "Mamba3", **shape, "A_activation": activation}).ssm
        )
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in theirs.state_dict().items()
        }
        for p in theirs.parameters():  # off their initial values, so every weight matters
            p.add_(torch.randn_like(p) * 0.1)
        ours.load_state_dict(theirs.state_dict(), strict=True)
        u = torch.randn(2, 32, 64)
        want = theirs(u)
    torch.testing.assert_close(ours(u), want, rtol=1e-4, atol=1e-5)


def mamba3_config(**ssm) -> MambaConfig:
    ssm_cfg = dict(layer="Mamba3", d_state=16, headdim=16, chunk_size=16) | ssm
    return MambaConfig(d_model=64, n_layer=2, vocab_size=VOCAB, ssm_cfg=ssm_cfg, d_intermediate=96)


@pytest.mark.parametrize("ssm", [dict(), dict(is_mimo=True, mimo_rank=2, chunk_size=8)], ids=["siso", "mimo"])
def test_logits_and_weights_equal_mamba_ssm_both_ways(ssm, tmp_path):
    """Ours -> mamba_ssm's MambaLMHeadModel with main's Mamba3 (strict load, equal logits), and its
    own save_pretrained -> our from_pretrained (equal logits)."""
    torch.manual_seed(0)
    ours = Mamba(mamba3_config(**ssm)).eval()
    ids = torch.randint(0, VOCAB, (2, 32))
    with mamba3_on_cpu() as ref, torch.no_grad():
        config = reference_config(ours.config_dict(), ref)
        theirs = ref.MambaLMHeadModel(config).eval()
        theirs.load_state_dict(ours.state_dict(), strict=True)
        torch.testing.assert_close(theirs(ids).logits, ours(ids), rtol=1e-4, atol=1e-4)
        fresh = ref.MambaLMHeadModel(config).eval()
        fresh.save_pretrained(tmp_path)
        want = fresh(ids).logits
    loaded = from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_id", ["mamba3-tiny", "mamba3_mimo-tiny"])
def test_decoding_and_chunked_prefill_equal_the_full_forward(model_id):
    torch.manual_seed(0)
    model = build_model(model_id, vocab_size=VOCAB).double().eval()
    ids = torch.randint(0, VOCAB, (3, 45))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(3, 45)
        prefix = model(ids[:, :20], cache=cache)
        rest = model(ids[:, 20:33], cache=cache)  # a second chunk continues from the cached states
        steps = torch.stack([model.step(ids[:, t], cache) for t in range(33, 45)], dim=1)
    torch.testing.assert_close(torch.cat([prefix, rest, steps], dim=1), full, rtol=1e-10, atol=1e-10)


def test_the_heavy_tail_activation():
    """1 + a above 0, 1 / (1 - a) below: the two sides meet at 0 with value 1 and slope 1."""
    a = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(
        heavy_tail(a), torch.tensor([0.25, 1 / 1.5, 1.0, 1.5, 4.0], dtype=torch.float64)
    )
    (slope,) = torch.autograd.grad(heavy_tail(a).sum(), a)
    torch.testing.assert_close(
        slope[[0, 1, 3, 4]], torch.tensor([1 / 16, 1 / 2.25, 1, 1], dtype=torch.float64)
    )
    below, above = heavy_tail(torch.tensor([-1e-6, 1e-6], dtype=torch.float64))
    assert abs((above - below) / 2e-6 - 1) < 1e-5


@pytest.mark.parametrize(
    "change, named",
    [
        ({"rope_fraction": 0.25}, "ssm_cfg.rope_fraction=0.25 must be 0.5 or 1.0"),
        ({"headdim": 24}, "ssm_cfg.headdim=24 does not divide d_inner = expand * d_model = 128"),
        ({"A_activation": "relu"}, "ssm_cfg.A_activation='relu': unknown; known: ['heavy_tail', 'softplus']"),
        ({"ngroups": 3}, "ssm_cfg.ngroups=3 does not divide nheads=8"),
    ],
)
def test_a_bad_config_json_fails_naming_the_field_and_the_file(tmp_path, change, named):
    Mamba(mamba3_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["ssm_cfg"] |= change
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        from_pretrained(tmp_path)
    assert named in str(error.value) and str(tmp_path / "config.json") in str(error.value)
