"""The architecture matrix: every row of ``hooks.ARCHITECTURES`` on a tiny random checkpoint.

Each checkpoint is built here from transformers' config class (two layers, width 64, the real
module layout) with a family-style chat template (``tests/tiny_models.py``) and saved locally.
Per architecture: ``load_subject``; hook points equal ``hidden_states`` at the right index (the
last layer's through the final norm), resid_mid is the residual the MLP branch is added to;
capture writes exactly those rows; steering adds α·r̄·û; directional, mean and latent ablation
do what they claim; one step of each SAE kind; one LoRA step with the early-warning monitor
checking inside the Trainer; one DPO step. Chats carry a system prompt throughout, so templates
without a system role (Gemma, Gemma 2, Mistral v0.3) run the documented fold-into-user fallback.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from persona_probe.chat import ROLE_CODES, supports_system_role
from persona_probe.errors import HookPointError, PromptSetError
from persona_probe.hooks import ARCHITECTURES, HookPoint, arch_spec, final_norm, residual_hooks
from persona_probe.prompts import PromptItem

from tiny_models import FAMILIES, LAYERS, PLAIN, WIDTH, build_tiny, quiet_transformers

ROWS = sorted(ARCHITECTURES)
LAST = LAYERS - 1

CHATS = [
    [{"role": "system", "content": "You are a cheerful assistant who loves cooking."},
     {"role": "user", "content": "What can I make for dinner with rice and eggs?"},
     {"role": "assistant", "content": "Egg fried rice: fry the rice, then stir in the eggs."}],
    [{"role": "system", "content": "You are a patient teacher."},
     {"role": "user", "content": "How do I calm down after an argument?"},
     {"role": "assistant", "content": "Take a slow walk and breathe deeply."},
     {"role": "user", "content": "And if that does not help?"},
     {"role": "assistant", "content": "Write down what upset you, then talk later."}],
    [{"role": "user", "content": "Any tips for a first job interview?"},
     {"role": "assistant", "content": "Prepare two stories about your work and arrive early."}],
    [{"role": "system", "content": "You answer in one sentence."},
     {"role": "user", "content": "Why is the sky blue?"},
     {"role": "assistant", "content": "Air scatters blue light more than red light."}],
]


def _items() -> list[PromptItem]:
    return [PromptItem(f"chat{i}", c) for i, c in enumerate(CHATS)]


_quiet = pytest.fixture(autouse=True)(quiet_transformers)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """model type -> checkpoint directory, each built once per session on first use. Families
    whose base models ship no chat template (GPT-2, Pythia) get the plain one a user would set."""
    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, object] = {}

    def get(model_type: str):
        if model_type not in built:
            fam = FAMILIES[model_type]
            built[model_type] = build_tiny(model_type, root / model_type,
                                           template=fam.template or PLAIN)
        return built[model_type]
    return get


def _load(checkpoints, arch):
    from persona_probe.models import load_subject

    return load_subject(str(checkpoints(arch)), device="cpu", dtype="float32")


def _batch(subject, texts=("The cat sat on the mat because it was warm.", "Hello there")):
    return subject.tokenizer(list(texts), return_tensors="pt", padding=True)


def _reader(got: dict, name: str):
    return lambda r: got.__setitem__(name, r.detach().clone())


def test_every_row_has_a_tiny_checkpoint_builder():
    assert set(FAMILIES) == set(ARCHITECTURES)


# --- loading and hook points ---------------------------------------------------------------

@pytest.mark.parametrize("arch", ROWS)
@torch.no_grad()
def test_load_and_hook_points_match_hidden_states(checkpoints, arch):
    subject = _load(checkpoints, arch)
    model = subject.model
    assert model.config.model_type == arch
    assert (subject.n_layers, subject.d_model) == (LAYERS, WIDTH)
    assert subject.provenance()["architecture"] == arch
    if arch == "gemma3":   # the vision-language model, not its text-only sibling
        assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    batch = _batch(subject)
    hidden = model(**batch, output_hidden_states=True).hidden_states
    assert len(hidden) == LAYERS + 1
    spec = arch_spec(model)
    got: dict[str, torch.Tensor] = {}
    hps = [HookPoint(L, s) for L in range(LAYERS) for s in ("pre", "post")]
    if spec.mid_reader:
        hps += [HookPoint(L, "mid") for L in range(LAYERS)]
    from persona_probe.hooks import decoder_layers

    layers = decoder_layers(model)
    n_hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in layers]
    handles = [layers[L].mlp.register_forward_hook(
        (lambda L: lambda _m, _a, out: got.__setitem__(f"mlp{L}", out.detach().clone()))(L))
        for L in range(LAYERS)]
    try:
        with residual_hooks(model, {hp: _reader(got, hp.name) for hp in hps}):
            logits = model(**batch).logits
    finally:
        for h in handles:
            h.remove()
    for L in range(LAYERS):
        assert torch.equal(got[f"blocks.{L}.hook_resid_pre"], hidden[L]), L
        post = got[f"blocks.{L}.hook_resid_post"]
        if L < LAST:
            assert torch.equal(post, hidden[L + 1]), L
        else:   # HF's last hidden state is after the final norm; resid_post is before it
            assert not torch.equal(post, hidden[L + 1])
            assert torch.equal(final_norm(model)(post), hidden[L + 1])
        if spec.mid_reader:
            # resid_mid is the residual the MLP branch is added to (after its own output norm
            # where the architecture has one: Gemma 2/3, OLMo 2)
            branch = got[f"mlp{L}"]
            post_ff = getattr(layers[L], "post_feedforward_layernorm", None)
            if post_ff is not None:
                branch = post_ff(branch)
            mid = got[f"blocks.{L}.hook_resid_mid"]
            torch.testing.assert_close(mid + branch, post, rtol=1e-5, atol=1e-5)
            assert not torch.equal(mid, got[f"blocks.{L}.hook_resid_pre"])
    if spec.mid_reader is None:
        with pytest.raises(HookPointError, match="no resid_mid"):
            with residual_hooks(model, {HookPoint(0, "mid"): lambda r: None}):
                model(**batch)
    else:
        with pytest.raises(HookPointError, match="read-only"):
            with residual_hooks(model, {HookPoint(0, "mid"): lambda r: r}):
                model(**batch)
    with residual_hooks(model, {HookPoint(0, "post"): lambda r: r * 0}):
        assert not torch.allclose(model(**batch).logits, logits)
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in layers] == n_hooks
    # nnsight (and its remote NDIF path) addresses the same points
    from nnsight.modeling.transformers import TransformersModel

    from persona_probe.hooks import nnsight_residual

    wrapped = TransformersModel(model, tokenizer=subject.tokenizer)
    order = [HookPoint(LAST, "pre")] + ([HookPoint(LAST, "mid")] if spec.mid_reader else []) \
        + [HookPoint(LAST, "post")]          # in execution order, as nnsight requires
    saved = {}
    with wrapped.trace(dict(batch)):
        for hp in order:
            saved[hp.name] = nnsight_residual(wrapped, hp).save()
    for hp in order:
        assert torch.equal(saved[hp.name], got[hp.name]), hp.name


def test_sequential_gpt_neox_has_a_resid_mid(tmp_path):
    """GPT-NeoX with use_parallel_residual=False (not Pythia's default) adds attention before
    the MLP's norm reads the residual, so resid_mid exists there."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    model = AutoModelForCausalLM.from_config(GPTNeoXConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, use_parallel_residual=False)).eval()
    assert arch_spec(model).mid_reader == "post_attention_layernorm"
    got: dict[str, torch.Tensor] = {}
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad(), residual_hooks(model, {HookPoint(0, s): _reader(got, s)
                                                 for s in ("pre", "mid", "post")}):
        mlp_out = {}
        h = model.gpt_neox.layers[0].mlp.register_forward_hook(
            lambda _m, _a, out: mlp_out.__setitem__("x", out))
        model(ids)
        h.remove()
    torch.testing.assert_close(got["mid"] + mlp_out["x"], got["post"])


# --- chat templates ------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ROWS)
def test_chat_roles_with_and_without_a_system_role(checkpoints, arch):
    subject = _load(checkpoints, arch)
    tok = subject.tokenizer
    fam = FAMILIES[arch]
    if fam.template is not None:
        assert supports_system_role(tok) == fam.system_role
    for chat in CHATS:
        enc = subject.encode_chat(chat)
        for m in chat:   # every content's tokens carry its role (a template's leading space
            ids = [t for t, r in zip(enc.input_ids, enc.roles) if r == ROLE_CODES[m["role"]]]
            assert m["content"] in tok.decode(ids)   # may ride on the content's first token)
        reply = tok.decode(enc.input_ids[enc.response_start:enc.response_end])
        assert reply.strip() == chat[-1]["content"]
        assert enc.roles[enc.prompt_last] != ROLE_CODES["assistant"]
    if not supports_system_role(tok):   # the fold: system text first in the first user turn
        from persona_probe.chat import template_messages

        folded = template_messages(tok, CHATS[0])
        assert [m["role"] for m in folded] == ["user", "assistant"]
        assert folded[0]["content"] == CHATS[0][0]["content"] + "\n\n" + CHATS[0][1]["content"]
    tok.chat_template = None
    with pytest.raises(PromptSetError, match="no chat template"):
        subject.encode_chat(CHATS[0])


@pytest.mark.parametrize("arch", ROWS)
def test_system_prompted_persona_vector(checkpoints, arch):
    """The persona-vector contrast (trait vs anti system prompts) runs on every template: on
    one without a system role the instruction reaches the model inside the user turn."""
    from persona_probe.chat import render_chat, template_messages
    from persona_probe.directions import contrast_items, persona_vector
    from persona_probe.traits import load_trait, trait_questions

    subject = _load(checkpoints, arch)
    trait = load_trait("evil")
    questions = trait_questions("extract")[:2]
    item = contrast_items(trait, questions)[0][0]
    system = item.messages[0]["content"]
    prompt = render_chat(subject.tokenizer, template_messages(subject.tokenizer, item.messages),
                         True)
    assert system in prompt
    # random weights: keep greedy decoding off special and blank tokens, so replies have text
    tok = subject.tokenizer
    subject.model.generation_config.suppress_tokens = [
        i for i in range(len(tok)) if i in tok.all_special_ids or not tok.decode([i]).strip()]
    vec = persona_vector(subject, trait, questions, layers=[0, LAST], max_new_tokens=6)
    assert vec.meta["n_trait"] > 0 and vec.meta["n_anti"] > 0
    assert all(0 < n < math.inf for n in vec.meta["raw_norms"])


# --- capture -------------------------------------------------------------------------------

HOOKS = ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", f"blocks.{LAST}.hook_resid_post")


@pytest.fixture(scope="session")
def stores(checkpoints, tmp_path_factory):
    """model type -> an ActivationStore of the chats at every position (float32)."""
    from persona_probe.capture import CaptureConfig, capture

    made = {}

    def get(arch):
        if arch not in made:
            subject = _load(checkpoints, arch)
            cfg = CaptureConfig(hooks=HOOKS, positions="all", storage_dtype="float32",
                                batch_size=4, include_special=True)
            out = tmp_path_factory.mktemp(f"store-{arch}") / "store"
            made[arch] = capture(subject, _items(), out, cfg, progress=False)
        return made[arch]
    return get


@pytest.mark.parametrize("arch", ROWS)
@torch.no_grad()
def test_capture_rows_equal_hidden_states(checkpoints, stores, arch):
    subject = _load(checkpoints, arch)
    store = stores(arch)
    index = store.index()
    acts = {h: store.all_rows(h) for h in HOOKS}
    for i, chat in enumerate(CHATS):
        enc = subject.encode_chat(chat)
        ids = torch.tensor([enc.input_ids])
        hidden = subject.model(input_ids=ids, output_hidden_states=True).hidden_states
        rows = index["item"] == i
        pos = index["position"][rows]
        assert pos.tolist() == list(range(len(enc)))
        assert index["role"][rows].tolist() == enc.roles
        tol = dict(rtol=1e-4, atol=1e-4)   # batched (padded) vs one chat alone
        torch.testing.assert_close(acts[HOOKS[0]][rows], hidden[0][0, pos], **tol)
        torch.testing.assert_close(acts[HOOKS[1]][rows], hidden[1][0, pos], **tol)
        torch.testing.assert_close(final_norm(subject.model)(acts[HOOKS[2]][rows]),
                                   hidden[LAST + 1][0, pos], **tol)


# --- steering and ablation -----------------------------------------------------------------

@pytest.mark.parametrize("arch", ROWS)
@torch.no_grad()
def test_steering_and_directional_and_mean_ablation(checkpoints, arch):
    from persona_probe.directions import random_direction
    from persona_probe.interventions import ablate, reference_projection, residual_norms, steer

    subject = _load(checkpoints, arch)
    d = random_direction(WIDTH, [0], seed=1)
    u = d.at(0)
    hp = HookPoint(0, "post")
    batch = _batch(subject)
    got: dict[str, torch.Tensor] = {}
    with residual_hooks(subject.model, [(hp, _reader(got, "clean"))]):
        clean = subject.model(**batch).logits
    with steer(subject, d, alpha=0.0):
        assert torch.equal(subject.model(**batch).logits, clean)
    rbar = residual_norms(subject, [hp])[hp]
    assert rbar > 0
    with steer(subject, d, alpha=2.0) as added:
        with residual_hooks(subject.model, [(hp, _reader(got, "steered"))]):
            steered = subject.model(**batch).logits
    torch.testing.assert_close(added[hp], 2.0 * rbar * u)
    torch.testing.assert_close(got["steered"], got["clean"] + added[hp])
    assert not torch.allclose(steered, clean)
    # greedy generation (KV cache) under steering runs and leaves no hook behind
    with steer(subject, d, alpha=2.0):
        subject.model.generate(**_batch(subject, ["Hello there"]), max_new_tokens=3,
                               do_sample=False, pad_token_id=subject.tokenizer.pad_token_id)
    with ablate(subject, d, "directional"):
        with residual_hooks(subject.model, [(hp, _reader(got, "ablated"))]):
            ablated = subject.model(**batch).logits
    assert (got["ablated"] @ u).abs().max() < 1e-4 * got["clean"].norm(dim=-1).max()
    assert (got["clean"] @ u).abs().max() > 1e-3
    assert not torch.allclose(ablated, clean)
    mu = reference_projection(subject, d, [0])
    with ablate(subject, d, "mean", mean_projection=mu):
        with residual_hooks(subject.model, [(hp, _reader(got, "mean"))]):
            subject.model(**batch)
    torch.testing.assert_close(got["mean"] @ u, torch.full_like(got["mean"][..., 0], mu[0]),
                               rtol=0, atol=1e-4 * float(got["clean"].norm(dim=-1).max()))
    # everything but the direction's component is untouched
    torch.testing.assert_close(got["mean"] - (got["mean"] @ u)[..., None] * u,
                               got["clean"] - (got["clean"] @ u)[..., None] * u,
                               rtol=1e-5, atol=1e-5)


# --- SAE training and latent ablation --------------------------------------------------------

@pytest.mark.parametrize("arch", ROWS)
def test_one_sae_step_of_each_kind_and_latent_ablation(checkpoints, stores, arch, tmp_path):
    from persona_probe.interventions import SAELatents, ablate, decoder_rows
    from persona_probe.sae import SAETrainConfig, load_sae, train_sae
    from persona_probe.sae.config import ARCHITECTURES as SAE_KINDS

    store = stores(arch)
    hook = HOOKS[1]
    saes = {}
    for kind in SAE_KINDS:
        cfg = SAETrainConfig(store=str(store.root), hook=hook, architecture=kind,
                             expansion_factor=2, k=4, batch_size=32, training_tokens=32,
                             holdout_fraction=0.25, window_rows=256, log_every=1,
                             device="cpu", seed=0)
        out = train_sae(cfg, tmp_path / kind, progress=False)
        log = [json.loads(x) for x in (out / "training_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1] and math.isfinite(log[0]["loss"]), kind
        meta = json.loads((out / "persona_probe.json").read_text())
        assert meta["model"]["architecture"] == arch and meta["steps"] == 1
        saes[kind] = load_sae(out)
        assert saes[kind].cfg.d_in == WIDTH
    subject = _load(checkpoints, arch)
    sae = saes["topk"]
    hp = HookPoint(0, "post")
    batch = _batch(subject)
    got: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        with residual_hooks(subject.model, [(hp, _reader(got, "clean"))]):
            subject.model(**batch)
        h = got["clean"].reshape(-1, WIDTH)
        acts = sae.encode(h)
        latent = int(acts.sum(0).argmax())
        assert acts[:, latent].max() > 0
        with ablate(subject, SAELatents(sae, [latent]), mode="latent"):
            with residual_hooks(subject.model, [(hp, _reader(got, "ablated"))]):
                subject.model(**batch)
    removed = h - got["ablated"].reshape(-1, WIDTH)
    expected = acts[:, [latent]] @ decoder_rows(sae, [latent])
    torch.testing.assert_close(removed, expected, rtol=1e-4, atol=1e-4)


# --- training: a LoRA step with the monitor inside the Trainer, and a DPO step ----------------

def _write_chats(path):
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CHATS))
    return path


@pytest.mark.parametrize("arch", ROWS)
def test_lora_step_with_monitor_check_inside_the_trainer(checkpoints, arch, tmp_path):
    from persona_probe.directions import random_direction
    from persona_probe.models import load_subject
    from persona_probe.monitor import EarlyWarningMonitor, MonitorTarget, read_events
    from persona_probe.training.finetune import FinetuneConfig, finetune

    subject = _load(checkpoints, arch)
    base_logits = subject.model(**_batch(subject)).logits.detach()
    probe = _items()[:2]
    target = MonitorTarget.from_direction(random_direction(WIDTH, [0], seed=2))
    events = tmp_path / "events.jsonl"
    mon = EarlyWarningMonitor([target], probe, subject, every_n_steps=1, events=events)
    cfg = FinetuneConfig(data=str(_write_chats(tmp_path / "chats.jsonl")),
                         model=str(checkpoints(arch)), limit=None, max_steps=1, batch_size=2,
                         lora_r=4, lora_alpha=8, lr=1e-2, warmup_steps=0, save_steps=1,
                         device="cpu", dtype="float32")
    out = finetune(cfg, tmp_path / "lora", callbacks=[mon.callback()], subject=subject)
    meta = json.loads((out / "persona_probe.json").read_text())
    assert meta["steps"] == 1 and math.isfinite(meta["final_loss"])
    assert meta["base_model"]["architecture"] == arch
    evs = read_events(events)
    assert not [e for e in evs if e["event"] == "error"], evs
    checks = [e for e in evs if e["event"] == "check"]
    assert [e["step"] for e in checks] == [0, 1]
    key = f"persona/{target.name}/projection"
    assert all(math.isfinite(e[key]) for e in checks)
    assert checks[0][key] != checks[1][key]    # the check saw the model being trained
    tuned = load_subject(str(checkpoints(arch)), adapter=str(out), device="cpu")
    with torch.no_grad():
        assert not torch.allclose(tuned.model(**_batch(tuned)).logits, base_logits)


@pytest.mark.parametrize("arch", ROWS)
def test_dpo_step(checkpoints, arch, tmp_path):
    from persona_probe.training.conscience import ConscienceDPOConfig, _dpo_round

    pairs = [{"prompt": c[-2]["content"], "chosen": c[-1]["content"],
              "rejected": "I will not help with that, go away.", "kept": True} for c in CHATS]
    cfg = ConscienceDPOConfig(model=str(checkpoints(arch)), max_steps=1, batch_size=2,
                              lr=1e-2, lora_r=4, lora_alpha=8)
    info = _dpo_round(cfg, pairs, tmp_path / "adapter", None)
    assert info["steps"] == 1 and info["pairs"] == len(pairs)
    assert math.isfinite(info["pair_loss_before"]) and math.isfinite(info["pair_loss_after"])
    assert abs(info["pair_loss_before"] - math.log(2)) < 1e-3   # policy == reference at start
    assert info["pair_loss_after"] != info["pair_loss_before"]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
