"""``labkit preflight``: the first hour's check, ending in one line, "ready" or what to fix.

Lab 00 and instructors (on every laptop, on the JupyterHub image, the evening before) run the same
steps: the doctor, the model store (pulled and re-hashed), a generated sentence, a generated
image, a Ray cluster whose dashboard answers. Each step is timed and set beside what the same step
took on the machine the labs' minutes were timed on, so "this laptop is 2x slower" shows before a
lab runs long. Speed never blocks; a failed step always does, with the fix.

Example:
    >>> from labkit.preflight import run_preflight
    >>> report = run_preflight("cpu")          # doctest: +SKIP
    >>> print(report.verdict())                # doctest: +SKIP
    READY: this machine is set for the labs.
"""

from __future__ import annotations

import statistics
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from labkit import doctor, profiles, store
from labkit.i18n import language, tr

if TYPE_CHECKING:
    from labkit.llm import Generation

# What each timed step took on the machine the labs' stated minutes were timed on (2-core Intel
# Xeon with AVX-512 and AMX, bf16, cpu profile; `labkit preflight --profile cpu`, 2026-12-04).
# Rates, so that smoke mode's shorter steps compare too.
REFERENCE = {"chat_tokens_per_s": 33.0, "image_s_per_step": 0.012, "ray_start_s": 5.6}
PROMPT = "In one sentence, what is a large language model?"
IMAGE_PROMPT = "a red circle"


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str
    fix: str = ""
    speed: float | None = None  # this machine's rate over the reference machine's (>1: faster)


@dataclass
class Preflight:
    profile: str
    steps: list[Step] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(s.ok for s in self.steps)

    def slowdown(self) -> float | None:
        """How many times the reference machine's minutes the labs will take here (None: not measured)."""
        speeds = [s.speed for s in self.steps if s.speed]
        return 1 / statistics.median(speeds) if speeds else None

    def table(self) -> str:
        width = max(len(s.name) for s in self.steps)
        lines = []
        for s in self.steps:
            pace = f"  {tr('speed', '速度')} {s.speed:.2f}x" if s.speed else ""
            lines.append(f"[{'ok' if s.ok else 'FAIL':<4}] {s.name:<{width}}  {s.seconds:6.1f} s{pace}  {s.detail}")
        return "\n".join(lines)

    def verdict(self) -> str:
        if not self.ready:
            fixes = [f"  {i}. {s.name}: {s.fix or s.detail}" for i, s in enumerate(
                (s for s in self.steps if not s.ok), 1)]
            return "\n".join([tr("NOT READY: fix these, then run the pre-flight again:",
                                 "还没准备好：先修复下面这些，再运行一次预检："), *fixes])
        slow = self.slowdown()
        pace = ""
        if slow is not None and slow > 1.5:
            pace = tr(f" Labs will take about {slow:.1f}x their stated minutes here.",
                      f"在这台机器上，实验用时约为标注时间的 {slow:.1f} 倍。")
        return (tr("READY: this machine is set for the labs.", "可以开始：这台机器已经准备好做实验了。") + pace
                + chat_language_note(self.profile))

    def as_dict(self) -> dict:
        return {"profile": self.profile, "ready": self.ready, "slowdown": self.slowdown(),
                "steps": [asdict(s) for s in self.steps]}


def chat_language_note(profile: str) -> str:
    """Advice when the labs are read in a language the chat model answers poorly in (else "")."""
    spec = profiles.model_for("chat", profile)
    if language() != "zh" or "zh" in spec.languages:
        return ""
    return (f"\n提示：对话模型 {spec.name} 主要用英文训练，中文问题常常答非所问。能连上镜像或 ModelScope 时，"
            "换成中文能力好的 qwen2.5-0.5b-instruct（约 1 GB）：\n"
            "  HF_ENDPOINT=https://hf-mirror.com labkit models pull qwen2.5-0.5b-instruct\n"
            "  （或 pip install modelscope 后加 --source modelscope）\n"
            f"  export LABKIT_CHAT_MODEL=qwen2.5-0.5b-instruct，再重启 JupyterLab。没有网络时继续用 {spec.name} 即可。"
            )


def doctor_step(profile: str, checks: list[doctor.Check] | None = None) -> Step:
    """The doctor's verdict as a step (``checks``: a run already made, to judge without re-running)."""
    t0 = time.perf_counter()
    checks = checks if checks is not None else doctor.run_checks(profile)
    failed = [c for c in checks if c.status == "fail"]
    return Step("doctor", not failed, time.perf_counter() - t0,
                tr(f"{len(checks)} checks, {len(failed)} failed", f"{len(checks)} 项检查，{len(failed)} 项失败"),
                "; ".join(f"{c.name}: {c.fix}" for c in failed))


