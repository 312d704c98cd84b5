"""Register your own decoding method on top of the shared loop, then call it with `decoding=`."""

import torch

import hf_decoding as hfd
from hf_decoding.generation import sampling_loop


def sample_then_greedy(model, input_ids, logits_processor, stopping_criteria, generation_config,
                       greedy_after: int = 8, **model_kwargs):
    """Samples the first `greedy_after` tokens, then continues greedily (an illustration of a step hook)."""
    def hook(outputs, chain, unfinished):
        # The hook runs before the processors; it may re-parameterise them. Here it switches the draw mode.
        generation_config.do_sample = step_counter[0] < greedy_after
        step_counter[0] += 1

    step_counter = [0]
    result, _ = sampling_loop(model, input_ids, logits_processor, stopping_criteria, generation_config,
                              model_kwargs, step_hook=hook)
    return result


def main() -> None:
    hfd.register_decoder("sample_then_greedy", sample_then_greedy, overwrite=True)
    model, tok = hfd.load_default_model()
    hfd.enable(model)
    inputs = tok(["Once upon a time"], return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**inputs, decoding="sample_then_greedy", greedy_after=4, do_sample=True, top_k=0,
                         max_new_tokens=16)
    print(tok.decode(out[0], skip_special_tokens=True))
    print("decoders:", hfd.available_decoders())


if __name__ == "__main__":
    main()
