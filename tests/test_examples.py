"""examples/finetune.py's pieces, imported from the script (the torchrun run is in tests/cli)."""
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finetune():
    spec = importlib.util.spec_from_file_location("finetune_example", ROOT / "examples" / "finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOGITS, AUX, LABELS = torch.randn(4, 5, generator=torch.Generator().manual_seed(0)), \
    torch.randn(4, 5, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("output, aux_terms", [
    pytest.param(LOGITS, 0, id="tensor"),
    pytest.param((LOGITS, AUX), 1, id="tuple (Inception with aux_logits)"),
    pytest.param({"out": LOGITS, "features": torch.zeros(4, 8, 2, 2), "aux": AUX}, 1, id="dict with a feature map"),
])
def test_loss_of_nested_outputs_uses_logits_and_auxiliary_classifiers(finetune, output, aux_terms):
    expected = nn.functional.cross_entropy(LOGITS, LABELS) + aux_terms * 0.4 * nn.functional.cross_entropy(AUX, LABELS)
    torch.testing.assert_close(finetune.classification_loss(output, LABELS), expected)


def test_a_model_without_logits_is_refused(finetune):
    features = [torch.zeros(1, 64, 16, 16), torch.zeros(1, 128, 8, 8)]  # timm features_only
    with pytest.raises(ValueError, match=r"returns output\[0\] \(1, 64, 16, 16\), output\[1\] \(1, 128, 8, 8\)"):
        finetune.logits_and_auxiliary(features)
