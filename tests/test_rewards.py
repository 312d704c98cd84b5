"""Reward adapters: the arithmetic verifier, a tiny random PRM in the Qwen2.5-Math-PRM layout (batched calls and
prefix reuse equal a full recompute), the outcome model, self-certainty, the callable adapter."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import build_tiny_llama
from test_particles_toys import one_thread, prompt_batch, toy_tokenizer  # noqa: F401
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForSequenceClassification,
    Qwen2ForTokenClassification,
)

from hf_decoding.decoders.particle_filter import particle_filter
from hf_decoding.errors import InvalidDecodingArgument
from hf_decoding.rewards import (
    ArithmeticStepVerifier,
    OutcomeRewardModel,
    ProcessRewardModel,
    SelfCertainty,
    as_reward_model,
    check_equations,
    extract_answer,
)

CORPUS = [
    "What is 3 + 4? Tom has 3 apples and buys 4 more.",
    "3 + 4 = 7\n\nThen 7 * 2 = 14\n\nThe answer is \\boxed{14}",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "system user assistant 0 1 2 3 4 5 6 7 8 9 = + - * /",
]


@functools.lru_cache(maxsize=1)
def prm_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<|im_start|>", "<|im_end|>", "<extra_0>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", additional_special_tokens=["<|im_start|>", "<|im_end|>", "<extra_0>"]
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    return fast


def build_qwen_prm_model(tok) -> Qwen2ForTokenClassification:
    """A random-weight two-class token classifier laid out like Qwen2.5-Math-PRM (no download)."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=2,
        pad_token_id=tok.pad_token_id,
        max_position_embeddings=512,
    )
    return Qwen2ForTokenClassification(config).eval()


@pytest.fixture(scope="module")
def prm():
    tok = prm_tokenizer()
    return ProcessRewardModel(build_qwen_prm_model(tok), tok, batch_size=3)


# ------------------------------------------------------------------------------------------------ arithmetic
def test_check_equations():
    assert check_equations("3 + 4 = 7 and 7 * 2 = 15") == (1, 2)
    assert check_equations("It costs $1,200 / 4 = $300. Then (2 + 3) x 4 = 20.") == (2, 2)
    assert check_equations("10 / 3 = 3.33") == (1, 1)
    assert check_equations("no maths here, just 12 apples = lunch") == (0, 0)


def test_verifier_scores_and_reference():
    verifier = ArithmeticStepVerifier()
    assert verifier.score(["q"], ["3 + 5 = 8\n\n8 * 2 = 15\n\nSo we are done."]) == [[0.9, 0.1, 0.5]]
    assert verifier.score_whole(["q"], ["3 + 5 = 8\n\n8 * 2 = 15"]) == [pytest.approx(0.5)]
    oracle = ArithmeticStepVerifier(references={"q": "16"})
    assert oracle.score(["q"], ["8 * 2 = 16\n\nThe answer is \\boxed{16}"]) == [[0.9, 0.99]]
    assert oracle.score(["q"], ["The answer is \\boxed{15}"]) == [[0.01]]
    assert extract_answer("so #### 1,234.0") == "1234"


# ------------------------------------------------------------------------------------------------ PRM
def test_prm_batched_equals_row_by_row(prm):
    prompts = ["What is 3 + 4?", "Tom has 3 apples."]
    texts = ["3 + 4 = 7\n\nThe answer is \\boxed{7}", "He buys 4 more\n\nthen 7 * 2 = 14\n\nso 14"]
    batched = prm.score(prompts, texts)
    assert [len(s) for s in batched] == [2, 3]
    assert all(0 < v < 1 for row in batched for v in row)
    for i in range(2):
        assert prm.score([prompts[i]], [texts[i]])[0] == pytest.approx(batched[i], abs=1e-5)


