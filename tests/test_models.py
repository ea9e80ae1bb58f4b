"""Models: decoding equals the full forward, checkpoints match mamba_ssm, sizes, init, learning."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mamba_ssm_reference import mamba_ssm_on_cpu
from seqarena.models import (
    SIZES,
    Mamba,
    MambaConfig,
    Transformer,
    build_model,
    from_pretrained,
    model_config,
    parse_model_id,
)
from seqarena.models.base import Decoder
from seqarena.models.families import FAMILIES

VOCAB = 61  # not a multiple of 8: the embedding pads to 64


def tiny(arch, dtype=torch.float64, **overrides):
    return build_model(f"{arch}-tiny", vocab_size=VOCAB, **overrides).to(dtype).eval()


@pytest.mark.parametrize("arch", ["mamba", "mamba_lti", "transformer", "transformer_abs"])
def test_cached_decoding_equals_full_forward(arch):
    model = tiny(arch)
    ids = torch.randint(0, VOCAB, (3, 17))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(3, 17)
        prefix = model(ids[:, :5], cache=cache)  # prefill, then one token at a time
        steps = [model.step(ids[:, t], cache) for t in range(5, 17)]
    torch.testing.assert_close(prefix, full[:, :5], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 5:], rtol=1e-10, atol=1e-10)
    assert cache.seqlen == 17


@pytest.mark.parametrize("arch", ["mamba", "mamba_lti", "transformer"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_token_input(arch, dtype):
    """Length-1 tensors may carry any stride on their size-1 axis: the kernels must accept them."""
    model = tiny(arch, dtype=dtype)
    ids = torch.randint(0, VOCAB, (3, 5))
    with torch.no_grad():
        torch.testing.assert_close(model(ids[:, :1]), model(ids)[:, :1])
    assert model.generate(ids[:, :1], max_new_tokens=3).shape == (3, 4)


@pytest.mark.parametrize("arch", ["mamba", "mamba_lti", "transformer", "transformer_abs"])
def test_chunked_prefill_equals_full_forward(arch):
    model = tiny(arch)
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        cache = model.allocate_cache(2, 12)
        chunks = [
            model(ids[:, :4], cache=cache),
            model(ids[:, 4:9], cache=cache),
            model(ids[:, 9:], cache=cache),
        ]
        torch.testing.assert_close(torch.cat(chunks, 1), model(ids), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", ["mamba", "mamba_lti", "hybrid", "transformer"])
def test_logits_of_the_last_tokens_only_are_those_of_the_full_forward(arch):
    """num_last_tokens (a prompt's pass needs the last position only), with and without a cache,
    and continuing a cached sequence."""
    model = tiny(arch)
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        full = model(ids)
        torch.testing.assert_close(model(ids, num_last_tokens=3), full[:, -3:], rtol=1e-10, atol=1e-10)
        cache = model.allocate_cache(2, 12)
        head = model(ids[:, :7], cache=cache, num_last_tokens=1)
        tail = model(ids[:, 7:], cache=cache, num_last_tokens=2)
        torch.testing.assert_close(head, full[:, 6:7], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(tail, full[:, -2:], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", ["mamba", "mamba_lti", "transformer"])
def test_greedy_generate_equals_argmax_of_full_forward(arch):
    model = tiny(arch, dtype=torch.float32)
    prompt = torch.randint(0, VOCAB, (2, 6))
    out = model.generate(prompt, max_new_tokens=8)
    ids = prompt
    with torch.no_grad():
        for _ in range(8):
            logits = model(ids)[:, -1, :VOCAB]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)


def test_sampling_is_seeded_and_never_emits_padding_ids():
    model = tiny("mamba", dtype=torch.float32)
    prompt = torch.randint(0, VOCAB, (4, 3))
    a = model.generate(prompt, 20, temperature=5.0, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 20, temperature=5.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert int(a.max()) < VOCAB
    top1 = model.generate(prompt, 5, temperature=1.0, top_k=1)
    assert torch.equal(top1, model.generate(prompt, 5))


class StepTrace(TorchDispatchMode):
    """The ops a call runs, each with its outputs' shapes, and those that read a tensor's value on
    the host (``.item()``, ``int()``, ``bool()``: a sync, which CUDA graph capture refuses)."""

    def __init__(self):
        super().__init__()
        self.ops, self.host_reads = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._local_scalar_dense.default:
            self.host_reads.append(func)
        shapes = [tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.ops.append((str(func), shapes))
        return out


def python_state(cache) -> list:
    """What of a cache Python sees: each tensor's identity, storage and shape, every other value."""
    if isinstance(cache, torch.Tensor):
        return [(id(cache), cache.data_ptr(), tuple(cache.shape))]
    if dataclasses.is_dataclass(cache):
        return [python_state(getattr(cache, f.name)) for f in dataclasses.fields(cache)]
    if isinstance(cache, list | tuple):
        return [python_state(c) for c in cache]
    return [cache]


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_a_decoding_step_replays_as_a_cuda_graph_would(arch):
    """What Decoder's CUDA graph needs of ``step``, which a replay reruns kernel for kernel: at
    every position the same ops at the same shapes, no host read of a tensor's value, and all it
    changes kept in the cache's own tensors (the position included), none replaced."""
    model = tiny(arch, dtype=torch.float32)
    ids = torch.randint(0, VOCAB, (2, 12))
    decoder = Decoder(model, 2, 12)
    decoder.prefill(ids[:, :5])
    before, traces = python_state(decoder.cache), []
    for t in range(5, 9):
        with StepTrace() as trace:
            decoder.step(ids[:, t])
        traces.append(trace)
    assert all(trace.ops == traces[0].ops for trace in traces), arch
    assert not [trace.host_reads for trace in traces if trace.host_reads], arch
    assert python_state(decoder.cache) == before
    assert int(decoder.cache.seqlen) == 9  # the position advanced, in its tensor


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_a_decoder_reused_from_a_cleared_cache_generates_as_a_fresh_one(arch):
    """The decoder keeps its cache (and a CUDA graph) between calls: each call starts clean."""
    model = tiny(arch, dtype=torch.float32)
    first, second = torch.randint(0, VOCAB, (2, 2, 6))
    decoder = Decoder(model, 2, 14)
    decoder.generate(first, 8)
    assert torch.equal(decoder.generate(second, 8), model.generate(second, 8))
    assert torch.equal(decoder.generate(second[:, :3], 4), model.generate(second[:, :3], 4))
    with pytest.raises(ValueError, match="batch 2, 6 \\+ 9 tokens: this decoder holds batch 2 up to 14"):
        decoder.generate(second, 9)


def expected_mamba_shapes(d_model, n_layer, vocab, d_state=16, d_conv=4, expand=2):
    """mamba_ssm MambaLMHeadModel's state dict, written out from its module tree."""
    d_inner, dt_rank = expand * d_model, math.ceil(d_model / 16)
    padded = -(-vocab // 8) * 8
    shapes = {
        "backbone.embedding.weight": (padded, d_model),
        "backbone.norm_f.weight": (d_model,),
        "lm_head.weight": (padded, d_model),
    }
    for i in range(n_layer):
        p = f"backbone.layers.{i}."
        shapes |= {
            p + "norm.weight": (d_model,),
            p + "mixer.in_proj.weight": (2 * d_inner, d_model),
            p + "mixer.conv1d.weight": (d_inner, 1, d_conv),
            p + "mixer.conv1d.bias": (d_inner,),
            p + "mixer.x_proj.weight": (dt_rank + 2 * d_state, d_inner),
            p + "mixer.dt_proj.weight": (d_inner, dt_rank),
            p + "mixer.dt_proj.bias": (d_inner,),
            p + "mixer.A_log": (d_inner, d_state),
            p + "mixer.D": (d_inner,),
            p + "mixer.out_proj.weight": (d_model, d_inner),
        }
    return shapes


def test_saved_mamba_checkpoint_is_mamba_ssm_layout(tmp_path):
    from safetensors.torch import load_file

    model = tiny("mamba", dtype=torch.float32)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    want = expected_mamba_shapes(64, 4, VOCAB)
    assert {k: tuple(v.shape) for k, v in state.items()} == want
    config = json.loads((tmp_path / "config.json").read_text())
    # exactly mamba_ssm 2.3's MambaConfig fields, so MambaConfig(**config) accepts the file
    with mamba_ssm_on_cpu() as mamba_ssm:
        assert set(config) == {f.name for f in dataclasses.fields(mamba_ssm.MambaConfig)}
    assert config["vocab_size"] == VOCAB and config["d_model"] == 64 and config["n_layer"] == 4
    assert torch.equal(state["lm_head.weight"], state["backbone.embedding.weight"])
    assert not list(tmp_path.glob(".*.tmp*")), "temporary files left behind"


def test_mamba_130m_key_set_and_vocab_padding():
    with torch.device("meta"):
        model = build_model("mamba-130m")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == expected_mamba_shapes(768, 24, 50277)
    assert shapes["backbone.embedding.weight"] == (50280, 768)


def test_state_spaces_layout_loads_with_identical_outputs(tmp_path):
    """A folder as published on the hub: mamba_ssm's config.json and pytorch_model.bin."""
    source = tiny("mamba", dtype=torch.float32)
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "d_model": 64,
                "n_layer": 4,
                "vocab_size": VOCAB,
                "ssm_cfg": {},
                "rms_norm": True,
                "residual_in_fp32": True,
                "fused_add_norm": True,
                "pad_vocab_size_multiple": 8,
            }
        )
    )
    torch.save(source.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = from_pretrained(tmp_path).eval()
    assert isinstance(loaded, Mamba)
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids), source(ids))


