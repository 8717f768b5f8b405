"""Report numbers on constructed predictions with known answers (precision/recall/F1, ECE, temperature, group
gaps), the group CSV's errors, and `resnetkit report` / `eval --json` end to end on a small trained checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from resnetkit.cli.main import main
from resnetkit.engine.predictions import Predictions
from resnetkit.metrics import (
    expected_calibration_error,
    fit_temperature,
    group_accuracy,
    precision_recall_f1,
    reliability,
    spearman_correlation,
)
from resnetkit.report import GroupFileError, read_groups
from resnetkit.report.numbers import calibration_by_halves, confident_mistakes, group_numbers

from conftest import pin_precision

pytestmark = pytest.mark.usefixtures("one_thread")


def _probs(confidences: list[float]) -> torch.Tensor:
    """Two-class probabilities whose top class is 0 with the given confidence."""
    c = torch.tensor(confidences, dtype=torch.float64)
    return torch.stack([c, 1 - c], dim=1)


def test_ece_of_constructed_predictions() -> None:
    # bin (0.9, 1.0]: confidence 0.95, 4 of 5 right; bin (0.5, 0.6]: confidence 0.55, 3 of 5 right
    probs = _probs([0.95] * 5 + [0.55] * 5)
    targets = torch.tensor([0, 0, 0, 0, 1] + [0, 0, 0, 1, 1])
    assert expected_calibration_error(probs, targets, n_bins=10) == pytest.approx(0.5 * 0.15 + 0.5 * 0.05)
    rel = reliability(probs.max(1).values, probs.argmax(1).eq(targets), n_bins=10)
    assert rel.counts.tolist() == [0, 0, 0, 0, 0, 5, 0, 0, 0, 5]
    assert rel.accuracy[9] == pytest.approx(0.8) and rel.confidence[5] == pytest.approx(0.55)
    assert rel.accuracy[:5].isnan().all()  # empty bins: undefined, not 0
    # a confidence on an edge belongs to the bin it closes: 0.6 is in (0.5, 0.6]
    assert reliability(torch.tensor([0.6, 1.0], dtype=torch.float64), torch.tensor([True, True]), 10).counts.tolist()[
        5::4
    ] == [1, 1]
    perfect = _probs([0.75] * 4)
    assert expected_calibration_error(perfect, torch.tensor([0, 0, 0, 1]), n_bins=15) == pytest.approx(0.0)


def test_precision_recall_f1_of_a_known_confusion_matrix() -> None:
    confusion = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # class 2: no samples, never predicted
    precision, recall, f1 = precision_recall_f1(confusion)
    assert precision[:2].tolist() == pytest.approx([5 / 7, 3 / 4]) and recall[:2].tolist() == pytest.approx(
        [5 / 6, 3 / 5]
    )
    assert f1[0] == pytest.approx(2 * 5 / (7 + 6)) and f1[1] == pytest.approx(2 * 3 / (4 + 5))
    assert precision[2].isnan() and recall[2].isnan() and f1[2].isnan()
    never_predicted = precision_recall_f1(torch.tensor([[2, 0], [1, 0]]))
    assert never_predicted[0][1].isnan() and float(never_predicted[2][1]) == 0.0  # F1 = 2TP / (2TP + FP + FN)


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=gen) * 2
    labels = torch.multinomial(true_logits.softmax(1), 1, generator=gen).flatten()
    overconfident = 3.0 * true_logits
    assert fit_temperature(overconfident, labels) == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(overconfident.softmax(1), labels)
    after = expected_calibration_error((overconfident / 3.0).softmax(1), labels)
    assert after < before / 3


def test_spearman_correlation() -> None:
    a = torch.tensor([[1.0, 2, 3, 4], [0, 0, 1, 2], [5, 5, 5, 5]])
    b = torch.tensor([[10.0, 20, 30, 40], [2, 1, 0, 0], [1, 2, 3, 4]])
    assert spearman_correlation(a, a).tolist() == pytest.approx([1, 1, 1])
    r = spearman_correlation(a, b)
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(-8 / 9) and r[2] == 0.0  # ties: average ranks


def _predictions(correct: list[bool], ids: list[str]) -> Predictions:
    labels = torch.zeros(len(correct), dtype=torch.long)
    logits = torch.tensor([[2.0, 0.0] if c else [0.0, 2.0] for c in correct])
    return Predictions(logits, labels, ["a", "b"], ids)


def test_group_metrics_from_a_constructed_csv(tmp_path: Path) -> None:
    csv_file = tmp_path / "groups.csv"
    csv_file.write_text(
        "image,skin,age\n0,light,young\n1,light,old\n2,light,old\n3,dark,young\n004,dark,old\n5,dark,x\n"
    )
    preds = _predictions([True, True, False, True, False, False], [str(i) for i in range(6)])
    groups = read_groups(csv_file, preds.ids, group_column="skin")
    assert groups.names == ["dark", "light"] and groups.index.tolist() == [1, 1, 1, 0, 0, 0]
    table = group_numbers(preds, groups)
    rows = {r["group"]: r for r in table["rows"]}
    assert rows["light"]["accuracy"] == pytest.approx(2 / 3) and rows["dark"]["error_rate"] == pytest.approx(2 / 3)
    assert rows["light"]["gap"] == pytest.approx(2 / 3 - 1 / 2) and rows["dark"]["n"] == 3
    assert table["accuracy_gap"] == pytest.approx(1 / 3) and table["error_rate_ratio"] == pytest.approx(2.0)
    counts, accuracy = group_accuracy(preds.correct, groups.index, 3)
    assert counts.tolist() == [3, 3, 0] and accuracy[2].isnan()


def test_group_csv_paths_are_normalised(tmp_path: Path) -> None:
    csv_file = tmp_path / "g.csv"
    csv_file.write_text("group,image\nx,./val/cat/1.jpg\ny,val\\dog\\2.jpg\nz,train/cat/9.jpg\n")
    groups = read_groups(csv_file, ["val/cat/1.jpg", "val/dog/2.jpg"])
    assert groups.names == ["x", "y"] and groups.index.tolist() == [0, 1]  # the train row is ignored


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("image,grp\n0,a\n1,b\n", {}, "has no column 'group'; its columns are image, grp (choose them with"),
        ("file,group\n0,a\n1,b\n", {}, "has no column 'image'; its columns are file, group"),
        ("image,group\n0,a\n", {}, "has no row for 1 of the 2 evaluated images: 1"),
        ("image,group\n0,a\n1,b\n0,c\n", {}, "line 4: image '0' appears twice"),
        ("image,group\n0,a\n1,\n", {}, "line 3: empty 'group' value"),
        ("", {}, "is empty; expected a header row with 'image' and 'group'"),
        ("image,group\n0,a\n1,b\n", {"group_column": "sex"}, "has no column 'sex'"),
    ],
)
def test_group_csv_errors(tmp_path: Path, text: str, options: dict, message: str) -> None:
    csv_file = tmp_path / "g.csv"
    csv_file.write_text(text)
    with pytest.raises(GroupFileError, match=None) as err:
        read_groups(csv_file, ["0", "1"], **options)
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(GroupFileError, match="group CSV not found"):
        read_groups(tmp_path / "nope.csv", ["0"])


def test_confident_mistakes_and_calibration_halves() -> None:
    logits = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 5.0], [2.0, 0.0]])
    preds = Predictions(logits, torch.tensor([0, 0, 0, 1]), ["a", "b"], ["w", "x", "y", "z"])
    assert [m["id"] for m in confident_mistakes(preds, k=2)] == ["y", "z"]
    halves = calibration_by_halves(preds, seed=0)
    assert sorted(halves.fit.ids + halves.evaluated.ids) == ["w", "x", "y", "z"] and len(halves.fit) == 2


def test_quality_of_constructed_predictions_matches_hand_values() -> None:
    """What eval and report print, on predictions whose answers are worked out by hand."""
    # 4 predicted a at 0.62 and right, 4 predicted b at 0.68 but truly a, 2 predicted b at 0.95 and right
    conf = [0.62] * 4 + [0.68] * 4 + [0.95] * 2
    pred = [0] * 4 + [1] * 6
    probs = torch.tensor([[c, 1 - c] if p == 0 else [1 - c, c] for c, p in zip(conf, pred, strict=True)])
    labels = torch.tensor([0] * 8 + [1] * 2)
    q = Predictions(probs.log(), labels, ["a", "b"], [str(i) for i in range(10)]).quality()
    # confusion [[4, 4], [0, 2]]: precision 4/4, 2/6; recall 4/8, 2/2; F1 2TP/(predicted + actual)
    assert q["per_class_precision"] == pytest.approx({"a": 1.0, "b": 1 / 3})
    assert q["per_class_recall"] == pytest.approx({"a": 0.5, "b": 1.0})
    assert q["per_class_f1"] == pytest.approx({"a": 8 / 12, "b": 4 / 8})
    assert q["macro_f1"] == pytest.approx((8 / 12 + 4 / 8) / 2) and q["macro_precision"] == pytest.approx(2 / 3)
    # 15 bins: 0.62 in (9/15, 10/15] (underconfident by 0.38), 0.68 in (10/15, 11/15] (overconfident by 0.68),
    # 0.95 in (14/15, 1] (by 0.05); 10 bins would merge the first two into |4/8 - 0.65| = 0.15 (ECE 0.13)
    assert q["ece_bins"] == 15 and q["ece"] == pytest.approx((4 * 0.38 + 4 * 0.68 + 2 * 0.05) / 10)


# --- end to end through the CLI --------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["-q", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet20 trained for 2 steps on the embedded sample (held-out: 500 test images)."""
    folder = tmp_path_factory.mktemp("run") / "r"
    code = main(
        [
            "-q",
            "train",
            "--data",
            "sample",
            "--max-steps",
            "2",
            "--batch-size",
            "32",
            "--train-subset",
            "64",
            "--no-progress",
            "--out",
            str(folder),
        ]
    )
    assert code == 0
    return folder


