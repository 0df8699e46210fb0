"""labkit: hands-on AIGC labs with real models, Ray and Kubernetes, that run on a laptop.

Modules, one per capability: ``profiles`` (which model, where, what precision), ``store``
(pull/verify models), ``llm`` (text generation), ``doctor`` (machine checks), ``notebooks``
(headless lab runner), ``exercises`` (auto-checks for notebook exercises).
"""

__version__ = "0.1.0"
