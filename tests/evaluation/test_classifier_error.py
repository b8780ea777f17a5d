"""The classifier-error columns of ``evaluate`` (``top1=MODEL_DIR``): a tiny classifier trained here
on the example photo crops; its error on the outputs and on the references equals a direct loop,
with labels from class subfolders or a labels file; bad classifier folder, labels file and missing
labels give one-line errors naming the file."""
import csv
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastlpips.evaluation import evaluate, parse_metric, read_labels
from fastlpips.imagefolder import ImageFolder, make_example_folder
from fastlpips.nets.classifiers import build_classifier


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Example crops (4 classes, 32x32), a tiny classifier trained 40 steps on them, saved as a
    pat-train model folder, and a method folder of noisy copies of the validation crops."""
    root = tmp_path_factory.mktemp("clf")
    make_example_folder(root / "data", train_per_class=16, val_per_class=3, size=32, seed=0)
    train = ImageFolder(root / "data" / "train")
    torch.manual_seed(0)
    model = build_classifier("tiny", train.num_classes, "batch")
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    xs = torch.stack([train[i][0] for i in range(len(train))])
    ys = torch.tensor([train[i][1] for i in range(len(train))])
    model.train()
    for step in range(40):
        idx = torch.randint(len(xs), (16,), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    folder = root / "clf"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "model.pt")
    sha = hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps({"arch": "tiny", "norm": "batch", "classes": train.classes,
                                                   "size": 32, "attacks": [], "weights_sha256": sha}))
    val = root / "data" / "val"
    noisy = root / "noisy"
    rng = np.random.default_rng(0)
    for p in sorted(val.rglob("*.png")):
        a = np.asarray(Image.open(p), dtype=np.float64)
        out = noisy / p.relative_to(val)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(np.round(a + rng.normal(0, 40, a.shape)), 0, 255).astype(np.uint8)).save(out)
    return root, model, train.classes


def _direct(model, classes, folder):
    """{file: top-1 error} by a plain loop: each image alone through the model."""
    out = {}
    for p in sorted(folder.rglob("*.png")):
        x = torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32) / 255).permute(2, 0, 1)[None]
        with torch.no_grad():
            pred = int(model(x).argmax(1))
        rel = p.relative_to(folder).as_posix()
        out[rel] = float(pred != classes.index(rel.split("/")[0]))
    return out


def _csv(path):
    with open(path) as f:
        return {(r["method"], r["file"]): r for r in csv.DictReader(f)}


def test_errors_equal_a_direct_loop(setup, tmp_path):
    root, model, classes = setup
    spec = parse_metric(f"top1={root / 'clf'}")
    assert spec.key == "top1-clf" and spec.columns == ["top1-clf", "top1-clf_ref"] and not spec.higher_is_better
    r = evaluate(root / "data" / "val", [root / "noisy"], ["psnr", f"top1={root / 'clf'}"], tmp_path / "a",
                 report=False, batch_size=5)
    assert not r.errors
    rows = _csv(tmp_path / "a" / "results.csv")
    want_out, want_ref = _direct(model, classes, root / "noisy"), _direct(model, classes, root / "data" / "val")
    assert len(rows) == len(want_out) == 3 * len(classes)
    for f in want_out:
        assert float(rows[("noisy", f)]["top1-clf"]) == want_out[f], f
        assert float(rows[("noisy", f)]["top1-clf_ref"]) == want_ref[f], f
    assert sum(want_out.values()) > sum(want_ref.values())  # the noise costs accuracy (the columns differ)
    s = r.summary()["noisy"]
    assert s["top1-clf"]["mean"] == pytest.approx(np.mean(list(want_out.values())))

    # the same numbers from a labels file (class indices), and a missing label named per file
    labels = tmp_path / "labels.csv"
    files = sorted(want_out)
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        for name in files[1:]:
            w.writerow([name, classes.index(name.split("/")[0])])
    r2 = evaluate(root / "data" / "val", [root / "noisy"], [f"top1={root / 'clf'}"], tmp_path / "b",
                  report=False, labels=labels)
    assert [e["message"] for e in r2.errors] == [f"no label for {files[0]} in {labels}"]
    rows2 = _csv(tmp_path / "b" / "results.csv")
    assert rows2[("noisy", files[0])]["top1-clf"] == ""
    for name in files[1:]:
        assert float(rows2[("noisy", name)]["top1-clf"]) == want_out[name]


def test_bad_classifier_and_label_files(setup, tmp_path):
    root, _, _ = setup
    with pytest.raises(ValueError, match="classifier .*nowhere does not exist"):
        parse_metric(f"top1={tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match="needs a classifier: top1=MODEL_DIR"):
        parse_metric("top1")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = evaluate(root / "data" / "val", [root / "noisy"], ["psnr", f"top1={empty}"], tmp_path / "r", report=False)
    assert r.errors and all(f"{empty / 'model.json'} does not exist" in e["message"] for e in r.errors)
    assert all(row["psnr"] is not None for row in r.rows)  # the other metrics still ran
    bad = tmp_path / "bad.csv"
    bad.write_text("name,class\na.png,0\n")
    with pytest.raises(ValueError, match=r"labels file .*bad.csv needs the header columns 'file' and 'label'"):
        read_labels(bad)
    bad.write_text("\ufefffile,label\na.png,0\n", encoding="utf-8")  # a spreadsheet's byte-order mark
    assert read_labels(bad) == {"a.png": "0"}
    bad.write_text("file,label\na.png,0\na.png,1\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3: a.png has two labels"):
        read_labels(bad)
    with pytest.raises(FileNotFoundError, match="labels file .*missing.csv does not exist"):
        evaluate(root / "data" / "val", [root / "noisy"], [f"top1={root / 'clf'}"], tmp_path / "m",
                 labels=tmp_path / "missing.csv")
    odd = tmp_path / "odd.csv"
    odd.write_text("file,label\n" + "\n".join(f"{p.relative_to(root / 'data' / 'val').as_posix()},zebra"
                                               for p in sorted((root / "data" / "val").rglob("*.png"))) + "\n")
    r = evaluate(root / "data" / "val", [root / "noisy"], [f"top1={root / 'clf'}"], tmp_path / "o", report=False,
                 labels=odd)
    assert r.errors and "label 'zebra'" in r.errors[0]["message"] and "is not one of the classifier's classes" \
        in r.errors[0]["message"]


def test_command_line(setup, tmp_path, capsys):
    from fastlpips import cli

    root, _, _ = setup
    args = ["evaluate", str(root / "data" / "val"), str(root / "noisy"), "--metrics", f"psnr,top1={root / 'clf'}",
            "--results", str(tmp_path / "res"), "--no-report", "--no-progress"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "top1-clf" in out and "top1-clf_ref" in out
    assert cli.main(args[:-4] + ["--labels", str(tmp_path / "none.csv"), "--results", str(tmp_path / "r2")]) == 1
    err = capsys.readouterr().err
    assert "--labels" in err and "none.csv does not exist" in err


def test_report_tables(setup, tmp_path):
    """The summary shows the references' error beside the outputs'; the compact table orders the
    columns as the robust-loss paper's Table 2 (whatever order --metrics gave) with the means."""
    import re

    from fastlpips.evaluation.report import _fmt

    root, _, _ = setup
    r = evaluate(root / "data" / "val", [root / "noisy", root / "data" / "val"],
                 [f"top1={root / 'clf'}", "gmsd", "uqi", "ssim", "psnr"], tmp_path / "res", worst=0)
    page = (tmp_path / "res" / "report.html").read_text()
    compact = page[page.index("<h2>Compact table</h2>"):page.index("<h2>Distributions</h2>")]
    heads = re.findall(r"<th>([^<]*)</th>", compact)
    assert heads == ["psnr ↑", "ssim ↑", "uqi ↑", "gmsd ↓", "top1-clf ↓", "top1-clf on references ↓"]
    s = r.summary()
    for m in ("noisy", "val"):
        row = compact[compact.index(f"<td class=l>{m}</td>"):]
        row = row[:row.index("</tr>")]
        cells = [c.replace("<b>", "").replace("</b>", "") for c in re.findall(r"<td>(.*?)</td>", row)]
        want = [s[m][c]["mean"] for c in ("psnr", "ssim", "uqi", "gmsd", "top1-clf", "top1-clf_ref")]
        assert cells == [_fmt(v) for v in want]
    assert "(references " in page


