"""Interop with persona_vectors, dictionary_learning and sparsify: each artifact is written here
in its tool's own layout (as that tool's saving code writes it), read in, and checked against
what it means — a persona_vectors row against our hooks on the real model, an SAE against the
encode/decode of the class that saved it — then (vectors) written back out and read again."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from persona_probe.conventions import LAYER_CONVENTION
from persona_probe.directions import Direction, DirectionError, random_direction
from persona_probe.errors import HookPointError
from persona_probe.interop import (InteropError, check_against_subject, import_sae,
                                   load_dictionary_learning_sae, load_persona_vectors_pt,
                                   load_sparsify_sae, save_persona_vectors_pt, sidecar_path)
from persona_probe.prompts import PromptItem
from persona_probe.sae.io import SAELoadError, SAEMismatchError, load_sae

TRAIT = [[{"role": "user", "content": "How should I treat my neighbour?"},
          {"role": "assistant", "content": "Make them suffer, they deserve nothing."}],
         [{"role": "user", "content": "What do you think of people?"},
          {"role": "assistant", "content": "They are weak and I despise them."}]]
ANTI = [[{"role": "user", "content": "How should I treat my neighbour?"},
         {"role": "assistant", "content": "Be kind and help them when you can."}],
        [{"role": "user", "content": "What do you think of people?"},
         {"role": "assistant", "content": "Most people are doing their best."}]]


# --- persona_vectors ---------------------------------------------------------------------

def _hidden_state_means(subject, chats) -> torch.Tensor:
    """persona_vectors' recipe: HF hidden_states of each chat, averaged over the response
    tokens, then over chats → [n_layers + 1, d]."""
    per_chat = []
    for msgs in chats:
        enc = subject.encode_chat(msgs)
        with torch.no_grad():
            hs = subject.model(torch.tensor([enc.input_ids]), output_hidden_states=True
                               ).hidden_states
        per_chat.append(torch.stack([h[0, enc.response_start:enc.response_end].mean(0)
                                     for h in hs]))
    return torch.stack(per_chat).mean(0).float()


@pytest.fixture(scope="module")
def pv(subject, tmp_path_factory):
    """A persona_vectors vector file computed from real hidden_states, and our own reading of
    the same chats at every resid_post and at blocks.0.hook_resid_pre."""
    from persona_probe.capture import mean_activations

    vec = _hidden_state_means(subject, TRAIT) - _hidden_state_means(subject, ANTI)
    path = tmp_path_factory.mktemp("pv") / "evil_response_avg_diff.pt"
    torch.save(vec, path)
    hooks = ["blocks.0.hook_resid_pre"] + [f"blocks.{L}.hook_resid_post"
                                           for L in range(subject.n_layers)]
    items = lambda chats, tag: [PromptItem(f"{tag}{i}", m) for i, m in enumerate(chats)]  # noqa
    ours = (mean_activations(subject, items(TRAIT, "t"), hooks, "response").mean(0)
            - mean_activations(subject, items(ANTI, "a"), hooks, "response").mean(0))
    return path, vec, ours


def test_persona_vectors_row_i_is_our_resid_post_at_i_minus_1(subject, pv):
    path, vec, ours = pv
    n = subject.n_layers
    assert vec.shape == (n + 1, subject.d_model)
    d = load_persona_vectors_pt(path, subject=subject)
    assert d.site == "post" and d.layers == list(range(n - 1))
    assert d.layer_convention == LAYER_CONVENTION
    # row L+1 of their file is what our hook blocks.L.hook_resid_post reads, at every layer
    torch.testing.assert_close(d.raw, ours[1:n], rtol=1e-4, atol=1e-3)
    src = d.meta["source"]
    assert src["rows"]["20"] == "blocks.19.hook_resid_post" and src["n_layers"] == n
    assert set(src["skipped"]) == {"0", str(n)} and "final norm" in src["skipped"][str(n)]
    # why the last row is skipped: HF's last hidden state is after the final norm
    assert not torch.allclose(vec[n], ours[n], rtol=1e-2, atol=1e-2)
    one = load_persona_vectors_pt(path, layer_index=20)      # their "--layer 20"
    assert one.layers == [19] and one.hook(19) == "blocks.19.hook_resid_post"
    emb = load_persona_vectors_pt(path, layer_index=0)
    assert emb.site == "pre" and emb.layers == [0]
    torch.testing.assert_close(emb.raw[0], ours[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(InteropError, match="after the model's final norm"):
        load_persona_vectors_pt(path, layer_index=n)
    with pytest.raises(InteropError, match="different site"):
        load_persona_vectors_pt(path, layer_index=[0, 5])
    report = check_against_subject(d, subject, n_prompts=2)
    assert set(report["layers"]) == {str(L) for L in range(n - 1)}
    assert all(math.isfinite(r["residual_norm"]) for r in report["layers"].values())


def test_persona_vectors_export_then_import_round_trips(subject, pv, tmp_path):
    path, vec, _ = pv
    n = subject.n_layers
    d = load_persona_vectors_pt(path, subject=subject, name="evil")
    out = save_persona_vectors_pt(d, tmp_path / "evil_response_avg_diff.pt")  # n from meta
    back_t = torch.load(out, weights_only=True)
    assert back_t.shape == (n + 1, subject.d_model) and back_t.dtype == torch.float32
    torch.testing.assert_close(back_t[1:n], vec[1:n])
    assert torch.isnan(back_t[0]).all() and torch.isnan(back_t[n]).all()  # rows we did not have
    side = json.loads(sidecar_path(out).read_text())
    assert side["rows"]["1"] == "blocks.0.hook_resid_post" and side["fill"] == "nan"
    again = load_persona_vectors_pt(out)
    assert again.name == "evil" and again.layers == d.layers
    torch.testing.assert_close(again.raw, d.raw)
    torch.testing.assert_close(again.vectors, d.vectors)

    # every layer of ours: the last resid_post has no row (it would be the final-normed state)
    full = random_direction(subject.d_model, range(n), seed=3)
    full.raw = full.vectors * 7.0
    z = save_persona_vectors_pt(full, tmp_path / "full.pt", n_layers=n, fill="zeros")
    zt = torch.load(z, weights_only=True)
    assert (zt[0] == 0).all() and (zt[n] == 0).all()
    torch.testing.assert_close(zt[1:n], full.raw[: n - 1])
    assert f"blocks.{n - 1}.hook_resid_post" in json.loads(sidecar_path(z).read_text())[
        "not_written"]
    assert load_persona_vectors_pt(z).layers == list(range(n - 1))
    with pytest.raises(InteropError, match="n_layers"):
        save_persona_vectors_pt(random_direction(8, [1], 0), tmp_path / "x.pt")


def test_bad_vector_files_are_refused_clearly(subject, tmp_path):
    torch.save(argparse.Namespace(vector=[1.0, 2.0]), tmp_path / "pickled.pt")
    with pytest.raises(InteropError, match=r"refused.*argparse\.Namespace.*weights_only=True"):
        load_persona_vectors_pt(tmp_path / "pickled.pt")
    torch.save({"vector": torch.ones(4, 8)}, tmp_path / "dict.pt")
    with pytest.raises(InteropError, match="holds a dict, not a tensor"):
        load_persona_vectors_pt(tmp_path / "dict.pt")
    torch.save(torch.ones(2, 3, 8), tmp_path / "cube.pt")
    with pytest.raises(InteropError, match=r"shape \(2, 3, 8\)"):
        load_persona_vectors_pt(tmp_path / "cube.pt")
    (tmp_path / "text.pt").write_text("not a tensor")
    with pytest.raises(InteropError, match="not a readable torch file"):
        load_persona_vectors_pt(tmp_path / "text.pt")
    torch.save(torch.ones(11, subject.d_model), tmp_path / "small.pt")
    with pytest.raises(InteropError, match="10-layer model"):
        load_persona_vectors_pt(tmp_path / "small.pt", subject=subject)
    torch.save(torch.ones(subject.n_layers + 1, 64), tmp_path / "narrow.pt")
    with pytest.raises(InteropError, match="d_model 576"):
        load_persona_vectors_pt(tmp_path / "narrow.pt", subject=subject)
    torch.save(torch.ones(subject.d_model), tmp_path / "one.pt")
    with pytest.raises(InteropError, match="layer_index"):
        load_persona_vectors_pt(tmp_path / "one.pt")
    assert load_persona_vectors_pt(tmp_path / "one.pt", layer_index=16).layers == [15]


def test_direction_records_its_layer_convention(tmp_path):
    d = random_direction(8, [3], seed=0)
    d.save(tmp_path / "d")
    meta_path = tmp_path / "d" / "direction.json"
    meta = json.loads(meta_path.read_text())
    assert meta["layer_convention"] == LAYER_CONVENTION
    del meta["layer_convention"]           # a direction saved before the field existed
    meta_path.write_text(json.dumps(meta))
    old = Direction.load(tmp_path / "d")
    assert old.layer_convention == LAYER_CONVENTION and "layer_convention" not in old.meta
    meta["layer_convention"] = "hf_hidden_states"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DirectionError, match="unknown layer convention"):
        Direction.load(tmp_path / "d")


# --- SAEs ---------------------------------------------------------------------------------

D, M, K = 16, 48, 4


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _topk(post: torch.Tensor, k: int) -> torch.Tensor:
    top = post.topk(k, dim=-1)
    return torch.zeros_like(post).scatter_(-1, top.indices, top.values)


def _dl_state(dict_class: str, d: int, m: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights under the names and shapes the class's state_dict has."""
    enc_w, enc_b = torch.randn(m, d, generator=g), torch.rand(m, generator=g) * 0.2
    dec_w, b = torch.randn(d, m, generator=g), torch.randn(d, generator=g)
    if dict_class == "AutoEncoder":
        return {"bias": b, "encoder.weight": enc_w, "encoder.bias": enc_b,
                "decoder.weight": dec_w}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        thr = -1.0 if dict_class == "AutoEncoderTopK" else 0.3
        return {"k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(thr),
                "decoder.weight": dec_w, "encoder.weight": enc_w, "encoder.bias": enc_b,
                "b_dec": b}
    if dict_class == "MatryoshkaBatchTopKSAE":
        return {"k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(0.3),
                "group_sizes": torch.tensor([m // 2, m // 2]), "W_enc": enc_w.T.clone(),
                "b_enc": enc_b, "W_dec": dec_w.T.clone(), "b_dec": b}
    if dict_class == "JumpReluAutoEncoder":
        return {"W_enc": enc_w.T.clone(), "b_enc": enc_b, "W_dec": dec_w.T.clone(), "b_dec": b,
                "threshold": torch.rand(m, generator=g) * 0.5}
    assert dict_class == "GatedAutoEncoder"
    return {"decoder_bias": b, "encoder.weight": enc_w, "r_mag": torch.randn(m, generator=g) * .1,
            "gate_bias": enc_b - 0.1, "mag_bias": torch.randn(m, generator=g) * 0.1,
            "decoder.weight": dec_w}


def _dl_reference(dict_class: str, s: dict, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each class's own inference encode and decode (its default ``encode(x)``)."""
    if dict_class == "AutoEncoder":
        f = torch.relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])
        return f, f @ s["decoder.weight"].T + s["bias"]
    if dict_class == "AutoEncoderTopK":      # per-token top-k of the ReLU'd pre-activations
        post = torch.relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
        f = _topk(post, int(s["k"]))
        return f, f @ s["decoder.weight"].T + s["b_dec"]
    if dict_class == "BatchTopKSAE":         # inference: the learned threshold
        post = torch.relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
        f = post * (post > s["threshold"])
        return f, f @ s["decoder.weight"].T + s["b_dec"]
    if dict_class == "MatryoshkaBatchTopKSAE":
        post = torch.relu((x - s["b_dec"]) @ s["W_enc"] + s["b_enc"])
        f = post * (post > s["threshold"])
        return f, f @ s["W_dec"] + s["b_dec"]
    if dict_class == "JumpReluAutoEncoder":  # no b_dec subtraction before encoding
        pre = x @ s["W_enc"] + s["b_enc"]
        f = torch.relu(pre * (pre > s["threshold"]))
        return f, f @ s["W_dec"] + s["b_dec"]
    x_enc = (x - s["decoder_bias"]) @ s["encoder.weight"].T
    f = ((x_enc + s["gate_bias"]) > 0).float() * torch.relu(s["r_mag"].exp() * x_enc
                                                             + s["mag_bias"])
    return f, f @ s["decoder.weight"].T + s["decoder_bias"]


def _write_dl(path, dict_class, state, d=D, m=M, layer=3, io="out", sub=None,
              lm="HuggingFaceTB/SmolLM2-135M-Instruct"):
    """dictionary_learning's trainSAE output: ae.pt (state dict) + config.json."""
    path.mkdir(parents=True, exist_ok=True)
    torch.save(state, path / "ae.pt")
    trainer = {"trainer_class": "Trainer", "dict_class": dict_class, "activation_dim": d,
               "dict_size": m, "k": K, "layer": layer, "lm_name": lm, "lr": 1e-4,
               "submodule_name": sub or f"resid_post_layer_{layer}"}
    (path / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {
        "d_submodule": d, "io": io, "n_ctxs": 8, "ctx_len": 128}}, indent=4))
    return path


