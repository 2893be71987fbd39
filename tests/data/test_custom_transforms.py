"""medpipe's own dictionary transforms (medpipe.data.custom_transforms): results on real data, and the module
stays a leaf (MONAI only, no other medpipe module) so that config can check transform names without a cycle."""

import ast
from pathlib import Path

import pytest
import torch

import medpipe.data.custom_transforms as ct


def test_to_grayscale_on_a_real_rgb_xray(datasets):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    path = sorted((datasets / "kermany_pneumonia_cxr" / "train" / "NORMAL").glob("*.jpeg"))[0]
    load = Compose([LoadImaged(keys="image", reader="PILReader", reverse_indexing=False),
                    EnsureChannelFirstd(keys="image", channel_dim=-1)])
    rgb = load({"image": str(path)})["image"]
    grey = ct.ToGrayscaled(keys="image")({"image": rgb})["image"]
    assert rgb.shape == (3, 224, 224) and grey.shape == (1, 224, 224)
    assert torch.allclose(grey[0], rgb[0].float(), atol=1e-3)  # the three channels are equal in this data
    assert grey.meta["filename_or_obj"] == str(path)
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        ct.ToGrayscaled(keys="image")({"image": torch.zeros(2, 4, 4)})


def test_bt601_weights_on_distinct_channels():
    img = torch.stack([torch.full((2, 2), 100.0), torch.full((2, 2), 50.0), torch.full((2, 2), 200.0)])
    out = ct.ToGrayscale()(img)
    assert out.shape == (1, 2, 2) and torch.allclose(out, torch.full((1, 2, 2), 0.299 * 100 + 0.587 * 50 + 0.114 * 200))
    assert ct.CUSTOM_TRANSFORMS == {"ToGrayscaled": ct.ToGrayscaled}


def test_custom_transforms_is_a_leaf_module():
    tree = ast.parse(Path(ct.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in imported if m and m.startswith("medpipe")], imported
