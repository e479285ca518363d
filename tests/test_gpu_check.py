"""The GPU check and the GPU configs cannot rot before a GPU is lent: `make gpu-check`'s script
runs here in its tiny CPU --dry-run mode (same code paths, same JSON schema), the renderer never
shows dry-run figures, and every experiments/configs/*-gpu.json is dry-run (parsed, validated,
its stages planned) without loading a model."""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
CONFIGS = ROOT / "experiments" / "configs"
GPU_CONFIGS = sorted(p.name for p in CONFIGS.glob("*-gpu.json"))
SECTIONS = ("capture", "sae_train", "steer_generate", "lora_step")


@pytest.fixture(scope="module")
def bench_path():
    sys.path.insert(0, str(BENCH))
    yield
    sys.path.remove(str(BENCH))


# --- experiment configs ---------------------------------------------------------------------

def test_there_are_gpu_configs():
    assert len(GPU_CONFIGS) >= 7


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_config_dry_run_plans_its_stages(name):
    from persona_probe.experiments.plan import plan_config

    plan = plan_config(CONFIGS / name)
    assert plan.problems == [], plan.text()
    assert plan.stages and all(s["stage"] and s["what"] for s in plan.stages)
    assert (ROOT / plan.script.split()[0]).is_file()
    assert plan.model and "config OK" in plan.text()


def test_dry_run_reports_a_broken_config(tmp_path):
    from persona_probe.experiments.plan import plan_config

    raw = json.loads((CONFIGS / "em_persona_features-qwen2.5-7b-gpu.json").read_text())
    raw["induce"]["em"]["control"]["data"] = "shared:emergent_misalignment/train/nope.jsonl"
    raw["sae"] = "sae-lens:qwen2.5-7b-instruct-andyrdt/resid_post_layer_99_trainer_1"
    bad = tmp_path / "em_persona_features-broken-gpu.json"
    bad.write_text(json.dumps(raw))
    problems = " ".join(plan_config(bad).problems)
    if "not checked" not in json.dumps(plan_config(bad).data):   # shared data present
        assert "nope.jsonl" in problems
    assert "resid_post_layer_99_trainer_1" in problems or "sae-lens is not importable" in \
        " ".join(plan_config(bad).notes)
    # a missing sibling config of em_induction is a problem, not a crash
    (tmp_path / "em-insecure-x-gpu.json").write_text((CONFIGS / "em-insecure-qwen2.5-7b-gpu.json")
                                                     .read_text())
    assert any("em-secure-x-gpu.json" in p for p in plan_config(
        tmp_path / "em-insecure-x-gpu.json").problems)


def _script_dry_run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    old = sys.argv
    sys.argv = argv
    code = 0
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(ROOT / argv[0]), run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    return code, out.getvalue()


def test_every_gpu_configs_script_takes_dry_run(monkeypatch):
    """The command lines themselves: each script's --dry-run plans, loads no model."""
    import persona_probe.models as models

    def no_model(*a, **k):
        raise AssertionError("a dry run loaded a model")
    monkeypatch.setattr(models, "load_subject", no_model)
    from persona_probe.experiments.plan import plan_config

    seen = set()
    for name in GPU_CONFIGS:
        plan = plan_config(CONFIGS / name)
        script = plan.script.split()[0]
        if script in seen:
            continue
        seen.add(script)
        if plan.experiment == "em_induction":
            suffix = name.split("-", 2)[2].removesuffix(".json")
            argv = [script, "--config-suffix", suffix, "--dry-run"]
        else:
            argv = [script, "--config", str(CONFIGS / name), "--dry-run"]
        code, text = _script_dry_run(argv)
        assert code == 0 and "config OK" in text and "stages (" in text, (argv, text)
    assert len(seen) >= 5


# --- the GPU check in --dry-run mode ------------------------------------------------------------

@pytest.fixture(scope="module")
def dry_run_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-dry")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--dry-run", "--out",
                          str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return out


