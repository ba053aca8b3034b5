"""distilabel's TextGeneration + TransformersLLM on a model (the toy policy, or a real one); prints tokens/s as JSON.

Runs inside bench/.venv-distilabel (distilabel pins its own dependency versions).
Usage: python distilabel_generate.py MODEL_PATH PROMPTS_JSONL K N MAX_NEW BATCH_PROMPTS
"""

import json
import sys
import time

from distilabel.models import TransformersLLM
from distilabel.steps.tasks import TextGeneration


def main():
    model, path, k, n, max_new, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    rows = [json.loads(x) for x in open(path)][:k]
    llm = TransformersLLM(model=model, device="cpu", torch_dtype="float32",
                          generation_kwargs={"max_new_tokens": max_new, "temperature": 1.0, "do_sample": True,
                                             "repetition_penalty": 1.0})
    task = TextGeneration(llm=llm, num_generations=n, input_batch_size=batch)
    task.load()
    inputs = [{"instruction": r["messages"][-1]["content"]} for r in rows]
    tok = llm._pipeline.tokenizer
    tokens = 0
    t0 = time.perf_counter()
    for s in range(0, len(inputs), batch):
        for out in next(task.process(inputs[s : s + batch])):
            text = out["generation"] or ""
            tokens += len(tok(text, add_special_tokens=False)["input_ids"]) + 1
    seconds = time.perf_counter() - t0
    print(json.dumps({"tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 2), "version": __import__("distilabel").__version__}))


if __name__ == "__main__":
    main()
