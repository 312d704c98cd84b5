"""Measure distortion in plain transformers `generate` (no `decoding=`) with `DistortionTracker`."""

from transformers import TemperatureLogitsWarper, TopKLogitsWarper

import hf_decoding as hfd


def main(max_new_tokens: int = 16) -> None:
    model, tok = hfd.load_default_model()
    inputs = tok(["The weather today is"], return_tensors="pt")
    tracker = hfd.DistortionTracker(temperature=0.8)
    chain = [tracker.reference, TemperatureLogitsWarper(0.8), TopKLogitsWarper(20), tracker]
    # transformers adds its own warpers after user processors: switch them off and pass the chain ourselves.
    model.generate(
        **inputs,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        logits_processor=chain,
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
    )
    print("per-step distortion:", [round(d, 3) for d in tracker.per_step[0].tolist()])
    print("total:", round(tracker.total[0].item(), 4))


if __name__ == "__main__":
    main()