def test_dry_run_writes_every_sections_json_with_the_schema(dry_run_out):
    manifest = json.loads((dry_run_out / "gpu_check.json").read_text())
    assert manifest["dry_run"] is True and set(manifest["sections"]) == set(SECTIONS)
    for section in SECTIONS:
        rep = json.loads((dry_run_out / f"{section}.json").read_text())
        assert rep["schema"] == "persona_probe.gpu_check/1" and rep["section"] == section
        assert rep["dry_run"] is True and rep["env"]["device"] == "cpu"
        for key in ("torch", "transformers", "python", "peak_flops", "packages"):
            assert key in rep["env"]
        assert rep["status"] == "ok", rep
        assert [m["model"] for m in rep["models"]] == ["smollm2-135m", "qwen2.5-7b"]
        for m in rep["models"]:
            assert m["status"] == "ok" and m["results"], m
            assert m["model_info"]["config"]["num_hidden_layers"] == 2       # tiny
            for r in m["results"]:
                assert r["tok_per_s"] > 0 and "mfu" in r and "peak_mem_gib" in r
                assert r["mfu"] is None and r["peak_mem_gib"] is None          # CPU: no peak
    sae = json.loads((dry_run_out / "sae_train.json").read_text())
    methods = {r["method"] for m in sae["models"] for r in m["results"]}
    assert {"pp_sparse", "pp_reference"} <= methods
    if sae["env"]["packages"]["sae_lens"]:
        assert "sae_lens" in methods


def test_dry_run_figures_are_never_rendered_and_real_ones_are(dry_run_out, tmp_path, bench_path):
    from gpu_report import HEADER, gpu_section

    text = gpu_section(dry_run_out)
    assert text.startswith(HEADER) and "No GPU figures yet" in text and "|" not in text
    # the same files as if a GPU had written them render as tables (schema and renderer agree)
    for section in SECTIONS:
        rep = json.loads((dry_run_out / f"{section}.json").read_text())
        rep["dry_run"] = False
        rep["env"].update(dry_run=False, device="cuda", device_name="NVIDIA H200",
                          total_memory_gib=139.8, measured_matmul_flops={"bf16_8192": 7.8e14},
                          peak_flops={"part": "H200 SXM", "bf16": 989e12, "fp32": 67e12,
                                      "source": "test", "reason": None})
        if section == "lora_step":
            rep["models"][1].update(status="skipped", results=[], reason="time budget: test")
        (tmp_path / f"{section}.json").write_text(json.dumps(rep))
    text = gpu_section(tmp_path)
    assert "No GPU figures yet" not in text and "NVIDIA H200" in text
    for title in ("### Capture", "### SAE training", "### Generation", "### LoRA step"):
        assert title in text
    assert "| smollm2-135m | persona_probe |" in text and "time budget: test" in text


def test_time_budget_skips_with_a_reason(tmp_path, bench_path):
    import gpu_check

    assert gpu_check.main(["--dry-run", "--out", str(tmp_path), "--budget-s", "0",
                           "--sections", "capture", "--models", "smollm2-135m"]) == 0
    rep = json.loads((tmp_path / "capture.json").read_text())
    assert rep["status"] == "skipped" and "time budget" in rep["reason"]
    assert not (tmp_path / "lora_step.json").exists()


def test_peak_table(bench_path):
    from gpu_check import peak_rates

    assert peak_rates("NVIDIA H200")["part"] == "H200 SXM"
    assert peak_rates("NVIDIA H200 NVL")["part"] == "H200 NVL"
    assert peak_rates("NVIDIA GH200 480GB")["part"] == "GH200"
    assert peak_rates("NVIDIA H100 80GB HBM3")["bf16"] == 989e12
    assert peak_rates("NVIDIA H100 PCIe")["part"] == "H100 PCIe"
    assert peak_rates("NVIDIA A100-SXM4-80GB")["bf16"] == 312e12
    unknown = peak_rates("NVIDIA GeForce GT 710")
    assert unknown["bf16"] is None and "not in" in unknown["reason"]
