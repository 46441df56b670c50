"""Each open_clip-style function works as the first call in a fresh interpreter: nothing depends on which module
happened to be imported first (the built-in configs and families belong to the registry itself)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "daclip_lora" / "clip" / "model_configs" / "daclip_tiny.json"
TINY_WEIGHTS = ROOT / "daclip_lora" / "tiny" / "assets" / "tiny_daclip" / "daclip_tiny.safetensors"

#: (what is called first, the code; ``CFG`` is a copy of the tiny config named my_tiny.json in ``CFG_DIR``)
FIRST_CALLS = [
    ("add_model_config(file)", "names = m.add_model_config(CFG)\n"
                               "assert names == ['my_tiny'], names\n"
                               "assert type(m.create_model('my_tiny')).__name__ == 'DaCLIP'"),
    ("add_model_config(folder)", "names = m.add_model_config(CFG_DIR)\n"
                                 "assert names == ['my_tiny'], names\n"
                                 "assert m.get_model_config('my_tiny')['embed_dim'] > 0"),
    ("list_models", "names = m.list_models()\n"
                    "assert {'daclip_ViT-B-32', 'daclip_ViT-L-14', 'daclip_tiny'} <= set(names), names[:5]"),
    ("get_model_config", "cfg = m.get_model_config('daclip_ViT-B-32')\n"
                         "assert cfg['vision_cfg']['patch_size'] == 32, cfg"),
    ("list_families", "assert m.list_families() == ['clip', 'daclip'], m.list_families()"),
    ("create_model", "assert type(m.create_model('daclip_tiny')).__name__ == 'DaCLIP'"),
    ("create_model_and_transforms", "model, train, val = m.create_model_and_transforms('daclip_tiny')\n"
                                    "assert type(model).__name__ == 'DaCLIP' and callable(val)"),
    ("create_model_from_pretrained", "model, pre = m.create_model_from_pretrained('daclip_tiny', pretrained=WEIGHTS)\n"
                                     "assert type(model).__name__ == 'DaCLIP' and callable(pre)"),
    ("get_tokenizer", "tok = m.get_tokenizer('daclip_tiny')\n"
                      "assert tuple(tok(['a hazy photo']).shape) == (1, m.get_model_config('daclip_tiny')"
                      "['text_cfg']['context_length'])"),
    ("register_family", "import torch\n"
                        "@m.register_family('toy')\n"
                        "def toy(cfg, cast_dtype=None, **kw):\n"
                        "    model = m.clip.registry.get_family_factory('clip')(cfg, cast_dtype=cast_dtype, **kw)\n"
                        "    model.made_by = 'toy'\n"
                        "    return model\n"
                        "cfg = json.load(open(CFG)); cfg['family'] = 'toy'\n"
                        "p = os.path.join(CFG_DIR, 'toy_model.json'); json.dump(cfg, open(p, 'w'))\n"
                        "m.add_model_config(p)\n"
                        "model = m.create_model('toy_model')\n"
                        "assert model.made_by == 'toy' and type(model).__name__ == 'CLIP'"),
    ("register_with_open_clip", "m.register_with_open_clip()\n"
                                "import open_clip\n"
                                "assert type(open_clip.create_model('daclip_tiny')).__name__ == 'DaCLIP'\n"
                                "assert 'daclip_tiny' in open_clip.list_models()"),
]

#: how the first call reaches the function: the top-level lazy API, or after the registry module alone was imported
IMPORTS = {"top-level": "import daclip_lora as m",
           "registry-first": "import daclip_lora.clip.registry\nimport daclip_lora as m"}
#: the calls that touch the registry, also tried with only the registry module imported before them
REGISTRY_CALLS = ("add_model_config(file)", "get_model_config", "register_family")
CASES = [(name, code, via) for name, code in FIRST_CALLS for via in IMPORTS
         if via == "top-level" or name in REGISTRY_CALLS]


@pytest.mark.parametrize("name,code,via", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_works_as_the_first_call(tmp_path, name, code, via):
    (tmp_path / "cfg").mkdir()
    cfg = tmp_path / "cfg" / "my_tiny.json"
    cfg.write_text(TINY_CONFIG.read_text())
    script = "\n".join(["import json, os, sys", IMPORTS[via], f"CFG = {str(cfg)!r}",
                        f"CFG_DIR = {str(cfg.parent)!r}", f"WEIGHTS = {str(TINY_WEIGHTS)!r}",
                        "assert 'daclip_lora.clip.factory' not in sys.modules", code, "print('ok')"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]