def models_step(profile: str) -> Step:
    t0 = time.perf_counter()
    try:
        store.pull(profile=profile, progress=False)
    except Exception as exc:  # noqa: BLE001 - any failure to pull is this step's finding
        return Step("models", False, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}",
                    tr(f"run `labkit models pull --profile {profile}`",
                       f"运行 `labkit models pull --profile {profile}`"))
    results = [store.verify(spec.name, progress=False) for spec in profiles.models_for_profile(profile)]
    broken = [r for r in results if not r.ok]
    return Step("models", not broken, time.perf_counter() - t0,
                ", ".join(r.name for r in results) + tr(" verified", " 校验通过") if not broken else
                "; ".join(str(r) for r in broken),
                "; ".join(f"labkit models pull --force {r.name}" for r in broken))


def sentence_step(profile: str, *, lm=None, max_new_tokens: int = 32) -> tuple[Step, Generation]:
    """A reply from the chat model (``lm``, else the profile's, loaded here and timed with the reply)."""
    from labkit.llm import load_chat_model

    t0 = time.perf_counter()
    lm = lm or load_chat_model(profile)
    reply = lm.chat(PROMPT, max_new_tokens=max_new_tokens)
    ok = reply.new_tokens > 0 and bool(reply.text.strip())
    rate = reply.tokens_per_s
    return (Step("sentence", ok, time.perf_counter() - t0,
                 f"{lm.name}: {reply.new_tokens} tokens, {rate:.1f} tokens/s",
                 tr("the chat model produced no text: run `labkit models verify`",
                    "对话模型没有生成文字：运行 `labkit models verify`"),
                 # the reference rate is the cpu profile's own model's; another model is not comparable
                 speed=rate / REFERENCE["chat_tokens_per_s"] if lm.name == profiles.MODEL_FOR[("chat", "cpu")]
                 else None), reply)


def image_step(profile: str, *, steps: int | None = None):
    """A picture from the profile's image model; ok when it is not blank."""
    import numpy as np

    from labkit import diffusion

    t0 = time.perf_counter()
    pipe = diffusion.load_image_pipeline(profile)
    steps = steps or diffusion.default_sampling(pipe)[0]
    t1 = time.perf_counter()
    image = diffusion.generate(pipe, IMAGE_PROMPT, steps=steps, seed=0, progress=False)[0]
    per_step = (time.perf_counter() - t1) / steps
    spread = float(np.asarray(image, dtype=np.float32).std())
    return (Step("image", spread > 5.0, time.perf_counter() - t0,
                 f"{image.width}x{image.height}, {steps} steps, {per_step * 1000:.0f} ms/step",
                 tr("the image came out blank: run `labkit models verify`",
                    "生成的图像是空白的：运行 `labkit models verify`"),
                 speed=REFERENCE["image_s_per_step"] / per_step if profile == "cpu" else None), image)


def ray_step() -> Step:
    """A local Ray cluster (token auth, loopback dashboard) that answers, then ended."""
    from labkit.ray_runtime import init_ray, shutdown_ray

    t0 = time.perf_counter()
    try:
        info = init_ray(num_cpus=1)
        started = time.perf_counter() - t0
        if not info.dashboard_url:
            return Step("ray", False, started, tr("Ray started without its dashboard", "Ray 启动了，但没有仪表盘"),
                        tr("run `make sync` (installs ray[default] as locked)",
                           "运行 `make sync`（按锁文件安装 ray[default]）"))
        with urllib.request.urlopen(info.dashboard_url, timeout=10) as response:
            status = response.status
    except Exception as exc:  # noqa: BLE001 - why Ray or its dashboard did not come up is the finding
        return Step("ray", False, time.perf_counter() - t0, f"{type(exc).__name__}: {str(exc)[:200]}",
                    tr("close other Ray sessions and kernels, free memory, then try again; "
                       "`labkit doctor` lists the rest",
                       "关掉其他 Ray 会话和内核、释放内存后重试；其余问题见 `labkit doctor`"))
    finally:
        shutdown_ray()
    return Step("ray", status == 200, started, tr(f"dashboard answered {status} at {info.dashboard_url}",
                                                  f"仪表盘在 {info.dashboard_url} 返回 {status}"),
                tr("the dashboard did not answer 200", "仪表盘没有返回 200"),
                speed=REFERENCE["ray_start_s"] / started)


def run_preflight(profile: str | None = None, *, quick: bool = False) -> Preflight:
    """Every step in order (``quick``: fewer tokens and denoising steps, as in smoke mode)."""
    profile = profiles.check_profile(profile)
    report = Preflight(profile)
    report.steps.append(doctor_step(profile))
    report.steps.append(models_step(profile))
    if not report.steps[-1].ok:  # without the models the rest cannot run
        return report
    report.steps.append(sentence_step(profile, max_new_tokens=8 if quick else 32)[0])
    report.steps.append(image_step(profile, steps=4 if quick else None)[0])
    report.steps.append(ray_step())
    return report
