"""`streamdiff models` on hub caches laid out as huggingface_hub lays them out."""

import argparse
import json

import pytest

from streamdiff.models import command
from streamdiff.models.registry import REGISTRY


def run_models(capsys, *argv: str) -> str:
    parser = argparse.ArgumentParser(prog="streamdiff")
    command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["models", *argv])
    assert args.func(args) == 0
    return capsys.readouterr().out


def fake_pipeline(folder, unet_weights: bool = True):
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (folder / "unet" / "config.json").write_text("{}")
    if unet_weights:
        (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"w" * 2_000_000)
    return folder


def fake_files(folder, *names):
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_text(name)
    return folder


@pytest.fixture
def cache(tmp_path, helpers):
    """sd-turbo complete, sd15-lcm without its LoRA, a foreign pipeline, a non-pipeline repo, a bare index."""
    hub = tmp_path / "hub"
    add = helpers.add_to_hub_cache
    add(hub, "stabilityai/sd-turbo", fake_pipeline(tmp_path / "turbo"))
    add(hub, "madebyollin/taesd", fake_files(tmp_path / "taesd", "config.json", "diffusion_pytorch_model.safetensors"))
    add(hub, "stable-diffusion-v1-5/stable-diffusion-v1-5", fake_pipeline(tmp_path / "sd15"))
    add(hub, "someone/watercolor-sd", fake_pipeline(tmp_path / "watercolor"))
    add(hub, "someone/bert-base", fake_files(tmp_path / "bert", "config.json", "model.safetensors"))
    add(hub, "someone/index-only", fake_pipeline(tmp_path / "index", unet_weights=False))
    return hub


def test_empty_cache_lists_every_model_as_not_cached(capsys, tmp_path):
    out = run_models(capsys, "--cache-dir", str(tmp_path / "no-cache-here"))
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["NAME", "REPO", "SIZE", "STEPS", "TAESD", "CACHED"]
    rows = {line.split()[0]: line for line in lines[1:len(REGISTRY) + 1]}
    assert set(rows) == set(REGISTRY)
    for name, spec in REGISTRY.items():
        assert spec.description in rows[name] and (spec.repo_id or "-") in rows[name]
    assert "sdxs-512 *" in out and "Other diffusers models" not in out
    assert " no " in rows["sd-turbo"] and "built locally" in rows["tiny"]


def test_columns_are_aligned(capsys, cache):
    header, *rows = run_models(capsys, "--cache-dir", str(cache)).splitlines()[: len(REGISTRY) + 1]
    size, cached = header.index("SIZE"), header.index("CACHED")
    for row in rows:
        assert row[size:].split()[0] in ("512px", "1024px", "64px")
        assert row[cached:].startswith(("yes ", "no ", "partial ", "built locally "))


def test_cached_partial_and_other_pipelines(capsys, cache):
    out = run_models(capsys, "--cache-dir", str(cache))
    rows = {line.split()[0]: line for line in out.splitlines()[1:len(REGISTRY) + 1]}
    assert "  yes  " in rows["sd-turbo"]
    assert "partial (missing latent-consistency/lcm-lora-sdv1-5)" in rows["sd15-lcm"]
    assert "  no  " in rows["sdxs-512"] and "  no  " in rows["tiny-sd"]
    others = out.split("Other diffusers models in the cache")[1]
    assert "someone/watercolor-sd" in others
    assert "someone/bert-base" not in others and "someone/index-only" not in others
    assert "stabilityai/sd-turbo" not in others


