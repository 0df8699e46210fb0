"""Pipeline parallelism: one model's decoder layers split across Ray actors ("the model does not fit").

Stage 1 holds the token embeddings and the first half of the layers; stage 2 the second half,
the final norm and the output head. Each stage loads only its own tensors from the safetensors
file and keeps its own KV cache. Hidden states travel stage to stage through Ray's object store.

One stage alone would leave the other idle, so a batch is cut into micro-batches: while stage 2
runs micro-batch A, stage 1 already runs micro-batch B. Each micro-batch moves on to its next
token as soon as its last one comes back (no lock-step between micro-batches).

On one CPU this only costs (two half-models on one core each, plus copies between them); it pays
off when a model is too big for one GPU, where the alternative is not running at all.

Example:
    >>> from labkit.sharding import PipelineLM
    >>> plm = PipelineLM.from_store("smollm2-135m-instruct", stages=2)   # doctest: +SKIP
    >>> plm.generate(["What is Ray?"], max_new_tokens=16)                # doctest: +SKIP
    ['Ray is a ...']
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from labkit.hf_compat import cache_argument
from labkit.ray_runtime import init_ray


class PipelineStage:
    """Layers ``[first, last)`` of a decoder-only model, run as one Ray actor."""

    def __init__(self, path: str, first: int, last: int, *, dtype: str = "float32", device: str = "cpu"):
        from safetensors import safe_open
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(path, local_files_only=True)
        total = config.num_hidden_layers
        if not 0 <= first < last <= total:
            raise ValueError(f"layers [{first}, {last}) are not within the model's {total} layers")
        self.is_first, self.is_last = first == 0, last == total
        config.num_hidden_layers = last - first  # this stage's own copy of the model holds only its layers
        self.config = config
        self.dtype, self.device = getattr(torch, dtype), torch.device(device)
        model = AutoModel.from_config(config, dtype=self.dtype, attn_implementation="sdpa")

        # Read only this stage's tensors: the whole point is that no process holds the whole model.
        wanted, head = {}, None
        with safe_open(Path(path) / "model.safetensors", framework="pt") as f:
            for key in f.keys():
                name = key.removeprefix("model.")
                if name.startswith("layers."):
                    index = int(name.split(".")[1])
                    if first <= index < last:
                        wanted[f"layers.{index - first}." + name.split(".", 2)[2]] = f.get_tensor(key)
                elif name == "embed_tokens.weight" and (self.is_first or (self.is_last and config.tie_word_embeddings)):
                    wanted[name] = f.get_tensor(key)
                elif name == "norm.weight" and self.is_last:
                    wanted[name] = f.get_tensor(key)
                elif key == "lm_head.weight" and self.is_last:
                    head = f.get_tensor(key)
        model.load_state_dict(wanted, strict=False)
        if self.is_last:
            weight = head if head is not None else wanted["embed_tokens.weight"]
            self.head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=self.dtype)
            self.head.weight.data.copy_(weight)
            self.head.to(self.device)
        if not self.is_first:
            model.embed_tokens = None  # its inputs are hidden states; free the embedding table
        if not self.is_last:
            model.norm = torch.nn.Identity()  # the final norm belongs after the last layer only
        self.model = model.to(self.device).eval()
        self._cache_arg = cache_argument(self.model)
        self.caches: dict[int, object] = {}
        self.busy_seconds = 0.0

    def forward(self, micro_batch: int, x: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, start: bool) -> torch.Tensor:
        """Token ids (stage 1) or hidden states in; hidden states, or the greedy next tokens (last stage), out."""
        from transformers import DynamicCache

        t0 = time.perf_counter()
        if start:  # a new prompt for this micro-batch: forget its old cache
            self.caches[micro_batch] = DynamicCache(config=self.config)
        inputs = {"input_ids": x} if self.is_first else {"inputs_embeds": x.to(self.dtype)}
        with torch.inference_mode():
            out = self.model(**{k: v.to(self.device) for k, v in inputs.items()},
                             attention_mask=attention_mask.to(self.device), position_ids=position_ids.to(self.device),
                             **{self._cache_arg: self.caches[micro_batch]}, use_cache=True)
            hidden = out.last_hidden_state
            result = self.head(hidden[:, -1]).argmax(-1) if self.is_last else hidden
        self.busy_seconds += time.perf_counter() - t0
        return result.cpu()

    def stats(self) -> dict:
        params = sum(p.numel() for p in self.model.parameters()) + (self.head.weight.numel() if self.is_last else 0)
        return {"layers": self.config.num_hidden_layers, "params": params, "busy_seconds": self.busy_seconds}


@dataclass
class PipelineResult:
    texts: list[str]
    token_ids: list[list[int]]
    seconds: float
    new_tokens: int
    stage_busy: list[float]  # seconds each stage spent computing during this call

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


class PipelineLM:
    """A causal LM split into ``stages`` Ray actors; greedy generation with micro-batches."""

    def __init__(self, path: str | Path, *, stages: int = 2, dtype: str = "float32", num_cpus: float = 1,
                 num_gpus: float = 0):
        import ray
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        init_ray()
        path = str(path)
        layers = AutoConfig.from_pretrained(path, local_files_only=True).num_hidden_layers
        if not 2 <= stages <= layers:
            raise ValueError(f"stages must be between 2 and the model's {layers} layers, got {stages}")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        bounds = [round(i * layers / stages) for i in range(stages + 1)]
        self.layer_ranges = list(zip(bounds[:-1], bounds[1:], strict=True))
        actor = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(PipelineStage)
        device = "cuda" if num_gpus else "cpu"
        self.stages = [actor.remote(path, a, b, dtype=dtype, device=device) for a, b in self.layer_ranges]
        self.stage_info = ray.get([s.stats.remote() for s in self.stages])  # waits until every stage is loaded
        eos = GenerationConfig.from_pretrained(path, local_files_only=True).eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])

    @classmethod
    def from_store(cls, name: str, **kwargs) -> PipelineLM:
        from labkit import store

        return cls(store.model_path(name), **kwargs)

    def generate(self, prompts: list[str], *, max_new_tokens: int = 32, micro_batches: int = 2,
                 chat: bool = True) -> PipelineResult:
        """Greedy replies for ``prompts``, the batch cut into ``micro_batches`` that flow through the stages."""
        import ray

        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("prompts must be a non-empty list of non-empty strings")
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                    add_generation_prompt=True) if chat else p for p in prompts]
        size = -(-len(texts) // micro_batches)
        groups = [list(range(i, min(i + size, len(texts)))) for i in range(0, len(texts), size)]
        busy0 = ray.get([s.stats.remote() for s in self.stages])
        t0 = time.perf_counter()

        state = {}
        for m, rows in enumerate(groups):
            enc = self.tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True, add_special_tokens=False)
            mask = enc["attention_mask"]
            # Same positions as transformers' generate(): count only real tokens, so left padding is invisible.
            positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
            state[m] = {"rows": rows, "x": enc["input_ids"], "mask": mask, "pos": positions, "start": True,
                        "out": [[] for _ in rows], "done": [False] * len(rows)}

        def submit(m: int):
            s = state[m]
            ref = s["x"]
            for stage in self.stages:  # each stage's output ref goes straight to the next stage
                ref = stage.forward.remote(m, ref, s["mask"], s["pos"], s["start"])
            return ref

        pending = {submit(m): m for m in state}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            m = pending.pop(ready[0])
            s = state[m]
            tokens = ray.get(ready[0])
            for j, t in enumerate(tokens.tolist()):
                if not s["done"][j]:
                    s["out"][j].append(t)
                    s["done"][j] = t in self.eos or len(s["out"][j]) >= max_new_tokens
            if all(s["done"]):
                continue
            s["mask"] = torch.cat([s["mask"], torch.ones(len(s["rows"]), 1, dtype=s["mask"].dtype)], dim=1)
            s["pos"] = s["pos"][:, -1:] + 1
            s["x"], s["start"] = tokens[:, None], False
            pending[submit(m)] = m

        seconds = time.perf_counter() - t0
        busy1 = ray.get([s.stats.remote() for s in self.stages])
        token_ids: list[list[int]] = [[] for _ in prompts]
        for s in state.values():
            for j, i in enumerate(s["rows"]):
                token_ids[i] = s["out"][j]
        return PipelineResult(
            texts=[self.tokenizer.decode([t for t in ids if t not in self.eos], skip_special_tokens=True)
                   for ids in token_ids],
            token_ids=token_ids, seconds=seconds, new_tokens=sum(len(ids) for ids in token_ids),
            stage_busy=[b["busy_seconds"] - a["busy_seconds"] for a, b in zip(busy0, busy1, strict=True)])

    def shutdown(self) -> None:
        """Free the stage actors (and their share of the model)."""
        import ray

        for s in self.stages:
            ray.kill(s)
        self.stages = []
