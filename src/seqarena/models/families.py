"""The model families, one entry each: the one place that says what a family is.

A family is a model id's prefix (``mamba2-1.3b``: ``mamba2``). Its entry names the language
model and config classes that build it; its sequence mixer (an ``ssm_cfg.layer`` of
``mamba.SSM_LAYERS``, or attention); the transformers ``model_type`` it exports as (None:
transformers has no class for it); whose published rows it is set beside (the paper's Table 3:
Mamba, and Pythia for Transformer++, trained on the same data with the same tokenizer); and
whether it decodes as a recurrence, in memory constant in the length. Its sizes are
``sizes.SIZES[family]``; the workflow's schema lists the families and the exportable ones
(tested equal to this table).
"""

from dataclasses import dataclass

from seqarena.models.mamba import Mamba, MambaConfig
from seqarena.models.transformer import Transformer, TransformerConfig

ATTENTION = "attention"


@dataclass(frozen=True)
class Family:
    model: type
    config: type
    mixer: str  # mamba.SSM_LAYERS' key, or ATTENTION
    hf_model_type: str | None
    paper_family: str  # the prefix of the paper's Table 3 rows it is compared with
    recurrent: bool  # decodes with a fixed-size state (no attention layer)

    @property
    def has_ssm_state(self) -> bool:
        return self.mixer != ATTENTION


FAMILIES = {
    "mamba": Family(Mamba, MambaConfig, "Mamba1", "mamba", "Mamba", recurrent=True),
    # The paper's Table 1 ablation: Mamba's block with a time-invariant SSM (S4).
    "mamba_lti": Family(Mamba, MambaConfig, "MambaLTI", None, "Mamba", recurrent=True),
    "mamba2": Family(Mamba, MambaConfig, "Mamba2", "mamba2", "Mamba", recurrent=True),
    # Mamba-2 with attention in about one layer in ten (the Mamba-2 paper's hybrid).
    "hybrid": Family(Mamba, MambaConfig, "Mamba2", None, "Mamba", recurrent=False),
    # Mamba-3 (arXiv 2603.15569): SISO, and MIMO; transformers has no class for either.
    "mamba3": Family(Mamba, MambaConfig, "Mamba3", None, "Mamba", recurrent=True),
    "mamba3_mimo": Family(Mamba, MambaConfig, "Mamba3", None, "Mamba", recurrent=True),
    "transformer": Family(Transformer, TransformerConfig, ATTENTION, "llama", "Pythia", recurrent=False),
    # Table 11's MHA-Abs: Transformer++ with absolute sinusoidal positions.
    "transformer_abs": Family(Transformer, TransformerConfig, ATTENTION, None, "Pythia", recurrent=False),
}


def family_name(model_id: str) -> str:
    """mamba2-1.3b -> mamba2 (a name that is no family's is the caller's to refuse)."""
    return model_id.partition("-")[0]


def family_of(model_id: str) -> Family:
    name = family_name(model_id)
    if name not in FAMILIES:
        raise ValueError(f"model id {model_id!r}: unknown family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]
