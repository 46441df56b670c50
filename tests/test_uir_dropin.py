"""The UIR / DA-CLIP drop-in (issue 10): a shadowing open_clip/ fork, the original's loss and argument
namespace, open_clip pretrained tags, and the original's controller initialisation."""

import argparse
import json
import os
import subprocess
import sys
import textwrap

import open_clip
import open_clip.pretrained as oc_pretrained
import pytest
import torch
import torch.nn.functional as F

import daclip_lora
from conftest import TINY


# --------------------------------------------------------------------------------- shadowing
def _uir_checkout(tmp_path, fork_body="raise RuntimeError('the UIR fork was imported')"):
    """A fake UIR checkout: its own open_clip/ package at the root, and a script that puts the root first."""
    root = tmp_path / "universal-image-restoration"
    (root / "open_clip").mkdir(parents=True)
    (root / "open_clip" / "__init__.py").write_text(fork_body + "\n")
    (root / "open_clip" / "factory.py").write_text("raise RuntimeError('fork submodule imported')\n")
    return root


def _run(root, code):
    script = root / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": ""}
    return subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True, env=env,
                          timeout=120)


def test_shadowing_fork_is_bypassed(tmp_path):
    root = _uir_checkout(tmp_path)
    r = _run(root, """
        import sys
        sys.path.insert(0, %r)
        import daclip_lora as open_clip
        import open_clip as oc  # the user's other imports get the same, installed package
        model = open_clip.create_model("daclip_tiny")
        print(oc.__file__)
        print(type(model).__name__, callable(open_clip.create_model_from_pretrained))
    """ % str(root))
    assert r.returncode == 0, r.stderr
    path, built = r.stdout.strip().splitlines()
    assert path == open_clip.__file__  # the installed open_clip_torch, not root/open_clip
    assert built == "DaCLIP True"
    assert (root / "open_clip" / "__init__.py").exists()  # the fork is left alone on disk


def test_fork_imported_first_is_one_line_error(tmp_path):
    root = _uir_checkout(tmp_path, fork_body="FORK = True")
    r = _run(root, """
        import sys
        sys.path.insert(0, %r)
        import open_clip
        import daclip_lora
    """ % str(root))
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: another open_clip was imported before daclip_lora")
    assert str(root / "open_clip") in last and "rename/remove that folder" in last


# --------------------------------------------------------------------------------------- loss
def _features(n=6, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(n, d, generator=g), dim=-1) for _ in range(4)]


def _contrastive(a, b, scale):
    """CLIP's symmetric InfoNCE written out: mean of the two cross-entropies over the diagonal labels."""
    logits = scale * a @ b.T
    n = a.shape[0]
    log_p_rows = logits - logits.logsumexp(dim=1, keepdim=True)
    log_p_cols = logits - logits.logsumexp(dim=0, keepdim=True)
    return -(log_p_rows[range(n), range(n)].mean() + log_p_cols[range(n), range(n)].mean()) / 2


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_daclip_loss_matches_formula(scale):
    img, txt, img_d, txt_d = _features()
    out = daclip_lora.DaClipLoss()(image_features=img, text_features=txt, image_degra_features=img_d,
                                   text_degra_features=txt_d, logit_scale=torch.tensor(scale), output_dict=True)
    assert set(out) == {"contrastive_loss", "degra_loss"}
    assert (out["contrastive_loss"] - _contrastive(img, txt, scale)).abs() < 1e-5
    assert (out["degra_loss"] - _contrastive(img_d, txt_d, scale)).abs() < 1e-5


def test_daclip_loss_tuple_form():
    img, txt, img_d, txt_d = _features(seed=3)
    clip_loss, degra_loss = daclip_lora.DaClipLoss()(img, txt, img_d, txt_d, torch.tensor(10.0))
    assert (clip_loss - _contrastive(img, txt, 10.0)).abs() < 1e-5
    assert (degra_loss - _contrastive(img_d, txt_d, 10.0)).abs() < 1e-5


def test_clip_loss_accepts_daclip_outputs():
    img, txt, img_d, txt_d = _features(seed=4)
    out = daclip_lora.ClipLoss()(image_features=img, text_features=txt, image_degra_features=img_d,
                                 text_degra_features=txt_d, logit_scale=torch.tensor(5.0), output_dict=True)
    assert (out["degra_loss"] - _contrastive(img_d, txt_d, 5.0)).abs() < 1e-5
    plain = daclip_lora.ClipLoss()(img, txt, torch.tensor(5.0))
    assert (plain - _contrastive(img, txt, 5.0)).abs() < 1e-5