def test_eval_json_gains_per_class_quality_and_ece(run: Path, capsys) -> None:
    code, out, err = cli(capsys, "eval", "--checkpoint", str(run), "--data", "sample", "--json", "--no-compile")
    assert code == 0, err
    res = json.loads(out)
    assert {"top1", "top5", "loss", "n", "per_class_accuracy", "classes", "confusion_matrix"} <= set(res)
    # Counted here by hand from the confusion matrix (rows true, columns predicted), not with resnetkit.metrics.
    cm, classes, n = res["confusion_matrix"], res["classes"], res["n"]
    assert n == 500 and [sum(row) for row in cm] == [50] * 10  # the sample's test images, 50 a class
    assert sum(cm[c][c] for c in range(10)) / n == pytest.approx(res["top1"])
    columns = [sum(row[c] for row in cm) for c in range(10)]
    assert 1 <= sum(col > 0 for col in columns) < 10  # after 2 steps some classes are never predicted: None
    for c, name in enumerate(classes):
        tp, predicted, actual = cm[c][c], columns[c], sum(cm[c])
        assert res["per_class_precision"][name] == (pytest.approx(tp / predicted) if predicted else None)
        assert res["per_class_recall"][name] == pytest.approx(tp / actual) == res["per_class_accuracy"][name]
        assert res["per_class_f1"][name] == pytest.approx(2 * tp / (predicted + actual))
    # macro averages over the classes with samples, an undefined precision counting as 0
    precision = [cm[c][c] / columns[c] if columns[c] else 0.0 for c in range(10)]
    assert res["macro_precision"] == pytest.approx(sum(precision) / 10)
    assert res["macro_recall"] == pytest.approx(sum(cm[c][c] / 50 for c in range(10)) / 10)
    assert res["macro_f1"] == pytest.approx(sum(2 * cm[c][c] / (columns[c] + 50) for c in range(10)) / 10)
    # ECE with 15 equal-width bins (i/15, (i+1)/15], from the eager model's own probabilities
    from resnetkit.data.cifar import load_sample
    from resnetkit.workflows.inference import load_for_inference

    model, pre, _ = load_for_inference(run)
    data = load_sample("test")
    with torch.no_grad():
        probs = model(pre.eval_batch(data.images)).softmax(dim=1).double()
    confidence, pred = probs.max(dim=1)
    correct = pred.eq(data.labels)
    assert float(correct.double().mean()) == pytest.approx(res["top1"])
    bins = [[] for _ in range(15)]
    for conf, ok in zip(confidence.tolist(), correct.tolist(), strict=True):
        bins[max(math.ceil(conf * 15) - 1, 0)].append((conf, ok))
    ece = sum(abs(sum(ok for _, ok in b) - sum(conf for conf, _ in b)) for b in bins if b) / n
    assert res["ece_bins"] == 15 and res["ece"] == pytest.approx(ece, abs=1e-5)


