"""AutoAttack (``linf-aa`` / ``l2-aa``): APGD-CE / APGD-T per example against torchattacks 3.5.1,
the standard ensemble against torchattacks' MultiAttack of the same four components, robust
accuracy against 20-step PGD at the same bound, bounds, seeds and bad input."""
import pytest
import torch
from torch.utils.data import TensorDataset

from fastlpips import robust
from fastlpips.attacks.apgd import APGD
from fastlpips.attacks.autoattack import AutoAttack


def _torchattacks():
    return __import__("helpers").require("torchattacks", reason="torchattacks 3.5.1 is the AutoAttack reference")


@pytest.fixture(scope="module")
def batch(attack_demo):
    x, y = attack_demo.crops(4, 1)  # 16 crops of the 4 photos
    return attack_demo.clf.eval(), x, y


def _fooled(model, adv, y):
    with torch.no_grad():
        return model(adv).argmax(1) != y


@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("l2", 1.0)])
@pytest.mark.parametrize("loss", ["ce", "dlr-targeted"])
def test_apgd_equals_torchattacks_per_example(batch, norm, eps, loss):
    """Same batch, seed and budget (20 steps): the same examples fooled with the same images, bit
    for bit. L_2 APGD-T runs one example at a time: torchattacks steps every example of a batch by
    the first one's step size there (a deliberate difference, see attacks/apgd.py)."""
    ta = _torchattacks()
    model, x, y = batch
    kind = "Linf" if norm == "linf" else "L2"
    ref_attack = (ta.APGD(model, norm=kind, eps=eps, steps=20, seed=7, loss="ce") if loss == "ce" else
                  ta.APGDT(model, norm=kind, eps=eps, steps=20, seed=7, n_classes=4))
    ours = APGD(model, norm, eps, loss=loss, n_iter=20, seed=7)
    rows = [slice(i, i + 1) for i in range(8)] if (norm, loss) == ("l2", "dlr-targeted") else [slice(None)]
    total = 0
    for r in rows:
        state = torch.get_rng_state()
        model.zero_grad(set_to_none=True)
        adv = ours.perturb(x[r], y[r])
        assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
        assert all(p.grad is None for p in model.parameters())  # gradients of the input only
        ref = ref_attack(x[r], y[r]).detach()
        fooled = _fooled(model, adv, y[r])
        assert torch.equal(fooled, _fooled(model, ref, y[r]))
        assert torch.equal(adv, ref)
        total += int(fooled.sum())
        d = (adv - x[r]).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert bool((size <= eps * (1 + 1e-5)).all()) and adv.min() >= 0 and adv.max() <= 1
    assert total >= 2  # the attack did something (besides the clean error)


def test_autoattack_equals_torchattacks_multiattack(batch):
    """The ensemble (budgets 10 steps / 500 queries) against torchattacks' MultiAttack of its four
    components with the same budgets and seed: per example the same verdict and the same image."""
    ta = _torchattacks()
    model, x, y = batch
    for norm, eps in (("linf", 2 / 255), ("l2", 0.25)):
        kind = "Linf" if norm == "linf" else "L2"
        ref = ta.MultiAttack([ta.APGD(model, norm=kind, eps=eps, steps=10, seed=3, loss="ce"),
                              ta.APGDT(model, norm=kind, eps=eps, steps=10, seed=3, n_classes=4),
                              ta.FAB(model, norm=kind, eps=eps, steps=10, seed=3, multi_targeted=True, n_classes=4),
                              ta.Square(model, norm=kind, eps=eps, n_queries=500, seed=3)])
        attack = AutoAttack(model, norm, eps, num_iterations=10, seed=3, layout="as_given")
        adv = attack(x, y)
        expected = ref(x, y).detach()
        assert torch.equal(_fooled(model, adv, y), _fooled(model, expected, y)), norm
        torch.testing.assert_close(adv, expected, rtol=0, atol=1e-5, msg=norm)
        assert bool(attack.within_bound().all())


@pytest.mark.slow
def test_autoattack_is_at_least_as_strong_as_pgd(batch):
    """Robust accuracy under linf-aa <= under 20-step PGD at the same bound, for three seeds (and
    l2-aa on one), every output within its bound (robust evaluation's check). AutoAttack at a fifth
    of its budgets here (20 steps, 1000 queries); the standard budgets: benchmarks/test_bench_autoattack.py."""
    model, x, y = batch
    data = TensorDataset(x, y)
    for seed in (0, 1, 2):
        attacks = ["linf=3/255", "linf-aa=3/255"] + (["l2=0.3", "l2-aa=0.3"] if seed == 0 else [])
        r = robust.evaluate_robustness(model, data, attacks, iterations=20, seed=seed, progress=False, batch_size=24)
        acc = r.accuracy()
        assert acc["linf-aa"] <= acc["linf"] and acc.get("l2-aa", 0) <= acc.get("l2", 1), (seed, acc)
        assert all(v == 0 for v in r.violations.values()), r.violations


def test_seeds_specs_and_bad_input(batch):
    model, x, y = batch
    a = robust.make_attack("linf-aa=2/255", model, iterations=5)
    assert isinstance(a, AutoAttack) and a.bound == pytest.approx(2 / 255) and a.num_iterations == 5
    assert robust.parse_attack_spec("l2-aa").bound == 1.0 and robust.parse_attack_spec("linf-aa").bound == 8 / 255
    one = a(x[:8], y[:8], generator=torch.Generator().manual_seed(1))
    again = a(x[:8], y[:8], generator=torch.Generator().manual_seed(1))
    assert torch.equal(one, again)
    assert a.last["by"].shape == (8,) and sum(a.last["attacked"][:1]) <= 8
    with pytest.raises(ValueError, match="norm must be 'linf' or 'l2'"):
        AutoAttack(model, "l1", 0.1)
    with pytest.raises(ValueError, match="components must be a non-empty subset"):
        AutoAttack(model, "linf", 0.1, components=("pgd",))
    with pytest.raises(ValueError, match="bound must be"):
        AutoAttack(model, "linf", 0.0)
    with pytest.raises(ValueError, match="APGD-T needs a model with 4 classes or more"):
        APGD(torch.nn.Sequential(model, torch.nn.Linear(4, 3)), "linf", 0.1, loss="dlr-targeted").perturb(x, y % 3)
    with pytest.raises(ValueError, match="loss must be 'ce'"):
        APGD(model, "linf", 0.1, loss="dlr")
    with pytest.raises(ValueError, match="labels"):
        a(x[:4], y[:3])