def _original_args(model):
    """The attributes the DA-CLIP fork's params.py + main.py give create_loss (no siglip, loss_dist_impl)."""
    return argparse.Namespace(model=model, distill=False, local_loss=False, gather_with_grad=False, rank=0,
                              world_size=1, horovod=False, coca_caption_loss_weight=2.0,
                              coca_contrastive_loss_weight=1.0)


@pytest.mark.parametrize("model, expected", [("daclip_ViT-B-32", "DaClipLoss"), ("daclip_tiny", "DaClipLoss"),
                                             ("ViT-B-32", "ClipLoss"), ("coca_ViT-B-32", "CoCaLoss")])
def test_create_loss_with_original_namespace(model, expected):
    assert type(daclip_lora.create_loss(_original_args(model))).__name__ == expected


def test_original_train_loop_call(tiny):
    """train.py: model_out = model(images, texts); losses = loss(**model_out, output_dict=True)."""
    tok = daclip_lora.get_tokenizer(TINY)
    captions = tok(["a cat on a sofa", "a cup of coffee"])
    degradations = tok(["noisy", "hazy"])
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    model_out = tiny(images, torch.cat([captions, degradations], dim=-1))
    losses = daclip_lora.create_loss(_original_args(TINY))(**model_out, output_dict=True)
    scale = model_out["logit_scale"]
    assert (losses["contrastive_loss"] - _contrastive(model_out["image_features"], model_out["text_features"],
                                                      scale)).abs() < 1e-5
    assert (losses["degra_loss"] - _contrastive(model_out["image_degra_features"],
                                                model_out["text_degra_features"], scale)).abs() < 1e-5


# ---------------------------------------------------------------------------- pretrained tags
@pytest.fixture
def tagged_tiny(tmp_path, monkeypatch):
    """daclip_tiny under another name whose base CLIP ('tiny-clip') has open_clip tags, and a plain-CLIP
    checkpoint that open_clip's (patched) download returns for them."""
    cfg = json.loads((daclip_lora.clip.registry._builtin_config_dir() / "daclip_tiny.json").read_text())
    cfg["base_model"] = "tiny-clip"
    path = tmp_path / "daclip_tagged.json"
    path.write_text(json.dumps(cfg))
    daclip_lora.add_model_config(path)
    monkeypatch.setitem(oc_pretrained._PRETRAINED, "tiny-clip", {
        "web": oc_pretrained._pcfg(hf_hub="example/tiny-clip-web/"),
        "oai": oc_pretrained._pcfg(hf_hub="example/tiny-clip-oai/", quick_gelu=True),
    })
    torch.manual_seed(5)
    clip = daclip_lora.create_model(TINY).clip
    ckpt = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip.state_dict(), ckpt)
    calls = []

    def fake_download(cfg, prefer_hf_hub=True, cache_dir=None):
        calls.append(cfg["hf_hub"])
        return str(ckpt)

    monkeypatch.setattr(oc_pretrained, "download_pretrained", fake_download)
    return clip, calls


def test_tag_loads_base_clip_and_initialises_controller(tagged_tiny):
    clip, calls = tagged_tiny
    model, _ = daclip_lora.create_model_from_pretrained("daclip_tagged", pretrained="web")
    assert calls == ["example/tiny-clip-web/"]
    ref = clip.state_dict()
    assert max((v - ref[k]).abs().max().item() for k, v in model.clip.state_dict().items()) == 0
    assert torch.equal(model.visual_control.conv1.weight, clip.visual.conv1.weight)
    assert not any(p.requires_grad for p in model.clip.parameters())


def test_quick_gelu_tag_builds_quick_gelu(tagged_tiny):
    model = daclip_lora.create_model("daclip_tagged", pretrained="oai")
    assert type(model.clip.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


def test_unknown_tag_lists_known_tags(tagged_tiny):
    with pytest.raises(FileNotFoundError, match=r"'weeb'.*neither a file nor an open_clip tag of tiny-clip.*web"):
        daclip_lora.create_model("daclip_tagged", pretrained="weeb")


def test_offline_tag_names_tag_and_cache(tmp_path, monkeypatch):
    """Unpatched open_clip download, offline: the message names the tag, the cache folder and the fix."""
    monkeypatch.setitem(oc_pretrained._PRETRAINED, "tiny-clip", {
        "web": oc_pretrained._pcfg(hf_hub="example/tiny-clip-web/")})
    cfg = json.loads((daclip_lora.clip.registry._builtin_config_dir() / "daclip_tiny.json").read_text())
    cfg["base_model"] = "tiny-clip"
    (tmp_path / "daclip_tagged.json").write_text(json.dumps(cfg))
    daclip_lora.add_model_config(tmp_path / "daclip_tagged.json")
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError) as e:
        daclip_lora.create_model("daclip_tagged", pretrained="web", cache_dir=str(cache))
    msg = str(e.value)
    assert "\n" not in msg
    assert "'web' of tiny-clip" in msg and str(cache) in msg and "pass the checkpoint file" in msg