def test_report_end_to_end(run: Path, tmp_path: Path, capsys) -> None:
    groups = tmp_path / "groups.csv"
    groups.write_text("image,group\n" + "".join(f"{i},{'even' if i % 2 == 0 else 'odd'}\n" for i in range(500)))
    out = tmp_path / "report"
    code, stdout, err = cli(
        capsys,
        "report",
        "--checkpoint",
        str(run),
        "--data",
        "sample",
        "--out",
        str(out),
        "--calibrate",
        "half",
        "--groups",
        str(groups),
        "--json",
    )
    assert code == 0, err
    numbers = json.loads(stdout)
    for name in ("report.html", "report.json", "confusion.png", "reliability.png", "mistakes.png"):
        assert (out / name).stat().st_size > 500, name
    assert json.loads((out / "report.json").read_text()) == numbers
    code, evaluated, _ = cli(capsys, "eval", "--checkpoint", str(run), "--data", "sample", "--json", "--no-compile")
    res = json.loads(evaluated)
    assert numbers["n"] == 500 and numbers["top1"] == pytest.approx(res["top1"]) and numbers["ece"] == res["ece"]
    assert [r["f1"] for r in numbers["per_class"]] == pytest.approx([res["per_class_f1"][c] for c in res["classes"]])
    cal = numbers["calibration"]
    assert cal["temperature"] > 0 and cal["n_evaluated"] == 250 and "(n=250)" in cal["fitted_on"]
    assert [r["group"] for r in numbers["groups"]["rows"]] == ["even", "odd"]
    assert sum(r["n"] for r in numbers["groups"]["rows"]) == 500
    assert 0 < len(numbers["mistakes"]) <= 16 and all(m["true"] != m["pred"] for m in numbers["mistakes"])
    html = (out / "report.html").read_text()
    for text in ("Per class", "Calibration", "Fairness across groups", "Most confident mistakes", "confusion.png"):
        assert text in html
    md = tmp_path / "md"
    code, stdout, err = cli(
        capsys, "report", "--checkpoint", str(run), "--data", "sample", "--out", str(md), "--format", "markdown"
    )
    assert code == 0, err
    assert stdout.strip().splitlines()[-1] == f"report: {md / 'report.md'}"
    markdown = (md / "report.md").read_text()
    assert "| class | images | precision | recall | F1 |" in markdown and "![reliability](reliability.png)" in markdown