@pytest.mark.parametrize("arch", ["mamba", "mamba_lti", "transformer", "transformer_abs"])
def test_save_load_round_trip(arch, tmp_path):
    model = tiny(arch, dtype=torch.float32)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = from_pretrained(tmp_path / "ckpt").eval()
    assert type(loaded) is type(model) and loaded.config == model.config
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_loading_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        from_pretrained(tmp_path / "missing")
    with pytest.raises(
        FileNotFoundError,
        match="holds none of model.safetensors, model.safetensors.index.json, pytorch_model.bin",
    ):
        from_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="could not fetch 'state-spaces/mamba-nonexistent'.*local folder"):
        from_pretrained("state-spaces/mamba-nonexistent")  # HF_HUB_OFFLINE=1 in conftest
    tiny("mamba").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(ValueError, match="does not fit"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "ssm_cfg": {"d_stat": 8}}))
    with pytest.raises(ValueError, match="unknown ssm_cfg keys.*d_stat"):
        from_pretrained(tmp_path)


def test_parse_model_id_errors():
    assert parse_model_id("mamba-1.4b") == ("mamba", "1.4b")
    with pytest.raises(ValueError, match="unknown architecture 'rwkv'"):
        parse_model_id("rwkv-tiny")
    with pytest.raises(ValueError, match="unknown transformer size '130m'"):
        parse_model_id("transformer-130m")