@pytest.mark.parametrize("mode", ["last", "model"])
def test_prm_session_prefix_reuse_equals_full_recompute(prm, mode):
    prompts = ["What is 3 + 4?"] * 3 + ["Tom has 3 apples."] * 3
    session = prm.open_session(prompts, num_particles=3)
    steps = [
        ["3 + 4 = 7\n\n", "Then 7 * 2 = 14\n\n", "The answer is \\boxed{14}"],
        ["He buys 4\n\n", "so 7\n\n", "and 7 + 0 = 7"],
    ]
    texts = [[""] * 6]

    def full(slots):
        stateless = prm.score_whole if mode == "model" else prm.score
        out = stateless([session.prompts[s] for s in slots], [session.text(s) for s in slots])
        return [[o] for o in out] if mode == "model" else out

    for k in range(3):
        slots = list(range(6)) if k != 1 else [0, 2, 3, 5]  # some particles skip a scoring round
        session.extend(slots, [steps[s // 3][k] + ("" if s % 3 == 0 else " ") for s in slots], [3] * len(slots))
        got = session.score(slots, mode, k)
        assert got == [pytest.approx(e, abs=1e-4) for e in full(slots)]
        session.reorder([0, 0, 2, 5, 3, 3])  # arbitrary resampling with duplicates across the batch
    assert texts  # the session's prefix reuse fed far fewer tokens than re-reading every prefix would
    assert session.tokens < sum(len(prm.prefix_ids(p)) for p in prompts) * 3


def test_prm_in_particle_filter():
    tok = prm_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=2,
        pad_token_id=0,
    )
    reward = ProcessRewardModel(Qwen2ForTokenClassification(config).eval(), tok)
    model = build_tiny_llama(seed=1)
    out = model.generate(
        **prompt_batch(2),
        custom_generate=functools.partial(particle_filter, tokenizer=toy_tokenizer()),
        num_particles=3,
        reward_model=reward,
        tokens_per_step=3,
        do_sample=True,
        max_new_tokens=9,
        seed=0,
        score_mode="last",
        return_dict_in_generate=True,
    )
    assert out.cost.reward_calls > 0 and out.cost.reward_tokens > 0
    assert torch.isfinite(out.particles.log_weights).all()


# ------------------------------------------------------------------------------------------------ others
def test_outcome_reward_model():
    tok = prm_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    orm = OutcomeRewardModel(Qwen2ForSequenceClassification(config).eval(), tok)
    scores = orm.score(["q1", "q2"], ["3 + 4 = 7", "so 14"])
    assert len(scores) == 2 and all(len(s) == 1 and 0 < s[0] < 1 for s in scores)


def test_self_certainty_needs_no_tokenizer():
    model = build_tiny_llama(seed=1)
    out = model.generate(
        **prompt_batch(2),
        custom_generate=particle_filter,
        num_particles=3,
        reward_model=SelfCertainty(),
        tokens_per_step=2,
        do_sample=True,
        max_new_tokens=6,
        seed=0,
        score_mode="last",
        return_dict_in_generate=True,
    )
    assert torch.isfinite(out.particles.log_weights).all() and out.cost.reward_calls > 0
    out = model.generate(
        **prompt_batch(1),
        custom_generate=particle_filter,
        num_particles=2,
        reward_model=SelfCertainty("self_certainty"),
        weight_transform="identity",
        tokens_per_step=2,
        do_sample=True,
        max_new_tokens=4,
        seed=0,
        return_dict_in_generate=True,
    )
    assert (out.particles.log_weights > 0).all()  # KL(U || p) >= 0


def test_callable_adapter():
    with pytest.raises(InvalidDecodingArgument, match="reward_model"):
        as_reward_model(None)
    flat = as_reward_model(lambda prompts, texts: [0.5 for _ in texts])
    assert flat.score(["q"], ["t"]) == [[0.5]] and flat.score_whole(["q"], ["t"]) == [0.5]

    class Scorer:
        def score(self, prompts, texts):
            return [[0.1, 0.2] for _ in texts]

    assert as_reward_model(Scorer()).score_whole(["q"], ["t"]) == [0.2]
    with pytest.raises(InvalidDecodingArgument):
        as_reward_model(42)
