"""Tiny random checkpoints of every architecture the hook resolver supports, built offline.

Each checkpoint is built from transformers' own config class (two decoder layers, width 64,
the architecture's real module layout) with random weights, and saved with a small byte-level
BPE tokenizer trained here on the package's built-in prompts. The tokenizer carries the
family's special tokens and a chat template written after the family's published one (ChatML
for Qwen, header tokens for Llama 3, ``[INST]`` for Mistral, ``<|user|>`` for Phi-3, turn
markers and no system role for Gemma); GPT-2 and GPT-NeoX (Pythia) ship none, as their base
models do. Nothing is downloaded.

    path = build_tiny("gemma2", tmp_dir)    # -> a directory load_subject(path) loads
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# --- chat templates (after the families' published templates; tools and images left out) ------

CHATML_QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) "
    "or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")

# Qwen3: the last assistant turn after the last user turn gets an (empty) thinking block, and
# ``enable_thinking=False`` puts the empty block into the generation prompt.
QWEN3 = (
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}"
    "{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool and message.role == 'user' %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- set content = message.content %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning_content = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n')"
    ".split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + "
    "'\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content }}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}")

LLAMA3 = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")

# Mistral v0.3: the system prompt is put in front of the user turn only when that turn is the
# last message (so a finished exchange renders without it).
MISTRAL = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('After the optional system message, conversation roles must "
    "alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' + message['content'] | trim + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}")

# Phi-3: an end-of-text token closes a conversation rendered without a generation prompt.
PHI3 = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")

# Gemma and Gemma 2: no system role at all.
GEMMA = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}")

# Gemma 3: a system message is folded into the first user turn by the template itself.
GEMMA3 = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\\n'}}{%- endif -%}")

#: A plain template for the base models that have none (GPT-2, Pythia), as a user would set it.
PLAIN = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize + ': ' + message['content'] + '\\n\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",                     # GPT-2 / Pythia, Qwen
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eot_id|>",                                                      # Llama 3
    "<s>", "</s>", "[INST]", "[/INST]",                                # Mistral
    "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",              # Phi-3
    "<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>",     # Gemma
    "<start_of_image>", "<end_of_image>", "<image_soft_token>",        # Gemma 3 vision
]

WIDTH, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN = 64, 2, 4, 2, 16, 128


@dataclass(frozen=True)
class Family:
    """One row of the matrix: a model type, its tokenizer's special tokens and template."""

    model_type: str
    bos: str | None
    eos: str
    pad: str
    template: str | None
    system_role: bool   # does the template render a system message in prompts and replies?


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>", LLAMA3, True),
    "mistral": Family("mistral", "<s>", "</s>", "</s>", MISTRAL, False),
    "qwen2": Family("qwen2", None, "<|im_end|>", "<|endoftext|>", CHATML_QWEN25, True),
    "qwen3": Family("qwen3", None, "<|im_end|>", "<|endoftext|>", QWEN3, True),
    "olmo2": Family("olmo2", None, "<|endoftext|>", "<pad>", CHATML_QWEN25.replace(
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        "You are OLMo 2, a helpful AI assistant built by Ai2."), True),
    "phi3": Family("phi3", "<s>", "<|endoftext|>", "<|endoftext|>", PHI3, True),
    "gemma": Family("gemma", "<bos>", "<eos>", "<pad>", GEMMA, False),
    "gemma2": Family("gemma2", "<bos>", "<eos>", "<pad>", GEMMA, False),
    # Gemma 3's template renders a system message itself, inside the first user turn
    "gemma3_text": Family("gemma3_text", "<bos>", "<eos>", "<pad>", GEMMA3, True),
    "gemma3": Family("gemma3", "<bos>", "<eos>", "<pad>", GEMMA3, True),
    "gpt2": Family("gpt2", "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", None, False),
    "gpt_neox": Family("gpt_neox", "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", None,
                       False),
}


