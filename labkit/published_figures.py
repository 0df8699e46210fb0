"""Figures from the papers, recomputed with ``labkit.estimate``: the estimator's exam.

Each row names its source, the published number, ours, and whether the paper printed the number
(``published``) or we derive it from what the paper printed (``derived``, for example an MFU
that follows from a GPU-hour count). Model shapes are those the papers and their released
configs give. ``tests/test_estimate.py`` holds every ``published`` row to within 5%.

Example:
    >>> rows = figures()
    >>> row = next(r for r in rows if r["source"].startswith("ZeRO"))
    >>> row["published"], round(row["ours"], 1)
    (120.0, 120.0)
"""

from __future__ import annotations

from labkit import estimate
from labkit.estimate import ModelShape

GB = 1e9

LLAMA2_7B = ModelShape(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008,
                       name="Llama 2 7B")
LLAMA2_70B = ModelShape(vocab_size=32000, hidden_size=8192, num_layers=80, num_heads=64, num_kv_heads=8,
                        intermediate_size=28672, name="Llama 2 70B")
LLAMA3_405B = ModelShape(vocab_size=128256, hidden_size=16384, num_layers=126, num_heads=128, num_kv_heads=8,
                         intermediate_size=53248, name="Llama 3.1 405B")
GPT3_175B = ModelShape(vocab_size=50257, hidden_size=12288, num_layers=96, num_heads=96, intermediate_size=4 * 12288,
                       gated_mlp=False, tie_embeddings=True, name="GPT-3 175B")
OPT_13B = ModelShape(vocab_size=50272, hidden_size=5120, num_layers=40, num_heads=40, intermediate_size=4 * 5120,
                     gated_mlp=False, tie_embeddings=True, name="OPT-13B")
MEGATRON_1T = ModelShape(vocab_size=51200, hidden_size=25600, num_layers=128, num_heads=160,
                         intermediate_size=4 * 25600, gated_mlp=False, tie_embeddings=True, name="Megatron 1T")


def _row(source: str, quantity: str, unit: str, published: float, ours: float, kind: str = "published",
         note: str = "") -> dict:
    return {"source": source, "quantity": quantity, "unit": unit, "published": published, "ours": ours,
            "ratio": ours / published, "kind": kind, "note": note}


def figures() -> list[dict]:
    """Every comparison, as rows for a table (``pandas.DataFrame(figures())``)."""
    rows = []
    zero = "ZeRO (Rajbhandari et al., SC'20), Figure 1"
    for stage, published in ((0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)):
        ours = estimate.model_state_bytes(7.5e9, precision="mixed", zero_stage=stage, devices=64).total / GB
        rows.append(_row(zero, f"model states per GPU, 7.5B params, 64 GPUs, ZeRO stage {stage}", "GB",
                         published, ours))
    for model, published in ((LLAMA2_7B, 6.74e9), (LLAMA2_70B, 68.98e9), (LLAMA3_405B, 405e9), (GPT3_175B, 175e9)):
        rows.append(_row(f"{model.name} (model card / paper)", "parameters", "billions", published / 1e9,
                         model.params / 1e9, note="GPT-3's count includes biases and position embeddings"
                         if model is GPT3_175B else ""))
    vllm = "vLLM (Kwon et al., SOSP'23), section 3"
    rows.append(_row(vllm, "KV cache per token, OPT-13B, fp16", "KB", 800,
                     estimate.kv_cache_bytes(OPT_13B, batch_size=1, seq_len=1, dtype="fp16") / 1024))
    rows.append(_row(vllm, "KV cache of one 2,048-token request, OPT-13B", "GB", 1.6,
                     estimate.kv_cache_bytes(OPT_13B, batch_size=1, seq_len=2048, dtype="fp16") / 2**30))
    rows.append(_row("GPT-3 (Brown et al., 2020), Table D.1", "training compute, 300B tokens", "FLOPs", 3.14e23,
                     estimate.training_flops(GPT3_175B, tokens=300e9, attention=False),
                     note="6ND, as the paper counts"))
    rows.append(_row("Llama 3 (Llama Team, 2024)", "training compute, 405B on 15.6T tokens", "FLOPs",
                     3.8e25, estimate.training_flops(LLAMA3_405B, tokens=15.6e12, attention=False)))
    for tflops, published in ((430, 0.43), (400, 0.41), (380, 0.38)):
        rows.append(_row("Llama 3 (Llama Team, 2024), Table 4", f"BF16 MFU at {tflops} TFLOP/s per H100", "fraction",
                         published, tflops / estimate.GPU_PEAK_TFLOPS["H100"]))
    # Megatron-LM counts hardware FLOPs with recomputation: 8 per weight per token, not 6.
    megatron_flops = estimate.training_flops(MEGATRON_1T, tokens=450e9, attention=False) * 8 / 6
    rows.append(_row("Megatron-LM (Narayanan et al., SC'21), training-time estimate",
                     "days to train 1T params on 450B tokens, 3,072 A100s at 163 TFLOP/s each", "days", 84,
                     estimate.training_days(megatron_flops, gpus=3072, mfu=163 / 312, gpu="A100"),
                     note="8ND with recomputation, as the paper counts"))
    for model, hours in ((LLAMA2_7B, 184_320), (LLAMA2_70B, 1_720_320)):
        flops = estimate.training_flops(model, tokens=2e12, seq_len=4096)
        implied = flops / (hours * 3600 * estimate.GPU_PEAK_TFLOPS["A100"] * 1e12)
        rows.append(_row("Llama 2 (Touvron et al., 2023), Table 2", f"{model.name}: {hours:,} A100 GPU-hours for 2T "
                         "tokens, implied MFU", "fraction", implied, implied, kind="derived",
                         note="the paper gives GPU-hours; the MFU is ours"))
    mega = estimate.training_flops(GPT3_175B, tokens=1.0, seq_len=2048)
    tokens_per_s = 0.552 * 12288 * estimate.GPU_PEAK_TFLOPS["A100"] * 1e12 / mega
    rows.append(_row("MegaScale (Jiang et al., NSDI'24), abstract", "175B at 55.2% MFU on 12,288 A100s: tokens/s",
                     "tokens/s", tokens_per_s, tokens_per_s, kind="derived",
                     note=f"300B tokens in {300e9 / tokens_per_s / 86400:.1f} days; Megatron-LM at 1/1.34 of the MFU"))
    return rows