def test_imagenet_resnet50_checkpoints(setup, tmp_path):
    """torchvision's ResNet-50 (random weights, shuffled batch-norm statistics) saved as a state dict,
    a DataParallel checkpoint and a robustness-library AttackerModel checkpoint: all three load into
    nets.classifiers.ResNet50 with torchvision's logits exactly, and top1=WEIGHTS equals a direct
    loop with torchvision's model; a file of another model is named in the per-file error."""
    from fastlpips.nets.classifiers import load_imagenet_classifier
    from helpers import require

    tvm = require("torchvision.models")
    torch.manual_seed(0)
    tv = tvm.resnet50(weights=None, num_classes=4).eval()
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    sd = tv.state_dict()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    robust = {f"module.{p}{k}": v for k, v in sd.items() for p in ("model.", "attacker.model.")}
    robust.update({f"module.{n}.{b}": t for n in ("normalizer", "attacker.normalize")
                   for b, t in (("new_mean", mean), ("new_std", std))})
    files = {"plain.pth": sd, "dp.pth": {"state_dict": {"module." + k: v for k, v in sd.items()}},
             "robust.pt": {"model": robust, "epoch": 90}}
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = tv((x - mean) / std)
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        model, meta = load_imagenet_classifier(tmp_path / name)
        assert meta["classes"] == ["0", "1", "2", "3"] and meta["size"] is None
        with torch.no_grad():
            assert torch.equal(model(x), want), name

    # evaluate: classes are indices (subfolders named 0..3); 64x64 crops of the example photos
    root, _, _ = setup
    ref, out = tmp_path / "ref", tmp_path / "out"
    want_err = {}
    for k, p in enumerate(sorted((root / "data" / "val").rglob("*.png"))[:6]):
        a = np.asarray(Image.open(p).resize((64, 64)))
        rel = f"{k % 4}/{p.name[:-4]}_{k}.png"
        for d, arr in ((ref, a), (out, np.ascontiguousarray(a[::-1]))):  # outputs: upside down
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(d / rel)
        xo = torch.from_numpy(np.ascontiguousarray(a[::-1]) / np.float32(255)).permute(2, 0, 1)[None].float()
        with torch.no_grad():
            want_err[rel] = float(int(tv((xo - mean) / std).argmax(1)) != k % 4)
    r = evaluate(ref, [out], [f"top1={tmp_path / 'robust.pt'}"], tmp_path / "res", report=False)
    assert not r.errors
    rows = _csv(tmp_path / "res" / "results.csv")
    assert {f: float(rows[("out", f)]["top1-robust"]) for f in want_err} == want_err
    r = evaluate(ref, [out], [f"top1={root / 'clf' / 'model.pt'}"], tmp_path / "bad", report=False)
    assert r.errors and all(f"{root / 'clf' / 'model.pt'} does not fit ResNet50" in e["message"] for e in r.errors)