@pytest.mark.parametrize(
    "model_id", [f"{a}-{s}" for a, sizes in SIZES.items() for s, spec in sizes.items() if spec.nominal_params]
)
def test_paper_sizes_within_ten_percent_of_nominal(model_id):
    arch, size = parse_model_id(model_id)
    with torch.device("meta"):
        model = build_model(model_id)
    nominal = SIZES[arch][size].nominal_params
    assert abs(model.num_parameters() - nominal) / nominal < 0.10, model.num_parameters()


@pytest.mark.parametrize(
    "model_id", ["mamba-micro", "mamba2-micro", "mamba3-micro", "hybrid-micro", "transformer-micro"]
)
def test_parameters_without_embedding_leave_out_the_tied_embedding_under_either_name(model_id):
    model = build_model(model_id, vocab_size=1000)
    params = dict(model.named_parameters())  # a tied tensor once, under its first name
    embedding = next(p for name, p in params.items() if name.endswith("embedding.weight"))
    assert model.lm_head.weight is embedding
    without = sum(p.numel() for p in params.values()) - embedding.numel()
    assert model.num_parameters(exclude_embedding=True) == without < model.num_parameters()


def test_paper_shapes():
    assert [model_config(f"mamba-{s}").d_model for s in ["130m", "370m", "790m", "1.4b", "2.8b"]] == [
        768,
        1024,
        1536,
        2048,
        2560,
    ]
    assert [model_config(f"transformer-{s}").n_head for s in ["125m", "350m", "760m", "1.3b", "2.7b"]] == [
        12,
        16,
        16,
        32,
        32,
    ]


def test_mamba_initialisation_matches_mamba_ssm():
    torch.manual_seed(0)
    config = MambaConfig(d_model=256, n_layer=4, vocab_size=1000)
    model = Mamba(config)
    mixer = model.backbone.layers[0].mixer
    torch.testing.assert_close(torch.exp(mixer.A_log), torch.arange(1.0, 17.0).repeat(512, 1))
    assert torch.equal(mixer.D, torch.ones(512))
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    # log-uniform: the median of dt sits near the geometric mean of dt_min and dt_max
    assert 0.005 < dt.median() < 0.02
    bound = 16**-0.5  # dt_rank = 256 / 16
    assert mixer.dt_proj.weight.abs().max() <= bound and mixer.dt_proj.weight.abs().max() > 0.9 * bound
    # out_proj: kaiming-uniform bound 1/sqrt(fan_in), divided by sqrt(n_layer)
    out_bound = 1 / math.sqrt(512) / math.sqrt(4)
    assert 0.95 * out_bound < mixer.out_proj.weight.abs().max() <= out_bound
    assert abs(model.backbone.embedding.weight.std().item() - 0.02) < 0.001
    assert model.lm_head.weight is model.backbone.embedding.weight


def test_transformer_has_no_biases_and_ties_embeddings():
    model = build_model("transformer-tiny", vocab_size=VOCAB)
    assert isinstance(model, Transformer)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    assert model.lm_head.weight is model.embedding.weight
    assert model.embedding.num_embeddings == 64


