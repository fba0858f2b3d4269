"""Teacher loading: kdcache checkpoints and published timm weights from a local file."""

import timm
import torch

from kdcache.pipeline.teach import ModelSpec, create_model, file_sha256, load_teacher


def test_kdcache_checkpoint_loads_with_its_own_spec(teacher_path):
    teacher = load_teacher(teacher_path, name="t")
    assert teacher.spec.arch == "regnety_002" and teacher.spec.resolution == 32
    assert teacher.spec.in_chans == 1 and teacher.spec.num_classes == 10
    assert not teacher.model.training
    identity = teacher.identity()
    assert identity["name"] == "t" and identity["weights_sha256"] == file_sha256(teacher_path)
    state = torch.load(teacher_path, weights_only=True)["model"]
    for name, value in teacher.model.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_published_weights_with_a_replaced_classifier_are_adapted_to_the_dataset(tmp_path):
    # a "published" ImageNet-shaped checkpoint: 3 channels, 1000 classes, plain state dict
    published = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "resnet10t.pth"
    torch.save(published.state_dict(), path)
    teacher = load_teacher(
        str(path),
        arch="resnet10t",
        num_classes=10,
        in_chans=1,
        resolution=32,
        replace_classifier=True,
    )
    assert teacher.model.get_classifier().out_features == 10
    stem = published.state_dict()["conv1.0.weight"]
    torch.testing.assert_close(
        teacher.model.state_dict()["conv1.0.weight"], stem.sum(1, keepdim=True)
    )
    assert len(teacher.spec.mean) == 1  # ImageNet statistics averaged for grey input
    assert teacher.spec.resolution == 32


def test_create_model_sizes_vits_to_the_resolution():
    spec = ModelSpec(
        "deit_tiny_distilled_patch16_224", 10, 1, 28, (0.3,), (0.3,), {"patch_size": 4}
    )
    model = create_model(spec)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
