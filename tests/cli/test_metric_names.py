"""One vocabulary: the commands' metric options, scoring, evaluation and geometry accept exactly the
registry's names (and aliases), listed by ``fastlpips metrics``; old or ambiguous names are refused
with the new name."""
import io
import json

import pytest
import torch

from fastlpips import cli, geometry, scoring
from fastlpips.evaluation import parse_metric
from fastlpips.metrics import all_names, list_metrics, metric_info, resolve_name

NOT_NAMES = ["alex", "vgg", "l2", "lpips-resnet", "ms_ssim", "LPIPS-ALEX-V0.1", ""]


def _options(name, ckpt):
    opts = {}
    if "squeeze" in name:
        opts["pnet_rand"] = True  # no SqueezeNet ImageNet weights offline
    if metric_info(name).checkpoint == "required":
        opts["checkpoint"] = str(ckpt)
    return opts


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from fastlpips import LPIPS

    path = tmp_path_factory.mktemp("ckpt") / "rlpips.pth"
    torch.save(LPIPS(net="alex", verbose=False).state_dict(), path)
    return path


def test_metrics_command_lists_the_registry(capsys):
    assert cli.main(["metrics", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in doc["results"]] == list_metrics()
    assert doc["summary"]["metrics"] == len(list_metrics())
    assert cli.main(["metrics", "--filter", "lpips-*", "--format", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("name,family,better") and [r.split(",")[0] for r in rows[1:]] == list_metrics("lpips-*")


@pytest.mark.parametrize("command,flag", [("score-2afc", "--metric"), ("score-jnd", "--metric"),
                                          ("barycenter", "--distance"), ("geodesic", "--distance")])
def test_command_options_take_exactly_the_registry_names(command, flag):
    parser = cli.build_parser()
    positional = {"score-2afc": ["d"], "score-jnd": ["d"], "barycenter": ["a.png", "b.png", "--save", "o.png"],
                  "geodesic": ["a.png", "b.png", "--save", "o.png"]}[command]
    for name in all_names():
        args = parser.parse_args([command, *positional, flag, name])
        assert getattr(args, flag.lstrip("-")) == resolve_name(name)
    for bad in NOT_NAMES:
        err = io.StringIO()
        with pytest.raises(SystemExit), _redirect(err):
            parser.parse_args([command, *positional, flag, bad])
        assert "unknown metric" in err.getvalue() or "ambiguous" in err.getvalue(), err.getvalue()
    assert "its name is 'lpips-alex'" in _parse_error(parser, [command, *positional, flag, "alex"])


def _redirect(stream):
    import contextlib

    return contextlib.redirect_stderr(stream)


def _parse_error(parser, argv):
    err = io.StringIO()
    with pytest.raises(SystemExit), _redirect(err):
        parser.parse_args(argv)
    return err.getvalue()


def test_evaluation_takes_exactly_the_registry_names(ckpt):
    for name in all_names():
        info = metric_info(name)
        text = f"{name}={ckpt}" if info.checkpoint == "required" else name
        spec = parse_metric(text)
        assert spec.key == info.name and spec.higher_is_better == info.higher_better
    for bad in NOT_NAMES:
        with pytest.raises(ValueError, match="unknown metric|ambiguous|metric name"):
            parse_metric(bad)


def test_scoring_and_geometry_take_exactly_the_registry_names(ckpt):
    for name in list_metrics():
        opts = _options(name, ckpt)
        assert callable(scoring.make_distance(name, draws=2, **opts)), name
        info = metric_info(name)
        if info.lower_better and info.differentiable:
            assert callable(geometry.make_distance(name)) if not opts else True
        else:
            with pytest.raises(ValueError, match=f"distance '{name}' cannot be minimized"):
                geometry.make_distance(name)
    for bad in NOT_NAMES:
        with pytest.raises(ValueError, match="unknown metric|ambiguous"):
            scoring.make_distance(bad)
        with pytest.raises(ValueError, match="distance: (unknown metric|metric .* is ambiguous)"):
            geometry.make_distance(bad)