@pytest.mark.parametrize("name, base, tag", [
    ("daclip_ViT-B-32", "ViT-B-32", "openai"), ("daclip_ViT-B-32", "ViT-B-32", "laion2b_s34b_b79k"),
    ("daclip_ViT-L-14", "ViT-L-14", "openai"), ("daclip_ViT-L-14", "ViT-L-14", "laion2b_s32b_b82k")])
def test_released_names_resolve_tags_of_their_clip(name, base, tag, monkeypatch):
    seen = []
    monkeypatch.setattr(oc_pretrained, "download_pretrained", lambda cfg, cache_dir=None: seen.append(cfg) or __file__)
    path, cfg = daclip_lora.clip.factory.resolve_pretrained_tag(name, daclip_lora.get_model_config(name), tag)
    assert path == __file__ and seen == [oc_pretrained.get_pretrained_cfg(base, tag)]
    assert cfg.get("quick_gelu", False) == (tag == "openai")


@pytest.mark.parametrize("name, base", [("daclip_ViT-B-32", "ViT-B-32"), ("daclip_ViT-L-14", "ViT-L-14")])
def test_released_names_fit_open_clip_checkpoints(name, base):
    """Every tensor of open_clip's base model has its place (same name and shape) in the DA-CLIP's CLIP."""
    ours = daclip_lora.create_model(name, device="meta").clip.state_dict()
    theirs = open_clip.create_model(base, device="meta").state_dict()
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(v.shape) for k, v in ours.items()}


# -------------------------------------------------------------------------- controller init
def _initialised(mode):
    torch.manual_seed(7)
    model = daclip_lora.create_model(TINY)
    with torch.no_grad():  # a "pretrained" CLIP that differs from the construction-time copy
        for p in model.clip.visual.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.initial_controller(mode)
    return model


def test_reference_init_reproduces_by_position_copy():
    ref, by_name = _initialised("reference").state_dict(), _initialised("by_name").state_dict()
    differ = sorted(k for k in ref if not torch.equal(ref[k], by_name[k]))
    assert differ == ["visual_control.ln_post.bias", "visual_control.ln_post.weight",
                      "visual_control.transformer.zero_modules.0.bias",
                      "visual_control.transformer.zero_modules.0.weight"]
    w = ref["visual_control.transformer.zero_modules.0.weight"]
    assert torch.equal(w, ref["clip.visual.ln_post.weight"].expand_as(w))  # broadcast into every row
    assert torch.equal(ref["visual_control.transformer.zero_modules.0.bias"], ref["clip.visual.ln_post.bias"])
    assert torch.equal(ref["visual_control.ln_post.weight"], torch.ones_like(w[0]))  # kept its initial value


def test_controller_init_option_through_factory(tmp_path):
    torch.manual_seed(8)
    clip = daclip_lora.create_model(TINY).clip
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    a = daclip_lora.create_model(TINY, pretrained=str(tmp_path / "clip.pt"), controller_init="reference")
    b = daclip_lora.create_model(TINY, pretrained=str(tmp_path / "clip.pt"))
    assert torch.equal(a.visual_control.transformer.zero_modules[0].bias, clip.visual.ln_post.bias)
    assert b.visual_control.transformer.zero_modules[0].bias.abs().max() == 0
    with pytest.raises(ValueError, match="controller_init must be 'by_name' or 'reference', got 'byname'"):
        daclip_lora.create_model(TINY, controller_init="byname")


@pytest.mark.parametrize("lock, trainable_clip", [(True, 0), (False, None)])
def test_lock_clip_option(lock, trainable_clip):
    model = daclip_lora.create_model(TINY, lock_clip=lock)
    n = sum(p.requires_grad for p in model.clip.parameters())
    assert n == (trainable_clip if trainable_clip is not None else len(list(model.clip.parameters())))
