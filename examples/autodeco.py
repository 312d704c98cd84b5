"""AutoDeco on the offline SmolLM2-135M-Instruct: fresh heads, a few training steps, batched generation with the
per-token temperature and top-p printed, and a save/reload of the heads-only checkpoint (< 60 s on a CPU)."""

import tempfile

from transformers import AutoModelForCausalLM

import hf_decoding as hfd
from hf_decoding.autodeco import AutoDecoModelForCausalLM, AutoDecoTrainingConfig, register_auto_classes, train_heads

ROWS = [
    {"prompt": [{"role": "user", "content": "What is 6 * 7? Reply with only the number."}], "completion": "42"},
    {"prompt": [{"role": "user", "content": "What is 12 + 30? Reply with only the number."}], "completion": "42"},
    {"prompt": [{"role": "user", "content": "Name a color."}], "completion": "Blue."},
    {"prompt": [{"role": "user", "content": "Write one word about the sea."}], "completion": "Waves."},
]


def main(max_new_tokens: int = 16) -> None:
    register_auto_classes()  # model_type "autodeco" for AutoModelForCausalLM (idempotent)
    base, tok = hfd.load_default_model()
    # Fresh heads whose step-0 predictions are T=0.7, p=0.9; the base is composed, not copied.
    model = AutoDecoModelForCausalLM.from_base(base, init_temperature=0.7, init_top_p=0.9, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        config = AutoDecoTrainingConfig(
            output_dir=tmp,
            max_steps=8,
            learning_rate=3e-3,
            per_device_train_batch_size=4,
            warmup_steps=0,
            progress_bar=False,
        )
        result = train_heads(model, ROWS, tok, config)
        print(f"trained {result.global_step} steps, last loss {result.history[-1]['loss']:.3f}")
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, base_model=base)  # heads only: ~1.1 MB
        print(f"reloaded {type(reloaded).__name__}; heads {model.heads.size_bytes() / 2**20:.2f} MB")

    messages = [
        [{"role": "user", "content": "What is 9 * 8? Reply with only the number."}],
        [{"role": "user", "content": "Give me one sentence about the sea."}],
    ]
    texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    inputs = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    # decoding="autodeco" is the wrapper's default; temperature/top_p would multiply the predictions.
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, seed=0, return_dict_in_generate=True)
    prompt_length = inputs["input_ids"].shape[1]
    for row in range(len(texts)):
        completion = tok.decode(out.sequences[row, prompt_length:], skip_special_tokens=True)
        alive = out.autodeco.temperature[row] > 0
        t = out.autodeco.temperature[row][alive]
        p = out.autodeco.top_p[row][alive]
        print(f"[autodeco] {completion.strip()!r}")
        print(f"  T per token: {[round(v, 2) for v in t.tolist()[:8]]} ... mean {t.mean():.3f}")
        print(f"  p per token: {[round(v, 2) for v in p.tolist()[:8]]} ... mean {p.mean():.3f}")
        print(f"  total distortion: {out.distortion.total[row].item():.3f}")
    greedy = model.generate(**inputs, max_new_tokens=max_new_tokens, temperature=0.0)  # T_user = 0: greedy
    print("[greedy]", repr(tok.decode(greedy[0, prompt_length:], skip_special_tokens=True).strip()))


if __name__ == "__main__":
    main()