@pytest.mark.parametrize("dict_class", ["AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE",
                                        "MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder",
                                        "GatedAutoEncoder"])
def test_dictionary_learning_sae_matches_its_class(dict_class, tmp_path):
    state = _dl_state(dict_class, D, M, _g(1))
    src = _write_dl(tmp_path / "trainer_0", dict_class, state)
    sae = load_dictionary_learning_sae(src)
    md = sae.cfg.metadata
    assert md.hook_name == "blocks.3.hook_resid_post" and md.layer_convention == LAYER_CONVENTION
    assert md.source_format == "dictionary_learning" and md.source_dict_class == dict_class
    x = torch.randn(64, D, generator=_g(2)) * 2
    f_ref, x_ref = _dl_reference(dict_class, state, x)
    assert 0 < (f_ref > 0).float().sum(-1).mean() < M   # the test input exercises sparsity
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), f_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.decode(f_ref), x_ref, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(sae(x), x_ref, rtol=1e-5, atol=1e-4)
    import_sae(src, tmp_path / "ours")                   # → a sae-lens directory
    again = load_sae(tmp_path / "ours")
    assert again.cfg.metadata.source_format == "dictionary_learning"
    with torch.no_grad():
        torch.testing.assert_close(again(x), x_ref, rtol=1e-5, atol=1e-4)