@pytest.mark.parametrize("arch", ["mamba", "mamba_lti", "transformer"])
def test_tiny_model_overfits_one_batch(arch):
    torch.manual_seed(0)
    model = build_model(f"{arch}-tiny", vocab_size=VOCAB)
    ids = torch.randint(0, VOCAB, (4, 33))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_rotary_angles_stay_float32_in_a_bf16_model():
    """The independent oracle: theta^(-2i/d) * position in float64."""
    model = build_model("transformer-tiny", vocab_size=64).to(torch.bfloat16)
    cos, sin = model.rotary(torch.arange(1000, 1024))
    head_dim = model.config.d_model // model.config.n_head
    positions = torch.arange(1000, 1024, dtype=torch.float64)
    inv_freq = model.config.rope_theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(positions, inv_freq)
    assert cos.dtype == sin.dtype == torch.float32
    assert torch.allclose(cos.double(), angles.cos(), atol=1e-4) and torch.allclose(
        sin.double(), angles.sin(), atol=1e-4
    )


def test_absolute_positions_are_vaswanis_sinusoids_added_to_the_embeddings():
    """Table 11's MHA-Abs, against "Attention is all you need" (3.5) written out in float64:
    PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)). With every block's
    residual output zeroed, the logits are those of the embeddings plus PE alone."""
    model = tiny("transformer_abs")
    d = model.config.d_model
    pos = torch.arange(40, dtype=torch.float64)[:, None]
    angle = pos / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    expected = torch.empty(40, d, dtype=torch.float64)
    expected[:, 0::2], expected[:, 1::2] = angle.sin(), angle.cos()
    with torch.no_grad():
        for block in model.layers:
            block.attn.out_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        ids = torch.randint(0, VOCAB, (2, 40))
        got = model(ids)
        want = model.lm_head(model.norm_f(model.embedding(ids) + expected))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert model.config.position == "sinusoidal" and tiny("transformer").config.position == "rope"
    with pytest.raises(ValueError, match="position='alibi': unknown; known: rope, sinusoidal"):
        model_config("transformer-tiny", position="alibi")


def test_the_lti_mixer_is_a_convolution_with_a_kernel_that_does_not_depend_on_the_input():
    """Table 1's S4 inside the Mamba block, against its defining property, written out here: after
    in_proj and the conv, y = K * x + D x with the fixed kernel K_k = sum_n C_n exp(k dt A_n) dt B_n
    (dt = softplus(dt_bias)), gated by silu(z), then out_proj."""
    torch.manual_seed(0)
    mixer = tiny("mamba_lti").backbone.layers[0].mixer
    with torch.no_grad():
        for p in (mixer.B, mixer.C, mixer.dt_bias, mixer.conv1d.bias):
            p.add_(0.3 * torch.randn_like(p))
    hidden = torch.randn(2, 40, 64, dtype=torch.float64)
    length, channels = hidden.shape[1], mixer.d_inner
    x, z = (hidden @ mixer.in_proj.weight.T).transpose(1, 2).chunk(2, dim=1)
    x = F.silu(F.conv1d(x, mixer.conv1d.weight, mixer.conv1d.bias, padding=3, groups=channels)[..., :length])
    dt = F.softplus(mixer.dt_bias)[:, None, None]  # (d_inner, 1, 1)
    k = torch.arange(length, dtype=torch.float64)[None, :, None]
    A = -torch.exp(mixer.A_log)[:, None, :]
    kernel = (mixer.C[:, None, :] * torch.exp(k * dt * A) * dt * mixer.B[:, None, :]).sum(-1)  # (d_inner, L)
    y = (
        F.conv1d(F.pad(x, (length - 1, 0)), kernel.flip(-1)[:, None, :], groups=channels)
        + x * mixer.D[:, None]
    )
    expected = (y * F.silu(z)).transpose(1, 2) @ mixer.out_proj.weight.T
    with torch.no_grad():
        assert torch.allclose(mixer(hidden), expected, rtol=1e-9, atol=1e-10)
    assert not hasattr(mixer, "x_proj") and not hasattr(mixer, "dt_proj")  # nothing selects on the input


@pytest.mark.parametrize("arch", sorted(SIZES))
def test_a_family_is_recurrent_exactly_when_its_decoding_cache_does_not_grow_with_the_length(arch):
    from seqarena.bench import cache_bytes
    from seqarena.models import FAMILIES

    model = tiny(arch, dtype=torch.float32)
    short, long = (cache_bytes(model.allocate_cache(1, length)) for length in (16, 64))
    assert short > 0
    assert FAMILIES[arch].recurrent == (short == long)
