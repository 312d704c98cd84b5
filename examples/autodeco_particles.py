"""AutoDeco's heads choosing how boldly each particle samples, while a PRM decides which particles survive.

Runs offline on SmolLM2-135M-Instruct with the shipped AutoDeco heads and the shipped learned PRM (both a few MB).
"""

import torch

import hf_decoding as hfd
from hf_decoding.eval.arithmetic import make_problems, problem_inputs


def main() -> None:
    model, tok = hfd.load_default_autodeco()  # SmolLM2 + its trained heads
    prm = hfd.load_default_prm(model.llm, tok)  # the learned PRM, on the same frozen base
    problem = make_problems(1, seed=3, steps=1)[0]
    inputs = problem_inputs(tok, [problem])
    with torch.no_grad():
        out = model.generate(
            **inputs,
            decoding="particle_filter",
            reward_model=prm,
            reward_prompts=[problem.question],
            tokenizer=tok,
            num_particles=4,
            top_k=0,
            max_new_tokens=48,
            seed=0,
            return_dict_in_generate=True,
        )
    width = inputs["input_ids"].shape[1]
    alive = ~out.autodeco.temperature[0].isnan()
    print("question:", problem.question, " gold:", problem.answer)
    print("returned:", tok.decode(out.sequences[0, width:], skip_special_tokens=True).strip())
    print("temperature per token:", [round(t, 2) for t in out.autodeco.temperature[0][alive].tolist()])
    print("top-p per token:      ", [round(p, 2) for p in out.autodeco.top_p[0][alive].tolist()])
    print("particle log-weights:", [round(w, 3) for w in out.particles.log_weights[0].tolist()])
    print("cost:", out.cost.forward_passes, "forward passes,", out.cost.reward_calls, "PRM calls")


if __name__ == "__main__":
    main()
