"""Mamba-2, gated MLPs and hybrids with attention: the SSD against a recurrence, decoding against
the full forward, and every family against mamba_ssm's own MambaLMHeadModel, both ways."""

import json
import re

import pytest
import torch
import torch.nn.functional as F

from mamba_ssm_reference import mamba_ssm_on_cpu, reference_config
from seqarena.models import Mamba, MambaConfig, build_model, from_pretrained
from seqarena.ops import ssd_chunk_scan_torch

VOCAB = 61
# Every option a mamba_ssm 2.3 config can set that changes weights or results, across the cases.
FAMILIES = {
    "mamba2": dict(ssm_cfg=dict(layer="Mamba2", headdim=16, d_state=16, chunk_size=8)),
    "mamba2-grouped": dict(
        ssm_cfg=dict(
            layer="Mamba2",
            headdim=8,
            d_state=8,
            ngroups=2,
            d_ssm=96,
            D_has_hdim=True,
            norm_before_gate=True,
            chunk_size=16,
            bias=True,
            conv_bias=False,
        ),
        d_intermediate=96,
    ),
    "mamba2-ungated-norm": dict(
        ssm_cfg=dict(layer="Mamba2", headdim=32, d_state=8, rmsnorm=False, chunk_size=8)
    ),
    "hybrid-mamba2": dict(
        ssm_cfg=dict(layer="Mamba2", headdim=16, d_state=16, chunk_size=8),
        attn_layer_idx=[1],
        attn_cfg=dict(num_heads=4, num_heads_kv=2, causal=True, d_conv=4, mlp_dim=64),
        d_intermediate=64,
    ),
    "hybrid-mamba1": dict(
        attn_layer_idx=[0, 2], attn_cfg=dict(num_heads=2, head_dim=24, causal=True, qkv_proj_bias=False)
    ),
}


def family_config(name: str, **overrides) -> MambaConfig:
    return MambaConfig(d_model=64, n_layer=3, vocab_size=VOCAB, **{**FAMILIES[name], **overrides})


def sequential_ssd(x, dt, A, B, C, D, z, dt_bias):
    """The SSD recurrence step by step, written out here: the oracle for the chunked algorithm."""
    batch, length, nheads, headdim = x.shape
    per_group = nheads // B.shape[2]
    dt = F.softplus(dt + dt_bias)
    state = x.new_zeros(batch, nheads, headdim, B.shape[-1])
    ys = []
    for t in range(length):
        Bt, Ct = (M[:, t].repeat_interleave(per_group, dim=1) for M in (B, C))
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * Bt[:, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ct) + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1) * F.silu(z), state


