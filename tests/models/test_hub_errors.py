"""Missing models with the hub out of reach: real runs in fresh processes with an empty HF_HOME.

One process has offline mode on; the other points the hub at a closed loopback port (nothing
listens on 127.0.0.1:9), so no other address is ever contacted.
"""

import json
import os
import subprocess
import sys

import pytest

ENDPOINT = "http://127.0.0.1:9"
SCRIPT = """
import json, sys, time
import torch
import diffusers.pipelines.stable_diffusion  # imported before the clock starts
from streamdiff.errors import UserError
from streamdiff.models.loading import load_model

results = {}
for target in sys.argv[1:]:
    start = time.perf_counter()
    try:
        load_model(target, dtype=torch.float32, device="cpu")
        results[target] = {"error": None}
    except Exception as exc:
        results[target] = {"error": type(exc).__name__, "message": str(exc), "user_error": isinstance(exc, UserError)}
    results[target]["seconds"] = time.perf_counter() - start
print("RESULT " + json.dumps(results))
"""
HUB_ID = "nobody-here/no-such-model"


def _environment(home, offline: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(home), HF_ENDPOINT=ENDPOINT, HF_HUB_DISABLE_TELEMETRY="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory, helpers, tiny_reference):
    """Both processes at once (each spends most of its time importing diffusers)."""
    from safetensors.torch import save_file

    checkpoint = tmp_path_factory.mktemp("single") / "fine-tune.safetensors"
    save_file(helpers.ldm_checkpoint(tiny_reference), str(checkpoint))
    targets = ["sd-turbo", "sd15-lcm", HUB_ID, str(checkpoint)]
    processes = {
        mode: subprocess.Popen(
            [sys.executable, "-c", SCRIPT, *targets],
            env=_environment(tmp_path_factory.mktemp(mode), mode == "offline"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for mode in ("offline", "unreachable")
    }
    results = {}
    for mode, process in processes.items():
        out, err = process.communicate(timeout=240)
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert process.returncode == 0 and lines, err[-3000:]
        results[mode] = json.loads(lines[-1][len("RESULT "):])
    return results, str(checkpoint)


MODES = ("offline", "unreachable")
REASON = {"offline": "offline mode is on (HF_HUB_OFFLINE=1)",
          "unreachable": f"the hub ({ENDPOINT}) could not be reached"}


def _result(runs, mode, target):
    results, checkpoint = runs
    return results[mode][checkpoint if target == "single file" else target]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("target", ["sd-turbo", "sd15-lcm", HUB_ID, "single file"])
def test_missing_model_is_one_clear_paragraph(runs, mode, target):
    result = _result(runs, mode, target)
    assert result["error"] == "ModelUnavailableError" and result["user_error"]
    message = result["message"]
    assert "\n" not in message and "Traceback" not in message and 'File "' not in message
    assert REASON[mode] in message
    for alternative in ("a local diffusers folder (one with model_index.json)", "a single .safetensors file",
                        "--model tiny"):
        assert alternative in message
    # No retry back-off (huggingface_hub's file requests retry for about 23 s per file): reported at once.
    assert result["seconds"] < 20


@pytest.mark.parametrize("mode", MODES)
def test_registry_model_names_every_missing_repo_and_how_to_get_it(runs, mode):
    message = _result(runs, mode, "sd15-lcm")["message"]
    assert message.startswith("model 'sd15-lcm' cannot be loaded:")
    for repo, role, options in (
            ("stable-diffusion-v1-5/stable-diffusion-v1-5", "the pipeline",  # only what the float32 load fetches
             " --include 'model_index.json' --include 'scheduler/*' --include 'tokenizer*/*' --include '*/config.json'"
             " --include '*/model.safetensors' --include '*/diffusion_pytorch_model.safetensors'"
             " --exclude 'safety_checker/*' --exclude 'feature_extractor/*' --exclude 'vae/*'"),
            ("madebyollin/taesd", "TAESD, replacing its VAE", ""),
            ("latent-consistency/lcm-lora-sdv1-5", "its LoRA", "")):
        assert f"{repo} ({role})" in message and f"`hf download {repo}{options}`" in message
    assert "huggingface-cli download" in message
    assert "--no-taesd" not in message  # keeping the model's own VAE would not help: the pipeline is missing too


@pytest.mark.parametrize("mode", MODES)
def test_unknown_hub_id_is_named(runs, mode):
    message = _result(runs, mode, HUB_ID)["message"]
    assert f"{HUB_ID} (the pipeline)" in message and f"`hf download {HUB_ID}`" in message


@pytest.mark.parametrize("mode", MODES)
def test_single_file_names_the_base_configuration_it_needs(runs, mode):
    message = _result(runs, mode, "single file")["message"]
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5 (the configuration of its base model)" in message
    assert "config= a local diffusers folder of the same architecture" in message


def _raised(error, cause=None):
    """`error` as raised, chained to its cause the way the hub stack chains them."""
    try:
        raise error from cause
    except Exception as exc:  # noqa: BLE001  (returned for inspection)
        return exc


def _http_error(cls, status):
    httpx = pytest.importorskip("httpx2")  # the HTTP stack this huggingface_hub version raises with
    return cls("hub answer", response=httpx.Response(status, request=httpx.Request("GET", ENDPOINT)))


def test_failure_reasons_from_the_real_exception_classes(monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub import errors as hub

    from streamdiff.models.hub import failure_reason

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    offline = _raised(hub.LocalEntryNotFoundError("not cached"), hub.OfflineModeIsEnabled("offline"))
    assert failure_reason(offline) == "offline"
    assert failure_reason(_raised(OSError("no config"), ConnectionRefusedError(111, "refused"))) == "unreachable"
    assert failure_reason(_raised(OSError("no config"), _http_error(hub.HfHubHTTPError, 503))) == "unreachable"
    assert failure_reason(hub.LocalEntryNotFoundError("not cached")) == "unreachable"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert failure_reason(hub.LocalEntryNotFoundError("not cached")) == "offline"
    assert failure_reason(_raised(OSError("x"), _http_error(hub.RepositoryNotFoundError, 404))) == "not_found"
    assert failure_reason(_http_error(hub.GatedRepoError, 403)) == "gated"
    assert failure_reason(ValueError("bad shape")) is None
    assert failure_reason(_raised(FileNotFoundError("some local file"), KeyError("x"))) is None
