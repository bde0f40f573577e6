"""train_refiner: the paper's schedule, OHEM, loss falls, seed, resume and the complete bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from magnet_cli.errors import ModelError, UsageError
from magnet_cli.models.bundle import load_bundle
from magnet_cli.models.refiner import Refiner, load_refiner
from magnet_cli.settings import ModelSettings, RefinerTraining, RunSettings
from magnet_cli.train.common import read_log
from magnet_cli.train.dataset import RefinerPairSampler, load_dataset
from magnet_cli.train.refiner import ohem_cross_entropy, refiner_step, scaled_milestones, train_refiner

from tests.train.conftest import INPUT


def tiny(dataset_dir, model, output, resume=False, **options):
    """A tiny run; `model` is a bundle folder, a ModelSettings or a loaded bundle."""
    settings = dict(epochs=2, steps=1, batch_size=2, seed=1, val_pairs=2, device="cpu")
    settings.update(options)
    if not isinstance(model, ModelSettings) and not hasattr(model, "segmenter"):
        model = ModelSettings(model=model)
    return train_refiner(
        dataset_dir, output, model=model, training=RefinerTraining(**settings), run=RunSettings(progress=False, resume=resume)
    )


def probabilities(bundle):
    return lambda images: torch.softmax(bundle.segmenter(images), 1).detach()


def refiner_weights(directory) -> dict[str, torch.Tensor]:
    return torch.load(directory / "refiner.pt", weights_only=True)["state_dict"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_paper_milestones_scale_with_the_epoch_count():
    assert scaled_milestones(50) == [20, 30, 40, 45]
    assert scaled_milestones(10) == [4, 6, 8, 9]
    assert scaled_milestones(2) == [1]
    assert scaled_milestones(1) == []


def test_ohem_averages_only_the_hard_pixels():
    # Three pixels, two classes: true-class probabilities 0.9 (easy), 0.6 and 0.2 (hard).
    p = torch.tensor([0.9, 0.6, 0.2])
    logits = torch.stack([torch.log(p), torch.log(1 - p)]).reshape(1, 2, 1, 3)
    target = torch.zeros(1, 1, 3, dtype=torch.int64)
    hard = ohem_cross_entropy(logits, target, threshold=0.7, min_kept=1)
    assert float(hard) == pytest.approx(float(-(torch.log(p[1]) + torch.log(p[2])) / 2), rel=1e-5)
    every = ohem_cross_entropy(logits, target, threshold=0.7, min_kept=3)  # min_kept keeps all three
    assert float(every) == pytest.approx(float(F.cross_entropy(logits, target)))
    two = ohem_cross_entropy(logits, target, threshold=0.1, min_kept=1)  # the cut rises to keep one
    assert float(two) == pytest.approx(float(-torch.log(p[2])), rel=1e-5)
    ignored = torch.full_like(target, 255)
    assert float(ohem_cross_entropy(logits, ignored)) == 0.0


def test_loss_falls_on_a_repeated_batch(dataset_dir, segmenter_bundle):
    sampler = RefinerPairSampler(load_dataset(dataset_dir), (INPUT, INPUT), probabilities(load_bundle(segmenter_bundle)))
    coarse, fine, labels = sampler.batch(np.random.default_rng(0), 2)
    torch.manual_seed(0)
    refiner = Refiner(6)
    optimizer = torch.optim.SGD(refiner.parameters(), lr=1e-2, momentum=0.9)
    losses = [refiner_step(refiner, optimizer, coarse, fine, labels)[0] for _ in range(10)]
    assert losses[-1] < 0.7 * losses[0]


def test_same_seed_and_resume_follow_one_trajectory(dataset_dir, segmenter_bundle, tmp_path):
    straight = tiny(dataset_dir, segmenter_bundle, tmp_path / "a")
    again = tiny(dataset_dir, segmenter_bundle, tmp_path / "b")
    assert same(refiner_weights(tmp_path / "a"), refiner_weights(tmp_path / "b"))
    tiny(dataset_dir, segmenter_bundle, tmp_path / "c", epochs=1)
    resumed = tiny(dataset_dir, segmenter_bundle, tmp_path / "c", resume=True)  # the paper's milestones: [1]
    assert [r["loss"] for r in straight["history"]] == [r["loss"] for r in again["history"]]
    assert [r["epoch"] for r in read_log(tmp_path / "c")] == [1, 2]
    assert resumed["history"][1]["lr"] == pytest.approx(1e-4)  # the schedule resumed too
    assert same(refiner_weights(tmp_path / "a"), refiner_weights(tmp_path / "c"))


def test_output_is_a_complete_bundle(dataset_dir, segmenter_bundle, tmp_path):
    result = tiny(dataset_dir, segmenter_bundle, tmp_path / "run", epochs=1, ohem=True)
    bundle = load_bundle(tmp_path / "run")
    assert bundle.refiner is not None and bundle.refiner.input_order == "coarse_fine"
    assert bundle.input_size == (INPUT, INPUT) and bundle.num_classes == 6
    record = bundle.spec.training["refiner"]
    assert record["seed"] == 1 and record["ohem"] is True and record["milestones"] == []
    assert {"refined_miou", "coarse_miou", "fine_miou"} <= set(result["history"][0])
    frozen = load_bundle(segmenter_bundle).segmenter.module.state_dict()
    assert same(bundle.segmenter.module.state_dict(), frozen)  # the segmenter stayed frozen


def test_a_torchscript_segmenter_travels_as_torchscript(dataset_dir, segmenter_bundle, tmp_path):
    model = ModelSettings(segmenter=str(segmenter_bundle / "segmenter.ts"), input_size=(INPUT, INPUT))
    tiny(dataset_dir, model, tmp_path / "run", epochs=1)
    bundle = load_bundle(tmp_path / "run")
    assert isinstance(bundle.segmenter.module, torch.jit.ScriptModule)
    assert load_refiner(tmp_path / "run" / "refiner.pt").num_classes == 6


def test_unknown_class_ids_for_the_bundle_are_refused(segmenter_bundle, tmp_path):
    import imageio.v3 as iio

    from magnet_cli.errors import InputError

    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    iio.imwrite(tmp_path / "data" / "images" / "a.png", np.zeros((32, 32, 3), np.uint8))
    iio.imwrite(tmp_path / "data" / "masks" / "a.png", np.full((32, 32), 9, np.uint8))
    with pytest.raises(InputError, match=r"class id\(s\) \[9\] but only 6 classes"):
        tiny(tmp_path / "data", segmenter_bundle, tmp_path / "out")


def test_segmenter_with_other_classes_than_the_data_is_a_model_error(tmp_path):
    from magnet_cli.models.builtin import SmallUNet

    torch.jit.script(SmallUNet(3, widths=(8, 16)).eval()).save(str(tmp_path / "three.ts"))
    with pytest.raises(ModelError, match="outputs 3 classes but the dataset has 6"):
        tiny("synth:0:1:64", ModelSettings(segmenter=str(tmp_path / "three.ts"), input_size=(INPUT, INPUT)), tmp_path / "out")


INFERENCE_FIELDS = ("input_size", "description", "mean", "std", "value_range", "points", "smooth_kernel", "levels",
                    "max_levels", "classes")


@pytest.fixture
def rich_bundle(segmenter_bundle, tmp_path):
    """The tiny segmenter bundle with every inference field set away from its default."""
    from dataclasses import replace

    from magnet_cli.classes import ClassInfo
    from magnet_cli.models.bundle import write_bundle

    source = load_bundle(segmenter_bundle)
    spec = replace(
        source.spec, description="rich", mean=(0.4, 0.5, 0.6), std=(0.2, 0.2, 0.2), value_range=(0.0, 255.0),
        points=0.25, smooth_kernel=3, levels=2, max_levels=3,
        classes=tuple(ClassInfo(f"kind {i}", (i * 40, 0, 0)) for i in range(6)), evaluation={"miou": {"magnet": 0.5}},
        training={"segmenter": {"epochs": 7}, "commands": ["magnet train-segmenter ..."]},
    )
    write_bundle(tmp_path / "rich", spec, source.segmenter.module)
    return tmp_path / "rich"


def test_retraining_the_refiner_keeps_every_inference_field_of_the_bundle(dataset_dir, rich_bundle, tmp_path):
    tiny(dataset_dir, rich_bundle, tmp_path / "out", epochs=1)
    before, after = load_bundle(rich_bundle).spec, load_bundle(tmp_path / "out").spec
    assert {f: getattr(after, f) for f in INFERENCE_FIELDS} == {f: getattr(before, f) for f in INFERENCE_FIELDS}
    assert after.segmenter == before.segmenter and after.name == "out"
    assert after.evaluation == {}  # scores of the old pairing do not describe the new refiner
    assert set(after.training) == {"segmenter", "refiner"} and after.training["segmenter"] == {"epochs": 7}


def test_model_settings_override_mean_std_and_classes(dataset_dir, rich_bundle, tmp_path):
    (tmp_path / "names.txt").write_text("\n".join(f"c{i}" for i in range(6)))
    model = ModelSettings(model=rich_bundle, mean=(0.5, 0.5, 0.5), std=(0.3, 0.3, 0.3), classes=str(tmp_path / "names.txt"))
    tiny(dataset_dir, model, tmp_path / "out", epochs=1)
    after = load_bundle(tmp_path / "out").spec
    assert after.mean == (0.5, 0.5, 0.5) and after.std == (0.3, 0.3, 0.3)
    assert [c.name for c in after.classes] == [f"c{i}" for i in range(6)] and after.max_levels == 3
    assert after.training["refiner"]["mean"] == [0.5, 0.5, 0.5]


def test_the_trained_refiner_is_paired_with_its_segmenter_and_says_so_alone(dataset_dir, segmenter_bundle, tmp_path):
    from magnet_cli.models.bundle import pairing_warning, segmenter_digest

    tiny(dataset_dir, segmenter_bundle, tmp_path / "out", epochs=1)
    bundle = load_bundle(tmp_path / "out")
    digest = segmenter_digest(bundle.segmenter.module)
    assert bundle.spec.segmenter.sha256 == bundle.spec.refiner.segmenter_sha256 == digest
    assert load_refiner(tmp_path / "out" / "refiner.pt").segmenter_sha256 == digest
    assert pairing_warning(bundle) is None


def test_train_refiner_needs_exactly_one_segmenter_source(dataset_dir, tmp_path):
    with pytest.raises(UsageError, match="exactly one of --model"):
        tiny(dataset_dir, ModelSettings(), tmp_path / "out")
    with pytest.raises(UsageError, match="needs --input-size"):
        tiny(dataset_dir, ModelSettings(segmenter="model.ts"), tmp_path / "out")
    with pytest.raises(UsageError, match="needs --classes"):
        tiny(dataset_dir, ModelSettings(segmenter="tests.conftest:tiny_bundle", input_size=(32, 32)), tmp_path / "out")


def test_growing_epochs_that_would_rewrite_the_past_schedule_is_refused(dataset_dir, segmenter_bundle, tmp_path):
    tiny(dataset_dir, segmenter_bundle, tmp_path / "run", epochs=3, milestones=(1,), val_pairs=0)
    with pytest.raises(UsageError, match=r"--milestones 1 \(now 2\)"):
        tiny(dataset_dir, segmenter_bundle, tmp_path / "run", epochs=4, milestones=(2,), val_pairs=0, resume=True)
    tiny(dataset_dir, segmenter_bundle, tmp_path / "paper", epochs=10, steps=1, val_pairs=0)  # paper: 4, 6, 8, 9
    with pytest.raises(UsageError, match=r"lr schedule would change for epoch\(s\) already trained \(5"):
        tiny(dataset_dir, segmenter_bundle, tmp_path / "paper", epochs=20, val_pairs=0, resume=True)


def test_an_input_size_other_than_the_bundles_is_refused_as_segment_refuses_it(dataset_dir, segmenter_bundle, tmp_path):
    """--input-size goes with --segmenter; with --model it must match the bundle, not be silently dropped."""
    size = load_bundle(segmenter_bundle).input_size
    other = (size[0] * 2, size[1] * 2)
    with pytest.raises(UsageError, match=f"--input-size {other[0]}x{other[1]}: .* was trained at"):
        tiny(dataset_dir, ModelSettings(model=segmenter_bundle, input_size=other), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    from magnet_cli.segmentation import resolve_model

    with pytest.raises(UsageError, match="goes with --segmenter"):
        resolve_model(ModelSettings(model=segmenter_bundle, input_size=other))
    tiny(dataset_dir, ModelSettings(model=segmenter_bundle, input_size=tuple(size)), tmp_path / "same", epochs=1, val_pairs=0)
    assert (tmp_path / "same" / "model.toml").is_file()