def test_json_output(capsys, cache):
    document = json.loads(run_models(capsys, "--json", "--cache-dir", str(cache)))
    models = {m["name"]: m for m in document["models"]}
    assert document["default_model"] == "sdxs-512" and document["cache_dir"] == str(cache)
    assert models["sd-turbo"]["cached"] == "yes" and models["sd-turbo"]["missing"] == []
    assert models["sd15-lcm"]["cached"] == "partial"
    assert models["sd15-lcm"]["missing"] == ["latent-consistency/lcm-lora-sdv1-5"]
    assert models["tiny"]["cached"] == "local" and models["sdxs-512"]["default"]
    assert models["sd15-lcm"]["t_index_list"] == [32, 45] and models["sd15-lcm"]["steps"] == 2
    assert [o["repo_id"] for o in document["other_cached_pipelines"]] == ["someone/watercolor-sd"]
    assert document["other_cached_pipelines"][0]["size_on_disk"] >= 2_000_000


SD21_CANNY, SD15_CANNY = "thibaud/controlnet-sd21-canny-diffusers", "lllyasviel/control_v11p_sd15_canny"
SD21_DEPTH, SD15_DEPTH = "thibaud/controlnet-sd21-depth-diffusers", "lllyasviel/control_v11f1p_sd15_depth"
SDXL_CANNY, SDXL_DEPTH = "diffusers/controlnet-canny-sdxl-1.0", "diffusers/controlnet-depth-sdxl-1.0"
ESTIMATOR = "depth-anything/Depth-Anything-V2-Small-hf"
ESTIMATORS = ("depth-anything/Depth-Anything-V2-Base-hf", "depth-anything/Depth-Anything-V2-Large-hf")
ADAPTERS = tuple(f"h94/IP-Adapter/{name}" for name in (
    "models/ip-adapter_sd15.safetensors", "sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
    "models/ip-adapter-plus_sd15.safetensors", "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors"))


@pytest.fixture
def control_cache(cache, tmp_path, helpers):
    """The cache above with the SD 2.1 canny ControlNet, the depth estimator, and the SD 1.5 canny one's config."""
    add = helpers.add_to_hub_cache
    add(cache, SD21_CANNY, fake_files(tmp_path / "canny21", "config.json", "diffusion_pytorch_model.safetensors"))
    add(cache, ESTIMATOR, fake_files(tmp_path / "estimator", "config.json", "model.safetensors"))
    add(cache, SD15_CANNY, fake_files(tmp_path / "canny15", "config.json"))
    return cache


def auxiliary_rows(out: str) -> dict[str, str]:
    section = out.split("ControlNets, IP-Adapters and the depth estimators, fetched when an option asks for them:\n")[1]
    header, *rows = section.split("\n\n")[0].splitlines()
    assert header.split() == ["REPO", "CACHED", "USED", "BY"]
    return {row.split()[0]: row for row in rows}


def test_controlnets_and_the_depth_estimator_show_their_cache_state_and_option(capsys, control_cache):
    out = run_models(capsys, "--cache-dir", str(control_cache))
    rows = auxiliary_rows(out)
    assert list(rows) == [SD21_CANNY, SD15_CANNY, SDXL_CANNY, SD21_DEPTH, SD15_DEPTH, SDXL_DEPTH, *ADAPTERS,
                          ESTIMATOR, *ESTIMATORS]
    assert rows[SD21_CANNY].split()[1:] == ["yes", "--controlnet", "canny", "with", "sd-turbo"]
    partial = "  partial (missing diffusion_pytorch_model.safetensors)  --controlnet canny with sd15-lcm"
    assert partial in rows[SD15_CANNY]
    assert rows[SD21_DEPTH].split()[1:] == ["no", "--controlnet", "depth", "with", "sd-turbo"]
    assert rows[SD15_DEPTH].split()[1:] == ["no", "--controlnet", "depth", "with", "sd15-lcm"]
    assert rows[SDXL_CANNY].split()[1:] == ["no", "--controlnet", "canny", "with", "sdxl-turbo,", "sdxl-lcm"]
    assert rows[SDXL_DEPTH].split()[1:] == ["no", "--controlnet", "depth", "with", "sdxl-turbo,", "sdxl-lcm"]
    assert rows[ESTIMATOR].split()[1] == "yes" and rows[ESTIMATOR].endswith("--control-preprocess depth (Apache-2.0)")
    large = rows[ESTIMATORS[1]]
    assert large.split()[1] == "no" and large.endswith("with --depth-estimator large (CC-BY-NC-4.0)")
    assert out.index("* default model.") < out.index("ControlNets, IP-Adapters") < out.index("Other diffusers models")