@pytest.mark.parametrize("length,chunk", [(37, 8), (37, 64), (16, 16)])
def test_ssd_equals_the_recurrence_forward_and_every_gradient(length, chunk):
    gen = torch.Generator().manual_seed(length + chunk)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()

    inputs = dict(
        x=rand(2, length, 4, 3),
        dt=rand(2, length, 4, scale=0.5),
        A=(-torch.rand(4, generator=gen, dtype=torch.float64) - 0.5).requires_grad_(),
        B=rand(2, length, 2, 5),
        C=rand(2, length, 2, 5),
        D=rand(4),
        z=rand(2, length, 4, 3),
        dt_bias=rand(4),
    )
    y, state = ssd_chunk_scan_torch(**inputs, chunk_size=chunk, dt_softplus=True, return_final_state=True)
    want_y, want_state = sequential_ssd(**inputs)
    torch.testing.assert_close(y, want_y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, want_state, rtol=1e-10, atol=1e-10)
    weights = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad((y * weights).sum() + state.sum(), list(inputs.values()))
    want = torch.autograd.grad((want_y * weights).sum() + want_state.sum(), list(inputs.values()))
    for name, g, w in zip(inputs, got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


def test_ssd_equals_mamba_ssm_references():
    """mamba_ssm's ssd_minimal_discrete (the paper's listing 1) and ssd_chunk_scan_combined_ref."""
    torch.manual_seed(0)
    batch, length, nheads, headdim, d_state = 2, 48, 4, 8, 16
    x = torch.randn(batch, length, nheads, headdim, dtype=torch.float64)
    dt = F.softplus(torch.randn(batch, length, nheads, dtype=torch.float64) - 1)
    A = -torch.rand(nheads, dtype=torch.float64) * 4
    B, C = (torch.randn(batch, length, 1, d_state, dtype=torch.float64) for _ in range(2))
    D = torch.randn(nheads, dtype=torch.float64)
    ours = ssd_chunk_scan_torch(x, dt, A, B, C, chunk_size=16, D=D)
    with mamba_ssm_on_cpu() as mamba_ssm:
        heads = lambda M: M.expand(-1, -1, nheads, -1)  # noqa: E731  (one group shared by every head)
        minimal, _ = mamba_ssm.ssd_minimal_discrete(
            x * dt[..., None], dt * A, heads(B), heads(C), block_len=16
        )
        reference = mamba_ssm.ssd_chunk_scan_combined_ref(x, dt, A, B, C, chunk_size=16, D=D)
    torch.testing.assert_close(ours, minimal + D[:, None] * x, rtol=1e-10, atol=1e-10)
    # the chunk reference takes dt to float32 before its cumulative sums, whatever the input
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_decoding_and_chunked_prefill_equal_the_full_forward(family):
    torch.manual_seed(0)
    model = Mamba(family_config(family)).double().eval()
    ids = torch.randint(0, VOCAB, (3, 21))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(3, 21)
        prefix = model(ids[:, :5], cache=cache)
        rest = model(ids[:, 5:9], cache=cache)  # a second chunk continues token by token
        steps = torch.stack([model.step(ids[:, t], cache) for t in range(9, 21)], dim=1)
    torch.testing.assert_close(torch.cat([prefix, rest, steps], dim=1), full, rtol=1e-10, atol=1e-10)
    out = model.float().generate(ids[:, :4].clone(), max_new_tokens=5)
    assert out.shape == (3, 9) and int(out.max()) < VOCAB


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_weights_equal_mamba_ssm_both_ways(family, tmp_path):
    """Ours -> mamba_ssm's MambaLMHeadModel (strict load, equal logits), and mamba_ssm's own
    save_pretrained -> our from_pretrained (equal logits). In float64, but mamba_ssm's SSD
    reference takes dt to float32, hence 1e-5."""
    torch.manual_seed(0)
    ours = Mamba(family_config(family)).double().eval()
    ids = torch.randint(0, VOCAB, (2, 32))  # mamba_ssm's chunk reference takes whole chunks only
    with mamba_ssm_on_cpu() as mamba_ssm, torch.no_grad():
        config = reference_config(ours.config_dict(), mamba_ssm)
        theirs = mamba_ssm.MambaLMHeadModel(config).double().eval()
        theirs.load_state_dict(ours.state_dict(), strict=True)
        torch.testing.assert_close(theirs(ids).logits, ours(ids), rtol=1e-5, atol=1e-5)

        fresh = mamba_ssm.MambaLMHeadModel(config).double().eval()  # mamba_ssm's own initialisation
        fresh.save_pretrained(tmp_path)
        want = fresh(ids).logits
    loaded = from_pretrained(tmp_path, dtype=torch.float64).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), want, rtol=1e-5, atol=1e-5)


def test_initialisation_matches_mamba_ssm():
    """Per parameter (pooled over layers), ours and mamba_ssm's draws (different random streams)
    agree in spread, middle and both ends."""
    config = dict(
        d_model=256,
        n_layer=4,
        vocab_size=1000,
        d_intermediate=512,
        ssm_cfg=dict(layer="Mamba2", headdim=8),
        attn_layer_idx=[2],
        attn_cfg=dict(num_heads=4, causal=True),
    )
    torch.manual_seed(0)
    ours = Mamba(MambaConfig(**config)).state_dict()
    with mamba_ssm_on_cpu() as mamba_ssm:
        theirs = mamba_ssm.MambaLMHeadModel(reference_config(config, mamba_ssm)).state_dict()
    assert ours.keys() == theirs.keys()
    assert all(ours[k].shape == theirs[k].shape for k in ours)

    def pooled(state):
        groups = {}
        for key, value in state.items():
            groups.setdefault(re.sub(r"layers\.\d+\.", "layers.*.", key), []).append(value.double().flatten())
        return {k: torch.cat(v) for k, v in groups.items()}

    theirs = pooled(theirs)
    for key, a in pooled(ours).items():
        b = theirs[key]
        scale = max(b.std().item() if b.numel() > 1 else 0, b.abs().mean().item(), 1e-12)
        for q in (0.05, 0.5, 0.95):
            assert abs(a.quantile(q) - b.quantile(q)) <= 0.15 * scale, (key, q, a.quantile(q), b.quantile(q))
        if b.numel() > 1:
            assert abs(a.std() - b.std()) <= 0.15 * scale, (key, a.std(), b.std())


