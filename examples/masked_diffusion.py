"""Masked-diffusion decoding: the exact theory check on a toy joint, then `decoding="masked_diffusion"` on a masked LM.

Runs in a few seconds on CPU with no download. Set `HF_DECODING_DENOISER=<dir>` to a model written by
`hf-decoding diffusion train` to also sample English text from the trained denoiser.
"""

import os

import torch
from transformers import BertConfig, BertForMaskedLM, GenerationConfig

from hf_decoding.analysis.convergence import (
    hidden_markov_joint,
    kl_divergence,
    markov_chain_joint,
    mutual_information_terms,
    sampler_distribution,
    theorem1_bound,
)
from hf_decoding.decoders.masked_diffusion import attach_masked_diffusion_generate, masked_diffusion
from hf_decoding.diffusion import JointTableDenoiser, unmasking_schedule


def exact_check() -> None:
    """KL(p || q_T) of balanced random unmasking with a perfect denoiser: O(1/T), and 0 at T = L."""
    joint = markov_chain_joint(length=8, vocab_size=3, dependence=0.7)
    mi = float(mutual_information_terms(joint).sum())
    print(f"toy Markov chain, L=8, V=3: sum_i I(X_i; X_-i) = {mi:.3f} nats")
    for steps in (1, 2, 4, 8):
        schedule = unmasking_schedule(8, steps, "linear")
        q = sampler_distribution(joint, schedule, "random")
        kl = kl_divergence(joint.probs, q.probs)
        print(f"  T={steps}: KL(p||q_T) = {kl:.4f}   Theorem 1 bound = {theorem1_bound(joint, schedule, mi):.4f}")


def toy_decoding() -> None:
    """The decoder on a perfect denoiser: one token per step vs Fast-dLLM's threshold rule (forward passes, exact KL)."""
    joint = hidden_markov_joint(length=10, vocab_size=2, hidden_states=2, dependence=0.98, noise=0.05)
    model = JointTableDenoiser(joint)
    config = GenerationConfig(do_sample=True, top_k=0, return_dict_in_generate=True)
    empty_prompts = torch.zeros(200, 0, dtype=torch.long)
    for rule, options in (("random", {}), ("threshold", {"unmasking_threshold": 0.95})):
        out = masked_diffusion(
            model,
            empty_prompts,
            generation_config=config,
            gen_length=10,
            unmasking=rule,
            unmasking_confidence="max_prob",
            seed=0,
            **options,
        )
        law = sampler_distribution(joint, None, rule, threshold=0.95, confidence="max_prob")
        print(
            f"  {rule:<9}: {float(out.steps.float().mean()):5.2f} forward passes per sequence "
            f"(exact expectation {law.expected_steps:.2f}), KL(p||q) = {kl_divergence(joint.probs, law.probs):.4f}"
        )


def masked_lm_demo() -> None:
    """A BertForMaskedLM has no `generate`; `enable` (here: its masked-LM step) attaches one."""
    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ).eval()
    model.config.mask_token_id = 4
    attach_masked_diffusion_generate(model)  # what hf_decoding.enable(model) does for a masked LM
    prompts = torch.tensor([[0, 0, 7, 8, 9], [10, 11, 12, 13, 14]])
    for options in ({"diffusion_steps": 8}, {"diffusion_steps": 2, "unmasking_schedule": "cosine"}):
        out = model.generate(
            input_ids=prompts,
            attention_mask=(prompts != 0).long(),
            decoding="masked_diffusion",
            gen_length=8,
            return_dict_in_generate=True,
            **options,
        )
        print(f"  {options}: forward passes {out.cost.forward_passes}, tokens/forward {out.tokens_per_forward:.2f}")


def trained_denoiser_demo(path: str) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = attach_masked_diffusion_generate(AutoModelForMaskedLM.from_pretrained(path).eval())
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer(["The best way to "], return_tensors="pt", add_special_tokens=False)
    for options in ({"diffusion_steps": 64}, {"unmasking": "threshold", "unmasking_threshold": 0.9}):
        out = model.generate(
            **inputs,
            decoding="masked_diffusion",
            gen_length=64,
            block_length=32,
            eos_token_id=tokenizer.eos_token_id,
            return_dict_in_generate=True,
            **options,
        )
        text = tokenizer.decode(out.sequences[0], skip_special_tokens=True)
        print(f"  {options} ({out.cost.forward_passes} forward passes): {text!r}")


def main() -> None:
    exact_check()
    print("decoder on the perfect denoiser of a low-noise HMM (L=10, V=2), 200 samples:")
    toy_decoding()
    print("masked_diffusion on a tiny random BertForMaskedLM:")
    masked_lm_demo()
    path = os.environ.get("HF_DECODING_DENOISER")
    if path and os.path.isdir(path):
        print(f"trained denoiser at {path}:")
        trained_denoiser_demo(path)


if __name__ == "__main__":
    main()
