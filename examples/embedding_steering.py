"""Token probability in the output embeddings of SmolLM2: fit it, steer one token with it, prune dimensions.

Runs in well under a minute on a CPU: a dozen short texts are enough to fit the log-linear encoding
`−log ᾱ_w ≈ A·E_w + B` (Cho et al., arXiv 2406.01468) and to steer a token. See docs/methods/embeddings.md.
"""

import torch

import hf_decoding as hfd
from hf_decoding.analysis import embeddings as emb
from hf_decoding.processors.token_probability import TokenProbabilityLogitsProcessor

TEXTS = [
    "The cat sat on the mat and watched the birds in the garden.",
    "A good cup of tea in the morning makes the whole day better.",
    "The train to London leaves at seven o'clock from platform two.",
    "She opened the old book and found a letter hidden between the pages.",
    "Rain fell on the roof all night, and the river rose by morning.",
    "Children played football in the park until the sun went down.",
    "The scientist wrote down every result in a small blue notebook.",
    "After dinner we walked along the beach and talked about the future.",
    "The market was full of fresh bread, cheese, apples and flowers.",
    "He fixed the bicycle with a spanner and a little patience.",
    "Winter came early that year, and the lake froze in November.",
    "The museum keeps a painting of the harbour from two hundred years ago.",
]


def next_token_probability(model, inputs, token_id, processor=None):
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1]  # (1, V)
    if processor is not None:
        logits = processor(inputs["input_ids"], logits)
    return torch.softmax(logits.double(), -1)[0, token_id].item()


def main() -> None:
    model, tok = hfd.load_default_model()
    report = emb.probability_encoding(model, tok, TEXTS, num_dimensions=(8, 64, 576), random_repeats=1, progress=False)
    print(
        f"MLR of -log(mean probability) on {report.hidden_size} output-embedding dims, "
        f"{report.num_positions} positions: held-out R2 {report.fit.r2:.3f}, Spearman {report.fit.spearman:.3f}"
    )
    print(f"mean-logit baseline (no fit): Spearman {report.baseline['spearman']:.3f}")

    inputs = tok(["My favourite animal in the whole world is the"], return_tensors="pt")
    cat = tok.convert_tokens_to_ids("Ġcat")
    before = next_token_probability(model, inputs, cat)
    with emb.steer_token_probability(model, [cat], 5.0, report=report, direction="least_squares"):
        steered = next_token_probability(model, inputs, cat)
    exact = next_token_probability(model, inputs, cat, TokenProbabilityLogitsProcessor(cat, 5.0))
    print(
        f"p(' cat'): {before:.4f}; embedding edit x5: {steered:.4f} (x{steered / before:.2f}); "
        f"exact processor x5: {exact:.4f} (x{exact / before:.2f})"
    )

    saved = model.lm_head.weight.detach().clone()
    prompt = tok(["The weather today is"], return_tensors="pt")
    greedy = dict(do_sample=False, max_new_tokens=12, temperature=None, top_p=None, top_k=None)
    plain = model.generate(**prompt, **greedy)
    with emb.prune_output_dimensions(model, 0.3, report=report):
        pruned = model.generate(**prompt, **greedy)
    print("greedy, full model:    ", repr(tok.decode(plain[0], skip_special_tokens=True)))
    print("greedy, 30% dims pruned:", repr(tok.decode(pruned[0], skip_special_tokens=True)))
    print(
        "weights restored bit-identically:",
        torch.equal(model.lm_head.weight, saved),
        "| still tied:",
        model.lm_head.weight is model.get_input_embeddings().weight,
    )


if __name__ == "__main__":
    main()
