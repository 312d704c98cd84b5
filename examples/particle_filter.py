"""Particle filtering over reasoning steps on the offline SmolLM2-135M-Instruct, with a verifiable process reward.

Every "\\n"-separated line is a step; after each step the 4 particles are scored by the arithmetic verifier
(does every `a op b = c` they wrote hold?) and resampled when their effective sample size drops. All particles
live in one batched KV cache: resampling re-indexes cache rows, nothing is re-prefilled.
"""

import torch

import hf_decoding as hfd
from hf_decoding.rewards import ArithmeticStepVerifier


def main(num_particles: int = 4, max_new_tokens: int = 32) -> None:
    torch.set_num_threads(1)
    model, tok = hfd.load_default_model()
    hfd.enable(model)
    question = "A shelf has 6 rows of 7 books. How many books are on the shelf?"
    messages = [{"role": "user", "content": question + " Show each calculation, then say: The answer is N."}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = tok([text], return_tensors="pt")
    out = model.generate(
        **inputs,
        decoding="particle_filter",
        tokenizer=tok,
        num_particles=num_particles,
        reward_model=ArithmeticStepVerifier(),
        reward_prompts=[question],
        step_delimiter="\n",
        ess_threshold=0.5,
        do_sample=True,
        temperature=0.8,
        top_k=0,
        max_new_tokens=max_new_tokens,
        seed=0,
        return_dict_in_generate=True,
    )
    prompt_len = inputs["input_ids"].shape[1]
    print("selected:", repr(tok.decode(out.sequences[0, prompt_len:], skip_special_tokens=True)))
    print("log-weights:", [round(w, 3) for w in out.particles.log_weights[0].tolist()])
    print("ESS per step:", [round(e, 2) for e in out.particles.ess[0].tolist()])
    cost = out.cost
    print(
        f"cost: {cost.forward_passes} forward passes, {cost.generated_tokens} tokens, {cost.reward_calls} reward calls"
    )
    print("seconds:", {k: round(v, 2) for k, v in cost.seconds.items()})


if __name__ == "__main__":
    main()
