"""Register your own decoding method on top of the shared loop, then call it with `decoding=`."""

import torch

import hf_decoding as hfd
from hf_decoding.generation import SEED, Argument, DecoderCall, call_generator, decoder, sampling_loop

GREEDY_AFTER = Argument("greedy_after", "int", "tokens sampled before decoding turns greedy; defaults to 8.")


@decoder((GREEDY_AFTER, SEED))
def sample_then_greedy(call: DecoderCall):
    """Samples the first `greedy_after` tokens, then continues greedily (an illustration of a step hook)."""
    greedy_after = 8 if call["greedy_after"] is None else call["greedy_after"]
    config = call.generation_config

    def hook(outputs, chain, unfinished):
        # The hook runs before the processors; it may re-parameterise them. Here it switches the draw mode.
        config.do_sample = step_counter[0] < greedy_after
        step_counter[0] += 1

    step_counter = [0]
    result, _ = sampling_loop(call, generator=call_generator(call), step_hook=hook)
    return result


def main() -> None:
    hfd.register_decoder("sample_then_greedy", sample_then_greedy, overwrite=True)
    model, tok = hfd.load_default_model()
    hfd.enable(model)
    inputs = tok(["Once upon a time"], return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(
        **inputs, decoding="sample_then_greedy", greedy_after=4, do_sample=True, top_k=0, max_new_tokens=16
    )
    print(tok.decode(out[0], skip_special_tokens=True))
    print("decoders:", hfd.available_decoders())


if __name__ == "__main__":
    main()