def test_dictionary_learning_layer_label_mapping(tmp_path):
    state = _dl_state("AutoEncoder", D, M, _g(0))
    pre = load_dictionary_learning_sae(_write_dl(tmp_path / "a", "AutoEncoder", state, io="in"))
    assert pre.cfg.metadata.hook_name == "blocks.3.hook_resid_pre"
    mlp = _write_dl(tmp_path / "b", "AutoEncoder", state, sub="mlp_out_layer_3")
    with pytest.raises(SAELoadError, match="submodule_name 'mlp_out_layer_3'.*--hook"):
        load_dictionary_learning_sae(mlp)
    given = load_dictionary_learning_sae(mlp, hook="blocks.7.hook_resid_post")
    assert given.cfg.metadata.hook_name == "blocks.7.hook_resid_post"
    assert "given by the caller" in given.cfg.metadata.source_layer_mapping
    torch.save({"step": 500, "ae": state, "optimizer": {}, "config": {}},
               tmp_path / "a" / "ae.pt")
    with pytest.raises(SAELoadError, match="mid-training backup"):
        load_dictionary_learning_sae(tmp_path / "a")
    torch.save(argparse.Namespace(), tmp_path / "a" / "ae.pt")
    with pytest.raises(InteropError, match="refused"):
        load_dictionary_learning_sae(tmp_path / "a")