def test_rotary_on_part_of_each_head_matches_llamas_rotation():
    """transformers' LLaMA rotation on the first rotary_emb_dim channels, the rest untouched."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = dict(num_heads=2, rotary_emb_dim=16, rotary_emb_base=500.0)
    model = Mamba(MambaConfig(d_model=64, n_layer=1, vocab_size=VOCAB, attn_layer_idx=[0], attn_cfg=attn))
    mha = model.backbone.layers[0].mixer
    q = torch.randn(2, 7, 2, 32, dtype=torch.float64)
    got = mha._rotate(q, torch.arange(5, 12))
    inv_freq = 1.0 / 500.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    angles = torch.outer(torch.arange(5, 12, dtype=torch.float64), inv_freq)
    cos, sin = torch.cat([angles.cos()] * 2, -1)[None], torch.cat([angles.sin()] * 2, -1)[None]
    rotated, _ = apply_rotary_pos_emb(q[..., :16].transpose(1, 2), q[..., :16].transpose(1, 2), cos, sin)
    torch.testing.assert_close(got[..., :16], rotated.transpose(1, 2), rtol=1e-6, atol=1e-6)
    assert torch.equal(got[..., 16:], q[..., 16:])


@pytest.mark.parametrize(
    "change,named",
    [
        ({"ssm_cfg": {"layer": "Mamba4"}}, "ssm_cfg.layer='Mamba4'"),
        ({"ssm_cfg": {"layer": "Mamba2", "headdim": 48}}, "ssm_cfg.headdim=48 does not divide d_ssm=128"),
        (
            {"ssm_cfg": {"layer": "Mamba2", "headdim": 16, "ngroups": 3}},
            "ssm_cfg.ngroups=3 does not divide nheads=8",
        ),
        ({"attn_layer_idx": [3], "attn_cfg": {"num_heads": 2}}, "attn_layer_idx [3] outside the 3 layers"),
        ({"attn_layer_idx": [0], "attn_cfg": {"num_heads": 4, "num_heads_kv": 3}}, "attn_cfg.num_heads_kv=3"),
        (
            {"attn_layer_idx": [0], "attn_cfg": {"num_heads": 4, "window": 8}},
            "unknown attn_cfg keys: ['window']",
        ),
    ],
)
def test_a_bad_config_json_fails_naming_the_field_and_the_file(tmp_path, change, named):
    model = build_model("mamba2-tiny", vocab_size=VOCAB)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text()) | {"n_layer": 3} | change
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        from_pretrained(tmp_path)
    assert named in str(error.value) and str(tmp_path / "config.json") in str(error.value)


def test_a_mamba_ssm_1x_config_without_the_2x_fields_still_loads(tmp_path):
    model = build_model("mamba-tiny", vocab_size=VOCAB)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("d_intermediate", "attn_layer_idx", "attn_cfg"):
        del config[key]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert from_pretrained(tmp_path).config == model.config


def test_the_kv_cache_grows_with_the_sequence_and_the_ssm_state_does_not():
    model = build_model("hybrid-tiny", vocab_size=VOCAB)
    short, long = model.allocate_cache(2, 64), model.allocate_cache(2, 256)
    for i, (a, b) in enumerate(zip(short.layers, long.layers, strict=True)):
        if i in model.config.attn_layer_idx:
            assert b.keys.numel() == 4 * a.keys.numel() and b.values.shape == b.keys.shape
        else:
            assert a.ssm_state.shape == b.ssm_state.shape and a.conv_state.shape == b.conv_state.shape
    assert model.config.attn_layer_idx and len(model.config.attn_layer_idx) < model.config.n_layer