def test_an_empty_cache_has_no_controlnet_nor_estimator(capsys, tmp_path):
    rows = auxiliary_rows(run_models(capsys, "--cache-dir", str(tmp_path / "no-cache-here")))
    assert len(rows) == 13 and all(row.split()[1] == "no" for row in rows.values())


def test_json_lists_controlnets_and_the_depth_estimator(capsys, control_cache):
    document = json.loads(run_models(capsys, "--json", "--cache-dir", str(control_cache)))
    auxiliaries = {a["repo_id"]: a for a in document["auxiliary_models"]}
    assert auxiliaries[SD21_CANNY] == {"path": SD21_CANNY, "repo_id": SD21_CANNY, "role": "controlnet",
                                       "kind": "canny", "family": "sd21",
                                       "used_by": "--controlnet canny with sd-turbo", "cached": "yes", "missing": []}
    assert (auxiliaries[SD15_CANNY]["cached"], auxiliaries[SD15_CANNY]["missing"]) == (
        "partial", ["diffusion_pytorch_model.safetensors"])
    assert auxiliaries[SD15_DEPTH]["cached"] == "no"
    assert auxiliaries[SD15_DEPTH]["missing"] == ["config.json", "diffusion_pytorch_model.safetensors"]
    estimator = auxiliaries[ESTIMATOR]
    assert (estimator["role"], estimator["family"], estimator["cached"]) == ("depth_estimator", None, "yes")
    assert estimator["used_by"] == "--controlnet depth, or --control-preprocess depth (Apache-2.0)"
    assert [m["name"] for m in document["models"]] == list(REGISTRY)


def test_each_ip_adapter_of_the_one_repository_shows_its_own_files_cache_state(capsys, cache, tmp_path, helpers):
    """h94/IP-Adapter holds every adapter, and the ViT-H image encoder they share: two adapters are cached with the
    encoder, two are not; the encoder's pytorch_model.bin twin is not asked for."""
    h94 = tmp_path / "h94"
    fake_files(h94 / "models", "ip-adapter_sd15.safetensors")
    fake_files(h94 / "models" / "image_encoder", "config.json", "model.safetensors")
    fake_files(h94 / "sdxl_models", "ip-adapter-plus_sdxl_vit-h.safetensors")
    helpers.add_to_hub_cache(cache, "h94/IP-Adapter", h94)
    rows = auxiliary_rows(run_models(capsys, "--cache-dir", str(cache)))
    base15, base_xl, plus15, plus_xl = (" ".join(rows[path].split()[1:]) for path in ADAPTERS)
    assert base15 == "yes --style-image, or --ip-adapter base with sd15-lcm, tiny-sd"
    assert base_xl == ("partial (missing sdxl_models/ip-adapter_sdxl_vit-h.safetensors) --style-image, or "
                       "--ip-adapter base with sdxl-turbo, sdxl-lcm")
    assert plus15 == "partial (missing models/ip-adapter-plus_sd15.safetensors) --ip-adapter plus with sd15-lcm, tiny-sd"
    assert plus_xl == "yes --ip-adapter plus with sdxl-turbo, sdxl-lcm"
    document = json.loads(run_models(capsys, "--json", "--cache-dir", str(cache)))
    adapters = [a for a in document["auxiliary_models"] if a["role"] == "ip_adapter"]
    assert {a["repo_id"] for a in adapters} == {"h94/IP-Adapter"}
    assert [(a["path"], a["kind"], a["family"], a["cached"]) for a in adapters] == [
        (ADAPTERS[0], "base", "sd15", "yes"), (ADAPTERS[1], "base", "sdxl", "partial"),
        (ADAPTERS[2], "plus", "sd15", "partial"), (ADAPTERS[3], "plus", "sdxl", "yes")]