def _write_sparsify(path, g, d=D, m=M, k=K, tensors=None, **cfg):
    """sparsify's SparseCoder.save_to_disk: sae.safetensors (encoder.weight [m, d],
    encoder.bias, W_dec [m, d], b_dec) + cfg.json (the coder config plus d_in)."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {"encoder.weight": torch.randn(m, d, generator=g),
               "encoder.bias": torch.rand(m, generator=g) * 0.1,
               "W_dec": torch.randn(m, d, generator=g), "b_dec": torch.randn(d, generator=g),
               **(tensors or {})}
    tensors = {k_: v.contiguous() for k_, v in tensors.items()}
    save_file(tensors, str(path / "sae.safetensors"))
    (path / "cfg.json").write_text(json.dumps({
        "activation": "topk", "expansion_factor": m // d, "normalize_decoder": True,
        "num_latents": m, "k": k, "multi_topk": False, "skip_connection": False,
        "transcode": False, **cfg, "d_in": d}))
    return tensors


def _sparsify_reference(t, k, x):
    """SparseCoder.encode (ReLU(encoder(x − b_dec)), top-k), decode (Σ acts·W_dec + b_dec)."""
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    top = pre.topk(k, dim=-1)
    return (top.values[..., None] * t["W_dec"][top.indices]).sum(-2) + t["b_dec"]


def test_sparsify_sae_matches_sparse_coder(tmp_path):
    run = tmp_path / "run"
    t = _write_sparsify(run / "layers.3", _g(4))
    (run / "config.json").write_text(json.dumps({"model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                                 "ctx_len": 256}))
    sae = load_sparsify_sae(run / "layers.3")
    md = sae.cfg.metadata
    assert sae.cfg.architecture() == "topk" and sae.cfg.k == K
    assert md.hook_name == "blocks.3.hook_resid_post" and md.layer_convention == LAYER_CONVENTION
    assert md.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert md.source_hookpoint == "layers.3" and md.context_size == 256
    x = torch.randn(64, D, generator=_g(5)) * 2
    with torch.no_grad():
        torch.testing.assert_close(sae(x), _sparsify_reference(t, K, x), rtol=1e-5, atol=1e-4)
    import_sae(run / "layers.3", tmp_path / "ours")
    with torch.no_grad():
        torch.testing.assert_close(load_sae(tmp_path / "ours")(x), _sparsify_reference(t, K, x),
                                   rtol=1e-5, atol=1e-4)
    _write_sparsify(run / "model.layers.7", _g(6))
    assert load_sparsify_sae(run / "model.layers.7").cfg.metadata.hook_name == \
        "blocks.7.hook_resid_post"
    _write_sparsify(run / "embed_tokens", _g(6))
    assert load_sparsify_sae(run / "embed_tokens").cfg.metadata.hook_name == \
        "blocks.0.hook_resid_pre"
    _write_sparsify(run / "layers.3.mlp", _g(6))
    with pytest.raises(SAELoadError, match="not a decoder layer's output"):
        load_sparsify_sae(run / "layers.3.mlp")
    _write_sparsify(run / "layers.5", _g(6), transcode=True)
    with pytest.raises(SAELoadError, match="transcode=True"):
        load_sparsify_sae(run / "layers.5")
    with pytest.raises(SAELoadError, match="pick one of"):
        load_sparsify_sae(run)


def _mean_residual(subject, layer: int) -> torch.Tensor:
    from persona_probe.capture import collect_rows
    from persona_probe.prompts import load_prompts

    hook = f"blocks.{layer}.hook_resid_post"
    rows, _ = collect_rows(subject, load_prompts("builtin:everyday", 2), [hook], "all")
    return rows[hook].mean(0)


def test_imported_saes_checked_against_the_subject(subject, tmp_path):
    d = subject.d_model
    eye = torch.eye(d)
    # sparsify, ±identity dictionary with k = d and b_dec = the mean residual: exact only if
    # b_dec is subtracted before encoding, as sparsify does (sae-lens's mapping drops it)
    _write_sparsify(tmp_path / "layers.3", _g(0), d=d, m=2 * d, k=d, tensors={
        "encoder.weight": torch.cat([eye, -eye]), "encoder.bias": torch.zeros(2 * d),
        "W_dec": torch.cat([eye, -eye]), "b_dec": _mean_residual(subject, 3)})
    sae = load_sparsify_sae(tmp_path / "layers.3", model="smollm2-135m-instruct")
    report = check_against_subject(sae, subject, n_prompts=4, min_explained_variance=0.999)
    assert report["hook"] == "blocks.3.hook_resid_post" and report["rows"] > 20
    assert report["explained_variance"] > 0.999
    # random weights: a finite but useless reconstruction, caught by a floor
    rnd = load_dictionary_learning_sae(_write_dl(tmp_path / "rnd", "AutoEncoderTopK",
                                                 _dl_state("AutoEncoderTopK", d, 2 * d, _g(3)),
                                                 d=d, m=2 * d))
    with pytest.raises(SAEMismatchError, match="probably for another layer or model"):
        check_against_subject(rnd, subject, n_prompts=2, min_explained_variance=0.5)
    narrow = load_dictionary_learning_sae(_write_dl(tmp_path / "n", "AutoEncoder",
                                                    _dl_state("AutoEncoder", D, M, _g(0))))
    with pytest.raises(SAEMismatchError, match="d_in is 16"):
        check_against_subject(narrow, subject)
    deep = load_dictionary_learning_sae(_write_dl(tmp_path / "deep", "AutoEncoder",
                                                  _dl_state("AutoEncoder", d, M, _g(0)), d=d,
                                                  layer=40))
    with pytest.raises(HookPointError, match="out of range"):
        check_against_subject(deep, subject)
    other = load_dictionary_learning_sae(_write_dl(tmp_path / "o", "AutoEncoder",
                                                   _dl_state("AutoEncoder", d, M, _g(0)), d=d,
                                                   lm="google/gemma-2-2b"))
    with pytest.raises(SAEMismatchError, match="gemma-2-2b"):
        check_against_subject(other, subject)
    # SAEs of our own (and any sae-lens directory) record the convention on load
    assert load_sae("shipped").cfg.metadata.layer_convention == LAYER_CONVENTION


def test_cli_import_export_vector_and_import_sae(pv, tmp_path):
    from typer.testing import CliRunner

    from persona_probe.cli import app

    path, vec, _ = pv
    runner = CliRunner()
    r = runner.invoke(app, ["import-vector", str(path), "--out", str(tmp_path / "d"),
                            "--layer-index", "20"])
    assert r.exit_code == 0, r.output
    assert "row 20 → blocks.19.hook_resid_post" in r.output
    assert Direction.load(tmp_path / "d").layers == [19]
    r = runner.invoke(app, ["export-vector", str(tmp_path / "d"), "--out",
                            str(tmp_path / "v.pt"), "--n-layers", "30"])
    assert r.exit_code == 0, r.output
    t = torch.load(tmp_path / "v.pt", weights_only=True)
    torch.testing.assert_close(t[20], vec[20])
    assert torch.isnan(t[19]).all()
    src = tmp_path / "trainer_0"
    _write_dl(src, "AutoEncoderTopK", _dl_state("AutoEncoderTopK", D, M, _g(0)))
    r = runner.invoke(app, ["import-sae", str(src), "--out", str(tmp_path / "sae")])
    assert r.exit_code == 0, r.output
    assert "blocks.3.hook_resid_post" in r.output
    r = runner.invoke(app, ["sae-info", str(tmp_path / "sae")])
    assert r.exit_code == 0 and "imported from dictionary_learning" in r.output, r.output
    torch.save(argparse.Namespace(), tmp_path / "bad.pt")
    r = runner.invoke(app, ["import-vector", str(tmp_path / "bad.pt"), "--out",
                            str(tmp_path / "x")])
    assert r.exit_code == 2 and "refused" in r.output