def _corpus() -> list[str]:
    """Text to train the tiny BPE on: the package's built-in prompts and trait files."""
    from importlib import resources

    texts = []
    root = resources.files("persona_probe") / "data"
    for sub in ("prompts", "traits"):
        for f in sorted((root / sub).iterdir(), key=lambda p: p.name):
            if f.name.endswith((".tsv", ".json")):
                texts.extend(f.read_text(encoding="utf-8").splitlines())
    return texts


_BPE: Any = None


def bpe_tokenizer():
    """A byte-level BPE (GPT-2 style pre-tokenization, ~1k tokens) with every family's special
    tokens; trained once per process (well under a second)."""
    global _BPE
    if _BPE is None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(_corpus(), trainer)
        _BPE = tok
    return _BPE


def _tokenizer(fam: Family, template: str | None):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer(), bos_token=fam.bos,
                                  eos_token=fam.eos, pad_token=fam.pad,
                                  additional_special_tokens=[t for t in SPECIAL_TOKENS
                                                             if t not in (fam.bos, fam.eos,
                                                                          fam.pad)])
    if template is not None:
        tok.chat_template = template
    return tok


def _config(fam: Family, tok) -> Any:
    """The architecture's own config class at a tiny size."""
    import transformers as tf

    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.pad_token_id}
    V = len(tok)
    common = dict(vocab_size=V, hidden_size=WIDTH, intermediate_size=FFN,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  max_position_embeddings=512, **ids)
    gqa = dict(num_key_value_heads=KV_HEADS)
    t = fam.model_type
    if t == "llama":
        return tf.LlamaConfig(**common, **gqa, tie_word_embeddings=True,
                              rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    if t == "mistral":
        return tf.MistralConfig(**common, **gqa, head_dim=HEAD_DIM, sliding_window=None)
    if t == "qwen2":
        return tf.Qwen2Config(**common, **gqa, tie_word_embeddings=True)
    if t == "qwen3":
        return tf.Qwen3Config(**common, **gqa, head_dim=HEAD_DIM, tie_word_embeddings=True)
    if t == "olmo2":
        return tf.Olmo2Config(**common, **gqa)
    if t == "phi3":
        return tf.Phi3Config(**common, **gqa, original_max_position_embeddings=512)
    if t == "gemma":
        return tf.GemmaConfig(**common, **gqa, head_dim=HEAD_DIM)
    if t == "gemma2":
        return tf.Gemma2Config(**common, **gqa, head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM,
                               sliding_window=8, layer_types=["sliding_attention",
                                                              "full_attention"])
    if t in ("gemma3_text", "gemma3"):
        text = tf.Gemma3TextConfig(**common, **gqa, head_dim=HEAD_DIM,
                                   query_pre_attn_scalar=HEAD_DIM, sliding_window=8,
                                   layer_types=["sliding_attention", "full_attention"])
        if t == "gemma3_text":
            return text
        vision = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2,
                                       image_size=28, patch_size=14)
        return tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=1,
                               boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
                               eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
                               image_token_index=tok.convert_tokens_to_ids(
                                   "<image_soft_token>"), **ids)
    if t == "gpt2":
        return tf.GPT2Config(vocab_size=V, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS,
                             n_inner=FFN, n_positions=512, **ids)
    if t == "gpt_neox":
        return tf.GPTNeoXConfig(**common, rotary_pct=0.25, use_parallel_residual=True)
    raise KeyError(t)


def build_tiny(model_type: str, out: str | Path, seed: int = 0,
               template: str | None = None) -> Path:
    """Random-init checkpoint + tokenizer of ``model_type`` in ``out`` (returned). The chat
    template is the family's unless ``template`` is given."""
    import torch
    from transformers import AutoModelForCausalLM

    fam = FAMILIES[model_type]
    out = Path(out)
    tok = _tokenizer(fam, template or fam.template)
    config = _config(fam, tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def quiet_transformers():
    """A generator fixture body (``pytest.fixture(autouse=True)(quiet_transformers)``): no
    weight-loading progress bars, info logs or warnings while tests build and load many tiny
    models; the previous settings come back afterwards."""
    import warnings

    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