@pytest.mark.parametrize(
    ("csv_text", "extra", "message"),
    [
        ("image,group\n0,a\n1,b\n", [], "has no row for 498 of the 500 evaluated images: 2, 3, 4 and 495 more"),
        ("image,sex\n0,a\n", [], "has no column 'group'; its columns are image, sex"),
        ("image,group\n0,a\n", ["--calibrate", "test"], "--calibrate test would fit the temperature on the images"),
        ("image,group\n0,a\n", ["--calibrate", "val"], "held no validation split"),
        ("image,group\n0,a\n", ["--bins", "0"], "--bins must be at least 1, got 0"),
        ("image,group\n0,a\n", ["--calibrate", "tset"], "unknown split 'tset'"),
    ],
)
def test_report_bad_input_is_one_line_and_exit_2(run, tmp_path, capsys, csv_text, extra, message) -> None:
    groups = tmp_path / "g.csv"
    groups.write_text(csv_text)
    args = ["--groups", str(groups)] if not extra else extra
    code, _, err = cli(
        capsys, "report", "--checkpoint", str(run), "--data", "sample", "--out", str(tmp_path / "o"), *args
    )
    assert code == 2 and message in err
    assert err.startswith("resnetkit: error: ") and err.strip().count("\n") == 0


def test_report_on_an_image_folder_keys_groups_by_relative_path(tmp_path: Path, capsys, monkeypatch) -> None:
    from PIL import Image

    from resnetkit.checkpoint import save_checkpoint
    from resnetkit.models import create_model
    from resnetkit.models.zoo import CIFAR_CFG
    from resnetkit.transforms import preprocessing_for

    monkeypatch.setenv("RESNETKIT_HOME", str(pin_precision(tmp_path / "home")))
    data, gen = tmp_path / "pets", torch.Generator().manual_seed(0)
    lines = ["image,group"]
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (data / split / label).mkdir(parents=True)
            for i in range(3):
                pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=gen).numpy()
                Image.fromarray(pixels).save(data / split / label / f"{i}.png")
                lines.append(f"{split}/{label}/{i}.png,{'indoor' if i else 'outdoor'}")
    (tmp_path / "groups.csv").write_text("\n".join(lines) + "\n")
    checkpoint = tmp_path / "m.pt"
    save_checkpoint(
        checkpoint,
        create_model("resnet20", num_classes=2),
        classes=["cat", "dog"],
        preprocessing=preprocessing_for(CIFAR_CFG, "cifar").to_dict(),
        config={},
    )
    code, out, err = cli(
        capsys,
        "report",
        "--checkpoint",
        str(checkpoint),
        "--data",
        "folder",
        "--data-dir",
        str(data),
        "--split",
        "val",
        "--groups",
        str(tmp_path / "groups.csv"),
        "--calibrate",
        "train",
        "--out",
        str(tmp_path / "r"),
        "--json",
    )
    assert code == 0, err
    numbers = json.loads(out)
    assert numbers["n"] == 6 and {r["group"]: r["n"] for r in numbers["groups"]["rows"]} == {"indoor": 4, "outdoor": 2}
    assert numbers["calibration"]["fitted_on"] == "the train split (n=6)"
    assert all(m["id"].startswith("val/") for m in numbers["mistakes"])
