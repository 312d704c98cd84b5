"""Distortion-aware nucleus sampling on the offline SmolLM2-135M-Instruct, with the per-step distortion printed."""

import hf_decoding as hfd


def main(max_new_tokens: int = 32) -> None:
    model, tok = hfd.load_default_model()
    hfd.enable(model)
    messages = [{"role": "user", "content": "Give me one sentence about the sea."}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = tok([text], return_tensors="pt")
    for decoding, top_p in (("sample", 0.9), ("distortion_aware_nucleus", 0.9)):
        out = model.generate(
            **inputs,
            decoding=decoding,
            do_sample=True,
            top_p=top_p,
            top_k=0,
            max_new_tokens=max_new_tokens,
            seed=0,
            return_dict_in_generate=True,
        )
        completion = tok.decode(out.sequences[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        print(f"[{decoding}] {completion.strip()!r}")
        print(f"  per-step distortion: {[round(d, 4) for d in out.distortion.per_step[0].tolist()[:8]]} ...")
        print(f"  total distortion: {out.distortion.total[0].item():.4f}")


if __name__ == "__main__":
    main()
